"""asched's side of the scheduler benchmarks; runs in a fresh interpreter per case.

``python -m benchmarks.asched_cases '<json spec>'`` prints one JSON object. Cases:

- ``throughput``: ``jobs`` no-op jobs (``kind`` async or sync) added one by one, timed from the
  first add until the last ``JobReleased``; ``store`` is a data store URL.
- ``blocking``: ``jobs`` no-op plain functions added one by one from plain code through the
  blocking ``Scheduler`` (APScheduler 3's BackgroundScheduler use), timed the same way, with
  the time each ``add_job`` call took.
- ``floor``: an anyio task group spawning ``jobs`` no-op tasks (the floor for any scheduler).
- ``lateness``: ``schedules`` schedules firing every second for ``seconds`` s, their start
  times spread over the second; lateness = job start - scheduled fire time.
- ``scale``: ``schedules`` far-future schedules at random times: time to add them, RSS per
  schedule, then how late one schedule due in a second fires among them.
"""

from __future__ import annotations

import inspect
import json
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio

from asched import AsyncScheduler, JobOutcome, Scheduler, SchedulerRole, current_job
from asched.events import JobReleased
from asched.triggers import DateTrigger, IntervalTrigger
from benchmarks.measures import lateness_summary, rss_bytes, time_blocking_adds


async def noop() -> None:
    pass


def sync_noop() -> None:
    pass


class ReleaseCounter:
    """A ``JobReleased`` subscriber that calls ``done()`` once ``count`` jobs are released."""

    def __init__(self, count: int, done: Callable[[], object]):
        self.count, self.done = count, done
        self.released = self.failed = 0

    def __call__(self, event: JobReleased) -> None:
        self.released += 1
        self.failed += event.outcome is not JobOutcome.success
        if self.released == self.count:
            self.done()


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    func = noop if spec["kind"] == "async" else sync_noop
    expiration = spec.get("result_expiration_time", 0)
    done = anyio.Event()
    on_release = ReleaseCounter(count, done.set)

    store = spec.get("store")
    processes = spec.get("processes", 0)
    async with AsyncExitStack() as stack:
        scheduler = await stack.enter_async_context(
            AsyncScheduler(
                store,
                max_concurrent_jobs=spec.get("workers", 100),
                role=SchedulerRole.scheduler if processes else SchedulerRole.both,
            )
        )
        if processes:
            # workers in other processes; their JobReleased events come through the broker
            assert store is not None, "worker processes need a shared store"
            go = await stack.enter_async_context(worker_processes(store, processes))
            await scheduler.configure_task(func)
            await go()
        else:
            await scheduler.start_in_background()
            await scheduler.run_job(func)  # registers the task and warms up the executor
        scheduler.subscribe(on_release, JobReleased)

        async def produce(jobs: int) -> None:
            for _ in range(jobs):
                await scheduler.add_job(func, result_expiration_time=expiration)

        # ``producers`` tasks add jobs concurrently, as the requests of a web application would
        producers = spec.get("producers", 1)
        start, cpu_start = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as task_group:
            for index in range(producers):
                task_group.start_soon(produce, count // producers + (index < count % producers))
        added = time.perf_counter()
        with anyio.fail_after(600):
            await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    return {
        "jobs_per_second": count / elapsed,
        "add_seconds": added - start,
        "seconds": elapsed,
        # CPU time of this process per job: steadier than wall time on a shared machine
        "cpu_us_per_job": cpu / count * 1e6,
        "failed": on_release.failed,
    }


async def backlog(spec: dict[str, Any]) -> dict[str, Any]:
    """Jobs added by a scheduler-only process first, then run by a worker: the batched path.

    With ``processes`` (N ≥ 1), N worker processes run the backlog instead of one in this
    process (their ``JobReleased`` events reach this one through the store's event broker).
    """
    count = spec["jobs"]
    done = anyio.Event()
    on_release = ReleaseCounter(count, done.set)
    store = spec["store"]
    processes = spec.get("processes", 0)
    async with AsyncScheduler(store, role=SchedulerRole.scheduler) as scheduler:
        start = time.perf_counter()
        for _ in range(count):
            await scheduler.add_job(noop)
        add_seconds = time.perf_counter() - start
        if processes:
            scheduler.subscribe(on_release, JobReleased)
            async with worker_processes(store, processes) as go:
                start = time.perf_counter()
                await go()
                with anyio.fail_after(600):
                    await done.wait()
                run_seconds = time.perf_counter() - start
            return {"jobs_per_second": count / run_seconds, "adds_per_second": count / add_seconds}

    async with AsyncScheduler(store, role=SchedulerRole.worker) as worker:
        worker.subscribe(on_release, JobReleased)
        start = time.perf_counter()
        await worker.start_in_background()
        with anyio.fail_after(600):
            await done.wait()
        run_seconds = time.perf_counter() - start

    return {"jobs_per_second": count / run_seconds, "adds_per_second": count / add_seconds}


@asynccontextmanager
async def worker_processes(store: str, count: int) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Start ``count`` paused worker processes on ``store``; yield a function that resumes them.

    The processes start (interpreter, imports, connections) before the timing starts, and are
    stopped on exit.
    """
    spec = json.dumps({"case": "worker", "store": store})
    children = [
        await anyio.open_process(
            [sys.executable, "-m", "benchmarks.asched_cases", spec], stderr=None
        )
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
    """A paused worker-only scheduler that resumes on a ``go`` line and stops on ``stop``."""
    async with AsyncScheduler(spec["store"], role=SchedulerRole.worker) as scheduler:
        await scheduler.start_in_background(paused=True)
        print("ready", flush=True)
        for line in ("go", "stop"):
            received = await anyio.to_thread.run_sync(sys.stdin.readline)
            assert received.strip() == line, received
            if line == "go":
                await scheduler.resume()
    return {}


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
    run_times = [now + timedelta(days=30 + rng.random() * 3650) for _ in range(count)]
    base_rss = rss_bytes()  # after the run times: they are the benchmark's, not the store's
    store = spec.get("store")
    base_redis_memory = _redis_used_memory(store)
    async with AsyncScheduler(store) as scheduler:
        await scheduler.start_in_background()

        async def produce(indexes: range) -> None:
            for index in indexes:
                trigger = DateTrigger(run_times[index])
                await scheduler.add_schedule(noop, trigger, id=f"s{index}")

        # ``producers`` concurrent adding tasks, each adding its share of the schedules
        producers = spec.get("producers", 1)
        start = time.perf_counter()
        async with anyio.create_task_group() as task_group:
            for index in range(producers):
                task_group.start_soon(produce, range(index, count, producers))
        add_seconds = time.perf_counter() - start
        rss_per_schedule = (rss_bytes() - base_rss) / count
        redis_memory = _redis_used_memory(store)

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
        "redis_bytes_per_schedule": (
            None
            if redis_memory is None or base_redis_memory is None
            else (redis_memory - base_redis_memory) / count
        ),
    }


def _redis_used_memory(store: str | None) -> int | None:
    """Return Redis's ``used_memory`` if ``store`` is a Redis URL (``None`` otherwise)."""
    if store is None or not store.startswith("redis://"):
        return None
    import redis

    client = redis.Redis.from_url(store.split("?")[0])
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def blocking(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["jobs"]
    done = threading.Event()
    with Scheduler(max_concurrent_jobs=spec.get("workers", 100)) as scheduler:
        scheduler.start_in_background()
        scheduler.run_job(sync_noop)  # registers the task and warms up the executor
        scheduler.subscribe(ReleaseCounter(count, done.set), JobReleased)
        return time_blocking_adds(
            lambda: scheduler.add_job(sync_noop, result_expiration_time=0), count, done
        )


CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "throughput": throughput,
    "blocking": blocking,
    "backlog": backlog,
    "floor": floor,
    "lateness": lateness,
    "scale": scale,
    "worker": worker,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    case = CASES[spec["case"]]
    result = anyio.run(case, spec) if inspect.iscoroutinefunction(case) else case(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
