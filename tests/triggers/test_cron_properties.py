"""Property tests: CronTrigger against a brute-force oracle that never parses expressions.

The strategy builds each field expression together with the set of values it means, so the
oracle checks instants against plain sets and predicates, independent of the trigger's parser
and search.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from itertools import islice

from hypothesis import given, settings
from hypothesis import strategies as st

from asched.triggers import CronTrigger

UTC = timezone.utc
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Field = tuple[str, frozenset[int]]


def field_parts(low: int, high: int) -> st.SearchStrategy[Field]:
    """One comma-separated part and the values it allows."""
    star = st.just(("*", frozenset(range(low, high + 1))))
    single = st.integers(low, high).map(lambda value: (str(value), frozenset({value})))
    star_step = st.integers(1, high - low + 1).map(
        lambda step: (f"*/{step}", frozenset(range(low, high + 1, step)))
    )

    @st.composite
    def ranged(draw: st.DrawFn) -> Field:
        first = draw(st.integers(low, high))
        last = draw(st.integers(first, high))
        step = draw(st.integers(1, 5))
        text = f"{first}-{last}" if step == 1 else f"{first}-{last}/{step}"
        return text, frozenset(range(first, last + 1, step))

    return st.one_of(star, single, star_step, ranged())


def field_expressions(low: int, high: int) -> st.SearchStrategy[Field]:
    def join(parts: list[Field]) -> Field:
        return ",".join(text for text, _ in parts), frozenset().union(
            *(values for _, values in parts)
        )

    return st.lists(field_parts(low, high), min_size=1, max_size=3).map(join)


DayPredicate = Callable[[date], bool]


@st.composite
def day_fields(draw: st.DrawFn) -> tuple[str, DayPredicate]:
    kind = draw(st.sampled_from(["numbers", "last", "nth", "last weekday"]))
    if kind == "numbers":
        text, values = draw(field_expressions(1, 31))
        return text, lambda day: day.day in values
    if kind == "last":
        return "last", lambda day: day.day == calendar.monthrange(day.year, day.month)[1]
    weekday = draw(st.integers(0, 6))
    if kind == "nth":
        ordinal = draw(st.integers(1, 5))
        text = f"{ordinal}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(ordinal, 'th') } {WEEKDAYS[weekday]}"
        return text, lambda day: day.weekday() == weekday and (day.day - 1) // 7 == ordinal - 1
    return (
        f"last {WEEKDAYS[weekday]}",
        lambda day: (
            day.weekday() == weekday and day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        ),
    )


Oracle = tuple[DayPredicate, frozenset[int], frozenset[int], frozenset[int]]


@st.composite
def cron_specs(draw: st.DrawFn) -> tuple[dict[str, str], Callable[[datetime], bool], Oracle]:
    """Return (fields, instant predicate, (day predicate, hours, minutes, seconds)).

    Every field is given explicitly, so the default rules play no part in the oracle.
    """
    fields: dict[str, str] = {}
    month_text, months = draw(field_expressions(1, 12))
    fields["month"] = month_text
    day_text, day_matches = draw(day_fields())
    fields["day"] = day_text
    weekday_text, weekdays = draw(field_expressions(0, 6))
    fields["day_of_week"] = weekday_text
    hour_text, hours = draw(field_expressions(0, 23))
    minute_text, minutes = draw(field_expressions(0, 59))
    second_text, seconds = draw(field_expressions(0, 59))
    fields.update(hour=hour_text, minute=minute_text, second=second_text)

    def date_matches(day: date) -> bool:
        return day.month in months and day.weekday() in weekdays and day_matches(day)

    def matches(instant: datetime) -> bool:
        return (
            date_matches(instant.date())
            and instant.hour in hours
            and instant.minute in minutes
            and instant.second in seconds
            and instant.microsecond == 0
        )

    return fields, matches, (date_matches, hours, minutes, seconds)


def first_match_between(low: datetime, high: datetime, oracle: Oracle) -> datetime | None:
    """Brute force: the first instant in (low, high) matching, walking only what overlaps."""
    date_matches, hours, minutes, seconds = oracle
    day = low.date()
    while day <= high.date():
        if date_matches(day):
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for hour in range(24):
                hour_start = midnight + timedelta(hours=hour)
                if hour not in hours or hour_start + timedelta(hours=1) <= low:
                    continue
                if hour_start >= high:
                    break
                for minute in range(60):
                    minute_start = hour_start + timedelta(minutes=minute)
                    if minute not in minutes or minute_start + timedelta(minutes=1) <= low:
                        continue
                    if minute_start >= high:
                        break
                    for second in range(60):
                        instant = minute_start + timedelta(seconds=second)
                        if second in seconds and low < instant < high:
                            return instant
        day += timedelta(days=1)
    return None


@settings(max_examples=150, deadline=None)
@given(
    spec=cron_specs(),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)),
)
def test_fire_times_match_increase_and_skip_nothing(
    spec: tuple[dict[str, str], Callable[[datetime], bool], Oracle],
    start: datetime,
) -> None:
    fields, matches, oracle = spec
    after = start.replace(tzinfo=UTC)
    trigger = CronTrigger(**fields, timezone="UTC", start_time="2019-01-01")  # type: ignore[arg-type]

    # bounded: a spec such as "31st of February" never fires, and the search ends by 9999
    fire_times = list(islice(trigger.fire_times(after), 4))
    previous = after
    for fire_time in fire_times:
        assert matches(fire_time), (fields, fire_time)
        assert fire_time > previous
        # the window is bounded by the years the oracle may need to walk
        if fire_time - previous < timedelta(days=3 * 366):
            assert first_match_between(previous, fire_time, oracle) is None, (
                fields,
                previous,
                fire_time,
            )
        previous = fire_time

    if len(fire_times) < 4:
        # exhausted: nothing matches in the next few years either
        horizon = previous + timedelta(days=2 * 366)
        assert first_match_between(previous, horizon, oracle) is None
