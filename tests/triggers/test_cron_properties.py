"""Property tests: CronTrigger against a brute-force oracle that never parses expressions.

The strategies build each field expression together with the values it means, so the oracle
checks wall-clock times against plain sets and predicates, independent of the trigger's
parser and search. The oracle also resolves wall-clock times to instants on its own, from the
zone's UTC offsets only: a wall time that exists fires at its first occurrence; one that does
not (a DST gap) fires shifted forward by the gap's length. It enumerates every matching wall
time (per second) in a window, resolves each, sorts and dedupes them, and the trigger must
return exactly those instants, strictly increasing, chained or searching from scratch.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from asched.triggers import CronTrigger, trigger_from_dict

UTC = timezone.utc
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# crontab numbering: 0 (and 7) = Sunday
CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham")
SPAN = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2033, 1, 1, tzinfo=UTC))
# fire times checked per example: at least MIN_FIRE_TIMES, and all of those in the first
# WINDOW after ``after`` (so a DST change near it is covered), at most MAX_FIRE_TIMES
MIN_FIRE_TIMES = 5
MAX_FIRE_TIMES = 400
WINDOW = timedelta(hours=6)
# how far to look for a fire time the trigger missed once it says it is exhausted
HORIZON = timedelta(days=3 * 366)
# windows longer than this are only checked up to it (sparse specs fire decades apart)
LONGEST_WINDOW = timedelta(days=30 * 366)

Field = tuple[str, frozenset[int]]
DayPredicate = Callable[[date], bool]


def _offset_at(instant: datetime, tz: ZoneInfo) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _transitions(tz: ZoneInfo) -> list[datetime]:
    """UTC instants in SPAN where the zone's offset changes, to the second."""
    found = []
    instant, end = SPAN
    step = timedelta(days=1)
    while instant < end:
        following = instant + step
        if _offset_at(following, tz) != _offset_at(instant, tz):
            low, high = instant, following  # the change is in (low, high]
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) // 2
                if _offset_at(middle, tz) == _offset_at(low, tz):
                    low = middle
                else:
                    high = middle
            found.append(high)
        instant = following
    return found


TRANSITIONS = {zone: _transitions(ZoneInfo(zone)) for zone in ZONES}
OFFSETS = {
    zone: sorted(
        {_offset_at(SPAN[0], ZoneInfo(zone))}
        | {_offset_at(t, ZoneInfo(zone)) for t in TRANSITIONS[zone]}
    )
    for zone in ZONES
}
# the oracle's gap rule below assumes one standard and one daylight offset per zone
assert all(len(offsets) <= 2 for offsets in OFFSETS.values())


# --- field strategies: (expression text, allowed values) ---------------------------------


def _token(draw: st.DrawFn, value: int, names: tuple[str, ...] | None, first: int) -> str:
    if names is not None and draw(st.booleans()):
        name = names[value - first]
        return draw(st.sampled_from([name, name.upper(), name.title()]))
    return str(value)


@st.composite
def field_part(
    draw: st.DrawFn,
    low: int,
    high: int,
    *,
    picks: tuple[int, int] | None = None,
    names: tuple[str, ...] | None = None,
    names_from: int | None = None,
    slash_start: bool = True,
) -> Field:
    """One comma-separated part and the values it allows; numbers drawn from ``picks``."""
    pick_low, pick_high = picks or (low, high)
    name_first = low if names_from is None else names_from
    # names exist for values name_first .. name_first + len(names) - 1 only
    named = names if names is not None else None

    def token(value: int) -> str:
        if named is not None and name_first <= value < name_first + len(named):
            return _token(draw, value, named, name_first)
        return str(value)

    kinds = ["star", "star step", "single", "range", "range step"]
    if slash_start:
        kinds.append("start step")
    kind = draw(st.sampled_from(kinds))
    if kind == "star":
        return "*", frozenset(range(low, high + 1))
    if kind == "star step":
        step = draw(st.integers(1, min(high - low + 1, 12)))
        return f"*/{step}", frozenset(range(low, high + 1, step))
    first = draw(st.integers(pick_low, pick_high))
    if kind == "single":
        return token(first), frozenset({first})
    step = draw(st.integers(1, 7))
    if kind == "start step":
        return f"{token(first)}/{step}", frozenset(range(first, high + 1, step))
    last = draw(st.integers(first, pick_high))
    text = f"{token(first)}-{token(last)}"
    if kind == "range step":
        return f"{text}/{step}", frozenset(range(first, last + 1, step))
    return text, frozenset(range(first, last + 1))


def field_expression(part: st.SearchStrategy[Field]) -> st.SearchStrategy[Field]:
    def join(parts: list[Field]) -> Field:
        return ",".join(text for text, _ in parts), frozenset().union(*(v for _, v in parts))

    return st.lists(part, min_size=1, max_size=3).map(join)


def _ordinal(number: int) -> str:
    return f"{number}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(number, 'th') }"


def _month_length(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


@st.composite
def day_part(draw: st.DrawFn) -> tuple[str, DayPredicate]:
    kind = draw(st.sampled_from(["numbers", "last", "nth", "last weekday"]))
    if kind == "numbers":
        text, values = draw(field_part(1, 31))
        return text, lambda day: day.day in values
    if kind == "last":
        return "last", lambda day: day.day == _month_length(day)
    weekday = draw(st.integers(0, 6))
    name = draw(
        st.sampled_from([WEEKDAYS[weekday], WEEKDAYS[weekday].upper(), calendar.day_name[weekday]])
    )
    if kind == "nth":
        ordinal = draw(st.integers(1, 5))
        return (
            f"{_ordinal(ordinal)} {name}",
            lambda day: day.weekday() == weekday and (day.day - 1) // 7 == ordinal - 1,
        )
    return (
        f"last {name}",
        lambda day: day.weekday() == weekday and day.day + 7 > _month_length(day),
    )


@st.composite
def day_expression(draw: st.DrawFn) -> tuple[str, DayPredicate]:
    parts = draw(st.lists(day_part(), min_size=1, max_size=3))
    predicates = [predicate for _, predicate in parts]
    return ",".join(text for text, _ in parts), lambda day: any(p(day) for p in predicates)


# --- the oracle -----------------------------------------------------------------------------


def _compact(values: frozenset[int] | tuple[int, ...]) -> str:
    ordered = sorted(values)
    if len(ordered) > 8:
        return f"{ordered[:4]}...{ordered[-2:]} ({len(ordered)} values)"
    return str(ordered)


@dataclass(frozen=True, repr=False)
class Spec:
    """What a trigger should match, as plain sets and predicates."""

    years: frozenset[int]
    months: frozenset[int]
    day: DayPredicate
    weeks: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday
    hours: tuple[int, ...]
    minutes: tuple[int, ...]
    seconds: tuple[int, ...]
    either_day: bool  # a day matching ``day`` or ``weekdays`` fires (cron's rule)

    def __repr__(self) -> str:
        sets = ("years", "months", "weeks", "weekdays", "hours", "minutes", "seconds")
        shown = ", ".join(f"{name}={_compact(getattr(self, name))}" for name in sets)
        return f"Spec({shown}, either_day={self.either_day})"

    def date_matches(self, day: date) -> bool:
        if day.year not in self.years or day.month not in self.months:
            return False
        if day.isocalendar()[1] not in self.weeks:
            return False
        if self.either_day:
            return self.day(day) or day.weekday() in self.weekdays
        return self.day(day) and day.weekday() in self.weekdays

    def walls(self, low: datetime, high: datetime) -> Iterator[datetime]:
        """Matching naive wall-clock times in [low, high], ascending."""
        day = low.date()
        while day <= high.date():
            if self.date_matches(day):
                midnight = datetime(day.year, day.month, day.day)
                for hour in self.hours:
                    hour_start = midnight + timedelta(hours=hour)
                    if hour_start > high:
                        break
                    if hour_start + timedelta(hours=1) <= low:
                        continue
                    for minute in self.minutes:
                        minute_start = hour_start + timedelta(minutes=minute)
                        if minute_start > high:
                            break
                        if minute_start + timedelta(minutes=1) <= low:
                            continue
                        for second in self.seconds:
                            wall = minute_start + timedelta(seconds=second)
                            if low <= wall <= high:
                                yield wall
            day += timedelta(days=1)


def resolve(wall: datetime, zone: str) -> datetime:
    """The instant a matching wall-clock time fires at, by the DST rules, from offsets only."""
    tz = ZoneInfo(zone)
    offsets = OFFSETS[zone]
    occurrences = [
        wall - offset
        for offset in offsets
        if (wall - offset).replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None) == wall
    ]
    if occurrences:
        return min(occurrences).replace(tzinfo=UTC)  # the first occurrence
    # In a gap: the clock jumped from ``before`` to ``after`` across it; the time fires shifted
    # forward by the jump, at the instant whose wall clock shows ``wall + jump``
    before = _offset_at((wall - offsets[-1]).replace(tzinfo=UTC), tz)
    after = _offset_at((wall - offsets[0]).replace(tzinfo=UTC), tz)
    jump = after - before
    assert jump > timedelta(0), wall
    instant = (wall - before).replace(tzinfo=UTC)
    assert instant.astimezone(tz).replace(tzinfo=None) == wall + jump
    return instant


def oracle(spec: Spec, zone: str, after: datetime, until: datetime) -> list[datetime]:
    """Every fire instant in (after, until], sorted, once each."""
    low_offset, high_offset = OFFSETS[zone][0], OFFSETS[zone][-1]
    naive_after = after.astimezone(UTC).replace(tzinfo=None)
    naive_until = until.astimezone(UTC).replace(tzinfo=None)
    # a wall time fires at wall - offset for one of the zone's offsets
    walls = spec.walls(naive_after + low_offset, naive_until + high_offset)
    instants = {resolve(wall, zone) for wall in walls}
    return sorted(instant for instant in instants if after < instant <= until)


def check(trigger: CronTrigger, spec: Spec, zone: str, after: datetime | None) -> None:
    """The trigger's fire times after ``after`` (from start_time if None) are the oracle's."""
    tz = ZoneInfo(zone)
    # in UTC: arithmetic on an aware datetime is wall-clock arithmetic, which loses the fold
    if after is not None:
        since = after.astimezone(UTC)
    else:
        since = trigger.start_time.astimezone(UTC) - timedelta(microseconds=1)
    fire_times: list[datetime] = []
    for value in islice(trigger.fire_times(after), MAX_FIRE_TIMES):
        fire_times.append(value)
        if len(fire_times) >= MIN_FIRE_TIMES and value.astimezone(UTC) > since + WINDOW:
            break
    exhausted = len(fire_times) < MIN_FIRE_TIMES
    instants = [value.astimezone(UTC) for value in fire_times]
    assert all(a < b for a, b in zip([since, *instants], instants, strict=False))
    for value, instant in zip(fire_times, instants, strict=True):
        # in the trigger's zone, with the offset the zone has at that instant
        assert value.tzinfo == trigger.timezone
        assert value.utcoffset() == _offset_at(instant, tz)

    if exhausted:
        until = (instants[-1] if instants else since) + HORIZON
    else:
        until = min(instants[-1], since + LONGEST_WINDOW)
    expected = oracle(spec, zone, since, until)
    assert [instant for instant in instants if instant <= until] == expected

    # searching from scratch (a rebuilt trigger, no chained state) gives the same answers
    # (as instants: an ambiguous wall time never equals a datetime in another zone)
    data = trigger.to_dict()

    def fresh(after: datetime) -> datetime | None:
        value = trigger_from_dict(data).next_fire_time(after)
        return None if value is None else value.astimezone(UTC)

    for previous, following in zip([since, *instants], instants, strict=False):
        assert fresh(previous) == following
        assert fresh(following - timedelta(microseconds=1)) == following


@st.composite
def instants_near_transitions(draw: st.DrawFn, zone: str) -> datetime:
    """An instant, often just before or within a day and a half of a DST transition."""
    transitions = TRANSITIONS[zone]
    kind = draw(st.integers(0, 3)) if transitions else 0
    if kind:
        base = draw(st.sampled_from(transitions))
        if kind == 1:
            seconds = draw(st.integers(-36 * 3600, 36 * 3600))
        else:  # the next WINDOW then covers the transition
            seconds = draw(st.integers(-4 * 3600, 3600))
    else:
        base = datetime(2020, 1, 1, tzinfo=UTC)
        seconds = draw(st.integers(0, 10 * 366 * 86400))
    microsecond = draw(st.sampled_from([0, 0, 0, 1, 500_000, 999_999]))
    return base + timedelta(seconds=seconds, microseconds=microsecond)


# --- keyword fields --------------------------------------------------------------------------

KEYWORD_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")


@st.composite
def keyword_specs(draw: st.DrawFn) -> tuple[dict[str, object], Spec]:
    """Keyword fields, some left unset (the defaults apply), and what they mean."""
    given: dict[str, Field | tuple[str, DayPredicate]] = {}
    strategies: dict[str, st.SearchStrategy[object]] = {
        "year": field_expression(field_part(1970, 9999, picks=(2018, 2036))),
        "month": field_expression(field_part(1, 12, names=MONTHS)),
        "day": day_expression(),
        "week": field_expression(field_part(1, 53)),
        "day_of_week": field_expression(field_part(0, 6, names=WEEKDAYS)),
        "hour": field_expression(field_part(0, 23)),
        "minute": field_expression(field_part(0, 59)),
        "second": field_expression(field_part(0, 59)),
    }
    for name in KEYWORD_FIELDS:
        # most fields unset, so the defaults play their part; week rarely set
        if draw(st.integers(0, 9 if name == "week" else 2)) == 0:
            given[name] = draw(strategies[name])  # type: ignore[assignment]

    # Unset fields finer than the finest set one are at their minimum, coarser ones are "*";
    # week and day_of_week are "*" unless set
    finest = max((KEYWORD_FIELDS.index(name) for name in given), default=len(KEYWORD_FIELDS))

    def values(name: str, low: int, high: int, minimum: int | None) -> frozenset[int]:
        if name in given:
            return given[name][1]  # type: ignore[return-value]
        if KEYWORD_FIELDS.index(name) < finest or minimum is None:
            return frozenset(range(low, high + 1))
        return frozenset({minimum})

    def text(name: str, minimum: str) -> str:
        if name in given:
            return str(given[name][0])
        return "*" if KEYWORD_FIELDS.index(name) < finest else minimum

    if "day" in given:
        day: DayPredicate = given["day"][1]  # type: ignore[assignment]
    elif KEYWORD_FIELDS.index("day") < finest:
        day = lambda _: True  # noqa: E731
    else:
        day = lambda value: value.day == 1  # noqa: E731

    match_either_day = draw(st.booleans())
    spec = Spec(
        years=values("year", 1970, 9999, None),
        months=values("month", 1, 12, 1),
        day=day,
        weeks=values("week", 1, 53, None),
        weekdays=values("day_of_week", 0, 6, None),
        hours=tuple(sorted(values("hour", 0, 23, 0))),
        minutes=tuple(sorted(values("minute", 0, 59, 0))),
        seconds=tuple(sorted(values("second", 0, 59, 0))),
        # either-day applies only when neither day field is "*"
        either_day=match_either_day
        and text("day", "1") != "*"
        and text("day_of_week", "*") != "*",
    )
    fields: dict[str, object] = {name: value[0] for name, value in given.items()}
    fields["match_either_day"] = match_either_day
    return fields, spec


@st.composite
def keyword_cases(draw: st.DrawFn) -> tuple[dict[str, object], Spec, str, datetime, bool]:
    fields, spec = draw(keyword_specs())
    zone = draw(st.sampled_from(ZONES))
    return fields, spec, zone, draw(instants_near_transitions(zone)), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(case=keyword_cases())
def test_keyword_fields_fire_at_exactly_the_oracle_instants(
    case: tuple[dict[str, object], Spec, str, datetime, bool],
) -> None:
    fields, spec, zone, instant, from_start = case
    if from_start:
        # the instant is start_time: it may fire itself
        trigger = CronTrigger(**fields, timezone=zone, start_time=instant)  # type: ignore[arg-type]
        check(trigger, spec, zone, None)
    else:
        trigger = CronTrigger(**fields, timezone=zone, start_time="2019-01-01")  # type: ignore[arg-type]
        check(trigger, spec, zone, instant)


# --- crontab lines ---------------------------------------------------------------------------


def crontab_field(
    low: int, high: int, names: tuple[str, ...] | None = None
) -> st.SearchStrategy[Field]:
    # cron has no "a/c" (a step needs "*" or a range before it)
    return field_expression(field_part(low, high, names=names, slash_start=False))


@st.composite
def crontab_weekdays(draw: st.DrawFn) -> Field:
    """A crontab day-of-week field (0-7, 0 and 7 Sunday; names sun-sat) and its weekdays."""
    text, numbers = draw(crontab_field(0, 7, names=CRON_WEEKDAYS))
    return text, frozenset((number + 6) % 7 for number in numbers)


@st.composite
def crontab_cases(draw: st.DrawFn) -> tuple[str, Spec, str, datetime]:
    seconds_text, seconds = draw(crontab_field(0, 59)) if draw(st.booleans()) else ("", {0})
    minute_text, minutes = draw(crontab_field(0, 59))
    hour_text, hours = draw(crontab_field(0, 23))
    day_text, days = draw(crontab_field(1, 31))
    month_text, months = draw(crontab_field(1, 12, names=MONTHS))
    weekday_text, weekdays = draw(crontab_weekdays())
    line = " ".join(
        text
        for text in (seconds_text, minute_text, hour_text, day_text, month_text, weekday_text)
        if text
    )
    spec = Spec(
        years=frozenset(range(1970, 10000)),
        months=months,
        day=lambda day: day.day in days,
        weeks=frozenset(range(1, 54)),
        weekdays=weekdays,
        hours=tuple(sorted(hours)),
        minutes=tuple(sorted(minutes)),
        seconds=tuple(sorted(seconds)),
        # cron: a field is unrestricted when it starts with "*"; both restricted -> either
        either_day=not day_text.startswith("*") and not weekday_text.startswith("*"),
    )
    zone = draw(st.sampled_from(ZONES))
    return line, spec, zone, draw(instants_near_transitions(zone))


@settings(max_examples=100, deadline=None)
@given(case=crontab_cases())
def test_crontab_lines_fire_at_exactly_the_oracle_instants(
    case: tuple[str, Spec, str, datetime],
) -> None:
    line, spec, zone, after = case
    trigger = CronTrigger.from_crontab(line, timezone=zone, start_time="2019-01-01")
    check(trigger, spec, zone, after)
