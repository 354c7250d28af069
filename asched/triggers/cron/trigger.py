"""CronTrigger: fire at the wall-clock times that match cron-style fields."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs

from ..._converters import (
    as_timezone,
    optional_aware_datetime,
    timezone_key,
    utc_now,
)
from ..base import Trigger
from .fields import FIELD_MINIMUMS, FIELD_NAMES, normalize_expression
from .matcher import CronMatcher, compile_matcher

_ONE_SECOND = timedelta(seconds=1)
_UTC = timezone.utc

FieldValue = int | str | None


def _full_expressions(given: dict[str, str]) -> tuple[str, ...]:
    """Fill the fields not given: coarser than the finest given is ``*``, finer its minimum."""
    finest = max((FIELD_NAMES.index(name) for name in given), default=len(FIELD_NAMES))
    return tuple(
        given.get(name, "*" if index < finest else FIELD_MINIMUMS[name])
        for index, name in enumerate(FIELD_NAMES)
    )


@attrs.define(frozen=True, init=False)
class CronTrigger(Trigger):
    """Fire at every wall-clock time matching all the given fields, like cron.

    Each field takes an int or an expression: ``*``, ``*/a``, ``a``, ``a-b``, ``a-b/c``,
    ``a/c``, comma-separated lists of those, weekday names (``mon``-``sun``) on
    ``day_of_week`` and month names (``jan``-``dec``) on ``month``, in any case. ``day`` also
    takes ``1st``-``5th``/``last`` followed by a weekday (``3rd fri``, ``last fri``) and
    ``last`` (the last day of the month). ``week`` is the ISO week (1-53);
    ``day_of_week`` counts from 0 = Monday, as in APScheduler (crontab strings given to
    :meth:`from_crontab` use cron's 0 = Sunday).

    Fields finer than the finest field given start at their minimum, coarser ones are ``*``:
    ``CronTrigger(hour=17)`` fires daily at 17:00:00. When both ``day`` and ``day_of_week``
    are given, a day must match both.

    Times are wall-clock times in ``timezone``: a time that does not exist (DST gap) fires
    at the first instant after the gap, shifted by the gap's length; a time that happens
    twice (DST overlap) fires once, at its first occurrence.

    :param start_time: earliest possible fire time (default: when the trigger is created)
    :param end_time: latest possible fire time (inclusive)
    :param timezone: zone of the wall clock (default: the zone of an aware ``start_time``,
        else the local zone)
    :param match_either_day: when both ``day`` and ``day_of_week`` are restricted, fire on
        days matching either of them (standard cron) instead of both
    :raises ValueError: naming the field and the value, on any invalid expression
    :raises TypeError: on a value of the wrong type
    """

    type_name = "cron"

    fields: tuple[tuple[str, str], ...]
    start_time: datetime
    end_time: datetime | None
    timezone: tzinfo
    match_either_day: bool
    _matcher: CronMatcher = attrs.field(eq=False, repr=False, alias="_matcher")
    # naive UTC copies of start_time and end_time for cheap comparisons on the hot path
    _start_utc: datetime = attrs.field(eq=False, repr=False, alias="_start_utc")
    _end_utc: datetime | None = attrs.field(eq=False, repr=False, alias="_end_utc")
    # (fire time, its naive UTC, its wall-clock match) last returned: a chained call
    # continues from it instead of converting ``after`` again
    _last_fire: tuple[datetime, datetime, datetime] | None = attrs.field(
        eq=False, repr=False, alias="_last_fire", default=None
    )

    def __init__(
        self,
        *,
        year: FieldValue = None,
        month: FieldValue = None,
        day: FieldValue = None,
        week: FieldValue = None,
        day_of_week: FieldValue = None,
        hour: FieldValue = None,
        minute: FieldValue = None,
        second: FieldValue = None,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        timezone: str | tzinfo | None = None,
        match_either_day: bool = False,
    ) -> None:
        values = (year, month, day, week, day_of_week, hour, minute, second)
        given = {
            name: normalize_expression(name, value)
            for name, value in zip(FIELD_NAMES, values, strict=True)
            if value is not None
        }
        matcher = compile_matcher(_full_expressions(given), bool(match_either_day))

        if timezone is None and isinstance(start_time, datetime) and start_time.tzinfo is not None:
            tz = start_time.tzinfo
        else:
            tz = as_timezone(timezone, field="CronTrigger: timezone")
        start = optional_aware_datetime(start_time, tz, field="CronTrigger: start_time")
        if start is None:
            start = utc_now().replace(microsecond=0)
        end = optional_aware_datetime(end_time, tz, field="CronTrigger: end_time")
        if end is not None and end < start:
            raise ValueError(
                f"CronTrigger: end_time ({end.isoformat()}) is before start_time "
                f"({start.isoformat()})"
            )

        self.__attrs_init__(
            tuple(given.items()),
            start.astimezone(tz),
            end.astimezone(tz) if end is not None else None,
            tz,
            bool(match_either_day),
            matcher,
            _naive_utc(start),
            _naive_utc(end) if end is not None else None,
        )

    @classmethod
    def from_crontab(
        cls,
        expression: str,
        *,
        start_time: datetime | date | str | None = None,
        end_time: datetime | date | str | None = None,
        timezone: str | tzinfo | None = None,
    ) -> CronTrigger:
        """Build a trigger from a crontab line.

        Accepts 5 fields (``minute hour day month day_of_week``), 6 fields (``second``
        first) and the shortcuts ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``,
        ``@daily``, ``@midnight`` and ``@hourly``. Weekday numbers follow cron: 0 and 7 are
        Sunday. As in cron, when both day fields are restricted (neither starts with ``*``),
        a day matching either one fires.

        :raises ValueError: naming the expression and what is wrong with it
        """
        from .crontab import crontab_fields

        fields, match_either_day = crontab_fields(expression)
        return cls(
            **fields,
            start_time=start_time,
            end_time=end_time,
            timezone=timezone,
            match_either_day=match_either_day,
        )

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the first matching time later than ``after`` (and not before start_time)."""
        threshold, wall = self._search_start(after)
        tz = self.timezone
        end_utc = self._end_utc
        next_match = self._matcher.next_match
        while True:
            match = next_match(wall)
            if match is None:
                return None
            fire_time, fire_utc = _resolve_wall_time(match, tz)
            if end_utc is not None and fire_utc > end_utc:
                return None
            # A match can resolve to an instant not after ``after``: during a DST overlap's
            # second pass, wall times resolve to their first occurrence, which already passed
            if fire_utc > threshold:
                # one tuple replaced whole (an atomic store): safe across threads
                object.__setattr__(self, "_last_fire", (fire_time, fire_utc, match))
                return fire_time
            wall = match + _ONE_SECOND

    def _search_start(self, after: datetime | None) -> tuple[datetime, datetime]:
        """Return the naive UTC instant to fire after and the naive wall time to search from."""
        last = self._last_fire
        # the same wall time and fold in one zone, or the same instant across zones
        if (
            after is not None
            and last is not None
            and (after, after.fold) == (last[0], last[0].fold)
        ):
            return last[1], last[2] + _ONE_SECOND
        after_utc = _naive_utc(after) if after is not None else None
        if after is None or after_utc is None or after_utc < self._start_utc:
            # start_time itself may fire: search from it, rounded up to a whole second
            wall = self.start_time.replace(tzinfo=None)
            if wall.microsecond:
                wall = wall.replace(microsecond=0) + _ONE_SECOND
            return self._start_utc - timedelta(microseconds=1), wall
        wall = after.astimezone(self.timezone).replace(tzinfo=None, microsecond=0)
        return after_utc, wall + _ONE_SECOND

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger."""
        data: dict[str, Any] = {"type": self.type_name, **dict(self.fields)}
        data["start_time"] = self.start_time.isoformat()
        data["end_time"] = self.end_time.isoformat() if self.end_time else None
        data["timezone"] = timezone_key(self.timezone)
        if self.match_either_day:
            data["match_either_day"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CronTrigger:
        """Rebuild the trigger from :meth:`to_dict` output."""
        return cls(
            **{name: data[name] for name in FIELD_NAMES if name in data},
            start_time=data["start_time"],
            end_time=data.get("end_time"),
            timezone=data["timezone"],
            match_either_day=data.get("match_either_day", False),
        )

    def _argument_text(self) -> list[str]:
        return [f"{name}={value!r}" for name, value in self.fields]

    def __str__(self) -> str:
        arguments = self._argument_text()
        if self.match_either_day:
            arguments.append("match_either_day=True")
        return f"cron[{', '.join(arguments)}]"

    def __repr__(self) -> str:
        arguments = self._argument_text()
        arguments.append(f"start_time={self.start_time.isoformat(sep=' ')!r}")
        if self.end_time is not None:
            arguments.append(f"end_time={self.end_time.isoformat(sep=' ')!r}")
        arguments.append(f"timezone={timezone_key(self.timezone)!r}")
        if self.match_either_day:
            arguments.append("match_either_day=True")
        return f"CronTrigger({', '.join(arguments)})"


def _naive_utc(value: datetime) -> datetime:
    """Return an aware datetime as a naive UTC one (cheaper to compare than aware ones)."""
    offset = value.utcoffset()
    return value.replace(tzinfo=None) - offset if offset else value.replace(tzinfo=None)


def _resolve_wall_time(wall: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """Return the instant a matched wall-clock time fires at, aware and as naive UTC.

    Same rules as :func:`asched._converters.localize`, inlined for speed: outside
    transitions both folds agree; in an overlap fold 0 is the first occurrence; in a gap
    fold 0 uses the offset from before the gap, which shifts the time forward by the gap.
    """
    # the constructor, not datetime.replace(), and tz.utcoffset(), not datetime.utcoffset():
    # the same values at a fraction of the cost on this hot path
    parts = (wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, 0, tz)
    candidate = datetime(*parts)
    offset = tz.utcoffset(candidate)
    assert offset is not None
    fire_utc = wall - offset
    later_offset = tz.utcoffset(datetime(*parts, fold=1))
    if later_offset is None or later_offset <= offset:  # no transition, or an overlap
        return candidate, fire_utc
    return fire_utc.replace(tzinfo=_UTC).astimezone(tz), fire_utc
