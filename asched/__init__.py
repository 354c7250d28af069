"""asched: asyncio-native job scheduling.

Everything public is re-exported here; modules whose names start with ``_`` are private.
Plug-in interfaces and implementations live in their subpackages: ``asched.triggers``,
``asched.datastores``, ``asched.eventbrokers``, ``asched.executors``, ``asched.serializers``,
and events in ``asched.events``.
"""

from __future__ import annotations

from ._clock import Clock
from ._enums import CoalescePolicy, ConflictPolicy, JobOutcome, RunState, SchedulerRole
from ._exceptions import (
    ASchedError,
    CallableLookupError,
    ConflictingIdError,
    DeserializationError,
    JobAbandoned,
    JobCancelled,
    JobDeadlineMissed,
    JobLookupError,
    JobResultNotReady,
    ScheduleLookupError,
    SchedulerNotInitializedError,
    SerializationError,
    StaleScheduleError,
    TaskLookupError,
)
from ._scheduler import AsyncScheduler
from ._structures import Job, JobResult, RemoteJobError, Schedule, ScheduleUpdate, Task
from ._sync import Scheduler
from ._worker import current_job

__all__ = [
    "ASchedError",
    "AsyncScheduler",
    "CallableLookupError",
    "Clock",
    "CoalescePolicy",
    "ConflictPolicy",
    "ConflictingIdError",
    "DeserializationError",
    "Job",
    "JobAbandoned",
    "JobCancelled",
    "JobDeadlineMissed",
    "JobLookupError",
    "JobOutcome",
    "JobResult",
    "JobResultNotReady",
    "RemoteJobError",
    "RunState",
    "Schedule",
    "ScheduleLookupError",
    "ScheduleUpdate",
    "Scheduler",
    "SchedulerNotInitializedError",
    "SchedulerRole",
    "SerializationError",
    "StaleScheduleError",
    "Task",
    "TaskLookupError",
    "current_job",
]
