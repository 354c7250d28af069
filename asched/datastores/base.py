"""The DataStore interface: where schedules, jobs and results live, and where schedulers meet.

Any number of schedulers, in any number of processes, may share one persistent data store.
The store is the only place they coordinate, so every operation that hands out work
(:meth:`DataStore.acquire_schedules`, :meth:`DataStore.acquire_jobs`) is atomic, gives each
item to one caller only, and records a lease (``acquired_by``, ``acquired_until``) that
expires if the caller vanishes. Operations take and return batches: one round trip per
batch, never one per item.

Times are aware datetimes. "Now" is always ``clock.now()`` of the clock given to
:meth:`DataStore.start`, so tests can control time.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from logging import Logger, getLogger
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import anyio
import attrs
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._exceptions import DeserializationError, SerializationError, describe_error
from .._structures import Job, JobResult, Schedule, ScheduleUpdate, Task
from ..eventbrokers.base import EventBroker
from ..events import (
    Event,
    JobAcquired,
    JobAdded,
    JobReleased,
    ScheduleAdded,
    ScheduleRemoved,
    ScheduleUpdated,
)
from ..serializers.base import Serializer
from ..serializers.pickle import PickleSerializer

_T = TypeVar("_T")


class DataStore(ABC):
    """Persistence and coordination for tasks, schedules, jobs and job results.

    Events: the store publishes, through the event broker given to :meth:`start` and only
    after the change is durable, ``TaskAdded``/``TaskUpdated``/``TaskRemoved``,
    ``ScheduleAdded``/``ScheduleUpdated``/``ScheduleRemoved``, ``JobAdded``,
    ``JobAcquired`` and ``JobReleased`` as described on each method.
    """

    #: Seconds between polls of an idle scheduler or worker. Stores whose event broker tells
    #: other processes about changes can leave it ``None`` (schedulers then poll rarely, as a
    #: safety net); stores with no such broker (SQLite) set it to bound the delay.
    polling_interval: float | None = None

    #: what :attr:`jobs_held_back` returns; stores that can tell set it in acquire_jobs
    _jobs_held_back = True

    @property
    def jobs_held_back(self) -> bool:
        """Whether queued jobs may be waiting for a ``max_running_jobs`` slot.

        Workers ask the store for jobs again when a job is released only while this is true
        (a release is what frees such a slot). It reflects this store object's last
        :meth:`acquire_jobs` call. It stays true (correct for any store) unless the store
        records, in ``_jobs_held_back``, that its last acquisition held nothing back.
        """
        return self._jobs_held_back

    def default_event_broker(self) -> EventBroker | None:
        """Return the event broker for a scheduler given this store and no broker.

        ``None`` (this default) means the local broker. A store whose server can carry events
        between processes may return a broker for them, on a channel only schedulers sharing
        this store's data listen to, so that they wake each other at once instead of at
        their next poll.
        """
        return None

    @abstractmethod
    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Open connections and create the schema as needed.

        Everything opened is closed when ``exit_stack`` unwinds. Several schedulers may start
        on the same store concurrently (schema creation must be idempotent).

        :param exit_stack: the scheduler's exit stack
        :param event_broker: where to publish events
        :param logger: where to log
        :param clock: the time source for every "now" this store needs
        """

    #
    # Tasks
    #

    @abstractmethod
    async def add_task(self, task: Task) -> None:
        """Add a task, or replace the definition of the task with the same id.

        Publishes ``TaskAdded`` (new) or ``TaskUpdated`` (replaced). Running job counts of a
        replaced task are kept.
        """

    @abstractmethod
    async def remove_task(self, task_id: str) -> None:
        """Remove a task. Publishes ``TaskRemoved``.

        :raises ~asched.TaskLookupError: if there is no such task
        """

    @abstractmethod
    async def get_task(self, task_id: str) -> Task:
        """Return the task with the given id.

        :raises ~asched.TaskLookupError: if there is no such task
        """

    @abstractmethod
    async def get_tasks(self) -> list[Task]:
        """Return all tasks, sorted by id."""

    #
    # Schedules
    #

    @abstractmethod
    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; ``conflict_policy`` decides what happens if its id exists.

        ``do_nothing`` keeps the stored schedule; ``replace`` overwrites it entirely, lease
        included (a scheduler processing the old one then loses its lease, and its update is
        dropped), at the stored revision plus one; ``exception`` raises. A new schedule
        starts at revision 0 (whatever ``schedule.revision`` says). Publishes
        ``ScheduleAdded`` for a new schedule and ``ScheduleUpdated`` for a replaced one.

        :raises ~asched.ConflictingIdError: with ``ConflictPolicy.exception`` if the id exists
        :raises ~asched.SerializationError: if a persistent store cannot serialize the args
        """

    @abstractmethod
    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        """Rewrite a stored schedule if nobody changed it since it was read, atomically.

        ``schedule.revision`` is the revision the caller read. If the stored schedule is at
        another revision (an update or a replacing ``add_schedule`` came in between), nothing
        is written and :exc:`~asched.StaleScheduleError` is raised: the caller reads the
        schedule again and reapplies its change, so no acknowledged change is lost. Never
        creates a schedule: one removed in the meantime stays removed (``None``).

        Without ``rescheduled_from``, everything of ``schedule`` is written except its
        progress: ``next_fire_time``, ``next_run_time`` and ``last_fire_time`` stay as stored,
        so an update racing a scheduler that fires the schedule can neither fire a fire time
        twice nor skip one.

        With ``rescheduled_from`` (the schedule as read, whose fire times ``schedule``'s were
        worked out from), the progress of ``schedule`` is written too, and only if the stored
        ``next_fire_time`` and ``last_fire_time`` are still those of ``rescheduled_from``;
        otherwise (a scheduler fired it meanwhile) :exc:`~asched.StaleScheduleError`.

        Either way the stored revision goes up by one and the lease is cleared, as by
        ``add_schedule`` with ``ConflictPolicy.replace`` (a scheduler processing the schedule
        loses its update, and the stored fire time fires once, later). Publishes
        ``ScheduleUpdated``.

        :return: the schedule as stored now, or ``None`` if there is no schedule of its id
        :raises ~asched.StaleScheduleError: if the schedule changed since it was read
        :raises ~asched.SerializationError: if a persistent store cannot serialize the args
        """

    @abstractmethod
    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove the schedules with the given ids; unknown ids are ignored.

        Jobs the schedules already created are kept. Publishes ``ScheduleRemoved`` (with
        ``finished``) for each schedule removed.
        """

    @abstractmethod
    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        """Return the schedules with the given ids (all if ``None``), sorted by id.

        Unknown ids are left out. A schedule that cannot be deserialized is left out and
        reported with ``ScheduleDeserializationFailed`` (and a log message).
        """

    @abstractmethod
    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """Lease up to ``limit`` due schedules to ``scheduler_id``, earliest first.

        A schedule is due when it is not paused, ``next_run_time <= now``, and it is not
        leased (or its lease has expired). Each due schedule goes to one caller only, however
        many schedulers call this concurrently. The returned schedules carry the new lease in
        ``acquired_by``/``acquired_until`` (``now + lease_duration``).
        """

    @abstractmethod
    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply what a scheduler decided for the schedules it acquired, atomically.

        For each update whose schedule is still leased by ``scheduler_id``: add
        ``update.jobs`` (``JobAdded`` each); for each of ``update.missed_jobs`` keep a
        ``missed_start_deadline`` result if its ``result_expiration_time`` is positive and
        publish ``JobReleased``; then, if ``next_fire_time`` is ``None``, remove the schedule
        (``ScheduleRemoved(finished=True)``), else store the new fire/run times, clear the
        lease and publish ``ScheduleUpdated``.

        An update for a schedule that is no longer leased by ``scheduler_id`` (its lease was
        taken over, or it was replaced or removed meanwhile) is dropped entirely, its jobs
        included: this is what makes each fire time yield at most one job. All updates of a
        call are applied in one transaction where the store has them.
        """

    @abstractmethod
    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time at which :meth:`acquire_schedules` may return something.

        That is the earliest ``next_run_time`` of an unpaused schedule that is not leased, or
        the lease expiry of a leased one if earlier; ``None`` if there are no unpaused
        schedules. The result may be in the past.
        """

    #
    # Jobs
    #

    @abstractmethod
    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Add jobs for workers to run. Publishes ``JobAdded`` for each.

        :raises ~asched.SerializationError: if a persistent store cannot serialize the args
        """

    @abstractmethod
    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return the queued and running jobs with the given ids (all if ``None``).

        Sorted by creation time; unknown ids are left out. Finished jobs are not jobs any more
        (see :meth:`get_job_result`).
        """

    @abstractmethod
    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Job]:
        """Lease up to ``limit`` queued jobs to the worker ``scheduler_id``, oldest first.

        Each job goes to one worker only. A job is not handed out while its task or its
        schedule already has ``max_running_jobs`` jobs acquired (by any worker): it waits in
        the queue for a free slot. A job whose ``start_deadline`` has passed is not handed
        out but released right here as ``missed_start_deadline`` (result kept if its
        ``result_expiration_time`` is positive, ``JobReleased`` published). Publishes
        ``JobAcquired`` for each job returned. The lease is recorded in the store (and shown
        by :meth:`get_jobs`); the returned objects need not carry it.

        Fewer than ``limit`` jobs come back only when no more can be handed out now: jobs held
        back by a limit, past their deadline or unreadable take no places in ``limit`` from
        the jobs queued behind them (a worker given fewer than it asked for waits for news).
        """

    @abstractmethod
    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish jobs that ``scheduler_id`` acquired, with their results, in one batch.

        Deletes each job, frees its task/schedule running slot, keeps the result if the job's
        ``result_expiration_time`` is positive, and publishes ``JobReleased`` (with the
        exception's type, message and traceback for ``error``). Results for jobs that are not
        (or no longer) acquired by ``scheduler_id`` are ignored: an abandoned job is released
        once only.

        Persistent stores never fail a release over serialization: an exception they cannot
        serialize is kept as a :class:`~asched.RemoteJobError`, and a return value they cannot
        serialize turns the result into outcome ``error`` with a ``SerializationError``.
        """

    @abstractmethod
    async def return_jobs(self, scheduler_id: str, jobs: Sequence[Job]) -> None:
        """Give back jobs that ``scheduler_id`` acquired and never started, in one batch.

        Each is queued again as it was: in its place in the order (by creation), acquirable
        by any scheduler at once, its task/schedule running slot freed, its start deadline
        still its own. Jobs not (or no longer) acquired by ``scheduler_id`` are ignored.
        Publishes ``JobAdded`` again for each job returned, to wake workers. A worker that
        stops without waiting (``stop(wait=False)``) returns the jobs it had not started, so
        that another worker runs them.
        """

    @abstractmethod
    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return the kept, unexpired result of a job, or ``None``.

        Reading a result does not delete it; it goes when it expires.
        """

    @abstractmethod
    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Push the leases of jobs ``scheduler_id`` is running to ``now + lease_duration``.

        Jobs no longer acquired by ``scheduler_id`` are ignored.
        """

    @abstractmethod
    async def cleanup(self) -> None:
        """Housekeeping, run periodically by schedulers.

        Deletes expired results; releases jobs whose lease expired (their worker vanished) as
        ``abandoned``, once, with an event and a kept result like any release; and releases
        queued jobs whose start deadline passed while they waited for a ``max_running_jobs``
        slot as ``missed_start_deadline``.
        """


class ReleasedJob(NamedTuple):
    """The fields of a job that its ``JobReleased`` event carries.

    A store that gets a released job back as a record can build the event from these without
    restoring the whole job (its arguments need not be deserialized to be deleted).
    """

    id: UUID
    task_id: str
    schedule_id: str | None
    scheduled_fire_time: datetime | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ReleasedJob:
        """Take the fields from a job record as stored in JSON (its id as text)."""
        return cls(
            UUID(record["id"]),
            record["task_id"],
            record["schedule_id"],
            record["scheduled_fire_time"],
        )


def job_released_event(
    scheduler_id: str, job: Job | ReleasedJob, result: JobResult
) -> JobReleased:
    """Build the ``JobReleased`` event for ``job`` ending with ``result``.

    Shared by all data stores so that every store reports exceptions the same way.
    """
    exception = result.exception
    if exception is None:
        return JobReleased(
            timestamp=result.finished_at,
            job_id=job.id,
            scheduler_id=scheduler_id,
            task_id=job.task_id,
            schedule_id=job.schedule_id,
            scheduled_fire_time=job.scheduled_fire_time,
            outcome=result.outcome,
            started_at=result.started_at,
        )

    exc_type = type(exception)
    return JobReleased(
        timestamp=result.finished_at,
        job_id=job.id,
        scheduler_id=scheduler_id,
        task_id=job.task_id,
        schedule_id=job.schedule_id,
        scheduled_fire_time=job.scheduled_fire_time,
        outcome=result.outcome,
        started_at=result.started_at,
        exception_type=f"{exc_type.__module__}.{exc_type.__qualname__}",
        exception_message=str(exception),
        exception_traceback="".join(
            traceback.format_exception(exc_type, exception, exception.__traceback__)
        ),
    )


def schedule_written_event(
    schedule: Schedule, *, added: bool = False
) -> ScheduleAdded | ScheduleUpdated:
    """Return the event of storing ``schedule``: new (``added``) or replacing one."""
    event_class = ScheduleAdded if added else ScheduleUpdated
    return event_class(
        schedule_id=schedule.id, task_id=schedule.task_id, next_fire_time=schedule.next_fire_time
    )


def schedule_release_events(
    scheduler_id: str,
    update: ScheduleUpdate,
    task_id: str,
    missed: Iterable[tuple[Job, JobResult]],
) -> list[Event]:
    """Return the events of applying ``update`` (see :meth:`DataStore.release_schedules`)."""
    events: list[Event] = [
        JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
        for job in update.jobs
    ]
    events.extend(job_released_event(scheduler_id, job, result) for job, result in missed)
    if update.next_fire_time is None:
        events.append(
            ScheduleRemoved(schedule_id=update.schedule_id, task_id=task_id, finished=True)
        )
    else:
        events.append(
            ScheduleUpdated(
                schedule_id=update.schedule_id,
                task_id=task_id,
                next_fire_time=update.next_fire_time,
            )
        )
    return events


def job_acquisition_events(
    scheduler_id: str, now: datetime, acquired: Iterable[Job], missed: Iterable[Job]
) -> list[Event]:
    """Return the events of an acquisition.

    ``JobAcquired`` for each job handed out, ``JobReleased`` (``missed_start_deadline``) for
    each job found past its start deadline.
    """
    events: list[Event] = [
        JobAcquired(
            timestamp=now,
            job_id=job.id,
            scheduler_id=scheduler_id,
            task_id=job.task_id,
            schedule_id=job.schedule_id,
        )
        for job in acquired
    ]
    events.extend(
        job_released_event(
            scheduler_id,
            job,
            JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now),
        )
        for job in missed
    )
    return events


def cleanup_events(
    now: datetime, abandoned: Iterable[Job], overdue: Iterable[Job], logger: Logger
) -> list[Event]:
    """Return (and log) the events of a cleanup.

    Abandoned jobs and queued jobs whose start deadline passed (see :meth:`DataStore.cleanup`).
    """
    events: list[Event] = []
    for job in abandoned:
        owner = job.acquired_by or "cleanup"
        logger.warning(
            "Job %s (task %r) was abandoned: the lease of %s on it expired",
            job.id,
            job.task_id,
            owner,
        )
        result = JobResult.for_job(job, JobOutcome.abandoned, finished_at=now)
        events.append(job_released_event(owner, job, result))
    for job in overdue:
        result = JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now)
        events.append(job_released_event("cleanup", job, result))
    return events


class UnreadableJob(NamedTuple):
    """An acquired job whose record could not be restored (see ``_release_unreadable_jobs``)."""

    job_id: UUID
    result_expiration_time: timedelta
    error: DeserializationError


def marshal_job_result(
    serializer: Serializer, result: JobResult
) -> tuple[JobResult, dict[str, Any] | None]:
    """Return the result a persistent store keeps for ``result``, and its record.

    The record is ``None`` for a result that is not kept (its job's result expiration time
    is zero): nothing is serialized, as in the memory store. A return value the serializer
    cannot handle turns a kept result into outcome ``error`` with the
    :class:`~asched.SerializationError` as its exception, so a release never fails over
    serialization (see :meth:`DataStore.release_jobs`).
    """
    if result.expires_at <= result.finished_at:
        return result, None
    try:
        return result, result.marshal(serializer)
    except SerializationError as exc:
        failed = attrs.evolve(result, outcome=JobOutcome.error, return_value=None, exception=exc)
        return failed, failed.marshal(serializer)


@attrs.define(frozen=True, kw_only=True)
class RetrySettings:
    """How persistent data stores retry an operation after a transient connection error.

    The waits grow exponentially from ``wait_min`` to ``wait_max`` seconds; after
    ``attempts`` tries the error propagates (the scheduler loops log it and carry on later).

    :ivar attempts: the most tries of one operation
    :ivar wait_min: the first wait, in seconds
    :ivar wait_max: the longest wait, in seconds
    """

    attempts: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    wait_min: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    wait_max: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))

    def wait_after(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` consecutive failures (1 or more).

        ``wait_min`` doubled per failure after the first, at most ``wait_max``: with the
        defaults 0.05, 0.1, 0.2, … 3.2 s, about 6.4 s in all before the eighth attempt.
        """
        if failed_attempts < 1:
            raise ValueError(f"failed_attempts must be 1 or more, got {failed_attempts}")
        return min(self.wait_max, self.wait_min * 2.0 ** min(failed_attempts - 1, 64))


#: how long a process leaves alone a schedule it could not restore (others may read it)
UNREADABLE_SCHEDULE_PAUSE = timedelta(minutes=1)


class BaseExternalDataStore(DataStore):
    """Base class of data stores that keep their data outside the process.

    Shared by the SQLite, PostgreSQL and Redis stores: the serializer for user objects and
    the retrying of transient errors.

    :param serializer: turns job arguments, return values and exceptions into bytes
        (default: :class:`~asched.serializers.PickleSerializer`)
    :param retry_settings: how to retry operations after transient errors
    """

    def __init__(
        self,
        *,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
    ) -> None:
        self.serializer: Serializer = serializer or PickleSerializer()
        self.retry_settings = retry_settings or RetrySettings()
        self._logger = getLogger(__name__)
        self._clock = Clock()  # the scheduler's, from start()
        # schedules this process found unreadable, left to other processes until then
        self._unreadable_schedules: dict[str, datetime] = {}

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """Lease due schedules; see :meth:`DataStore.acquire_schedules`.

        A schedule this process cannot restore (an argument of a class only another
        version of the code has, say: a rolling deploy) is given back at once and left
        alone for :data:`UNREADABLE_SCHEDULE_PAUSE`: held here, it would not fire anywhere,
        even in processes that can read it.
        """
        schedules, unreadable = await self._lease_schedules(
            scheduler_id, lease_duration, limit, self._schedules_left_alone()
        )
        if unreadable:
            until = self._clock.now() + UNREADABLE_SCHEDULE_PAUSE
            self._unreadable_schedules.update(dict.fromkeys(unreadable, until))
            try:
                await self._unlease_schedules(scheduler_id, unreadable)
            except Exception as exc:
                self._logger.error(
                    "Could not give back %d schedules this process cannot restore (%s); they "
                    "wait for their leases to run out",
                    len(unreadable),
                    describe_error(exc),
                )
        return schedules

    def _schedules_left_alone(self) -> list[str]:
        """Return the ids of the schedules this process leaves to others for now (see above)."""
        if not self._unreadable_schedules:
            return []
        now = self._clock.now()
        for schedule_id, until in list(self._unreadable_schedules.items()):
            if until <= now:
                del self._unreadable_schedules[schedule_id]
        return list(self._unreadable_schedules)

    def _schedule_written(self, schedule_id: str) -> None:
        """Forget that the schedule was unreadable: this process just wrote it."""
        self._unreadable_schedules.pop(schedule_id, None)

    @abstractmethod
    async def _lease_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int, skip: Sequence[str]
    ) -> tuple[list[Schedule], list[str]]:
        """Lease due schedules, except those in ``skip``.

        :return: the schedules restored, and the ids of those leased that could not be
        """

    @abstractmethod
    async def _unlease_schedules(self, scheduler_id: str, ids: Sequence[str]) -> None:
        """Give back leases ``scheduler_id`` holds on schedules, leaving them unchanged."""

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Job]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""
        jobs, unreadable_found = await self._lease_jobs(scheduler_id, lease_duration, limit)
        # unreadable jobs took places in the limit (and went as errors): fill them. Each round
        # ends the unreadable jobs it found, so this ends.
        while unreadable_found and len(jobs) < limit:
            try:
                more, unreadable_found = await self._lease_jobs(
                    scheduler_id, lease_duration, limit - len(jobs)
                )
            except Exception:
                # what was acquired so far must still reach the worker
                self._logger.warning("Could not acquire more jobs", exc_info=True)
                break
            jobs += more
        return jobs

    @abstractmethod
    async def _lease_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> tuple[list[Job], bool]:
        """One round of :meth:`acquire_jobs`.

        :return: the jobs acquired, and whether unreadable ones were found (and released
            with :meth:`_release_unreadable_jobs`) besides them
        """

    async def _release_unreadable_jobs(
        self, scheduler_id: str, now: datetime, unreadable: Sequence[UnreadableJob]
    ) -> None:
        """Release acquired jobs that cannot be restored as ``error`` results; never raise.

        Such a job cannot run here; left leased, it would come back as ``abandoned`` once
        its lease ran out: released now, its outcome and the reason are known at once. The
        acquisition that took it must not fail over this: the jobs acquired with it must
        still reach the worker. If the release fails, only the unreadable ones wait for
        cleanup.
        """
        if not unreadable:
            return
        results = [
            JobResult(
                job_id=job.job_id,
                outcome=JobOutcome.error,
                exception=job.error,
                finished_at=now,
                expires_at=now + job.result_expiration_time,
            )
            for job in unreadable
        ]
        try:
            await self.release_jobs(scheduler_id, results)
        except Exception as exc:
            self._logger.error(
                "Could not release %d jobs that cannot be restored (%s); cleanup will report "
                "them abandoned once their leases run out",
                len(unreadable),
                describe_error(exc),
            )

    @abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """Whether an operation that raised ``exc`` is worth retrying.

        True for a dropped connection, a server restarting, a lock timeout; false for a bug or
        bad data.
        """

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exception = outcome.exception() if outcome is not None else None
        self._logger.warning(
            "%s: transient error (attempt %d of %d), retrying: %s",
            type(self).__name__,
            retry_state.attempt_number,
            self.retry_settings.attempts,
            describe_error(exception),
        )

    def _retrying(self) -> AsyncRetrying:
        """Return a tenacity retrier for one operation.

        Use it as::

            async for attempt in self._retrying():
                with attempt:
                    ...  # the operation, as one transaction
        """
        settings = self.retry_settings
        return AsyncRetrying(
            sleep=anyio.sleep,
            stop=stop_after_attempt(settings.attempts),
            wait=lambda retry_state: settings.wait_after(retry_state.attempt_number),
            retry=retry_if_exception(self._is_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def _with_retries(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` (one whole transaction), retried like :meth:`_retrying` says.

        For the per-job hot path: the first attempt runs bare, and the tenacity retrier (tens
        of microseconds to set up) is built only after a transient failure.
        """
        try:
            return await operation()
        except Exception as exc:
            if not self._is_transient(exc) or self.retry_settings.attempts < 2:
                raise
            first_failure = exc
        async for attempt in self._retrying():
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_failure  # counted (and logged) as the first attempt
                return await operation()
        raise AssertionError("unreachable")  # pragma: no cover
