"""The value objects a data store keeps: Task, Schedule, Job, JobResult, ScheduleUpdate.

They are frozen attrs classes: a change is a new object (``attrs.evolve``), so a data store can
hand out the objects it holds without copying them. Persistent stores turn them into records
with :meth:`marshal` and back with :meth:`unmarshal`: triggers and options become JSON-safe
values (readable in the database), only user objects (arguments, return values, exceptions)
go through the serializer.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from ._converters import utc_now
from ._enums import CoalescePolicy, JobOutcome
from ._exceptions import DeserializationError, SerializationError
from ._ids import random_uuid

if TYPE_CHECKING:
    from .serializers.base import Serializer
    from .triggers.base import Trigger

_ZERO = timedelta(0)


def _seconds_or_none(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _timedelta_or_none(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


@attrs.define(frozen=True, kw_only=True)
class Task:
    """A function that jobs run, registered under a stable id.

    :ivar id: the task id (by default the function's ``"module:qualname"``)
    :ivar func_ref: textual reference (``"package.module:attr.path"``) that any process can
        import to get the function, or ``None`` when the function is not importable (a lambda,
        a local function): then only the process that registered it can run its jobs
    :ivar job_executor: name of the executor that runs its jobs (``"async"``,
        ``"threadpool"``, ``"processpool"`` or a custom one)
    :ivar max_running_jobs: how many of its jobs may run at once across all workers sharing
        the data store (``None``: no limit)
    :ivar misfire_grace_time: default for schedules of this task: how late a job may start
    :ivar metadata: JSON-compatible data for the application's own use
    """

    id: str
    func_ref: str | None = None
    job_executor: str
    max_running_jobs: int | None = None
    misfire_grace_time: timedelta | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def marshal(self) -> dict[str, Any]:
        """Return a JSON-safe dict of this task."""
        return {
            "id": self.id,
            "func_ref": self.func_ref,
            "job_executor": self.job_executor,
            "max_running_jobs": self.max_running_jobs,
            "misfire_grace_time": _seconds_or_none(self.misfire_grace_time),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def unmarshal(cls, data: Mapping[str, Any]) -> Task:
        """Rebuild a task from :meth:`marshal` output."""
        return cls(
            id=data["id"],
            func_ref=data["func_ref"],
            job_executor=data["job_executor"],
            max_running_jobs=data["max_running_jobs"],
            misfire_grace_time=_timedelta_or_none(data["misfire_grace_time"]),
            metadata=data["metadata"],
        )


@attrs.define(frozen=True, kw_only=True)
class Schedule:
    """A task to run at the fire times of a trigger.

    :ivar id: unique id of the schedule
    :ivar task_id: the task its jobs run
    :ivar trigger: when to fire
    :ivar args: positional arguments for the task's function
    :ivar kwargs: keyword arguments for the task's function
    :ivar name: an optional human-readable name
    :ivar paused: a paused schedule creates no jobs
    :ivar coalesce: which of several due fire times become jobs
    :ivar misfire_grace_time: how late after its fire time a job may still start
        (``None``: any lateness is fine)
    :ivar max_jitter: each job starts up to this much after its fire time (a random amount,
        never reaching the next fire time)
    :ivar max_running_jobs: how many jobs of this schedule may run at once (``None``: no
        limit of its own; the task's limit still applies)
    :ivar job_executor: executor for its jobs (``None``: the task's)
    :ivar job_result_expiration_time: how long results of its jobs are kept (zero: not kept)
    :ivar metadata: JSON-compatible data for the application's own use
    :ivar next_fire_time: the next fire time the trigger gave (``None``: finished)
    :ivar next_run_time: when the job for ``next_fire_time`` will be created: the fire time
        plus its jitter. Data stores hand out schedules in this order.
    :ivar last_fire_time: the latest fire time that was processed (run, missed or coalesced)
    :ivar acquired_by: id of the scheduler processing the schedule right now, if any
    :ivar acquired_until: when that scheduler's lease on it expires
    :ivar revision: how many times its definition was rewritten, kept by the data store (an
        update writes only if the schedule is still at the revision it read; see
        :meth:`~asched.datastores.DataStore.update_schedule_definition`)
    """

    id: str
    task_id: str
    trigger: Trigger
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    name: str | None = None
    paused: bool = False
    coalesce: CoalescePolicy = CoalescePolicy.latest
    misfire_grace_time: timedelta | None = None
    max_jitter: timedelta | None = None
    max_running_jobs: int | None = None
    job_executor: str | None = None
    job_result_expiration_time: timedelta = _ZERO
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    next_fire_time: datetime | None = None
    next_run_time: datetime | None = None
    last_fire_time: datetime | None = None
    acquired_by: str | None = None
    acquired_until: datetime | None = None
    # not part of what the schedule is: two schedules alike but for it are equal
    revision: int = attrs.field(default=0, eq=False)

    def marshal(self, serializer: Serializer) -> dict[str, Any]:
        """Return a record of this schedule.

        The trigger (``trigger``) is a JSON-safe dict, ``args`` and ``kwargs`` are serialized
        bytes, durations are seconds (float), datetimes stay aware datetimes (each store
        stores them in its own native way).

        :raises SerializationError: if the arguments cannot be serialized
        """
        return {
            "id": self.id,
            "task_id": self.task_id,
            "trigger": self.trigger.to_dict(),
            "args": serializer.serialize(self.args),
            "kwargs": serializer.serialize(dict(self.kwargs)),
            "name": self.name,
            "paused": self.paused,
            "coalesce": self.coalesce.value,
            "misfire_grace_time": _seconds_or_none(self.misfire_grace_time),
            "max_jitter": _seconds_or_none(self.max_jitter),
            "max_running_jobs": self.max_running_jobs,
            "job_executor": self.job_executor,
            "job_result_expiration_time": self.job_result_expiration_time.total_seconds(),
            "metadata": dict(self.metadata),
            "next_fire_time": self.next_fire_time,
            "next_run_time": self.next_run_time,
            "last_fire_time": self.last_fire_time,
            "acquired_by": self.acquired_by,
            "acquired_until": self.acquired_until,
            "revision": self.revision,
        }

    @classmethod
    def unmarshal(cls, serializer: Serializer, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`marshal` output.

        :raises DeserializationError: if the trigger or the arguments cannot be restored
        """
        from .triggers import trigger_from_dict

        try:
            trigger = trigger_from_dict(data["trigger"])
        except (ValueError, TypeError, KeyError) as exc:
            raise DeserializationError(
                f"schedule {data['id']!r}: cannot restore its trigger: {exc}"
            ) from exc

        return cls(
            id=data["id"],
            task_id=data["task_id"],
            trigger=trigger,
            args=tuple(serializer.deserialize(data["args"])),
            kwargs=serializer.deserialize(data["kwargs"]),
            name=data["name"],
            paused=bool(data["paused"]),
            coalesce=CoalescePolicy(data["coalesce"]),
            misfire_grace_time=_timedelta_or_none(data["misfire_grace_time"]),
            max_jitter=_timedelta_or_none(data["max_jitter"]),
            max_running_jobs=data["max_running_jobs"],
            job_executor=data["job_executor"],
            job_result_expiration_time=timedelta(seconds=data["job_result_expiration_time"]),
            metadata=data["metadata"],
            next_fire_time=data["next_fire_time"],
            next_run_time=data["next_run_time"],
            last_fire_time=data["last_fire_time"],
            acquired_by=data["acquired_by"],
            acquired_until=data["acquired_until"],
            revision=data.get("revision", 0),
        )


@attrs.define(frozen=True, kw_only=True)
class Job:
    """One run of a task: created by a schedule at a fire time, or directly by ``add_job``.

    :ivar id: unique id
    :ivar task_id: the task to run
    :ivar args: positional arguments for the task's function
    :ivar kwargs: keyword arguments for the task's function
    :ivar schedule_id: the schedule that created it, if any
    :ivar scheduled_fire_time: the fire time it was created for, if from a schedule
    :ivar jitter: how far after its fire time it was released to the workers
    :ivar start_deadline: a worker must start it by then, else it is released as missed
        (``None``: no deadline)
    :ivar job_executor: executor that runs it (``None``: the task's)
    :ivar result_expiration_time: how long its result is kept after it finishes (zero: not
        kept)
    :ivar created_at: when it was created
    :ivar acquired_by: id of the worker running it, if any
    :ivar acquired_until: when that worker's lease on it expires
    """

    id: UUID = attrs.field(factory=random_uuid)
    task_id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    schedule_id: str | None = None
    scheduled_fire_time: datetime | None = None
    jitter: timedelta = _ZERO
    start_deadline: datetime | None = None
    job_executor: str | None = None
    result_expiration_time: timedelta = _ZERO
    created_at: datetime = attrs.field(factory=utc_now)
    acquired_by: str | None = None
    acquired_until: datetime | None = None

    def marshal(self, serializer: Serializer) -> dict[str, Any]:
        """Return a record of this job (see :meth:`Schedule.marshal` for the conventions).

        :raises SerializationError: if the arguments cannot be serialized
        """
        return {
            "id": self.id,
            "task_id": self.task_id,
            "args": serializer.serialize(self.args),
            "kwargs": serializer.serialize(dict(self.kwargs)),
            "schedule_id": self.schedule_id,
            "scheduled_fire_time": self.scheduled_fire_time,
            "jitter": self.jitter.total_seconds(),
            "start_deadline": self.start_deadline,
            "job_executor": self.job_executor,
            "result_expiration_time": self.result_expiration_time.total_seconds(),
            "created_at": self.created_at,
            "acquired_by": self.acquired_by,
            "acquired_until": self.acquired_until,
        }

    @classmethod
    def unmarshal(cls, serializer: Serializer, data: Mapping[str, Any]) -> Job:
        """Rebuild a job from :meth:`marshal` output.

        :raises DeserializationError: if the arguments cannot be restored
        """
        return cls(
            id=data["id"],
            task_id=data["task_id"],
            args=tuple(serializer.deserialize(data["args"])),
            kwargs=serializer.deserialize(data["kwargs"]),
            schedule_id=data["schedule_id"],
            scheduled_fire_time=data["scheduled_fire_time"],
            jitter=timedelta(seconds=data["jitter"]),
            start_deadline=data["start_deadline"],
            job_executor=data["job_executor"],
            result_expiration_time=timedelta(seconds=data["result_expiration_time"]),
            created_at=data["created_at"],
            acquired_by=data["acquired_by"],
            acquired_until=data["acquired_until"],
        )


@attrs.define(frozen=True, kw_only=True)
class JobResult:
    """How a job ended, and what it returned or raised.

    :ivar job_id: the job's id
    :ivar outcome: how it ended
    :ivar return_value: what the function returned (``success`` only)
    :ivar exception: what the function raised (``error`` only)
    :ivar started_at: when the function started (``None`` if it never started)
    :ivar finished_at: when the job ended
    :ivar expires_at: when a data store that keeps the result may delete it
    """

    job_id: UUID
    outcome: JobOutcome
    return_value: Any = None
    exception: BaseException | None = None
    started_at: datetime | None = None
    finished_at: datetime
    expires_at: datetime

    @classmethod
    def for_job(
        cls,
        job: Job,
        outcome: JobOutcome,
        *,
        finished_at: datetime,
        started_at: datetime | None = None,
        return_value: Any = None,
        exception: BaseException | None = None,
    ) -> JobResult:
        """Create the result of ``job``, expiring after the job's result expiration time."""
        return cls(
            job_id=job.id,
            outcome=outcome,
            return_value=return_value,
            exception=exception,
            started_at=started_at,
            finished_at=finished_at,
            expires_at=finished_at + job.result_expiration_time,
        )

    def marshal(self, serializer: Serializer) -> dict[str, Any]:
        """Return a record of this result (see :meth:`Schedule.marshal` for conventions).

        An exception that the serializer cannot handle is replaced by a
        :class:`RemoteJobError` that keeps its type, message and traceback as text; a return
        value that cannot be serialized raises, since silently losing it would be worse.

        :raises SerializationError: if the return value cannot be serialized, or could not
            be restored from what it serializes to
        """
        return_value: bytes | None = None
        if self.outcome is JobOutcome.success:
            return_value = serializer.serialize(self.return_value)
            try:  # as for exceptions below: one that would not come back is no result
                serializer.deserialize(return_value)
            except DeserializationError as exc:
                raise SerializationError(
                    f"the return value {self.return_value!r:.200} would not come back: {exc}"
                ) from exc
        exception: bytes | None = None
        if self.exception is not None:
            try:
                exception = serializer.serialize(self.exception)
                # some pickle but do not unpickle (an __init__ taking other arguments than
                # the exception's args): better a RemoteJobError than an unreadable result
                serializer.deserialize(exception)
            except (SerializationError, DeserializationError):
                exception = serializer.serialize(RemoteJobError.from_exception(self.exception))

        return {
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "return_value": return_value,
            "exception": exception,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def unmarshal(cls, serializer: Serializer, data: Mapping[str, Any]) -> JobResult:
        """Rebuild a result from :meth:`marshal` output.

        An exception that cannot be restored (its class gone or changed since, say) comes
        back as a :class:`RemoteJobError` saying so, so the outcome can still be read.

        :raises DeserializationError: if the return value cannot be restored
        """
        return_value = data["return_value"]
        exception = data["exception"]
        if exception is not None:
            try:
                exception = serializer.deserialize(exception)
            except DeserializationError as exc:
                exception = RemoteJobError("unknown", f"cannot restore the exception: {exc}", "")
        return cls(
            job_id=data["job_id"],
            outcome=JobOutcome(data["outcome"]),
            return_value=None if return_value is None else serializer.deserialize(return_value),
            exception=exception,
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            expires_at=data["expires_at"],
        )


class RemoteJobError(Exception):
    """Stands in for an exception that could not be serialized into the data store.

    Not an :class:`ASchedError` on purpose: it is the job's own failure (``run_job`` raises
    it where the job raised), not asched's, so ``except ASchedError`` does not catch it.

    :ivar exception_type: qualified name of the original exception's class
    :ivar message: ``str()`` of the original exception
    :ivar traceback_text: the original traceback, formatted
    """

    def __init__(self, exception_type: str, message: str, traceback_text: str):
        super().__init__(exception_type, message, traceback_text)
        self.exception_type = exception_type
        self.message = message
        self.traceback_text = traceback_text

    @classmethod
    def from_exception(cls, exception: BaseException) -> RemoteJobError:
        """Capture an exception's type, message and traceback as text."""
        exc_type = type(exception)
        return cls(
            f"{exc_type.__module__}.{exc_type.__qualname__}",
            str(exception),
            "".join(traceback.format_exception(exc_type, exception, exception.__traceback__)),
        )

    def __str__(self) -> str:
        return f"{self.exception_type}: {self.message}"


@attrs.define(frozen=True, kw_only=True)
class ScheduleUpdate:
    """What a scheduler decided for one schedule it acquired; see ``release_schedules``.

    The data store applies an update atomically and only while the releasing scheduler still
    holds the schedule's lease: then it adds ``jobs``, records ``missed_jobs`` as missed (a
    result when kept, and an event) and moves the schedule on to ``next_fire_time``, or
    removes it when that is ``None``. An update from a scheduler that lost its lease is dropped
    whole, so a fire time never yields two jobs.

    :ivar schedule_id: the schedule
    :ivar next_fire_time: the next fire time, or ``None`` when the trigger is exhausted
    :ivar next_run_time: ``next_fire_time`` plus its jitter
    :ivar last_fire_time: the latest fire time processed
    :ivar jobs: jobs to create
    :ivar missed_jobs: jobs for fire times whose start deadline has already passed
    """

    schedule_id: str
    next_fire_time: datetime | None
    next_run_time: datetime | None
    last_fire_time: datetime | None
    jobs: tuple[Job, ...] = ()
    missed_jobs: tuple[Job, ...] = ()
