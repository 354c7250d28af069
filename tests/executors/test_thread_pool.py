"""ThreadPoolJobExecutor through the scheduler: growth, its bound, outcomes, cancellation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from asched import AsyncScheduler, JobOutcome, Scheduler
from asched.events import JobAdded, JobReleased
from asched.executors import ThreadPoolJobExecutor
from asched.triggers import DateTrigger
from tests.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def scheduler(clock: FakeClock) -> AsyncIterator[AsyncScheduler]:
    executor = ThreadPoolJobExecutor(max_workers=3)
    async with AsyncScheduler(clock=clock, job_executors={"threadpool": executor}) as scheduler:
        await scheduler.start_in_background()
        yield scheduler


class Occupancy:
    """Counts the functions running at once; each waits until ``release`` is set."""

    def __init__(self) -> None:
        self.running = self.peak = self.started = 0
        self.release = threading.Event()
        self._changed = threading.Condition()

    def hold(self) -> int:
        with self._changed:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
            self._changed.notify_all()
        try:
            if not self.release.wait(30):
                raise TimeoutError("never released")
            return threading.get_ident()
        finally:
            with self._changed:
                self.running -= 1

    async def wait_until_started(self, count: int) -> None:
        def wait() -> None:
            with self._changed:
                if not self._changed.wait_for(lambda: self.started >= count, timeout=10):
                    raise TimeoutError(f"{self.started} of {count} functions started")

        await anyio.to_thread.run_sync(wait)


def join_job_threads() -> None:
    """Wait for the asyncio thread pool's threads, which exit once their queue is drained."""
    for thread in threading.enumerate():
        if thread.name.startswith("asched-job"):
            thread.join(10)


async def test_the_pool_grows_to_max_workers_so_blocked_functions_run_side_by_side(
    scheduler: AsyncScheduler,
) -> None:
    barrier = threading.Barrier(3, timeout=30)

    def meet() -> int:
        barrier.wait()  # breaks (and the job fails) unless all three run at once
        return threading.get_ident()

    job_ids = [await scheduler.add_job(meet) for _ in range(3)]
    results = [await scheduler.get_job_result(job_id) for job_id in job_ids]

    assert [result.outcome for result in results] == [JobOutcome.success] * 3
    assert len({result.return_value for result in results}) == 3


async def test_the_default_pool_runs_as_many_jobs_at_once_as_the_worker_takes(
    clock: FakeClock,
) -> None:
    # more than a fixed pool size (40 before): every sync job a worker takes starts at once,
    # none waits for a thread while another worker could have run it
    count = 45
    barrier = threading.Barrier(count, timeout=20)

    def meet() -> int:
        barrier.wait()  # breaks (and the job fails) unless all of them run at once
        return threading.get_ident()

    async with AsyncScheduler(clock=clock, max_concurrent_jobs=count) as scheduler:
        await scheduler.start_in_background()
        job_ids = [await scheduler.add_job(meet) for _ in range(count)]
        results = [await scheduler.get_job_result(job_id) for job_id in job_ids]

    assert [result.outcome for result in results] == [JobOutcome.success] * count
    executor = scheduler.job_executors["threadpool"]
    assert isinstance(executor, ThreadPoolJobExecutor)
    assert executor.max_workers == count


async def test_no_more_than_max_workers_functions_run_at_once(scheduler: AsyncScheduler) -> None:
    occupancy = Occupancy()
    job_ids = [await scheduler.add_job(occupancy.hold) for _ in range(5)]
    await occupancy.wait_until_started(3)
    occupancy.release.set()
    results = [await scheduler.get_job_result(job_id) for job_id in job_ids]

    assert [result.outcome for result in results] == [JobOutcome.success] * 5
    assert occupancy.peak == 3


async def test_many_quick_functions_all_report_their_outcomes(scheduler: AsyncScheduler) -> None:
    def square(number: int) -> int:
        if number % 7 == 0:
            raise ValueError(f"{number} is a multiple of 7")
        return number * number

    job_ids = [await scheduler.add_job(square, args=[number]) for number in range(1, 201)]
    results = [await scheduler.get_job_result(job_id) for job_id in job_ids]

    for number, result in enumerate(results, start=1):
        if number % 7 == 0:
            assert result.outcome is JobOutcome.error
            assert str(result.exception) == f"{number} is a multiple of 7"
        else:
            assert (result.outcome, result.return_value) == (JobOutcome.success, number * number)


async def test_a_function_raising_stop_iteration_fails_its_job(scheduler: AsyncScheduler) -> None:
    def exhausted() -> int:
        return next(iter([]))

    job_id = await scheduler.add_job(exhausted)
    with anyio.fail_after(10):
        result = await scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, RuntimeError)
    assert isinstance(result.exception.__cause__, StopIteration)


async def test_jobs_still_waiting_for_a_thread_go_back_to_the_store_when_it_stops(
    clock: FakeClock,
) -> None:
    # they never started: like jobs acquired but not started, another worker may run them
    occupancy = Occupancy()
    executor = ThreadPoolJobExecutor(max_workers=1)
    async with AsyncScheduler(clock=clock, job_executors={"threadpool": executor}) as scheduler:
        await scheduler.start_in_background()
        job_ids = [await scheduler.add_job(occupancy.hold) for _ in range(3)]
        await occupancy.wait_until_started(1)
        await scheduler.stop(wait=False)
        with anyio.fail_after(10):
            await scheduler.wait_until_stopped()
        first = await scheduler.get_job_result(job_ids[0], wait=False)
        queued = await scheduler.get_jobs()
    occupancy.release.set()
    await anyio.to_thread.run_sync(join_job_threads)

    assert first.outcome is JobOutcome.cancelled
    assert [job.id for job in queued] == job_ids[1:]
    assert [job.acquired_by for job in queued] == [None, None]
    assert occupancy.started == 1  # the queued two never ran


async def test_a_job_starts_when_it_gets_a_thread_and_misses_its_deadline_waiting(
    clock: FakeClock,
) -> None:
    # the deadline holds until the job really starts, and started_at says when that was
    occupancy = Occupancy()
    executor = ThreadPoolJobExecutor(max_workers=1)
    released: list[JobReleased] = []
    both_released = anyio.Event()

    def on_release(event: JobReleased) -> None:
        released.append(event)
        if len(released) == 3:
            both_released.set()

    async with AsyncScheduler(clock=clock, job_executors={"threadpool": executor}) as scheduler:
        scheduler.subscribe(on_release, JobReleased)
        await scheduler.start_in_background()
        first = await scheduler.add_job(occupancy.hold)
        second = await scheduler.add_job(occupancy.hold)  # no deadline: it waits, then runs
        await occupancy.wait_until_started(1)
        # a fire with 5 s of grace, queued behind them
        queued = anyio.Event()
        scheduler.subscribe(lambda event: queued.set(), JobAdded, one_shot=True)
        await scheduler.add_schedule(
            occupancy.hold, DateTrigger(clock.now()), id="late", misfire_grace_time=5
        )
        with anyio.fail_after(10):
            await queued.wait()
        clock.advance(10)
        occupancy.release.set()
        with anyio.fail_after(10):
            await both_released.wait()
            first_result = await scheduler.get_job_result(first)
            second_result = await scheduler.get_job_result(second)
    await anyio.to_thread.run_sync(join_job_threads)

    assert first_result.started_at == clock.now() - timedelta(seconds=10)
    assert second_result.started_at == clock.now()  # when it got the thread
    [late] = [event for event in released if event.schedule_id == "late"]
    assert late.outcome is JobOutcome.missed_start_deadline
    assert occupancy.started == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_executor_serves_schedulers_on_one_loop_and_on_another(
    clock: FakeClock,
) -> None:
    executor = ThreadPoolJobExecutor(max_workers=2)
    executors = {"threadpool": executor}
    async with AsyncScheduler(clock=clock, job_executors=executors) as first:
        await first.start_in_background()
        async with AsyncScheduler(clock=clock, job_executors=executors) as second:
            await second.start_in_background()
            assert await second.run_job(threading.get_ident) != threading.get_ident()
        # the second one's exit left the pool to the first
        assert await first.run_job(threading.get_ident) != threading.get_ident()

        # a blocking scheduler runs its own event loop in a thread of its own
        with Scheduler(job_executors=executors) as blocking:
            blocking.start_in_background()
            answer = await anyio.to_thread.run_sync(lambda: blocking.run_job(sum, args=[[20, 22]]))
        assert answer == 42
        assert await first.run_job(sum, args=[[1, 2]]) == 3


async def test_a_function_calling_sys_exit_fails_its_job_and_the_scheduler_goes_on(
    scheduler: AsyncScheduler,
) -> None:
    def leave() -> None:
        sys.exit(3)

    job_id = await scheduler.add_job(leave)
    with anyio.fail_after(10):
        result = await scheduler.get_job_result(job_id)
        assert await scheduler.run_job(sum, args=[[1, 2]]) == 3

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, RuntimeError)
    assert isinstance(result.exception.__cause__, SystemExit)


THREAD_LIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, threading, time
    import anyio
    from asched import AsyncScheduler

    runs = []

    def work(number):
        time.sleep(0.2)
        runs.append(number)

    def address_space():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    async def main():
        async with AsyncScheduler(max_concurrent_jobs=12) as scheduler:
            await scheduler.start_in_background()
            await scheduler.run_job(work, args=[-1])  # one job thread, at the usual size
            # room for about two more threads of this stack size: the rest cannot start
            threading.stack_size(256 * 1024 * 1024)
            limit = address_space() + 700 * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
            job_ids = [await scheduler.add_job(work, args=[n]) for n in range(12)]
            results = [await scheduler.get_job_result(job_id) for job_id in job_ids]
        print(sorted(result.outcome.value for result in results), sorted(runs))

    anyio.run(main)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="limits the address space through /proc")
def test_jobs_run_on_the_threads_there_are_when_no_more_can_start() -> None:
    # Threads that cannot start (a process or memory limit) must not turn into jobs reported
    # failed that then run anyway: the jobs wait for the threads that run
    completed = subprocess.run(
        [sys.executable, "-c", THREAD_LIMIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    outcomes, runs = completed.stdout.strip().split("] [")
    assert outcomes == "[" + ", ".join(["'success'"] * 12)
    assert runs == ", ".join(str(number) for number in range(-1, 12)) + "]"
    assert completed.stderr.count("Could not start another job thread") == 1
