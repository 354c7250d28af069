"""Triggers: pure functions of time that say when a schedule fires."""

from __future__ import annotations

from typing import Any

from .base import Trigger
from .calendarinterval import CalendarIntervalTrigger
from .combining import AndTrigger, OrTrigger
from .cron import CronTrigger
from .date import DateTrigger
from .interval import IntervalTrigger

__all__ = [
    "AndTrigger",
    "CalendarIntervalTrigger",
    "CronTrigger",
    "DateTrigger",
    "IntervalTrigger",
    "OrTrigger",
    "Trigger",
    "trigger_from_dict",
]

_TRIGGER_TYPES: dict[str, type[Trigger]] = {
    cls.type_name: cls
    for cls in (
        AndTrigger,
        CalendarIntervalTrigger,
        CronTrigger,
        DateTrigger,
        IntervalTrigger,
        OrTrigger,
    )
}


def trigger_from_dict(data: dict[str, Any]) -> Trigger:
    """Rebuild any built-in trigger from the output of its ``to_dict()``.

    :raises ValueError: if ``data`` has no known ``"type"`` or does not describe a valid
        trigger
    """
    try:
        trigger_type = data["type"]
    except (KeyError, TypeError):
        raise ValueError(f"not a trigger description (no 'type' key): {data!r}") from None

    try:
        cls = _TRIGGER_TYPES[trigger_type]
    except KeyError:
        known = ", ".join(sorted(_TRIGGER_TYPES))
        raise ValueError(f"unknown trigger type {trigger_type!r} (known: {known})") from None

    return cls.from_dict(data)
