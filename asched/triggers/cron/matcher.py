"""Finding the next wall-clock time that matches a set of cron fields.

A :class:`CronMatcher` is compiled once per distinct set of field expressions and shared
(:func:`compile_matcher` is cached), so a million schedules on the same cron expression hold
one matcher between them. The search walks year, month, day and time of day with binary
searches over sorted tuples of allowed values: a few microseconds per fire time whatever the
expression.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import datetime
from functools import lru_cache

from .fields import (
    FIELD_NAMES,
    DaySpec,
    iso_week_days,
    parse_values,
    weekday_days,
)

# Bound on the per-matcher cache of allowed days per (year, month)
_MONTH_CACHE_SIZE = 1024


class CronMatcher:
    """Allowed values of every field, and the search for the next naive match."""

    __slots__ = (
        "_days_by_month",
        "_restricts_weekdays",
        "_restricts_weeks",
        "day_spec",
        "hours",
        "match_either_day",
        "minutes",
        "months",
        "seconds",
        "weekdays",
        "weeks",
        "years",
    )

    def __init__(self, expressions: tuple[str, ...], match_either_day: bool) -> None:
        fields = dict(zip(FIELD_NAMES, expressions, strict=True))
        self.years = parse_values("year", fields["year"])
        self.months = parse_values("month", fields["month"])
        self.day_spec = DaySpec.parse(fields["day"])
        self.weeks = parse_values("week", fields["week"])
        self.weekdays = parse_values("day_of_week", fields["day_of_week"])
        self.hours = parse_values("hour", fields["hour"])
        self.minutes = parse_values("minute", fields["minute"])
        self.seconds = parse_values("second", fields["second"])
        # "either day" only makes sense when both fields are given: with "*" on either, the
        # other decides alone (as in cron, where a field starting with "*" is unrestricted)
        self.match_either_day = (
            match_either_day and fields["day"] != "*" and fields["day_of_week"] != "*"
        )
        self._restricts_weeks = len(self.weeks) < 53
        self._restricts_weekdays = len(self.weekdays) < 7
        self._days_by_month: dict[tuple[int, int], tuple[int, ...]] = {}

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """Return the sorted days of a month matching ``day``, ``week`` and ``day_of_week``."""
        key = (year, month)
        cached = self._days_by_month.get(key)
        if cached is not None:
            return cached

        days = self.day_spec.days_in(year, month)
        # standard cron (from_crontab): either day field may match, even one that allows
        # every weekday ("1-7"); otherwise both must
        if self.match_either_day:
            days |= weekday_days(year, month, self.weekdays)
        elif self._restricts_weekdays:
            days &= weekday_days(year, month, self.weekdays)
        if self._restricts_weeks:
            days &= iso_week_days(year, month, self.weeks)

        result = tuple(sorted(days))
        if len(self._days_by_month) >= _MONTH_CACHE_SIZE:
            self._days_by_month.clear()
        self._days_by_month[key] = result
        return result

    def _time_at_or_after(
        self, hour: int, minute: int, second: int
    ) -> tuple[int, int, int] | None:
        """Return the first allowed time of day at or after the given one, if any."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        hour_index = bisect_left(hours, hour)
        if hour_index == len(hours):
            return None
        if hours[hour_index] != hour:
            return hours[hour_index], minutes[0], seconds[0]

        minute_index = bisect_left(minutes, minute)
        if minute_index < len(minutes):
            if minutes[minute_index] != minute:
                return hour, minutes[minute_index], seconds[0]
            second_index = bisect_left(seconds, second)
            if second_index < len(seconds):
                return hour, minute, seconds[second_index]
            if minute_index + 1 < len(minutes):
                return hour, minutes[minute_index + 1], seconds[0]

        # nothing left in this hour: the next allowed hour, from its first minute
        if hour_index + 1 < len(hours):
            return hours[hour_index + 1], minutes[0], seconds[0]
        return None

    def next_match(self, start: datetime) -> datetime | None:
        """Return the earliest naive datetime at or after ``start`` matching every field.

        ``start`` must be naive with ``microsecond == 0``.
        """
        years, months = self.years, self.months
        year_index = bisect_left(years, start.year)
        # While the candidate shares a prefix with ``start``, the finer fields start from
        # ``start``'s values; once a coarser field moves forward they start from their minimum
        floor_month, floor_day = start.month, start.day
        floor_time = (start.hour, start.minute, start.second)
        while year_index < len(years):
            year = years[year_index]
            if year != start.year:
                floor_month, floor_day, floor_time = 1, 1, (0, 0, 0)
            month_index = bisect_left(months, floor_month)
            while month_index < len(months):
                month = months[month_index]
                if month != floor_month:
                    floor_day, floor_time = 1, (0, 0, 0)
                days = self.days(year, month)
                day_index = bisect_left(days, floor_day)
                while day_index < len(days):
                    day = days[day_index]
                    if day != floor_day:
                        floor_time = (0, 0, 0)
                    time_of_day = self._time_at_or_after(*floor_time)
                    if time_of_day is not None:
                        return datetime(year, month, day, *time_of_day)
                    day_index += 1
                    floor_time = (0, 0, 0)
                month_index += 1
                floor_day, floor_time = 1, (0, 0, 0)
            year_index += 1
        return None


@lru_cache(maxsize=4096)
def compile_matcher(expressions: tuple[str, ...], match_either_day: bool) -> CronMatcher:
    """Return the (shared) matcher for the given field expressions.

    :raises CronFieldError: if an expression is invalid
    """
    return CronMatcher(expressions, match_either_day)
