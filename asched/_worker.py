"""Worker: acquires jobs from the data store, runs them, and releases their results."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from logging import Logger
from typing import Any
from uuid import UUID

import anyio
from anyio import CancelScope, create_task_group, get_cancelled_exc_class
from anyio.abc import TaskGroup, TaskStatus

from ._clock import Clock
from ._enums import JobOutcome
from ._structures import Job, JobResult
from ._wakeup import Wakeup
from .datastores.base import DataStore
from .executors.base import JobExecutor, job_starting

current_job: ContextVar[Job | None] = ContextVar("asched_current_job", default=None)
"""The job being run by the current task (or thread, for the thread pool executor).

``current_job.get()`` inside a job function returns its :class:`Job` (its id, schedule id,
scheduled fire time...); outside a job, ``None``. Not set in process pool workers.
"""

#: the longest the worker sleeps without asking the data store for jobs (lost events)
MAX_IDLE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0

JobRuntimeResolver = Callable[[Job], Awaitable[tuple[Callable[..., Any], JobExecutor]]]


class _StartDeadlineMissed(Exception):
    """Raised by a job's start hook: the job got its thread too late, and did not run."""


class _NotStarted(Exception):
    """Raised by a job's start hook: the worker stopped waiting for it before it started."""


class _Start:
    """A job's start hook (:data:`asched.executors.base.job_starting`) and what it saw.

    Called by a pool executor in whatever thread the job starts in. Whether the job started
    or a stop gave it up first is settled by one ``dict.setdefault``, atomic under the GIL
    (a lock per job cost more than the rest of the hook).
    """

    __slots__ = ("_clock", "_deadline", "_fate", "started_at")

    def __init__(self, clock: Clock, deadline: datetime | None, handed_over_at: datetime):
        self._clock = clock
        self._deadline = deadline
        self._fate: dict[str, bool] = {}  # "started": True (it started) or False (given up)
        #: when the job started; until it does, when it was handed to the executor
        self.started_at = handed_over_at

    def __call__(self) -> None:
        now = self._clock.now()
        if not self._fate.setdefault("started", True):
            raise _NotStarted
        self.started_at = now
        if self._deadline is not None and now > self._deadline:
            raise _StartDeadlineMissed

    def abandon(self) -> bool:
        """Give the job up unless it has started; return whether it had not."""
        return not self._fate.setdefault("started", False)


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed attempts (0.5 s doubling to 30 s)."""
    return min(MAX_BACKOFF_SECONDS, 0.5 * 2.0 ** min(failures, 10))


class Worker:
    """The worker half of a scheduler.

    Acquires jobs in batches (as many as it has free slots), runs each in a runner task, and
    hands results to a flusher task that releases them in batches. Leases of running jobs are
    extended every third of the lease duration.

    Runners are spawned one at a time: a runner whose job completes without suspending takes
    the next queued job itself, so a burst of quick jobs costs a task or two, while jobs that
    suspend each get a runner of their own (up to ``max_concurrent_jobs``). A runner that
    finds the queue empty waits to be woken for the next jobs instead of ending: waking a
    waiting task costs far less than spawning one, which counts when every job suspends
    (plain functions waiting for their thread).
    """

    def __init__(
        self,
        *,
        data_store: DataStore,
        identity: str,
        lease_duration: timedelta,
        max_concurrent_jobs: int,
        clock: Clock,
        logger: Logger,
        resolve_job_runtime: JobRuntimeResolver,
    ):
        self._data_store = data_store
        self._idle_seconds = min(MAX_IDLE_SECONDS, data_store.polling_interval or MAX_IDLE_SECONDS)
        self._identity = identity
        self._lease_duration = lease_duration
        self._max_concurrent_jobs = max_concurrent_jobs
        self._clock = clock
        self._logger = logger
        self._resolve_job_runtime = resolve_job_runtime
        self.wakeup = Wakeup()
        self.paused = False
        self._stopping = False
        self._cancel_jobs = False
        self._queue: deque[Job] = deque()
        self._jobs_in_progress = 0
        self._unreleased_job_ids: set[UUID] = set()
        self._pending_runners = 0  # spawned or woken, not yet running
        self._active_runners = 0
        self._idle_runners: deque[anyio.Event] = deque()
        self._runners_released = False
        self._runner_task_group: TaskGroup | None = None
        self._pending_results: list[JobResult] = []
        self._results_ready = anyio.Event()

    def stop(self, *, cancel_jobs: bool) -> None:
        """Stop acquiring jobs; cancel running ones if ``cancel_jobs``."""
        self._stopping = True
        if cancel_jobs:
            self._cancel_jobs = True
            if self._runner_task_group is not None:
                self._runner_task_group.cancel_scope.cancel()
        self.wakeup.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Process jobs until :meth:`stop`; then finish (or cancel) the running ones."""
        self._stopping = self._cancel_jobs = self._runners_released = False
        async with create_task_group() as task_group:
            release_runners = anyio.Event()
            runners_finished = anyio.Event()
            await task_group.start(self._host_runners, release_runners, runners_finished)
            task_group.start_soon(self._release_results_until_cancelled)
            task_group.start_soon(self._extend_leases_until_cancelled)
            task_status.started()

            await self._acquire_jobs_until_stopped()

            # Let the runners finish what they hold, then release the last results
            release_runners.set()
            await runners_finished.wait()
            with CancelScope(shield=True):
                try:
                    await self._release_pending_results()
                finally:
                    await self._return_unstarted_jobs()
            task_group.cancel_scope.cancel()

    async def _acquire_jobs_until_stopped(self) -> None:
        failures = 0
        wakeup = self.wakeup
        while not self._stopping:
            free_slots = self._max_concurrent_jobs - self._jobs_in_progress
            if self.paused or free_slots <= 0:
                await wakeup.sleep(self._clock, self._idle_seconds)
                continue

            wakeup.pending = False
            try:
                jobs = await self._data_store.acquire_jobs(
                    self._identity, self._lease_duration, free_slots
                )
                failures = 0
            except Exception:
                failures += 1
                delay = backoff_delay(failures)
                self._logger.exception("Error while acquiring jobs; retrying in %.1f s", delay)
                await wakeup.sleep(self._clock, delay)
                continue

            if jobs:
                self._dispatch(jobs)
                if len(jobs) == free_slots:
                    continue
            await wakeup.sleep(self._clock, self._idle_seconds)

    async def _host_runners(
        self,
        release: anyio.Event,
        finished: anyio.Event,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        try:
            async with create_task_group() as runner_task_group:
                self._runner_task_group = runner_task_group
                if self._cancel_jobs:
                    runner_task_group.cancel_scope.cancel()
                task_status.started()
                await release.wait()
                self._runners_released = True
                while self._idle_runners:
                    self._wake_idle_runner()  # to finish
        finally:
            self._runner_task_group = None
            finished.set()

    def _dispatch(self, jobs: list[Job]) -> None:
        self._queue.extend(jobs)
        self._jobs_in_progress += len(jobs)
        self._unreleased_job_ids.update(job.id for job in jobs)
        self._spawn_runner_if_needed()

    def _spawn_runner_if_needed(self) -> None:
        if (
            self._queue
            and not self._cancel_jobs  # stopping without waiting: nothing more starts
            and self._pending_runners == 0
            and self._active_runners < self._max_concurrent_jobs
            and self._runner_task_group is not None
        ):
            if self._idle_runners:
                self._wake_idle_runner()
            else:
                self._pending_runners += 1
                self._runner_task_group.start_soon(self._run_queued_jobs)

    async def _run_queued_jobs(self) -> None:
        queue = self._queue
        while True:
            self._pending_runners -= 1
            self._active_runners += 1
            try:
                while queue and not self._cancel_jobs:
                    job = queue.popleft()
                    self._spawn_runner_if_needed()
                    await self._run_job(job)
            finally:
                self._active_runners -= 1
            if self._runners_released:
                return

            # Idle: a runner kept waiting is cheaper to wake than a new one to spawn
            work_arrived = anyio.Event()
            self._idle_runners.append(work_arrived)
            try:
                await work_arrived.wait()
            except BaseException:
                if work_arrived.is_set():
                    self._pending_runners -= 1  # woken, but cancelled before resuming
                else:
                    self._idle_runners.remove(work_arrived)
                raise

    def _wake_idle_runner(self) -> None:
        self._pending_runners += 1
        self._idle_runners.popleft().set()

    async def _run_job(self, job: Job) -> None:
        try:
            func, executor = await self._resolve_job_runtime(job)
        except get_cancelled_exc_class():
            # a stop that cancels jobs, while the task was being looked up: the job has not
            # started, so it goes back to the store with the other unstarted ones
            self._queue.appendleft(job)
            raise
        except Exception as exc:
            self._logger.error("Cannot run job %s (task %r): %s", job.id, job.task_id, exc)
            self._finish(
                JobResult.for_job(
                    job, JobOutcome.error, finished_at=self._clock.now(), exception=exc
                )
            )
            return

        clock = self._clock
        started_at = clock.now()
        if job.start_deadline is not None and started_at > job.start_deadline:
            self._logger.warning(
                "Job %s (task %r) missed its start deadline by %s",
                job.id,
                job.task_id,
                started_at - job.start_deadline,
            )
            self._finish(
                JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=started_at)
            )
            return

        # A pool may keep the job waiting for a thread or process: it calls this hook when
        # the job really starts (see job_starting)
        start = start_token = None
        if executor.reports_job_start:
            start = _Start(clock, job.start_deadline, started_at)
            start_token = job_starting.set(start)
        token = current_job.set(job)
        try:
            return_value = await executor.run_job(func, job)
        except get_cancelled_exc_class():
            if start is not None:
                if start.abandon():
                    self._queue.appendleft(job)  # never started: back to the store
                    raise
                started_at = start.started_at
            self._finish(
                JobResult.for_job(
                    job, JobOutcome.cancelled, started_at=started_at, finished_at=clock.now()
                )
            )
            raise
        except _StartDeadlineMissed:
            assert start is not None
            assert job.start_deadline is not None
            got_one_at = start.started_at
            self._logger.warning(
                "Job %s (task %r) missed its start deadline by %s, waiting for a thread or "
                "process",
                job.id,
                job.task_id,
                got_one_at - job.start_deadline,
            )
            result = JobResult.for_job(
                job, JobOutcome.missed_start_deadline, finished_at=got_one_at
            )
        except Exception as exc:
            self._logger.exception("Job %s (task %r) raised an exception", job.id, job.task_id)
            if start is not None:
                started_at = start.started_at
            result = JobResult.for_job(
                job,
                JobOutcome.error,
                started_at=started_at,
                finished_at=clock.now(),
                exception=exc,
            )
        else:
            if start is not None:
                started_at = start.started_at
            result = JobResult.for_job(
                job,
                JobOutcome.success,
                started_at=started_at,
                finished_at=clock.now(),
                return_value=return_value,
            )
            self._logger.debug("Job %s (task %r) succeeded", job.id, job.task_id)
        finally:
            current_job.reset(token)
            if start_token is not None:
                job_starting.reset(start_token)

        self._finish(result)

    def _finish(self, result: JobResult) -> None:
        self._pending_results.append(result)
        self._results_ready.set()
        # A full worker stopped acquiring: it has room again. (A worker with room has already
        # taken all it could; new jobs and released limit slots wake it through events.)
        if self._jobs_in_progress >= self._max_concurrent_jobs:
            self.wakeup.wake()
        self._jobs_in_progress -= 1

    async def _release_pending_results(self) -> None:
        results, self._pending_results = self._pending_results, []
        if not results:
            return
        try:
            await self._data_store.release_jobs(self._identity, results)
        except BaseException:
            # Keep them for the next attempt; a store ignores releases it already applied
            self._pending_results[:0] = results
            raise
        for result in results:
            self._unreleased_job_ids.discard(result.job_id)

    async def _return_unstarted_jobs(self) -> None:
        """Give the jobs acquired but never started back to the store, queued again.

        Those are what a stop that cancels jobs left in the queue, including what an
        acquisition in flight when the stop came took after the runners had ended.
        """
        jobs = list(self._queue)
        self._queue.clear()
        if not jobs:
            return
        try:
            await self._data_store.return_jobs(self._identity, jobs)
        except Exception:
            # their leases run out, and cleanup reports them abandoned: never lost silently
            self._logger.exception(
                "Could not give %d unstarted jobs back to the data store", len(jobs)
            )
        self._jobs_in_progress -= len(jobs)
        self._unreleased_job_ids.difference_update(job.id for job in jobs)

    async def _release_results_until_cancelled(self) -> None:
        failures = 0
        while True:
            await self._results_ready.wait()
            self._results_ready = anyio.Event()
            try:
                await self._release_pending_results()
                failures = 0
            except Exception:
                failures += 1
                delay = backoff_delay(failures)
                self._logger.exception("Error releasing job results; retrying in %.1f s", delay)
                await self._clock.sleep(delay)
                self._results_ready.set()

    async def _extend_leases_until_cancelled(self) -> None:
        interval = self._lease_duration.total_seconds() / 3
        while True:
            await self._clock.sleep(interval)
            if self._unreleased_job_ids:
                try:
                    await self._data_store.extend_acquired_leases(
                        self._identity, set(self._unreleased_job_ids), self._lease_duration
                    )
                except Exception:
                    self._logger.exception("Error extending the leases of running jobs")
