"""CronTrigger: fire at the wall-clock times that match cron-style fields."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs

from ..._converters import (
    as_timezone,
    localize,
    optional_aware_datetime,
    timezone_key,
    timezone_text,
    utc_now,
)
from .._descriptions import build, checked_description
from ..base import Trigger
from .fields import (
    FIELD_MINIMUMS,
    FIELD_NAMES,
    CronFieldError,
    error_as_given,
    normalize_expression,
)
from .matcher import CronMatcher, compile_matcher

_ONE_SECOND = timedelta(seconds=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)
_UTC = timezone.utc

FieldValue = int | str | None
# (fire time, its naive UTC instant, the wall time to search from next, the first wall time
# outside a gap that may fire next): see CronTrigger._earliest_fire
_FireState = tuple[datetime, datetime, datetime | None, datetime | None]


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
    :param match_either_day: when both ``day`` and ``day_of_week`` are restricted (given,
        and not ``*``, even if they allow every day), fire on days matching either of them
        (standard cron) instead of both
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
    # the fire time last returned, its naive UTC instant and the wall times a search for
    # the next one starts from (see _earliest_fire): a chained call continues from it
    # instead of converting ``after`` again
    _last_fire: _FireState | None = attrs.field(
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
        given_values = {
            name: value
            for name, value in zip(FIELD_NAMES, values, strict=True)
            if value is not None
        }
        given = {name: normalize_expression(name, value) for name, value in given_values.items()}
        try:
            matcher = compile_matcher(_full_expressions(given), bool(match_either_day))
        except CronFieldError as exc:
            # the matcher parses the normalized (lower case) text: quote the user's instead
            raise error_as_given(exc, given_values[exc.field]) from None

        if timezone is None and isinstance(start_time, datetime) and start_time.tzinfo is not None:
            tz = start_time.tzinfo
        else:
            tz = as_timezone(timezone, field="CronTrigger: timezone")
        start = optional_aware_datetime(start_time, tz, field="CronTrigger: start_time")
        if start is None:
            # now, rounded up to the second: the first fire time is never before creation
            now = utc_now()
            start = now.replace(microsecond=0)
            if now.microsecond:
                start += timedelta(seconds=1)
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
            _start_defaulted=start_time is None,
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
        """Return the earliest fire time later than ``after`` (and not before start_time).

        A naive ``after`` is a wall-clock time in the trigger's zone.
        """
        last = self._last_fire
        # the same wall time and fold in one zone, or the same instant across zones
        if (
            after is not None
            and last is not None
            and (after, after.fold) == (last[0], last[0].fold)
        ):
            threshold, wall, floor = last[1], last[2], last[3]
        else:
            try:
                threshold, wall, floor = self._search_start(after)
            except OverflowError:  # ``after`` is within a day of an end of datetime
                if after is None or after.year > 1970:
                    return None
                threshold, wall, floor = self._search_start(None)
        try:
            found = self._earliest_fire(threshold, wall, floor)
        except OverflowError:  # the next fire time would be past datetime.max
            return None
        if found is None:
            return None
        if self._end_utc is not None and found[1] > self._end_utc:
            return None
        # one tuple replaced whole (an atomic store): safe across threads
        object.__setattr__(self, "_last_fire", found)
        return found[0]

    def _earliest_fire(
        self, threshold: datetime, wall: datetime | None, floor: datetime | None
    ) -> _FireState | None:
        """Return the earliest fire instant later than ``threshold`` (naive UTC).

        Resolving wall times to instants is not monotonic: a wall time in a DST gap fires
        shifted forward by the gap's length, which can put it after wall times just past the
        gap that do exist (02:20 in a 30-minute gap from 02:00 fires at 02:50, after 02:40).
        So the walk goes through matches in wall-clock order from ``wall``, keeps the earliest
        instant of those in a gap, jumps over the rest of each gap, and stops at the first
        match outside any gap at or after ``floor``: no later wall time, in a gap or not,
        resolves to an earlier instant. Wall times before ``floor`` outside a gap resolve to
        instants not later than ``threshold``.

        :return: (fire time, its naive UTC instant, the wall time to search from next and
            the floor for the next search, ``None`` after the last second of datetime), or
            ``None`` when nothing matches any more
        """
        if wall is None or floor is None:  # past the last second of datetime
            return None
        tz = self.timezone
        next_match = self._matcher.next_match
        best: _FireState | None = None
        while True:
            match = next_match(wall)
            if match is None:
                return best
            # the constructor, not datetime.replace(), and tz.utcoffset(), not
            # datetime.utcoffset(): the same values at a fraction of the cost on this hot path
            parts = (match.year, match.month, match.day, match.hour, match.minute, match.second)
            candidate = datetime(*parts, 0, tz)
            offset = tz.utcoffset(candidate)
            assert offset is not None
            fire_utc = match - offset
            later_offset = tz.utcoffset(datetime(*parts, 0, tz, fold=1))
            if later_offset is not None and later_offset > offset:
                # In a gap fold 0 uses the offset from before the gap: that instant, shown on
                # the wall clock after the gap, is the time shifted forward by the gap's length
                if fire_utc > threshold and (best is None or fire_utc < best[1]):
                    shifted = fire_utc.replace(tzinfo=_UTC).astimezone(tz)
                    best = (
                        shifted,
                        fire_utc,
                        match + _ONE_SECOND,
                        shifted.replace(tzinfo=None) + _ONE_SECOND,
                    )
                # later wall times in this gap resolve to later instants still
                wall = max(_transition_end(match, tz), floor)
                continue
            if match < floor:
                wall = floor
                continue
            if fire_utc <= threshold:
                # only after an ``after`` in a DST gap (no wall clock shows one) in the zone:
                # its floor is early
                wall = match + _ONE_SECOND
                continue
            # outside transitions both folds agree; in an overlap fold 0 is the first
            # occurrence, the one that fires
            try:
                next_wall: datetime | None = match + _ONE_SECOND
            except OverflowError:  # the last second of datetime: nothing comes after it
                next_wall = None
            if best is None:
                return candidate, fire_utc, next_wall, next_wall
            if fire_utc < best[1]:
                # the gap's wall time fires later: the next search starts from it again
                assert best[2] is not None
                return candidate, fire_utc, best[2] - _ONE_SECOND, next_wall
            return best

    def _search_start(self, after: datetime | None) -> tuple[datetime, datetime, datetime]:
        """Return the search state for a fresh search: see :meth:`_earliest_fire`.

        That is the naive UTC instant to fire after (floored to the second: fire times are
        whole seconds), the wall time to walk from and the first wall time outside a gap
        that can fire.
        """
        tz = self.timezone
        if after is None:
            reading = None
        elif after.tzinfo is tz and not after.fold:
            # as it is: converting costs more than the rare time in a gap it would normalize
            # (a wall clock never shows one), which the search copes with
            reading = after
        elif after.tzinfo is None or after.tzinfo.utcoffset(after) is None:
            reading = localize(after, tz)
        else:
            # through UTC: a datetime already in the zone comes back as it is from astimezone()
            reading = after.astimezone(_UTC).astimezone(tz)
        offset = tz.utcoffset(reading) if reading is not None else None
        if reading is not None and offset is not None:
            # the constructor, not datetime.replace(): a fraction of the cost
            base = datetime(
                reading.year,
                reading.month,
                reading.day,
                reading.hour,
                reading.minute,
                reading.second,
            )
            threshold = base - offset
        if reading is None or offset is None or threshold < self._start_utc:
            # start_time itself may fire: search from just before it
            before_start = self._start_utc - _ONE_MICROSECOND
            reading = before_start.replace(tzinfo=_UTC).astimezone(tz)
            offset = tz.utcoffset(reading)
            assert offset is not None
            base = reading.replace(tzinfo=None, microsecond=0)
            threshold = base - offset
        floor = base + _ONE_SECOND
        if reading.fold:
            # the second pass of a DST overlap: its wall times fired on the first pass
            floor = _transition_end(floor, tz)
        wall = floor
        # A gap that ended less than its length before ``threshold``: its wall times, shifted
        # forward, fire after ``threshold`` though they are earlier on the wall clock. The
        # wall clock a day earlier shows the offset from before such a gap (no gap in the tz
        # database is longer than a day, and no two offset changes are closer than two days;
        # in a gap fold 0 is the offset before it)
        earlier = tz.utcoffset(reading - _ONE_DAY)
        if earlier is not None and earlier < offset:
            shadow = threshold + earlier + _ONE_SECOND
            if shadow < wall:
                wall = shadow
        return threshold, wall, floor

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
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(
            data,
            cls.type_name,
            required=("start_time", "timezone"),
            optional=(*FIELD_NAMES, "end_time", "match_either_day"),
        )
        return build(
            cls.type_name,
            cls,
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

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle the constructor's arguments only: the shared matcher and the cache of the
        # last fire time are rebuilt on demand (a matcher's years alone are 8,030 ints)
        return _unpickle, (
            dict(self.fields),
            self.start_time,
            self.end_time,
            self.timezone,
            self.match_either_day,
        )

    def __repr__(self) -> str:
        arguments = self._argument_text()
        arguments.append(f"start_time={self.start_time.isoformat(sep=' ')!r}")
        if self.end_time is not None:
            arguments.append(f"end_time={self.end_time.isoformat(sep=' ')!r}")
        arguments.append(f"timezone={timezone_text(self.timezone)!r}")
        if self.match_either_day:
            arguments.append("match_either_day=True")
        return f"CronTrigger({', '.join(arguments)})"


def _unpickle(
    fields: dict[str, str],
    start_time: datetime,
    end_time: datetime | None,
    timezone: tzinfo,
    match_either_day: bool,
) -> CronTrigger:
    return CronTrigger(
        **fields,
        start_time=start_time,
        end_time=end_time,
        timezone=timezone,
        match_either_day=match_either_day,
    )


def _naive_utc(value: datetime) -> datetime:
    """Return an aware datetime as a naive UTC one (cheaper to compare than aware ones).

    Clamped to the range of ``datetime``, like :func:`asched._converters.utc_instant`.
    """
    offset = value.utcoffset()
    naive = value.replace(tzinfo=None)
    if not offset:
        return naive
    try:
        return naive - offset
    except OverflowError:
        return datetime.max if offset < timedelta(0) else datetime.min


def _transition_end(wall: datetime, tz: tzinfo) -> datetime:
    """Return the first whole-second wall time from ``wall`` on outside a DST gap or overlap.

    Inside a gap or an overlap the two folds of a wall time have different offsets; their
    difference is the transition's length, which bounds the search.
    """

    def offsets(value: datetime) -> tuple[timedelta | None, timedelta | None]:
        aware = value.replace(tzinfo=tz)
        return tz.utcoffset(aware), tz.utcoffset(aware.replace(fold=1))

    first, second = offsets(wall)
    if first is None or second is None or first == second:
        return wall
    # wall + low is inside the transition, wall + high past it
    low, high = 0, int(abs(second - first).total_seconds()) + 1
    while high - low > 1:
        middle = (low + high) // 2
        first, second = offsets(wall + timedelta(seconds=middle))
        if first != second:
            low = middle
        else:
            high = middle
    return wall + timedelta(seconds=high)
