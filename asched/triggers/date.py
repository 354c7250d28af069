"""DateTrigger: fire once, at one instant."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import Any

import attrs

from .._converters import (
    as_aware_datetime,
    as_timezone,
    aware_in,
    timezone_key,
    timezone_text,
    utc_instant,
)
from ._descriptions import build, checked_description
from .base import Trigger


@attrs.define(frozen=True, init=False)
class DateTrigger(Trigger):
    """Fire exactly once, at ``run_time``.

    :param run_time: an aware datetime, a naive datetime or a date (interpreted in
        ``timezone``), or an ISO 8601 string such as ``"2026-04-30 08:00:00"``
    :param timezone: zone for naive input and for the fire time returned (default: the
        zone of an aware ``run_time``, else the local zone)
    :raises ValueError: on an unparseable string or an unknown zone
    :raises TypeError: on a value of the wrong type
    """

    type_name = "date"

    run_time: datetime
    timezone: tzinfo

    def __init__(
        self, run_time: datetime | date | str, *, timezone: str | tzinfo | None = None
    ) -> None:
        if timezone is None and isinstance(run_time, datetime) and run_time.tzinfo is not None:
            tz = run_time.tzinfo
        else:
            tz = as_timezone(timezone, field="DateTrigger: timezone")
        aware = as_aware_datetime(run_time, tz, field="DateTrigger: run_time")
        self.__attrs_init__(aware.astimezone(tz), tz)

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return ``run_time`` if it is later than ``after`` (or ``after`` is None).

        A naive ``after`` is a wall-clock time in the trigger's zone.
        """
        if after is None:
            return self.run_time
        # compared as UTC instants: same-tzinfo comparisons ignore the DST fold
        if utc_instant(self.run_time) > utc_instant(aware_in(after, self.timezone)):
            return self.run_time
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger."""
        return {
            "type": self.type_name,
            "run_time": self.run_time.isoformat(),
            "timezone": timezone_key(self.timezone),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DateTrigger:
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(data, cls.type_name, required=("run_time", "timezone"))
        return build(cls.type_name, cls, data["run_time"], timezone=data["timezone"])

    def __str__(self) -> str:
        return f"date[{self.run_time.isoformat(sep=' ')}]"

    def __repr__(self) -> str:
        return (
            f"DateTrigger(run_time={self.run_time.isoformat(sep=' ')!r}, "
            f"timezone={timezone_text(self.timezone)!r})"
        )
