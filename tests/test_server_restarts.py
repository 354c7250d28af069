"""A server that crashes and comes back loses no acknowledged write, and schedulers carry on.

Each test runs on a private server (see ``tests/private_servers.py``), crashed for real in
the middle of the work: SIGKILL for Redis (its append-only file is synced on every write),
an immediate shutdown for PostgreSQL (no checkpoint: it recovers from its WAL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol
from uuid import UUID

import anyio
import pytest

from asched import AsyncScheduler, SchedulerRole
from asched.triggers import DateTrigger
from tests.cluster.harness import run_cluster
from tests.private_servers import private_postgresql, private_redis
from tests.test_multiprocess import assert_each_fire_ran_once

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)


class CrashableServer(Protocol):
    url: str

    def crash_and_restart(self, down_for: float = ...) -> None: ...


@pytest.fixture(params=["postgresql", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[CrashableServer]:
    server: AbstractContextManager[CrashableServer] = (
        private_postgresql() if request.param == "postgresql" else private_redis()
    )
    with server as started:
        yield started


async def noop() -> None:
    pass


async def triple(value: int) -> int:
    return value * 3


async def test_writes_acknowledged_around_a_crash_are_all_kept_once(
    server: CrashableServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Eight producers add schedules and jobs; the server crashes once 40 schedules are in and
    # comes back. Every call must succeed (its retries outlast the outage), and every
    # acknowledged write must be there once afterwards: none lost, none written twice by a
    # retry of a write whose reply the crash cut off
    schedule_ids: list[str] = []
    job_ids: list[UUID] = []
    crash_now = anyio.Event()
    async with AsyncScheduler(server.url) as scheduler:

        async def produce(producer: int) -> None:
            for index in range(25):
                schedule_ids.append(
                    await scheduler.add_schedule(
                        noop, DateTrigger(FAR_FUTURE), id=f"p{producer}-{index}"
                    )
                )
                job_ids.append(await scheduler.add_job(noop))
                if len(schedule_ids) >= 40:
                    crash_now.set()

        with anyio.fail_after(120):
            async with anyio.create_task_group() as task_group:
                for producer in range(8):
                    task_group.start_soon(produce, producer)
                await crash_now.wait()
                await anyio.to_thread.run_sync(server.crash_and_restart)

    assert len(schedule_ids) == 200
    # the crash cut off calls in flight, which were retried
    assert any("transient error" in record.getMessage() for record in caplog.records)
    # a scheduler started after the crash reads back exactly what was acknowledged
    async with AsyncScheduler(server.url, role=SchedulerRole.scheduler) as reader:
        assert sorted(schedule.id for schedule in await reader.get_schedules()) == sorted(
            schedule_ids
        )
        assert sorted(job.id for job in await reader.get_jobs()) == sorted(job_ids)


async def test_schedulers_carry_on_after_a_crash(server: CrashableServer) -> None:
    # A worker and a scheduler in one process stand for two processes sharing the server:
    # after the crash, a job one adds is run by the other and its result comes back
    async with (
        AsyncScheduler(server.url, role=SchedulerRole.worker) as worker,
        AsyncScheduler(server.url, role=SchedulerRole.scheduler) as scheduler,
    ):
        await worker.start_in_background()
        await scheduler.start_in_background()
        with anyio.fail_after(60):
            before = await scheduler.add_job(triple, args=[1], result_expiration_time=60)
            assert (await scheduler.get_job_result(before)).return_value == 3

            await anyio.to_thread.run_sync(server.crash_and_restart)

            after = await scheduler.add_job(triple, args=[2], result_expiration_time=60)
            assert (await scheduler.get_job_result(after)).return_value == 6


async def test_every_fire_runs_exactly_once_across_a_crash(
    server: CrashableServer, tmp_path: Path
) -> None:
    # Three scheduler processes fire 100 schedules every second for 12 s; the server crashes
    # 8 s after the processes start (while they fire) and comes back. Fires due while it was
    # down run late (no misfire grace time), each exactly once
    crashed = False

    async def crash_once() -> None:
        nonlocal crashed
        if not crashed:
            crashed = True
            await anyio.sleep(8)
            await anyio.to_thread.run_sync(server.crash_and_restart)

    result = await run_cluster(
        store_url=server.url,
        broker_url=server.url,
        output=tmp_path,
        nodes=3,
        schedules=100,
        seconds=12,
        fault=crash_once,
    )

    assert crashed
    # the processes' stores did meet the crash (and retried)
    assert any("transient error" in stderr for stderr in result.stderr.values())
    assert_each_fire_ran_once(result)
    assert not result.missing, f"{len(result.missing)} fires never ran"
    assert len(result.runs) == len(result.expected)
