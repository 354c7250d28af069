"""IntervalTrigger: fire every fixed amount of elapsed (real) time."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs

from .._converters import (
    as_timezone,
    aware_in,
    optional_aware_datetime,
    timezone_key,
    timezone_text,
    utc_now,
)
from ._descriptions import build, checked_description
from .base import Trigger

_UTC = timezone.utc
_ZERO = timedelta(0)
_UNITS = ("weeks", "days", "hours", "minutes", "seconds", "microseconds")


@attrs.define(frozen=True, init=False)
class IntervalTrigger(Trigger):
    """Fire at ``start_time`` and every ``interval`` of real elapsed time after it.

    The interval is physical time: across a DST change an hourly trigger stays 3,600 s apart
    (use :class:`~asched.triggers.CalendarIntervalTrigger` or a cron trigger to keep a
    wall-clock time instead).

    :param start_time: the first fire time (default: one interval after the trigger is
        created, as in APScheduler 3); naive values are in ``timezone``
    :param end_time: the latest possible fire time (inclusive)
    :param timezone: zone for naive input and for the fire times returned (default: the zone
        of an aware ``start_time``, else the local zone)
    :raises ValueError: if the interval is zero, negative, not finite or too long, or
        ``end_time`` is before ``start_time``
    :raises TypeError: if a unit is not a number
    """

    type_name = "interval"

    weeks: float
    days: float
    hours: float
    minutes: float
    seconds: float
    microseconds: float
    start_time: datetime
    end_time: datetime | None
    timezone: tzinfo
    interval: timedelta = attrs.field(eq=False, repr=False)
    # UTC copies: aware datetimes sharing a tzinfo compare and add by wall-clock time, which
    # is wrong across DST changes, so all arithmetic happens on UTC instants
    _start_utc: datetime = attrs.field(eq=False, repr=False, alias="_start_utc")
    _end_utc: datetime | None = attrs.field(eq=False, repr=False, alias="_end_utc")
    # (fire time, in UTC) last returned: a chained call adds the interval to it
    _last_fire: tuple[datetime, datetime] | None = attrs.field(
        eq=False, repr=False, alias="_last_fire", default=None
    )
    # whether start_time was left out, so defaulted to the creation time: an identical
    # trigger made later differs only in it (see AsyncScheduler.scheduled_job)
    _start_defaulted: bool = attrs.field(
        eq=False, repr=False, alias="_start_defaulted", default=False
    )

    def __init__(
        self,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        microseconds: float = 0,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        timezone: str | tzinfo | None = None,
    ) -> None:
        for name, value in zip(
            _UNITS, (weeks, days, hours, minutes, seconds, microseconds), strict=True
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"IntervalTrigger: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"IntervalTrigger: {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"IntervalTrigger: {name} must not be negative, got {value!r}")

        try:
            interval = timedelta(
                weeks=weeks,
                days=days,
                hours=hours,
                minutes=minutes,
                seconds=seconds,
                microseconds=microseconds,
            )
        except OverflowError:
            given = ", ".join(
                f"{name}={value!r}"
                for name, value in zip(
                    _UNITS, (weeks, days, hours, minutes, seconds, microseconds), strict=True
                )
                if value
            )
            raise ValueError(
                f"IntervalTrigger: the interval ({given}) is too long (at most "
                f"{timedelta.max.days:,} days)"
            ) from None
        if interval <= timedelta(0):
            raise ValueError(
                "IntervalTrigger: the interval must be longer than zero "
                "(give at least one of weeks, days, hours, minutes, seconds, microseconds)"
            )

        if timezone is None and isinstance(start_time, datetime) and start_time.tzinfo is not None:
            tz = start_time.tzinfo
        else:
            tz = as_timezone(timezone, field="IntervalTrigger: timezone")
        start = optional_aware_datetime(start_time, tz, field="IntervalTrigger: start_time")
        if start is None:
            start = utc_now() + interval
        end = optional_aware_datetime(end_time, tz, field="IntervalTrigger: end_time")
        if end is not None and end < start:
            raise ValueError(
                f"IntervalTrigger: end_time ({end.isoformat()}) is before start_time "
                f"({start.isoformat()})"
            )

        self.__attrs_init__(
            weeks,
            days,
            hours,
            minutes,
            seconds,
            microseconds,
            start.astimezone(tz),
            end.astimezone(tz) if end is not None else None,
            tz,
            interval,
            start.astimezone(_UTC),
            end.astimezone(_UTC) if end is not None else None,
            _start_defaulted=start_time is None,
        )

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the first ``start_time + k * interval`` (k >= 0) later than ``after``.

        A naive ``after`` is a wall-clock time in the trigger's zone.
        """
        if after is None:
            return self.start_time
        last = self._last_fire
        start = self._start_utc
        interval = self.interval
        try:
            if last is not None and after is last[0]:
                # chained: ``after`` is the fire time returned last
                fire_utc = last[1] + interval
            else:
                try:
                    # aware datetimes in different zones subtract as instants (start is in
                    # UTC, where a plain difference is one too), without the overflow a
                    # conversion can hit
                    elapsed = after - start
                except TypeError:  # a naive ``after``
                    elapsed = aware_in(after, self.timezone) - start
                if elapsed < _ZERO:
                    return self.start_time
                fire_utc = start + (elapsed // interval + 1) * interval
            if self._end_utc is not None and fire_utc > self._end_utc:
                return None
            fire_time = fire_utc.astimezone(self.timezone)
        except OverflowError:  # the next fire time would be past datetime.max
            return None
        # one tuple replaced whole (an atomic store): safe across threads
        object.__setattr__(self, "_last_fire", (fire_time, fire_utc))
        return fire_time

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger."""
        data: dict[str, Any] = {"type": self.type_name}
        for name in _UNITS:
            value = getattr(self, name)
            if value:
                data[name] = value
        data["start_time"] = self.start_time.isoformat()
        data["end_time"] = self.end_time.isoformat() if self.end_time else None
        data["timezone"] = timezone_key(self.timezone)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntervalTrigger:
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(
            data,
            cls.type_name,
            required=("start_time", "timezone"),
            optional=(*_UNITS, "end_time"),
        )
        return build(
            cls.type_name,
            cls,
            **{name: data[name] for name in _UNITS if name in data},
            start_time=data["start_time"],
            end_time=data.get("end_time"),
            timezone=data["timezone"],
        )

    def _argument_text(self) -> list[str]:
        arguments = [f"{name}={getattr(self, name)!r}" for name in _UNITS if getattr(self, name)]
        arguments.append(f"start_time={self.start_time.isoformat(sep=' ')!r}")
        if self.end_time is not None:
            arguments.append(f"end_time={self.end_time.isoformat(sep=' ')!r}")
        return arguments

    def __str__(self) -> str:
        return f"interval[{', '.join(self._argument_text())}]"

    def __repr__(self) -> str:
        arguments = [*self._argument_text(), f"timezone={timezone_text(self.timezone)!r}"]
        return f"IntervalTrigger({', '.join(arguments)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle the constructor's arguments only: the cache is rebuilt on demand
        return _unpickle, (
            {name: getattr(self, name) for name in _UNITS},
            self.start_time,
            self.end_time,
            self.timezone,
        )


def _unpickle(
    units: dict[str, float], start_time: datetime, end_time: datetime | None, timezone: tzinfo
) -> IntervalTrigger:
    return IntervalTrigger(**units, start_time=start_time, end_time=end_time, timezone=timezone)
