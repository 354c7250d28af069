"""The Trigger interface: an immutable description of a set of instants."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar


class Trigger(ABC):
    """A pure function of time: which instants should a schedule fire at?

    Triggers hold no state. The schedule remembers the last fire time and asks the trigger for
    the next one with :meth:`next_fire_time`. Subclasses are frozen attrs classes, so a trigger
    can be shared, hashed, compared and stored.
    """

    __slots__ = ()

    #: the value of ``"type"`` in :meth:`to_dict`, which :func:`trigger_from_dict` dispatches on
    type_name: ClassVar[str]

    @abstractmethod
    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the earliest fire time strictly later than ``after``.

        :param after: a datetime, or ``None`` for the first fire time of the trigger; a naive
            one is a wall-clock time in the trigger's zone (resolved across DST like a naive
            ``start_time``), and combining triggers hand it to each of their triggers
        :return: an aware datetime, or ``None`` when the trigger fires no more
        """

    def fire_times(self, after: datetime | None = None) -> Iterator[datetime]:
        """Yield successive fire times strictly later than ``after`` (all of them if ``None``)."""
        fire_time = self.next_fire_time(after)
        while fire_time is not None:
            yield fire_time
            fire_time = self.next_fire_time(fire_time)

    def __iter__(self) -> Iterator[datetime]:
        return self.fire_times()

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger, including its ``"type"``."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        """Rebuild a trigger from the output of :meth:`to_dict`.

        :raises ValueError: if the data does not describe a valid trigger
        """
