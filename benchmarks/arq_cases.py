"""arq 0.28's side of the Redis throughput benchmark (run with benchmarks/.vendor/arq first on
the path): ``python -m benchmarks.arq_cases '<json spec>'`` prints one JSON object.

``throughput``: ``jobs`` no-op jobs enqueued one by one while a burst-mode worker in the same
process runs them (``max_jobs`` at a time), timed from the first enqueue until the worker
has run them all. Uses Redis database 15, flushed before and after: arq's keys have no
prefix option.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

SETTINGS = RedisSettings(host="127.0.0.1", port=6379, database=15)


async def noop(ctx: dict[str, Any]) -> None:
    pass


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    redis = await create_pool(SETTINGS)
    await redis.flushdb()
    worker = Worker(
        functions=[noop],
        redis_settings=SETTINGS,
        burst=False,
        max_jobs=spec.get("workers", 100),
        poll_delay=0.05,
        keep_result=0,
        handle_signals=False,
    )
    worker_task = asyncio.create_task(worker.async_run())
    start = time.perf_counter()
    for _ in range(count):
        await redis.enqueue_job("noop")
    added = time.perf_counter()
    while worker.jobs_complete + worker.jobs_failed < count:  # noqa: ASYNC110 (no event to await)
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    worker_task.cancel()
    await worker.close()
    await redis.flushdb()
    await redis.aclose()
    return {"jobs_per_second": count / elapsed, "add_seconds": added - start, "seconds": elapsed}


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run({"throughput": throughput}[spec["case"]](spec))))


if __name__ == "__main__":
    main()
