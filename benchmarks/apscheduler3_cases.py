"""APScheduler 3.11's side of the scheduler benchmarks (run with benchmarks/.vendor/ap3 first
on the path): ``python -m benchmarks.apscheduler3_cases '<json spec>'`` prints one JSON object.

Same cases and output as :mod:`benchmarks.asched_cases`, with AsyncIOScheduler and its
MemoryJobStore (or SQLAlchemyJobStore on PostgreSQL when ``store`` is ``"postgresql"``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from benchmarks.measures import lateness_summary, rss_bytes, time_blocking_adds

POSTGRESQL_URL = os.environ.get(
    "ASCHED_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
).replace("postgresql://", "postgresql+psycopg2://", 1)


async def noop() -> None:
    pass


def sync_noop() -> None:
    pass


def _scheduler(spec: dict[str, Any]) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    store = spec.get("store")
    if store == "postgresql":
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        scheduler.add_jobstore(SQLAlchemyJobStore(url=POSTGRESQL_URL, tablename="ap3_bench"))
    elif store is not None and store.startswith("sqlite:"):
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        scheduler.add_jobstore(SQLAlchemyJobStore(url=store))
    elif store is not None and store.startswith("redis:"):
        from apscheduler.jobstores.redis import RedisJobStore

        scheduler.add_jobstore(
            RedisJobStore(jobs_key="ap3_bench.jobs", run_times_key="ap3_bench.run_times")
        )
    if spec.get("kind") == "sync":
        from apscheduler.executors.pool import ThreadPoolExecutor

        scheduler.add_executor(ThreadPoolExecutor(spec.get("workers", 100)), "default")
    return scheduler


def _redis_used_memory() -> int:
    import redis

    client = redis.Redis()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _drop_table(spec: dict[str, Any]) -> None:
    if str(spec.get("store")).startswith("redis:"):
        import redis

        redis.Redis().delete("ap3_bench.jobs", "ap3_bench.run_times")
    if spec.get("store") == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(POSTGRESQL_URL)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS ap3_bench"))
        engine.dispose()


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    func = noop if spec["kind"] == "async" else sync_noop
    done = asyncio.Event()
    finished = 0
    failed = 0

    def on_event(event: Any) -> None:
        nonlocal finished, failed
        finished += 1
        failed += event.code != EVENT_JOB_EXECUTED
        if finished == count:
            done.set()

    _drop_table(spec)
    scheduler = _scheduler(spec)
    scheduler.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    scheduler.start()
    start = time.perf_counter()
    for _ in range(count):
        # no trigger: run once, now; no misfire grace limit so that none is dropped as late
        scheduler.add_job(func, misfire_grace_time=None)
    added = time.perf_counter()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    scheduler.shutdown(wait=False)
    _drop_table(spec)
    return {
        "jobs_per_second": count / elapsed,
        "add_seconds": added - start,
        "seconds": elapsed,
        "failed": failed,
    }


_latenesses: list[float] = []


async def measure_lateness(scheduled: float) -> None:
    # APScheduler 3 does not tell a job its fire time: each schedule fires every whole
    # second plus its offset, passed in, so the lateness is taken against that
    now = time.time()
    _latenesses.append((now - scheduled) % 1.0)


async def lateness(spec: dict[str, Any]) -> dict[str, Any]:
    count, seconds = spec["schedules"], spec["seconds"]
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    scheduler = _scheduler(spec)
    for index in range(count):
        offset = index / count
        first = start + timedelta(seconds=offset)
        scheduler.add_job(
            measure_lateness,
            "interval",
            seconds=1,
            start_date=first,
            end_date=first + timedelta(seconds=seconds - 1),
            args=[first.timestamp()],
            misfire_grace_time=None,
        )
    scheduler.start()
    await asyncio.sleep((start - datetime.now(timezone.utc)).total_seconds() + seconds + 1)
    for _ in range(600):
        if len(_latenesses) >= count * seconds:
            break
        await asyncio.sleep(0.1)
    scheduler.shutdown(wait=False)
    return {"fires_per_second": len(_latenesses) / seconds, **lateness_summary(_latenesses)}


_fired: list[asyncio.Event] = []
_fire_times: list[float] = []


async def due() -> None:
    """The job due among the far-future ones (persistent job stores need a module function)."""
    _fire_times.append(time.time())
    _fired[0].set()


async def scale(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["schedules"]
    rng = random.Random(42)
    now = datetime.now(timezone.utc)
    base_rss = rss_bytes()
    _drop_table(spec)
    base_redis_memory = (
        _redis_used_memory() if str(spec.get("store")).startswith("redis:") else None
    )
    scheduler = _scheduler(spec)
    # With a database job store, every add to a running scheduler wakes it for a pass over
    # the store (two queries), so 100k adds queue 100k passes and the due job waits behind
    # them for minutes. Added before start() instead, they go in as one batch of pending
    # jobs: the way to load many jobs into APScheduler 3, timed up to start() returning.
    persistent = spec.get("store") is not None
    if not persistent:
        scheduler.start()
    start = time.perf_counter()
    for index in range(count):
        run_time = now + timedelta(days=30 + rng.random() * 3650)
        scheduler.add_job(noop, "date", run_date=run_time, id=f"s{index}")
    if persistent:
        scheduler.start()
    add_seconds = time.perf_counter() - start
    rss_per_schedule = (rss_bytes() - base_rss) / count
    redis_bytes_per_schedule = None
    if base_redis_memory is not None:
        redis_bytes_per_schedule = (_redis_used_memory() - base_redis_memory) / count

    fired = asyncio.Event()
    _fired.append(fired)
    fire_times = _fire_times

    due_at = datetime.now(timezone.utc) + timedelta(seconds=1)
    scheduler.add_job(due, "date", run_date=due_at, id="due")
    try:
        await asyncio.wait_for(fired.wait(), 120)
    except asyncio.TimeoutError:
        fire_times.append(float("nan"))  # it did not run within 120 s
    scheduler.shutdown(wait=False)
    _drop_table(spec)
    return {
        "add_seconds": add_seconds,
        "add_microseconds_per_schedule": add_seconds / count * 1e6,
        "rss_bytes_per_schedule": rss_per_schedule,
        "due_lateness_ms": (fire_times[0] - due_at.timestamp()) * 1000,
        "redis_bytes_per_schedule": redis_bytes_per_schedule,
    }


def blocking(spec: dict[str, Any]) -> dict[str, Any]:
    """BackgroundScheduler: plain code adds jobs while the scheduler's thread runs them."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    count = spec["jobs"]
    finished = 0
    done = threading.Event()

    def on_finish(event: Any) -> None:
        nonlocal finished
        finished += 1
        if finished == count:
            done.set()

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_executor(ThreadPoolExecutor(spec.get("workers", 100)), "default")
    scheduler.add_listener(on_finish, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        return time_blocking_adds(lambda: scheduler.add_job(sync_noop), count, done)
    finally:
        scheduler.shutdown()


CASES = {"throughput": throughput, "lateness": lateness, "scale": scale}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["case"] == "blocking":
        result = blocking(spec)
    else:
        result = asyncio.run(CASES[spec["case"]](spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
