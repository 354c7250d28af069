"""arq 0.28's side of the Redis benchmarks (run with benchmarks/.vendor/arq first on the path):
``python -m benchmarks.arq_cases '<json spec>'`` prints one JSON object.

``throughput``: ``jobs`` no-op jobs enqueued one by one (by ``producers`` concurrent tasks)
while a worker in the same process runs them (``max_jobs`` at a time), timed from the first
enqueue until the worker has run them all. ``lateness``: ``schedules`` cron jobs firing every
second, spread over the second (arq's ``microsecond``). ``scale``: ``schedules`` deferred
jobs far in the future (arq's stored one-off schedules), the Redis memory they take, then how
late one deferred job due in a second runs. The worker polls every 50 ms throughout.

Uses Redis database 15. arq's keys have no prefix option but all start with ``arq:``: each case
deletes those (and nothing else) before and after it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Worker

from benchmarks.measures import lateness_summary

SETTINGS = RedisSettings(host="127.0.0.1", port=6379, database=15)


async def delete_arq_keys(redis: Any) -> None:
    """Delete arq's keys (``arq:…``) from the benchmark database, and only those."""
    keys = [key async for key in redis.scan_iter(match="arq:*", count=1000)]
    for start in range(0, len(keys), 1000):
        await redis.delete(*keys[start : start + 1000])


async def noop(ctx: dict[str, Any]) -> None:
    pass


def _start_worker(functions: list[Any], **options: Any) -> tuple[Worker, asyncio.Task[None]]:
    """Start an arq worker polling every 50 ms and keeping no results, as every case uses."""
    worker = Worker(
        functions=functions,
        redis_settings=SETTINGS,
        poll_delay=0.05,
        keep_result=0,
        handle_signals=False,
        **options,
    )
    return worker, asyncio.create_task(worker.async_run())


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    redis = await create_pool(SETTINGS)
    await delete_arq_keys(redis)
    worker, worker_task = _start_worker([noop], max_jobs=spec.get("workers", 100))

    async def produce(jobs: int) -> None:
        for _ in range(jobs):
            await redis.enqueue_job("noop")

    producers = spec.get("producers", 1)  # concurrent enqueuing tasks
    start = time.perf_counter()
    await asyncio.gather(
        *(produce(count // producers + (index < count % producers)) for index in range(producers))
    )
    added = time.perf_counter()
    while worker.jobs_complete + worker.jobs_failed < count:  # noqa: ASYNC110 (no event to await)
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    worker_task.cancel()
    await worker.close()
    await delete_arq_keys(redis)
    await redis.aclose()
    return {"jobs_per_second": count / elapsed, "add_seconds": added - start, "seconds": elapsed}


_latenesses: list[float] = []


async def measure_lateness(ctx: dict[str, Any]) -> None:
    # a unique cron job's id is "<name>:<fire time in unix ms>"
    fire_time_ms = int(ctx["job_id"].rsplit(":", 1)[1])
    _latenesses.append(time.time() - fire_time_ms / 1000)


async def lateness(spec: dict[str, Any]) -> dict[str, Any]:
    """``schedules`` cron jobs firing every second for ``seconds`` s, spread over the second."""
    count, seconds = spec["schedules"], spec["seconds"]
    redis = await create_pool(SETTINGS)
    await delete_arq_keys(redis)
    cron_jobs = [
        cron(
            measure_lateness,
            name=f"c{index}",
            second=set(range(60)),
            microsecond=index * 1_000_000 // count,
        )
        for index in range(count)
    ]
    worker, worker_task = _start_worker([], cron_jobs=cron_jobs, max_jobs=spec.get("workers", 100))
    await asyncio.sleep(2)  # the first crons are set up on the first loop; skip warm-up
    _latenesses.clear()
    await asyncio.sleep(seconds)
    measured = list(_latenesses)
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # jobs in flight when it stops
        await worker.close()
    await delete_arq_keys(redis)
    await redis.aclose()
    return {"fires_per_second": len(measured) / seconds, **lateness_summary(measured)}


_due_at: list[float] = []


async def due(ctx: dict[str, Any]) -> None:
    _due_at.append(time.time())


async def scale(spec: dict[str, Any]) -> dict[str, Any]:
    """``schedules`` far-future deferred jobs (arq's one-off schedules), then one due in 1 s."""
    count = spec["schedules"]
    rng = random.Random(42)
    now = datetime.now(timezone.utc)
    run_times = [now + timedelta(days=30 + rng.random() * 3650) for _ in range(count)]
    redis = await create_pool(SETTINGS)
    await delete_arq_keys(redis)
    base_memory = int((await redis.info("memory"))["used_memory"])

    async def produce(indexes: range) -> None:
        for index in indexes:
            await redis.enqueue_job("noop", _job_id=f"s{index}", _defer_until=run_times[index])

    producers = spec.get("producers", 1)
    start = time.perf_counter()
    await asyncio.gather(*(produce(range(index, count, producers)) for index in range(producers)))
    add_seconds = time.perf_counter() - start
    memory = int((await redis.info("memory"))["used_memory"])

    worker, worker_task = _start_worker([noop, due])
    due_at = time.time() + 1
    await redis.enqueue_job("due", _defer_until=datetime.fromtimestamp(due_at, timezone.utc))
    while not _due_at:  # noqa: ASYNC110 (no event to await)
        await asyncio.sleep(0.005)
    worker_task.cancel()
    await worker.close()
    await delete_arq_keys(redis)
    await redis.aclose()
    return {
        "add_seconds": add_seconds,
        "add_microseconds_per_schedule": add_seconds / count * 1e6,
        "redis_bytes_per_schedule": (memory - base_memory) / count,
        "due_lateness_ms": (_due_at[0] - due_at) * 1000,
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    cases = {"throughput": throughput, "lateness": lateness, "scale": scale}
    print(json.dumps(asyncio.run(cases[spec["case"]](spec))))


if __name__ == "__main__":
    main()
