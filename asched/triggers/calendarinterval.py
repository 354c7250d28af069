"""CalendarIntervalTrigger: fire every so many calendar days, weeks, months or years."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from datetime import timezone as dt_timezone
from typing import Any

import attrs

from .._converters import (
    as_aware_datetime,
    as_timezone,
    localize,
    timezone_key,
    timezone_text,
    utc_now,
)
from ._descriptions import build, checked_description
from .base import Trigger

_UNITS = ("years", "months", "weeks", "days")
_UTC = dt_timezone.utc
_AVERAGE_MONTH_DAYS = 365.2425 / 12
_LAST_ORDINAL = date.max.toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_DAY = timedelta(days=1)


def _as_date(value: date | str | None, field: str, tz: tzinfo) -> date | None:
    """Return the date ``value`` names on the wall clock of ``tz``.

    An aware datetime (or an ISO string with an offset) counts by its date in ``tz``; a
    naive one by its own date. The time of day of a datetime is not used.
    """
    if value is None:
        return None
    instant = as_aware_datetime(value, tz, field=f"CalendarIntervalTrigger: {field}")
    return instant.astimezone(tz).date()


@attrs.define(frozen=True, init=False)
class CalendarIntervalTrigger(Trigger):
    """Fire at a wall-clock time on ``start_date`` and every calendar interval after it.

    The n-th fire date is ``start_date`` plus n times (``years``, ``months``, ``weeks``,
    ``days``), computed from ``start_date`` each time so month ends never drift. A date that
    does not exist (January 31st plus one month) is skipped, not clamped. The time of day
    follows the wall clock across DST changes: a time in a DST gap fires shifted forward by
    the gap, an ambiguous time fires once, at its first occurrence.

    :param hour: hour of the day to fire at (0-23)
    :param minute: minute of the hour (0-59)
    :param second: second of the minute (0-59)
    :param start_date: the first date (default: today in ``timezone``); an aware datetime
        counts by its date in ``timezone``
    :param end_date: the last possible date (inclusive)
    :param timezone: zone of the wall clock (default: the zone of an aware ``start_date``
        datetime, else the local zone)
    :raises ValueError: on an all-zero or negative interval, a time out of range, or
        ``end_date`` before ``start_date``
    :raises TypeError: if an interval or time field is not an int
    """

    type_name = "calendarinterval"

    years: int
    months: int
    weeks: int
    days: int
    hour: int
    minute: int
    second: int
    start_date: date
    end_date: date | None
    timezone: tzinfo
    _time_of_day: time = attrs.field(eq=False, repr=False, alias="_time_of_day")
    _time_of_day_fold: time = attrs.field(eq=False, repr=False, alias="_time_of_day_fold")
    # the step in whole months (years and months) and in days (weeks and days)
    _step_months: int = attrs.field(eq=False, repr=False, alias="_step_months")
    _step_days: int = attrs.field(eq=False, repr=False, alias="_step_days")
    # (fire time, step, whether a DST gap shifted it) last returned: chained calls continue
    # from it instead of searching
    _last_fire: tuple[datetime, int, bool] | None = attrs.field(
        eq=False, repr=False, alias="_last_fire", default=None
    )
    # whether start_date was left out, so defaulted to the creation time: an identical
    # trigger made later differs only in it (see AsyncScheduler.scheduled_job)
    _start_defaulted: bool = attrs.field(
        eq=False, repr=False, alias="_start_defaulted", default=False
    )

    def __init__(
        self,
        *,
        years: int = 0,
        months: int = 0,
        weeks: int = 0,
        days: int = 0,
        hour: int = 0,
        minute: int = 0,
        second: int = 0,
        start_date: date | str | None = None,
        end_date: date | str | None = None,
        timezone: str | tzinfo | None = None,
    ) -> None:
        for name, value in zip(_UNITS, (years, months, weeks, days), strict=True):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"CalendarIntervalTrigger: {name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(
                    f"CalendarIntervalTrigger: {name} must not be negative, got {value!r}"
                )
        if not (years or months or weeks or days):
            raise ValueError(
                "CalendarIntervalTrigger: the interval must be longer than zero "
                "(give at least one of years, months, weeks, days)"
            )
        for name, value, high in (
            ("hour", hour, 23),
            ("minute", minute, 59),
            ("second", second, 59),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"CalendarIntervalTrigger: {name} must be an int, got {value!r}")
            if not 0 <= value <= high:
                raise ValueError(
                    f"CalendarIntervalTrigger: invalid value {value!r} for {name!r} "
                    f"(expected 0-{high})"
                )

        if timezone is None and isinstance(start_date, datetime) and start_date.tzinfo is not None:
            tz = start_date.tzinfo  # as CronTrigger and IntervalTrigger do
        else:
            tz = as_timezone(timezone, field="CalendarIntervalTrigger: timezone")
        start = _as_date(start_date, "start_date", tz) or utc_now().astimezone(tz).date()
        end = _as_date(end_date, "end_date", tz)
        if end is not None and end < start:
            raise ValueError(
                f"CalendarIntervalTrigger: end_date ({end}) is before start_date ({start})"
            )
        self.__attrs_init__(
            years,
            months,
            weeks,
            days,
            hour,
            minute,
            second,
            start,
            end,
            tz,
            time(hour, minute, second),
            time(hour, minute, second, fold=1),
            years * 12 + months,
            weeks * 7 + days,
            _start_defaulted=start_date is None,
        )

    def _date_at(self, step: int) -> date | None:
        """Return the date ``step`` intervals after start_date, or None if it doesn't exist."""
        start = self.start_date
        step_days = self._step_days * step
        months = self._step_months
        if not months:
            ordinal = start.toordinal() + step_days
            return date.fromordinal(ordinal) if ordinal <= _LAST_ORDINAL else None
        month_index = start.month - 1 + months * step
        year = start.year + month_index // 12
        if year > 9999:
            return None
        try:
            # the constructor, not date.replace(): several times faster on this hot path
            shifted = date(year, month_index % 12 + 1, start.day)
        except ValueError:
            return None  # the day does not exist in that month: skipped
        if not step_days:
            return shifted
        ordinal = shifted.toordinal() + step_days
        return date.fromordinal(ordinal) if ordinal <= _LAST_ORDINAL else None

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        """Return the first fire time later than ``after`` (the first one if ``None``).

        A naive ``after`` is a wall-clock time in the trigger's zone.
        """
        try:
            last = self._last_fire
            if after is not None and last is not None and after == last[0] and not last[2]:
                # Chained call: ``after`` is the fire time this trigger returned last (possibly
                # its DST fold twin, at most hours later); every later step is days after it,
                # unless the last one was shifted forward by a DST gap (up to a day)
                return self._first_fire(last[1] + 1, None, None, None)

            # Estimate the step from the calendar distance, then walk: a step that lands on a
            # missing date (Feb 30) is skipped, never clamped
            if after is None:
                return self._first_fire(0, None, None, None)
            tz = self.timezone
            if after.tzinfo is tz:
                # as it is, even a time in a DST gap (no wall clock shows one): converting costs
                # more than the check that copes with it
                after_local = after
                after_is_reading = False
            elif after.tzinfo is None or after.utcoffset() is None:
                after = after_local = localize(after, tz)
                after_is_reading = True
            else:
                try:
                    after_local = after.astimezone(tz)
                except OverflowError:  # at an end of datetime, in the zone
                    return self._first_fire(0, None, None, None) if after.year < 1970 else None
                after_is_reading = True
            after_date = after_local.date()
            # outside a DST overlap's second pass, a fire time equal to ``after`` on the wall
            # clock is ``after`` itself (the common case: ``after`` is the previous fire time);
            # datetimes sharing a tzinfo compare as wall-clock times
            after_wall = after_local if not after_local.fold else None
            # Calm: the zone's offset is the same a day before and a day after ``after`` on the
            # wall clock, so no DST change is near (none in the tz database comes within two days
            # of another). Then ``after`` is a wall-clock reading, not a time in a gap, and a fire
            # time on its date at a wall-clock time not after its own is not later
            after_time: time | None = None
            if after_wall is not None:
                try:
                    if tz.utcoffset(after_local - _ONE_DAY) == tz.utcoffset(
                        after_local + _ONE_DAY
                    ):
                        after_time = after_local.time()
                except OverflowError:  # within a day of an end of datetime
                    pass
            if after_time is not None:
                step = self._step_after(after_date, after_time)
                if step is not None:
                    # every fire time from that step on is later than ``after``
                    return self._first_fire(step, None, None, None)
                earliest_date = after_date
            else:
                # A time in a DST gap fires shifted forward by the gap's length, at most a day
                # (the longest gap in the tz database): the day before ``after``'s can still fire
                # after it
                earliest_date = after_date - _ONE_DAY if after_date > date.min else after_date
            return self._first_fire(
                self._step_near(earliest_date),
                after,
                earliest_date,
                after_wall,
                after_is_reading or after_time is not None,
                after_time,
            )
        except OverflowError:  # the next fire time would be past datetime.max
            return None

    def _first_fire(
        self,
        step: int,
        after: datetime | None,
        earliest_date: date | None,
        after_wall: datetime | None,
        after_is_reading: bool = False,
        earliest_time: time | None = None,
    ) -> datetime | None:
        """Walk the steps from ``step`` to the first fire time later than ``after``.

        ``after`` comes (unless ``None``: the first fire time from ``step``) with the first
        date that can fire after it and, unless it is in the second pass of a DST overlap,
        itself in the trigger's zone (``after_is_reading``: as a wall clock shows it, which
        a time in a DST gap is not); ``earliest_time``: a fire time on ``earliest_date`` at
        a wall-clock time not after it is not later than ``after`` either.
        """
        tz = self.timezone
        time_of_day = self._time_of_day
        # A run of missing dates is short (a yearly Feb 29 skips 3 steps of 4): bounded
        misses = 0
        while misses < 48:
            fire_date = self._date_at(step)
            step += 1
            if fire_date is None:
                if self._past_the_end(step - 1):
                    return None
                misses += 1
                continue
            if self.end_date is not None and fire_date > self.end_date:
                return None
            misses = 0
            if earliest_date is not None and fire_date <= earliest_date:
                # certainly not later than ``after``: no need to localize it
                if fire_date < earliest_date:
                    continue
                if earliest_time is not None and time_of_day <= earliest_time:
                    continue

            # combine() and tz.utcoffset() rather than replace() and datetime.utcoffset():
            # the same values at a fraction of the cost on this hot path
            fire_time = datetime.combine(fire_date, time_of_day, tz)
            offset = tz.utcoffset(fire_time)
            # fold=1 gives a larger offset than fold=0 only inside a gap: rare, done the
            # long way (see localize)
            later_offset = tz.utcoffset(datetime.combine(fire_date, self._time_of_day_fold, tz))
            shifted = offset is not None and later_offset is not None and later_offset > offset
            if shifted:
                fire_time = localize(datetime.combine(fire_date, time_of_day), tz)
            if fire_date.year == 9999:
                fire_time.astimezone(_UTC)  # OverflowError if the instant is past datetime.max
            if after is not None:
                # Outside a gap, fire times are the first occurrences of their wall-clock
                # times, and so is ``after_wall``: the wall clock orders them as time does
                # (datetimes sharing a tzinfo compare on it). An ``after`` given in the zone
                # may be a time in a gap, which no wall clock shows: any earlier wall time
                # outside the gap is earlier, but a later one may not be later
                by_wall = after_wall is not None and not shifted
                if after_wall is not None and not shifted and fire_time <= after_wall:
                    continue
                # compared as instants: a difference across zones is one of instants (in UTC
                # a plain one is too), and unlike a conversion it never overflows
                if not (by_wall and after_is_reading) and fire_time - _EPOCH <= after - _EPOCH:
                    continue
            # a cache of one entry, replaced whole (one atomic store): safe across threads
            object.__setattr__(self, "_last_fire", (fire_time, step - 1, shifted))
            return fire_time
        return None

    def _step_after(self, local_date: date, local_time: time) -> int | None:
        """Return the first step firing later than ``local_time`` on ``local_date``.

        Only for a time far from any DST change, and for steps of whole months or whole days
        (``None`` for a mix of both, whose step is only estimated).
        """
        start = self.start_date
        months = self._step_months
        if months:
            if self._step_days:
                return None
            span = (local_date.year - start.year) * 12 + local_date.month - start.month
            if span < 0:
                return 0
            step = span // months
            if span % months:
                return step + 1  # the step's date is in an earlier month
            # the step's date is in ``local_date``'s month: is it (or was it) that day?
            day = start.day
            if day < local_date.day or (day == local_date.day and self._time_of_day <= local_time):
                return step + 1
            return step
        span = (local_date - start).days
        if span < 0:
            return 0
        step_days = self._step_days
        step = span // step_days
        if span % step_days or self._time_of_day <= local_time:
            return step + 1  # the step's date is earlier, or its time on that date is
        return step

    def _step_near(self, local_date: date) -> int:
        """Return the step to search from: no later fire date than ``local_date``'s is skipped."""
        months = self._step_months
        step_days = self._step_days
        if not step_days:
            month_span = (local_date.year - self.start_date.year) * 12 + (
                local_date.month - self.start_date.month
            )
            return max(0, month_span // months)
        span_days = (local_date - self.start_date).days
        if not months:
            return max(0, span_days // step_days)
        # Cumulative month lengths stay within a few days of the average, so two steps early
        # never overshoots
        return max(0, int(span_days / (months * _AVERAGE_MONTH_DAYS + step_days)) - 2)

    def _past_the_end(self, step: int) -> bool:
        month_index = self.start_date.month - 1 + self._step_months * step
        year = self.start_date.year + month_index // 12
        if year > 9999:
            return True
        step_days = self._step_days * step
        if date(year, month_index % 12 + 1, 1).toordinal() + step_days > _LAST_ORDINAL:
            return True  # past the last date there is
        if self.end_date is None:
            return False
        return (year, month_index % 12 + 1) > (self.end_date.year, self.end_date.month)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict describing this trigger."""
        data: dict[str, Any] = {"type": self.type_name}
        data.update({name: getattr(self, name) for name in _UNITS if getattr(self, name)})
        data.update(hour=self.hour, minute=self.minute, second=self.second)
        data["start_date"] = self.start_date.isoformat()
        data["end_date"] = self.end_date.isoformat() if self.end_date else None
        data["timezone"] = timezone_key(self.timezone)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalendarIntervalTrigger:
        """Rebuild the trigger from :meth:`to_dict` output.

        :raises ValueError: naming the key, if the description is incomplete or invalid
        """
        data = checked_description(
            data,
            cls.type_name,
            required=("start_date", "timezone"),
            optional=(*_UNITS, "hour", "minute", "second", "end_date"),
        )
        return build(
            cls.type_name,
            cls,
            **{name: data[name] for name in _UNITS if name in data},
            hour=data.get("hour", 0),
            minute=data.get("minute", 0),
            second=data.get("second", 0),
            start_date=data["start_date"],
            end_date=data.get("end_date"),
            timezone=data["timezone"],
        )

    def _argument_text(self) -> list[str]:
        # the constructor's arguments, those left at their default (0) out
        arguments = [f"{name}={getattr(self, name)}" for name in _ARGUMENTS if getattr(self, name)]
        arguments.append(f"start_date='{self.start_date}'")
        if self.end_date is not None:
            arguments.append(f"end_date='{self.end_date}'")
        return arguments

    def __str__(self) -> str:
        return f"calendarinterval[{', '.join(self._argument_text())}]"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle the constructor's arguments only: the cache is rebuilt on demand
        return _unpickle, (
            {name: getattr(self, name) for name in _ARGUMENTS},
            self.start_date,
            self.end_date,
            self.timezone,
        )

    def __repr__(self) -> str:
        arguments = [*self._argument_text(), f"timezone={timezone_text(self.timezone)!r}"]
        return f"CalendarIntervalTrigger({', '.join(arguments)})"


_ARGUMENTS = (*_UNITS, "hour", "minute", "second")


def _unpickle(
    arguments: dict[str, int], start_date: date, end_date: date | None, timezone: tzinfo
) -> CalendarIntervalTrigger:
    return CalendarIntervalTrigger(
        **arguments, start_date=start_date, end_date=end_date, timezone=timezone
    )
