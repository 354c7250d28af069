"""The exception hierarchy: everything asched raises on purpose derives from ASchedError.

Also how errors of any origin are described in log lines.
"""

from __future__ import annotations

from uuid import UUID


class ASchedError(Exception):
    """Base class of every error asched raises on purpose."""


class TaskLookupError(ASchedError, LookupError):
    """No task with the given id exists in the data store."""

    def __init__(self, task_id: str):
        super().__init__(f"No task by the id of {task_id!r} was found")
        self.task_id = task_id


class ScheduleLookupError(ASchedError, LookupError):
    """No schedule with the given id exists in the data store."""

    def __init__(self, schedule_id: str):
        super().__init__(f"No schedule by the id of {schedule_id!r} was found")
        self.schedule_id = schedule_id


class JobLookupError(ASchedError, LookupError):
    """No job (or kept job result) with the given id exists in the data store."""

    def __init__(self, job_id: UUID, reason: str = ""):
        message = f"No job by the id of {job_id} was found"
        super().__init__(f"{message}: {reason}" if reason else message)
        self.job_id = job_id


class JobResultNotReady(ASchedError):
    """The job exists but has not finished yet (``get_job_result(..., wait=False)``)."""

    def __init__(self, job_id: UUID):
        super().__init__(f"Job {job_id} has not finished yet")
        self.job_id = job_id


class JobCancelled(ASchedError):
    """The job was cancelled before it finished (``run_job`` raises this)."""

    def __init__(self, job_id: UUID):
        super().__init__(f"Job {job_id} was cancelled")
        self.job_id = job_id


class JobDeadlineMissed(ASchedError):
    """The job could not start before its start deadline (``run_job`` raises this)."""

    def __init__(self, job_id: UUID):
        super().__init__(f"Job {job_id} missed its start deadline and did not run")
        self.job_id = job_id


class JobAbandoned(ASchedError):
    """The worker running the job vanished before finishing it (``run_job`` raises this)."""

    def __init__(self, job_id: UUID):
        super().__init__(f"Job {job_id} was abandoned: the worker running it stopped responding")
        self.job_id = job_id


class ConflictingIdError(ASchedError, KeyError):
    """A schedule with the given id already exists (``ConflictPolicy.exception``)."""

    def __init__(self, schedule_id: str):
        super().__init__(f"A schedule with the id {schedule_id!r} already exists")
        self.schedule_id = schedule_id

    def __str__(self) -> str:
        # KeyError would otherwise render the message with quotes around it
        return str(self.args[0])


class StaleScheduleError(ASchedError):
    """A schedule changed in the data store since it was read (another update came first).

    Raised by :meth:`DataStore.update_schedule_definition`, which then wrote nothing; the
    scheduler reads the schedule again and reapplies its change.
    """

    def __init__(self, schedule_id: str):
        super().__init__(f"schedule {schedule_id!r} changed in the data store since it was read")
        self.schedule_id = schedule_id


class CallableLookupError(ASchedError, LookupError):
    """A textual reference (``"package.module:attr"``) does not resolve to a callable."""


class SerializationError(ASchedError):
    """An object (job arguments, a return value) could not be serialized."""


class DeserializationError(ASchedError):
    """Stored data could not be turned back into objects."""


class SchedulerNotInitializedError(ASchedError, RuntimeError):
    """The scheduler must be entered (``async with`` / ``with``) before this operation."""


def describe_error(exception: BaseException | None) -> str:
    """Return ``"ErrorType: message"`` for a log line.

    ``repr()`` is not enough: some libraries' errors (redis-py's) hide their message in it.
    """
    if exception is None:
        return "no error"
    text = str(exception)
    return f"{type(exception).__name__}: {text}" if text else type(exception).__name__
