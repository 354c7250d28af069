from __future__ import annotations

import pickle
from datetime import date, datetime, timedelta, timezone
from functools import partial
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asched.triggers import CalendarIntervalTrigger, trigger_from_dict

from . import instants

UTC = timezone.utc


def dates(trigger: CalendarIntervalTrigger, count: int) -> list[str]:
    return [value.date().isoformat() for value in islice(trigger, count)]


def test_monthly_at_a_wall_clock_time() -> None:
    trigger = CalendarIntervalTrigger(
        months=1, hour=9, minute=30, start_date="2026-01-15", timezone="Europe/Berlin"
    )
    assert [value.isoformat() for value in islice(trigger, 3)] == [
        "2026-01-15T09:30:00+01:00",
        "2026-02-15T09:30:00+01:00",
        "2026-03-15T09:30:00+01:00",
    ]


def test_missing_month_ends_are_skipped_not_clamped() -> None:
    trigger = CalendarIntervalTrigger(months=1, start_date="2026-01-31", timezone="UTC")
    assert dates(trigger, 4) == ["2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31"]


def test_leap_day_yearly_fires_in_leap_years_only() -> None:
    trigger = CalendarIntervalTrigger(years=1, start_date="2028-02-29", timezone="UTC")
    assert dates(trigger, 3) == ["2028-02-29", "2032-02-29", "2036-02-29"]


def test_weeks_and_days() -> None:
    trigger = CalendarIntervalTrigger(weeks=1, days=1, start_date="2026-01-01", timezone="UTC")
    assert dates(trigger, 3) == ["2026-01-01", "2026-01-09", "2026-01-17"]


def test_after_between_fire_times() -> None:
    trigger = CalendarIntervalTrigger(months=2, hour=8, start_date="2026-01-10", timezone="UTC")
    after = datetime(2027, 6, 1, tzinfo=UTC)
    assert trigger.next_fire_time(after) == datetime(2027, 7, 10, 8, tzinfo=UTC)
    assert trigger.next_fire_time(datetime(2027, 7, 10, 8, tzinfo=UTC)) == datetime(
        2027, 9, 10, 8, tzinfo=UTC
    )


def test_end_date_is_inclusive() -> None:
    trigger = CalendarIntervalTrigger(
        days=1, start_date="2026-01-01", end_date="2026-01-03", timezone="UTC"
    )
    assert dates(trigger, 10) == ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.mark.parametrize(
    ("start_date", "expected"),
    [
        ("2026-01-01", date(2026, 1, 1)),
        ("2026-01-01 23:00", date(2026, 1, 1)),  # naive: its own date
        ("2026-01-01T23:00:00+00:00", date(2026, 1, 2)),  # aware: its date in Tokyo
        (datetime(2026, 1, 1, 23, tzinfo=UTC), date(2026, 1, 2)),
        (datetime(2026, 1, 1, 23), date(2026, 1, 1)),
    ],
)
def test_a_start_date_given_as_a_datetime_counts_by_its_date_in_the_triggers_zone(
    start_date: datetime | str, expected: date
) -> None:
    trigger = CalendarIntervalTrigger(days=1, start_date=start_date, timezone="Asia/Tokyo")
    assert trigger.start_date == expected


def test_the_zone_of_an_aware_start_date_is_the_default_zone() -> None:
    berlin = datetime(2026, 1, 1, 9, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    trigger = CalendarIntervalTrigger(days=1, hour=9, start_date=berlin)
    assert trigger.timezone == ZoneInfo("Europe/Berlin")
    assert trigger.next_fire_time() == datetime(2026, 1, 1, 9, tzinfo=ZoneInfo("Europe/Berlin"))


def test_default_start_date_is_today() -> None:
    trigger = CalendarIntervalTrigger(days=1, timezone="UTC")
    assert trigger.start_date in {
        datetime.now(UTC).date(),
        (datetime.now(UTC) - timedelta(seconds=5)).date(),
    }


class TestDaylightSaving:
    def test_berlin_gap_shifts_forward(self) -> None:
        trigger = CalendarIntervalTrigger(
            days=1, hour=2, minute=30, start_date="2026-03-28", timezone="Europe/Berlin"
        )
        assert [value.isoformat() for value in islice(trigger, 3)] == [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
            "2026-03-30T02:30:00+02:00",
        ]

    def test_new_york_overlap_fires_first_occurrence(self) -> None:
        trigger = CalendarIntervalTrigger(
            days=1, hour=1, minute=30, start_date="2026-10-31", timezone="America/New_York"
        )
        assert [value.isoformat() for value in islice(trigger, 3)] == [
            "2026-10-31T01:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
        ]

    def test_lord_howe_half_hour_gap(self) -> None:
        trigger = CalendarIntervalTrigger(
            days=1, hour=2, minute=15, start_date="2026-10-03", timezone="Australia/Lord_Howe"
        )
        assert [value.isoformat() for value in islice(trigger, 2)] == [
            "2026-10-03T02:15:00+10:30",
            "2026-10-04T02:45:00+11:00",
        ]

    def test_after_in_the_second_pass_of_an_overlap(self) -> None:
        trigger = CalendarIntervalTrigger(
            days=1, hour=2, minute=50, start_date="2026-10-20", timezone="Europe/Berlin"
        )
        # 02:45 CET is the second pass; 02:50 CEST (first pass) was an hour earlier
        after = datetime(2026, 10, 25, 1, 45, tzinfo=UTC)
        assert trigger.next_fire_time(after) == datetime.fromisoformat("2026-10-26T02:50:00+01:00")

    @pytest.mark.parametrize(
        ("zone", "start", "hour", "minute", "expected"),
        [
            # a time in a spring gap fires shifted forward by the gap's length
            (
                "Europe/Berlin",
                "2026-03-28",
                2,
                30,
                ["03-28T02:30+01:00", "03-29T03:30+02:00", "03-30T02:30+02:00"],
            ),
            (
                "America/New_York",
                "2026-03-07",
                2,
                30,
                ["03-07T02:30-05:00", "03-08T03:30-04:00", "03-09T02:30-04:00"],
            ),
            (
                "Australia/Lord_Howe",  # 02:00 -> 02:30
                "2026-10-03",
                2,
                15,
                ["10-03T02:15+10:30", "10-04T02:45+11:00", "10-05T02:15+11:00"],
            ),
            (
                "Pacific/Chatham",  # 02:45 -> 03:45
                "2026-09-26",
                3,
                0,
                ["09-26T03:00+12:45", "09-27T04:00+13:45", "09-28T03:00+13:45"],
            ),
            (
                "America/Sao_Paulo",  # midnight did not exist on 2018-11-04
                "2018-11-03",
                0,
                30,
                ["11-03T00:30-03:00", "11-04T01:30-02:00", "11-05T00:30-02:00"],
            ),
            # a time in an autumn overlap fires once, at its first occurrence
            (
                "Europe/Berlin",
                "2026-10-24",
                2,
                30,
                ["10-24T02:30+02:00", "10-25T02:30+02:00", "10-26T02:30+01:00"],
            ),
            (
                "America/New_York",
                "2026-10-31",
                1,
                30,
                ["10-31T01:30-04:00", "11-01T01:30-04:00", "11-02T01:30-05:00"],
            ),
            (
                "Australia/Lord_Howe",  # 02:00 -> 01:30
                "2026-04-04",
                1,
                45,
                ["04-04T01:45+11:00", "04-05T01:45+11:00", "04-06T01:45+10:30"],
            ),
            (
                "Pacific/Chatham",  # 03:45 -> 02:45
                "2026-04-04",
                3,
                0,
                ["04-04T03:00+13:45", "04-05T03:00+13:45", "04-06T03:00+12:45"],
            ),
            (
                "America/Sao_Paulo",  # 23:xx on 2019-02-16 happened twice
                "2019-02-15",
                23,
                30,
                ["02-15T23:30-02:00", "02-16T23:30-02:00", "02-17T23:30-03:00"],
            ),
            # no transitions
            (
                "Asia/Kolkata",
                "2026-03-28",
                2,
                30,
                ["03-28T02:30+05:30", "03-29T02:30+05:30", "03-30T02:30+05:30"],
            ),
            (
                "UTC",
                "2026-03-28",
                2,
                30,
                ["03-28T02:30+00:00", "03-29T02:30+00:00", "03-30T02:30+00:00"],
            ),
        ],
    )
    def test_daily_across_dst_in_every_zone(
        self, zone: str, start: str, hour: int, minute: int, expected: list[str]
    ) -> None:
        make = partial(
            CalendarIntervalTrigger,
            days=1,
            hour=hour,
            minute=minute,
            start_date=start,
            timezone=zone,
        )
        values = list(islice(make(), 3))
        assert [value.isoformat(timespec="minutes")[5:] for value in values] == expected
        assert all(a.astimezone(UTC) < b.astimezone(UTC) for a, b in pairwise(values))
        # a fresh search from each fire time, or from just before it, agrees
        assert instants([make().next_fire_time(value) for value in values[:-1]]) == instants(
            values[1:]
        )
        assert instants(
            [make().next_fire_time(value - timedelta(microseconds=1)) for value in values]
        ) == instants(values)

    def test_a_day_long_gap_fires_once(self) -> None:
        # Apia skipped 2011-12-30: 10:00 that day fires shifted by a day, which is when the
        # next day's 10:00 fires: once
        trigger = CalendarIntervalTrigger(
            days=1, hour=10, start_date="2011-12-28", timezone="Pacific/Apia"
        )
        values = list(islice(trigger, 4))
        assert [value.isoformat() for value in values] == [
            "2011-12-28T10:00:00-10:00",
            "2011-12-29T10:00:00-10:00",
            "2011-12-31T10:00:00+14:00",
            "2012-01-01T10:00:00+14:00",
        ]

    def test_fresh_search_on_the_day_after_a_day_long_gap(self) -> None:
        # every other day from 2011-12-28: 12-30 (skipped) fires at 12-31 10:00
        trigger = CalendarIntervalTrigger(
            days=2, hour=10, start_date="2011-12-28", timezone="Pacific/Apia"
        )
        after = datetime.fromisoformat("2011-12-31T09:00:00+14:00")
        assert trigger.next_fire_time(after) == datetime.fromisoformat("2011-12-31T10:00:00+14:00")


@given(
    months=st.integers(0, 14),
    days=st.integers(0, 40),
    start=st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)),
    hour=st.integers(0, 23),
)
def test_fire_times_increase_and_follow_the_wall_clock(
    months: int, days: int, start: date, hour: int
) -> None:
    if not (months or days):
        months = 1
    trigger = CalendarIntervalTrigger(
        months=months, days=days, hour=hour, start_date=start, timezone="Europe/Berlin"
    )
    values = list(islice(trigger, 12))
    assert values[0].date() == start
    assert all(a.astimezone(UTC) < b.astimezone(UTC) for a, b in pairwise(values))
    # a fire time is at the wall-clock hour unless that hour fell into a DST gap
    assert all(value.hour in (hour, hour + 1) and value.minute == 0 for value in values)
    # chaining from any fire time gives the next one
    for previous, following in pairwise(values):
        assert trigger.next_fire_time(previous) == following


def test_round_trip_and_text() -> None:
    trigger = CalendarIntervalTrigger(
        months=1, hour=9, start_date="2026-01-31", end_date="2027-01-01", timezone="UTC"
    )
    assert trigger_from_dict(trigger.to_dict()) == trigger
    assert str(trigger) == (
        "calendarinterval[months=1, hour=9, start_date='2026-01-31', end_date='2027-01-01']"
    )
    assert repr(trigger) == (
        "CalendarIntervalTrigger(months=1, hour=9, start_date='2026-01-31', "
        "end_date='2027-01-01', timezone='UTC')"
    )
    at_midnight = CalendarIntervalTrigger(weeks=2, minute=5, start_date="2026-01-01")
    assert str(at_midnight) == "calendarinterval[weeks=2, minute=5, start_date='2026-01-01']"


def test_pickling_keeps_the_arguments_only() -> None:
    trigger = CalendarIntervalTrigger(
        months=1, hour=9, start_date="2026-01-31", end_date="2027-01-01", timezone="UTC"
    )
    fresh = pickle.dumps(trigger)
    list(islice(trigger, 3))  # fills the cache of the last fire time
    assert pickle.dumps(trigger) == fresh
    restored = pickle.loads(fresh)
    assert restored == trigger
    assert list(restored) == list(trigger)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "the interval must be longer than zero"),
        ({"months": -1}, ValueError, "months must not be negative"),
        ({"days": 1.5}, TypeError, "days must be an int"),
        ({"days": 1, "hour": 24}, ValueError, r"invalid value 24 for 'hour' \(expected 0-23\)"),
        ({"days": 1, "minute": 60}, ValueError, "invalid value 60 for 'minute'"),
        ({"days": 1, "start_date": "soon"}, ValueError, "start_date: 'soon' is not an ISO"),
        (
            {"days": 1, "start_date": "2026-01-01 garbage"},
            ValueError,
            "start_date: '2026-01-01 garbage' is not an ISO",
        ),
        (
            {"days": 1, "start_date": "2026-02-01", "end_date": "2026-01-01"},
            ValueError,
            r"end_date \(2026-01-01\) is before start_date \(2026-02-01\)",
        ),
        ({"days": 1, "timezone": "Nowhere/City"}, ValueError, "unknown time zone"),
        ({"days": 1, "hour": "9"}, TypeError, "hour must be an int, got '9'"),
        ({"days": 1, "second": 1.0}, TypeError, "second must be an int, got 1.0"),
        ({"days": 1, "minute": True}, TypeError, "minute must be an int, got True"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CalendarIntervalTrigger(**kwargs)  # type: ignore[arg-type]


@given(
    months=st.integers(0, 14),
    days=st.integers(0, 9),
    start=st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 30, 45]),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
)
def test_chained_calls_agree_with_a_fresh_search(
    months: int, days: int, start: date, hour: int, minute: int, zone: str
) -> None:
    # A trigger continues from the fire time it returned last: its answers must be those of
    # a trigger searching from scratch, for that fire time in any zone or fold
    make = partial(
        CalendarIntervalTrigger,
        months=months,
        days=days or (0 if months else 1),
        hour=hour,
        minute=minute,
        start_date=start,
        timezone=zone,
    )
    chained = make()
    values = list(islice(chained, 16))
    for previous in values:
        for after in (previous, previous.astimezone(UTC), previous.replace(fold=1)):
            assert chained.next_fire_time(previous) is not None  # ``previous`` is the last one
            assert instants([chained.next_fire_time(after)]) == instants(
                [make().next_fire_time(after)]
            )
    # a fresh search from just before or just after each fire time, or between two
    after_utc = [value.astimezone(UTC) for value in values]
    for index, previous in enumerate(after_utc[:-1]):
        following = after_utc[index + 1]
        for after, expected in (
            (previous - timedelta(microseconds=1), previous),
            (previous + timedelta(microseconds=1), following),
            (previous + (following - previous) / 2, following),
            (following - timedelta(seconds=1), following),
        ):
            for zone_after in (after, after.astimezone(make().timezone)):
                found = make().next_fire_time(zone_after)
                assert found is not None
                assert found.astimezone(UTC) == expected, (zone_after, expected)


@pytest.mark.parametrize(
    ("zone", "start", "hour", "minute"),
    [
        ("Europe/Berlin", "2026-03-25", 2, 30),  # gap on 29 March
        ("Europe/Berlin", "2026-10-20", 2, 30),  # overlap on 25 October
        ("America/New_York", "2026-10-28", 1, 30),  # overlap on 1 November
        ("Australia/Lord_Howe", "2026-09-30", 2, 15),  # half-hour gap on 4 October
    ],
)
def test_chained_calls_across_dst_changes_agree_with_a_fresh_search(
    zone: str, start: str, hour: int, minute: int
) -> None:
    make = partial(
        CalendarIntervalTrigger, days=1, hour=hour, minute=minute, start_date=start, timezone=zone
    )
    chained: list[datetime | None] = list(islice(make(), 10))
    fresh = [make().next_fire_time(previous) for previous in chained[:-1] if previous]
    assert instants(fresh) == instants(chained[1:])
    # the ambiguous or skipped day fires exactly once
    assert len({value.date() for value in chained if value}) == len(chained)


def test_no_fire_time_past_the_end_of_datetime() -> None:
    daily = CalendarIntervalTrigger(days=1, hour=1, start_date="9999-12-29", timezone="UTC")
    assert dates(daily, 5) == ["9999-12-29", "9999-12-30", "9999-12-31"]
    weekly = CalendarIntervalTrigger(weeks=1, start_date="9999-12-01", timezone="UTC")
    assert weekly.next_fire_time(datetime(9999, 12, 31, tzinfo=UTC)) is None
    monthly = CalendarIntervalTrigger(months=5, start_date="9999-10-01", timezone="UTC")
    assert dates(monthly, 3) == ["9999-10-01"]
    # 23:00 on 9999-12-31 in New York is past the end of datetime in UTC
    evening = CalendarIntervalTrigger(
        days=1, hour=23, start_date="9999-12-30", timezone="America/New_York"
    )
    assert dates(evening, 3) == ["9999-12-30"]
    assert evening.next_fire_time(datetime(9999, 12, 31, 23, 59, tzinfo=UTC)) is None
