"""AndTrigger and OrTrigger: fire when all, or any, of several triggers fire."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from ._descriptions import build, checked_description
from .base import Trigger

_UTC = timezone.utc
_ONE_MICROSECOND = timedelta(microseconds=1)


def _check_triggers(cls_name: str, triggers: Sequence[Trigger]) -> tuple[Trigger, ...]:
    items = tuple(triggers)
    for item in items:
        if not isinstance(item, Trigger):
            raise TypeError(f"{cls_name}: expected triggers, got {item!r}")
    if len(items) < 2:
        raise ValueError(f"{cls_name}: needs at least 2 triggers, got {len(items)}")
    return items


def _children_from_dict(type_name: str, data: dict[str, Any]) -> list[Trigger]:
    from . import trigger_from_dict

    children = data["triggers"]
    if not isinstance(children, list):
        raise ValueError(
            f"{type_name!r} trigger description: 'triggers' must be a list of trigger "
            f"descriptions, got {children!r}"
        )
    return [trigger_from_dict(child) for child in children]


@attrs.define(frozen=True, init=False)
class AndTrigger(Trigger):
    """Fire at the instants where every trigger fires.

    The search advances the triggers that are behind to the latest candidate until all agree.
    Triggers that never agree (two intervals out of phase) would search forever, so after
    ``max_iterations`` rounds without agreement the trigger gives up and returns ``None``.

    :param triggers: at least two triggers
    :param max_iterations: rounds of the search before giving up
    :raises ValueError: with fewer than two triggers or a ``max_iterations`` below 1
    :raises TypeError: if an item is not a trigger or ``max_iterations`` not an int
    """

    type_name = "and"

    triggers: tuple[Trigger, ...]
    max_iterations: int

    def __init__(self, triggers: Sequence[Trigger], *, max_iterations: int = 10_000) -> None:
        if not isinstance(max_iterations, int) or isinstance(max_iterations, bool):
            raise TypeError(f"AndTrigger: max_iterations must be an int, got {max_iterations!r}")
        if max_iterations < 1:
            raise ValueError(
                f"AndTrigger: max_iterations must be at least 1, got {max_iterations!r}"
            )
        self.__attrs_init__(_check_triggers("AndTrigger", triggers), max_iterations)

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the first instant later than ``after`` at which every trigger fires."""
        candidates: list[datetime | None] = [
            trigger.next_fire_time(after) for trigger in self.triggers
        ]
        for _ in range(self.max_iterations):
            instants = [candidate.astimezone(_UTC) for candidate in candidates if candidate]
            if len(instants) < len(candidates):
                return None  # one of the triggers is exhausted
            latest = max(instants)
            if all(instant == latest for instant in instants):
                return candidates[0]
            # every trigger that is behind moves to its first fire time at or after latest
            for index, trigger in enumerate(self.triggers):
                if instants[index] < latest:
                    candidates[index] = trigger.next_fire_time(latest - _ONE_MICROSECOND)
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger and its children."""
        return {
            "type": self.type_name,
            "triggers": [trigger.to_dict() for trigger in self.triggers],
            "max_iterations": self.max_iterations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AndTrigger:
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(
            data, cls.type_name, required=("triggers",), optional=("max_iterations",)
        )
        return build(
            cls.type_name,
            cls,
            _children_from_dict(cls.type_name, data),
            max_iterations=data.get("max_iterations", 10_000),
        )

    def __str__(self) -> str:
        return f"and[{', '.join(str(trigger) for trigger in self.triggers)}]"

    def __repr__(self) -> str:
        children = ", ".join(repr(trigger) for trigger in self.triggers)
        return f"AndTrigger([{children}], max_iterations={self.max_iterations})"


@attrs.define(frozen=True, init=False)
class OrTrigger(Trigger):
    """Fire whenever any of the triggers fires; an instant several fire at fires once.

    :param triggers: at least two triggers
    :raises ValueError: with fewer than two triggers
    """

    type_name = "or"

    triggers: tuple[Trigger, ...]

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        self.__attrs_init__(_check_triggers("OrTrigger", triggers))

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the earliest fire time of any trigger later than ``after``."""
        earliest: datetime | None = None
        earliest_utc: datetime | None = None
        for trigger in self.triggers:
            candidate = trigger.next_fire_time(after)
            if candidate is None:
                continue
            candidate_utc = candidate.astimezone(_UTC)
            if earliest_utc is None or candidate_utc < earliest_utc:
                earliest, earliest_utc = candidate, candidate_utc
        return earliest

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger and its children."""
        return {"type": self.type_name, "triggers": [t.to_dict() for t in self.triggers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrTrigger:
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(data, cls.type_name, required=("triggers",))
        return build(cls.type_name, cls, _children_from_dict(cls.type_name, data))

    def __str__(self) -> str:
        return f"or[{', '.join(str(trigger) for trigger in self.triggers)}]"

    def __repr__(self) -> str:
        return f"OrTrigger([{', '.join(repr(trigger) for trigger in self.triggers)}])"
