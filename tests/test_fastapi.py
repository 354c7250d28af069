"""A FastAPI application whose lifespan runs the scheduler, served for real by uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from asched import AsyncScheduler, RunState
from asched.events import JobReleased
from asched.triggers import DateTrigger

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio


greetings: list[str] = []


async def greet(name: str) -> str:
    greetings.append(name)
    return f"hello {name}"


def create_app(scheduler: AsyncScheduler) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with scheduler:
            await scheduler.start_in_background()
            app.state.scheduler = scheduler
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/greetings/{name}")
    async def schedule_greeting(name: str, request: Request) -> dict[str, Any]:
        scheduler: AsyncScheduler = request.app.state.scheduler
        run_time = datetime.now(timezone.utc) + timedelta(milliseconds=50)
        schedule_id = await scheduler.add_schedule(greet, DateTrigger(run_time), args=[name])
        return {"schedule_id": schedule_id}

    @app.post("/jobs/{name}")
    async def run_greeting(name: str, request: Request) -> dict[str, Any]:
        scheduler: AsyncScheduler = request.app.state.scheduler
        return {"result": await scheduler.run_job(greet, args=[name])}

    return app


async def test_lifespan_runs_the_scheduler_and_shuts_it_down_cleanly() -> None:
    greetings.clear()
    scheduler = AsyncScheduler()
    released = anyio.Event()
    scheduler.subscribe(lambda event: released.set(), JobReleased, one_shot=True)
    config = uvicorn.Config(create_app(scheduler), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(server.serve)
        with anyio.fail_after(10):
            # uvicorn offers no event for "listening"; its flag is all there is
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post("/greetings/scheduled")
            assert response.status_code == 200
            schedule_id = response.json()["schedule_id"]
            with anyio.fail_after(10):
                await released.wait()

            response = await client.post("/jobs/direct")
            assert response.json() == {"result": "hello direct"}

        assert scheduler.state is RunState.started
        server.should_exit = True

    assert greetings == ["scheduled", "direct"]
    assert schedule_id
    assert scheduler.state is RunState.stopped
