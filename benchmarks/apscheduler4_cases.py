"""APScheduler 4.0a6's side of the scheduler benchmarks (run with benchmarks/.vendor/ap4 first
on the path): ``python -m benchmarks.apscheduler4_cases '<json spec>'`` prints one JSON object.

Same cases and output as :mod:`benchmarks.asched_cases`, with AsyncScheduler and its
MemoryDataStore (or SQLAlchemyDataStore on asyncpg when ``store`` is ``"postgresql"``).
``max_running_jobs`` overrides the task default (1 in APScheduler 4).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
from apscheduler import AsyncScheduler, JobOutcome, JobReleased, SchedulerRole, current_job
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from benchmarks.measures import lateness_summary, rss_bytes

POSTGRESQL_URL = os.environ.get(
    "ASCHED_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
).replace("postgresql://", "postgresql+asyncpg://", 1)
SCHEMA = "ap4_bench"


async def noop() -> None:
    pass


def sync_noop() -> None:
    pass


async def _drop_schema(spec: dict[str, Any]) -> None:
    if spec.get("store") == "postgresql":
        import asyncpg

        connection = await asyncpg.connect(POSTGRESQL_URL.replace("+asyncpg", ""))
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await connection.close()


def _scheduler(spec: dict[str, Any], role: SchedulerRole = SchedulerRole.both) -> AsyncScheduler:
    if spec.get("store") == "postgresql":
        from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
        from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker

        return AsyncScheduler(
            SQLAlchemyDataStore(POSTGRESQL_URL, schema=SCHEMA),
            AsyncpgEventBroker(POSTGRESQL_URL.replace("+asyncpg", "")),
            role=role,
        )
    return AsyncScheduler(role=role)


async def _configure(scheduler: AsyncScheduler, func: Any, spec: dict[str, Any]) -> None:
    if "max_running_jobs" in spec:
        await scheduler.configure_task(
            func,
            func=func,
            job_executor="async" if func is noop else "threadpool",
            max_running_jobs=spec["max_running_jobs"],
        )


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    func = noop if spec["kind"] == "async" else sync_noop
    done = anyio.Event()
    released = 0
    failed = 0

    def on_release(event: JobReleased) -> None:
        nonlocal released, failed
        released += 1
        failed += event.outcome is not JobOutcome.success
        if released == count:
            done.set()

    await _drop_schema(spec)
    processes = spec.get("processes", 0)
    role = SchedulerRole.scheduler if processes else SchedulerRole.both
    async with AsyncExitStack() as stack:
        scheduler = await stack.enter_async_context(_scheduler(spec, role))
        await _configure(scheduler, func, spec)
        scheduler.subscribe(on_release, {JobReleased})
        if processes:
            # worker-only schedulers in other processes; JobReleased comes through the broker
            go = await stack.enter_async_context(worker_processes(spec, processes))
            await go()
        else:
            await scheduler.start_in_background()

        async def produce(jobs: int) -> None:
            for _ in range(jobs):
                await scheduler.add_job(func)

        producers = spec.get("producers", 1)  # concurrent adding tasks
        start = time.perf_counter()
        async with anyio.create_task_group() as task_group:
            for index in range(producers):
                task_group.start_soon(produce, count // producers + (index < count % producers))
        added = time.perf_counter()
        with anyio.fail_after(900):
            await done.wait()
        elapsed = time.perf_counter() - start
        if not processes:
            await scheduler.stop()
    await _drop_schema(spec)
    return {
        "jobs_per_second": count / elapsed,
        "add_seconds": added - start,
        "seconds": elapsed,
        "failed": failed,
    }


_latenesses: list[float] = []


async def measure_lateness() -> None:
    job = current_job.get()
    assert job.scheduled_fire_time is not None
    _latenesses.append(time.time() - job.scheduled_fire_time.timestamp())


async def lateness(spec: dict[str, Any]) -> dict[str, Any]:
    count, seconds = spec["schedules"], spec["seconds"]
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    async with _scheduler(spec) as scheduler:
        await _configure(scheduler, measure_lateness, spec)
        for index in range(count):
            first = start + timedelta(seconds=index / count)
            await scheduler.add_schedule(
                measure_lateness,
                IntervalTrigger(
                    seconds=1, start_time=first, end_time=first + timedelta(seconds=seconds - 1)
                ),
            )
        await scheduler.start_in_background()
        await anyio.sleep((start - datetime.now(timezone.utc)).total_seconds() + seconds + 1)
        with anyio.move_on_after(60):
            while len(_latenesses) < count * seconds:  # noqa: ASYNC110 (bench only)
                await anyio.sleep(0.1)
        await scheduler.stop()
    return {"fires_per_second": len(_latenesses) / seconds, **lateness_summary(_latenesses)}


_fired: list[anyio.Event] = []
_fire_times: list[float] = []


async def due() -> None:
    """The schedule due among the far-future ones (APScheduler 4 needs a module function)."""
    _fire_times.append(time.time())
    _fired[0].set()


async def scale(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["schedules"]
    rng = random.Random(42)
    now = datetime.now(timezone.utc)
    base_rss = rss_bytes()
    async with _scheduler(spec) as scheduler:
        await scheduler.start_in_background()
        start = time.perf_counter()
        for index in range(count):
            run_time = now + timedelta(days=30 + rng.random() * 3650)
            await scheduler.add_schedule(noop, DateTrigger(run_time), id=f"s{index}")
        add_seconds = time.perf_counter() - start
        rss_per_schedule = (rss_bytes() - base_rss) / count

        fired = anyio.Event()
        _fired.append(fired)

        due_at = datetime.now(timezone.utc) + timedelta(seconds=1)
        await scheduler.add_schedule(due, DateTrigger(due_at), id="due")
        with anyio.fail_after(120):
            await fired.wait()
        await scheduler.stop()
        fire_times = _fire_times

    return {
        "add_seconds": add_seconds,
        "add_microseconds_per_schedule": add_seconds / count * 1e6,
        "rss_bytes_per_schedule": rss_per_schedule,
        "due_lateness_ms": (fire_times[0] - due_at.timestamp()) * 1000,
    }


@asynccontextmanager
async def worker_processes(
    spec: dict[str, Any], count: int
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Start ``count`` worker-only schedulers in other processes; yield what starts them.

    The same protocol as asched's side: each child prints ``ready`` once connected, starts
    on a ``go`` line and stops on ``stop``.
    """
    child_spec = json.dumps({"case": "worker", "store": spec["store"]})
    children = [
        await anyio.open_process([sys.executable, "-m", __spec__.name, child_spec], stderr=None)
        for _ in range(count)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            with anyio.fail_after(60):
                line = await child.stdout.receive()
            assert line.strip() == b"ready", line

        async def go() -> None:
            for child in children:
                assert child.stdin is not None
                await child.stdin.send(b"go\n")

        yield go
    finally:
        for child in children:
            assert child.stdin is not None
            await child.stdin.send(b"stop\n")
        with anyio.fail_after(60):
            for child in children:
                await child.wait()


async def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A worker-only scheduler that starts on a ``go`` line and stops on ``stop``."""
    async with _scheduler(spec, SchedulerRole.worker) as scheduler:
        print("ready", flush=True)
        for line in ("go", "stop"):
            received = await anyio.to_thread.run_sync(sys.stdin.readline)
            assert received.strip() == line, received
            if line == "go":
                await scheduler.start_in_background()
        await scheduler.stop()
    return {}


CASES = {"throughput": throughput, "lateness": lateness, "scale": scale, "worker": worker}


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(anyio.run(CASES[spec["case"]], spec)))


if __name__ == "__main__":
    main()
