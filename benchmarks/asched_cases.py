"""asched's side of the scheduler benchmarks; runs in a fresh interpreter per case.

``python -m benchmarks.asched_cases '<json spec>'`` prints one JSON object. Cases:

- ``throughput``: ``jobs`` no-op jobs (``kind`` async or sync) added one by one, timed from the
  first add until the last ``JobReleased``; ``store`` is a data store URL.
- ``floor``: an anyio task group spawning ``jobs`` no-op tasks (the floor for any scheduler).
- ``lateness``: ``schedules`` schedules firing every second for ``seconds`` s, their start
  times spread over the second; lateness = job start - scheduled fire time.
- ``scale``: ``schedules`` far-future schedules at random times: time to add them, RSS per
  schedule, then how late one schedule due in a second fires among them.
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio

from asched import AsyncScheduler, JobOutcome, SchedulerRole, current_job
from asched.events import JobReleased
from asched.triggers import DateTrigger, IntervalTrigger
from benchmarks.measures import lateness_summary, rss_bytes


async def noop() -> None:
    pass


def sync_noop() -> None:
    pass


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    func = noop if spec["kind"] == "async" else sync_noop
    expiration = spec.get("result_expiration_time", 0)
    done = anyio.Event()
    released = 0
    failed = 0

    def on_release(event: JobReleased) -> None:
        nonlocal released, failed
        released += 1
        failed += event.outcome is not JobOutcome.success
        if released == count:
            done.set()

    store = spec.get("store")
    async with AsyncScheduler(store, max_concurrent_jobs=spec.get("workers", 100)) as scheduler:
        await scheduler.start_in_background()
        await scheduler.run_job(func)  # registers the task and warms up the executor
        scheduler.subscribe(on_release, JobReleased)
        start = time.perf_counter()
        for _ in range(count):
            await scheduler.add_job(func, result_expiration_time=expiration)
        added = time.perf_counter()
        with anyio.fail_after(600):
            await done.wait()
        elapsed = time.perf_counter() - start

    return {
        "jobs_per_second": count / elapsed,
        "add_seconds": added - start,
        "seconds": elapsed,
        "failed": failed,
    }


async def backlog(spec: dict[str, Any]) -> dict[str, Any]:
    """Jobs added by a scheduler-only process first, then run by a worker: the batched path."""
    count = spec["jobs"]
    done = anyio.Event()
    released = 0

    def on_release(event: JobReleased) -> None:
        nonlocal released
        released += 1
        if released == count:
            done.set()

    store = spec["store"]
    async with AsyncScheduler(store, role=SchedulerRole.scheduler) as scheduler:
        start = time.perf_counter()
        for _ in range(count):
            await scheduler.add_job(noop)
        add_seconds = time.perf_counter() - start

    async with AsyncScheduler(store, role=SchedulerRole.worker) as worker:
        worker.subscribe(on_release, JobReleased)
        start = time.perf_counter()
        await worker.start_in_background()
        with anyio.fail_after(600):
            await done.wait()
        run_seconds = time.perf_counter() - start

    return {"jobs_per_second": count / run_seconds, "adds_per_second": count / add_seconds}


async def floor(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    start = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        for _ in range(count):
            task_group.start_soon(noop)
    elapsed = time.perf_counter() - start
    return {"jobs_per_second": count / elapsed, "seconds": elapsed}


_latenesses: list[float] = []


async def measure_lateness() -> None:
    job = current_job.get()
    assert job is not None
    assert job.scheduled_fire_time is not None
    _latenesses.append(time.time() - job.scheduled_fire_time.timestamp())


async def lateness(spec: dict[str, Any]) -> dict[str, Any]:
    count, seconds = spec["schedules"], spec["seconds"]
    spread = spec.get("spread", True)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    async with AsyncScheduler(spec.get("store")) as scheduler:
        for index in range(count):
            offset = timedelta(seconds=index / count) if spread else timedelta(0)
            await scheduler.add_schedule(
                measure_lateness,
                IntervalTrigger(
                    seconds=1,
                    start_time=start + offset,
                    end_time=start + offset + timedelta(seconds=seconds - 1),
                ),
            )
        await scheduler.start_in_background()
        await anyio.sleep((start - datetime.now(timezone.utc)).total_seconds() + seconds + 1)
        with anyio.fail_after(60):
            while len(_latenesses) < count * seconds:  # noqa: ASYNC110 (bench only)
                await anyio.sleep(0.1)

    return {"fires_per_second": len(_latenesses) / seconds, **lateness_summary(_latenesses)}


async def scale(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["schedules"]
    rng = random.Random(42)
    now = datetime.now(timezone.utc)
    base_rss = rss_bytes()
    async with AsyncScheduler(spec.get("store")) as scheduler:
        await scheduler.start_in_background()
        start = time.perf_counter()
        for index in range(count):
            run_time = now + timedelta(days=30 + rng.random() * 3650)
            await scheduler.add_schedule(noop, DateTrigger(run_time), id=f"s{index}")
        add_seconds = time.perf_counter() - start
        rss_per_schedule = (rss_bytes() - base_rss) / count

        fired = anyio.Event()
        fire_times: list[float] = []

        async def due() -> None:
            fire_times.append(time.time())
            fired.set()

        due_at = datetime.now(timezone.utc) + timedelta(seconds=1)
        await scheduler.add_schedule(due, DateTrigger(due_at), id="due")
        with anyio.fail_after(120):
            await fired.wait()

    return {
        "add_seconds": add_seconds,
        "add_microseconds_per_schedule": add_seconds / count * 1e6,
        "rss_bytes_per_schedule": rss_per_schedule,
        "due_lateness_ms": (fire_times[0] - due_at.timestamp()) * 1000,
    }


CASES = {
    "throughput": throughput,
    "backlog": backlog,
    "floor": floor,
    "lateness": lateness,
    "scale": scale,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = anyio.run(CASES[spec["case"]], spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
