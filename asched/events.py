"""Events: what happened in a scheduler or a data store, delivered to subscribers.

Every event is a frozen attrs class with a ``timestamp``. Data store events travel between
processes through external event brokers as JSON (:meth:`Event.to_dict` /
:func:`event_from_dict`), so their fields are plain values: ids, datetimes, enums, strings.
Subscribe with ``scheduler.subscribe(callback, {JobReleased})``; a subscription to a base
class (``DataStoreEvent``) receives all its subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

import attrs

from ._converters import utc_now
from ._enums import JobOutcome


@attrs.define(frozen=True, kw_only=True)
class Event:
    """Base class of all events.

    :ivar timestamp: when the event happened (aware, UTC)
    """

    timestamp: datetime = attrs.field(factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of this event, including its ``"type"``."""
        data: dict[str, Any] = {"type": type(self).__name__}
        for name in _FIELD_NAMES[type(self)]:
            value = getattr(self, name)
            # most fields are strings or None: one set lookup instead of three isinstance()
            data[name] = value if type(value) in _JSON_TYPES else _json_value(value)
        return data


_JSON_TYPES = frozenset({str, int, float, bool, type(None)})


def _json_value(value: Any) -> Any:
    """Return the JSON form of an event field value that is not a plain JSON value."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    return value


# Decoders for fields whose JSON form is not the Python value (the same field name has the
# same type in every event class)
_FIELD_DECODERS: dict[str, Callable[[Any], Any]] = {
    "timestamp": datetime.fromisoformat,
    "next_fire_time": datetime.fromisoformat,
    "scheduled_fire_time": datetime.fromisoformat,
    "started_at": datetime.fromisoformat,
    "job_id": UUID,
    "outcome": JobOutcome,
}
_EVENT_TYPES: dict[str, type[Event]] = {}
_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _register(cls: type[Event]) -> None:
    _EVENT_TYPES[cls.__name__] = cls
    _FIELD_NAMES[cls] = tuple(field.name for field in attrs.fields(cls))


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from the output of :meth:`Event.to_dict`.

    :raises ValueError: if the data does not describe a known event
    """
    try:
        cls = _EVENT_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ValueError(f"not a known event: {data!r}") from None

    kwargs: dict[str, Any] = {}
    for name in _FIELD_NAMES[cls]:
        value = data.get(name)
        if value is not None and name in _FIELD_DECODERS:
            value = _FIELD_DECODERS[name](value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"malformed {cls.__name__} event: {exc}") from None


#
# Data store events
#


@attrs.define(frozen=True, kw_only=True)
class DataStoreEvent(Event):
    """Base class of events published by data stores."""


@attrs.define(frozen=True, kw_only=True)
class TaskAdded(DataStoreEvent):
    """A task was added to the data store.

    :ivar task_id: the task's id
    """

    task_id: str


@attrs.define(frozen=True, kw_only=True)
class TaskUpdated(DataStoreEvent):
    """A task's definition was replaced.

    :ivar task_id: the task's id
    """

    task_id: str


@attrs.define(frozen=True, kw_only=True)
class TaskRemoved(DataStoreEvent):
    """A task was removed from the data store.

    :ivar task_id: the task's id
    """

    task_id: str


@attrs.define(frozen=True, kw_only=True)
class ScheduleAdded(DataStoreEvent):
    """A schedule was added.

    :ivar schedule_id: the schedule's id
    :ivar task_id: the task its jobs run
    :ivar next_fire_time: its first fire time
    """

    schedule_id: str
    task_id: str
    next_fire_time: datetime | None


@attrs.define(frozen=True, kw_only=True)
class ScheduleUpdated(DataStoreEvent):
    """A schedule changed: replaced, paused, unpaused, or moved on to its next fire time.

    :ivar schedule_id: the schedule's id
    :ivar task_id: the task its jobs run
    :ivar next_fire_time: its next fire time
    """

    schedule_id: str
    task_id: str
    next_fire_time: datetime | None


@attrs.define(frozen=True, kw_only=True)
class ScheduleRemoved(DataStoreEvent):
    """A schedule was removed.

    :ivar schedule_id: the schedule's id
    :ivar task_id: the task its jobs ran
    :ivar finished: ``True`` when it was removed because its trigger has no more fire times,
        ``False`` when someone removed it
    """

    schedule_id: str
    task_id: str
    finished: bool


@attrs.define(frozen=True, kw_only=True)
class JobAdded(DataStoreEvent):
    """A job was added and waits for a worker.

    :ivar job_id: the job's id
    :ivar task_id: the task it runs
    :ivar schedule_id: the schedule that created it, if any
    """

    job_id: UUID
    task_id: str
    schedule_id: str | None


@attrs.define(frozen=True, kw_only=True)
class JobAcquired(DataStoreEvent):
    """A worker took a job to run it.

    :ivar job_id: the job's id
    :ivar scheduler_id: the worker's scheduler id
    :ivar task_id: the task it runs
    :ivar schedule_id: the schedule that created it, if any
    """

    job_id: UUID
    scheduler_id: str
    task_id: str
    schedule_id: str | None


@attrs.define(frozen=True, kw_only=True)
class JobReleased(DataStoreEvent):
    """A job ended, however it ended (see ``outcome``).

    Every fire time of a schedule that is not coalesced away ends in exactly one
    ``JobReleased``: ``success``/``error``/``cancelled`` after it ran,
    ``missed_start_deadline`` when it could not start in time, ``abandoned`` when its worker
    vanished.

    :ivar job_id: the job's id
    :ivar scheduler_id: the scheduler that released it
    :ivar task_id: the task it ran
    :ivar schedule_id: the schedule that created it, if any
    :ivar scheduled_fire_time: the fire time it was created for, if from a schedule
    :ivar outcome: how it ended
    :ivar started_at: when its function started, if it did
    :ivar exception_type: qualified class name of the exception it raised (``error``)
    :ivar exception_message: ``str()`` of that exception
    :ivar exception_traceback: the formatted traceback of that exception
    """

    job_id: UUID
    scheduler_id: str
    task_id: str
    schedule_id: str | None
    scheduled_fire_time: datetime | None
    outcome: JobOutcome
    started_at: datetime | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    exception_traceback: str | None = None


@attrs.define(frozen=True, kw_only=True)
class ScheduleDeserializationFailed(DataStoreEvent):
    """A stored schedule could not be restored (its trigger or arguments are unreadable).

    :ivar schedule_id: the schedule's id
    :ivar error: what went wrong
    """

    schedule_id: str
    error: str


@attrs.define(frozen=True, kw_only=True)
class JobDeserializationFailed(DataStoreEvent):
    """A stored job could not be restored; it is released with outcome ``error``.

    :ivar job_id: the job's id
    :ivar error: what went wrong
    """

    job_id: UUID
    error: str


#
# Scheduler events
#


@attrs.define(frozen=True, kw_only=True)
class SchedulerEvent(Event):
    """Base class of events about a scheduler's life cycle.

    :ivar scheduler_id: the scheduler's id
    """

    scheduler_id: str


@attrs.define(frozen=True, kw_only=True)
class SchedulerStarted(SchedulerEvent):
    """The scheduler started processing schedules and/or jobs."""


@attrs.define(frozen=True, kw_only=True)
class SchedulerStopped(SchedulerEvent):
    """The scheduler stopped.

    :ivar exception_type: qualified class name of the exception that stopped it, if any
    :ivar exception_message: ``str()`` of that exception
    """

    exception_type: str | None = None
    exception_message: str | None = None


@attrs.define(frozen=True, kw_only=True)
class BrokerReconnected(Event):
    """An external event broker listens again after losing its connection to the server.

    Events other processes published while it was away never arrive: a scheduler looks at
    its data store again at once instead of waiting for its next poll. Delivered only in
    the broker's own process.
    """


for _cls in (
    TaskAdded,
    TaskUpdated,
    TaskRemoved,
    ScheduleAdded,
    ScheduleUpdated,
    ScheduleRemoved,
    JobAdded,
    JobAcquired,
    JobReleased,
    ScheduleDeserializationFailed,
    JobDeserializationFailed,
    SchedulerStarted,
    SchedulerStopped,
    BrokerReconnected,
):
    _register(_cls)


class Subscription:
    """A subscriber's handle: call :meth:`unsubscribe` (or leave a ``with`` block) to stop.

    :ivar callback: the subscriber (a sync function or a coroutine function)
    :ivar event_types: the event classes subscribed to (``None``: all events)
    :ivar one_shot: whether the subscription ends after the first matching event
    """

    __slots__ = ("_on_unsubscribe", "active", "callback", "event_types", "one_shot")

    def __init__(
        self,
        callback: Callable[[Any], Any],
        event_types: frozenset[type[Event]] | None,
        one_shot: bool,
        on_unsubscribe: Callable[[Subscription], None],
    ):
        self.callback = callback
        self.event_types = event_types
        self.one_shot = one_shot
        self.active = True
        self._on_unsubscribe = on_unsubscribe

    def unsubscribe(self) -> None:
        """Stop receiving events; calling it again does nothing."""
        if self.active:
            self.active = False
            self._on_unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        names = sorted(cls.__name__ for cls in self.event_types) if self.event_types else "all"
        return f"<Subscription {self.callback!r} to {names}>"
