from __future__ import annotations

import pickle
from datetime import date, datetime, timedelta, timezone
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asched.triggers import DateTrigger, IntervalTrigger, trigger_from_dict

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


class TestDateTrigger:
    def test_fires_once(self) -> None:
        trigger = DateTrigger("2026-04-30 08:00:00", timezone="Europe/Berlin")
        run_time = datetime(2026, 4, 30, 8, tzinfo=BERLIN)
        assert list(trigger) == [run_time]
        assert trigger.next_fire_time(run_time - timedelta(microseconds=1)) == run_time
        assert trigger.next_fire_time(run_time) is None

    def test_date_means_midnight_in_the_zone(self) -> None:
        trigger = DateTrigger(date(2026, 5, 1), timezone="America/New_York")
        assert trigger.run_time.isoformat() == "2026-05-01T00:00:00-04:00"

    def test_aware_input_keeps_its_zone(self) -> None:
        run_time = datetime(2026, 5, 1, 12, tzinfo=ZoneInfo("Asia/Kolkata"))
        assert DateTrigger(run_time).timezone == ZoneInfo("Asia/Kolkata")

    def test_nonexistent_wall_time_moves_forward(self) -> None:
        trigger = DateTrigger("2026-03-29 02:30", timezone="Europe/Berlin")
        assert trigger.run_time.isoformat() == "2026-03-29T03:30:00+02:00"

    def test_round_trip_and_text(self) -> None:
        trigger = DateTrigger("2026-04-30 08:00:00", timezone="Europe/Berlin")
        assert trigger_from_dict(trigger.to_dict()) == trigger
        assert str(trigger) == "date[2026-04-30 08:00:00+02:00]"
        assert repr(trigger) == (
            "DateTrigger(run_time='2026-04-30 08:00:00+02:00', timezone='Europe/Berlin')"
        )

    @pytest.mark.parametrize(
        ("run_time", "error", "message"),
        [
            ("tomorrow", ValueError, "DateTrigger: run_time: 'tomorrow' is not an ISO 8601"),
            (12345, TypeError, "DateTrigger: run_time: expected a datetime"),
        ],
    )
    def test_bad_input(self, run_time: object, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            DateTrigger(run_time, timezone="UTC")  # type: ignore[arg-type]

    def test_unknown_zone_names_the_trigger(self) -> None:
        with pytest.raises(ValueError, match="DateTrigger: timezone: unknown time zone 'X/Y'"):
            DateTrigger("2026-01-01", timezone="X/Y")

    def test_run_time_at_the_end_of_datetime(self) -> None:
        tokyo = ZoneInfo("Asia/Tokyo")
        trigger = DateTrigger(datetime(9999, 12, 31, 23, tzinfo=tokyo))
        assert trigger.next_fire_time(datetime(2026, 1, 1, tzinfo=UTC)) == trigger.run_time
        late = datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/New_York"))
        assert trigger.next_fire_time(late) is None
        with pytest.raises(ValueError, match="outside the range of datetime in UTC"):
            DateTrigger(late)


class TestIntervalTrigger:
    def test_fires_every_interval_from_start(self) -> None:
        trigger = IntervalTrigger(minutes=15, start_time="2026-01-01 08:00", timezone="UTC")
        assert [value.isoformat() for value in islice(trigger, 3)] == [
            "2026-01-01T08:00:00+00:00",
            "2026-01-01T08:15:00+00:00",
            "2026-01-01T08:30:00+00:00",
        ]
        after = datetime(2026, 1, 1, 9, 7, tzinfo=UTC)
        assert trigger.next_fire_time(after) == datetime(2026, 1, 1, 9, 15, tzinfo=UTC)

    def test_keeps_real_elapsed_time_across_dst(self) -> None:
        trigger = IntervalTrigger(hours=1, start_time="2026-03-29 00:30", timezone=BERLIN)
        values = list(islice(trigger, 3))
        assert [value.isoformat() for value in values] == [
            "2026-03-29T00:30:00+01:00",
            "2026-03-29T01:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
        ]
        autumn = IntervalTrigger(hours=1, start_time="2026-10-25 01:30", timezone=BERLIN)
        instants = [value.astimezone(UTC) for value in islice(autumn, 4)]
        assert [b - a for a, b in pairwise(instants)] == [timedelta(hours=1)] * 3
        # the repeated wall-clock hour is fired in both passes
        assert [value.strftime("%H:%M%z") for value in islice(autumn, 4)] == [
            "01:30+0200",
            "02:30+0200",
            "02:30+0100",
            "03:30+0100",
        ]

    @pytest.mark.parametrize(
        ("zone", "start", "expected"),
        [
            # spring gaps: the wall clock jumps, the interval does not
            ("Europe/Berlin", "2026-03-29 00:30", ["00:30+01:00", "01:30+01:00", "03:30+02:00"]),
            (
                "America/New_York",
                "2026-03-08 00:30",
                ["00:30-05:00", "01:30-05:00", "03:30-04:00"],
            ),
            (
                "Australia/Lord_Howe",  # 30 minutes
                "2026-10-04 00:45",
                ["00:45+10:30", "01:45+10:30", "03:15+11:00"],
            ),
            ("Pacific/Chatham", "2026-09-27 01:15", ["01:15+12:45", "02:15+12:45", "04:15+13:45"]),
            (
                "America/Sao_Paulo",  # at midnight, 2018
                "2018-11-03 22:30",
                ["22:30-03:00", "23:30-03:00", "01:30-02:00"],
            ),
            # autumn overlaps: the repeated wall-clock time fires in both passes
            (
                "Europe/Berlin",
                "2026-10-25 00:30",
                ["00:30+02:00", "01:30+02:00", "02:30+02:00", "02:30+01:00"],
            ),
            (
                "America/New_York",
                "2026-11-01 00:00",
                ["00:00-04:00", "01:00-04:00", "01:00-05:00", "02:00-05:00"],
            ),
            (
                "Australia/Lord_Howe",
                "2026-04-05 00:45",
                ["00:45+11:00", "01:45+11:00", "02:15+10:30", "03:15+10:30"],
            ),
            (
                "Pacific/Chatham",
                "2026-04-05 01:15",
                ["01:15+13:45", "02:15+13:45", "03:15+13:45", "03:15+12:45"],
            ),
            (
                "America/Sao_Paulo",
                "2019-02-16 21:30",
                ["21:30-02:00", "22:30-02:00", "23:30-02:00", "23:30-03:00"],
            ),
            # no transitions
            ("Asia/Kolkata", "2026-03-29 00:30", ["00:30+05:30", "01:30+05:30", "02:30+05:30"]),
            ("UTC", "2026-03-29 00:30", ["00:30+00:00", "01:30+00:00", "02:30+00:00"]),
        ],
    )
    def test_hourly_across_dst_in_every_zone(
        self, zone: str, start: str, expected: list[str]
    ) -> None:
        trigger = IntervalTrigger(hours=1, start_time=start, timezone=zone)
        values = list(islice(trigger, len(expected)))
        assert [value.isoformat(timespec="minutes")[11:] for value in values] == expected
        instants = [value.astimezone(UTC) for value in values]
        assert [b - a for a, b in pairwise(instants)] == [timedelta(hours=1)] * (len(values) - 1)
        # a fresh search from each fire time agrees
        fresh = IntervalTrigger(hours=1, start_time=start, timezone=zone)
        assert [fresh.next_fire_time(value) for value in values[:-1]] == values[1:]

    def test_chained_calls_agree_with_a_fresh_search(self) -> None:
        def make() -> IntervalTrigger:
            return IntervalTrigger(minutes=50, start_time="2026-10-24 23:00", timezone=BERLIN)

        chained = make()
        values = list(islice(chained, 8))  # across the autumn overlap
        for previous in values:
            for after in (previous, previous.astimezone(UTC)):
                assert chained.next_fire_time(after) == make().next_fire_time(after)
        assert all(a.astimezone(UTC) < b.astimezone(UTC) for a, b in pairwise(values))

    def test_pickling_keeps_the_arguments_only(self) -> None:
        trigger = IntervalTrigger(hours=1, start_time="2026-01-01", timezone="Europe/Berlin")
        fresh = pickle.dumps(trigger)
        list(islice(trigger, 3))  # fills the cache of the last fire time
        assert pickle.dumps(trigger) == fresh
        restored = pickle.loads(fresh)
        assert restored == trigger
        assert list(islice(restored, 3)) == list(islice(trigger, 3))

    def test_end_time_exhausts(self) -> None:
        trigger = IntervalTrigger(
            seconds=30, start_time="2026-01-01", end_time="2026-01-01 00:01", timezone="UTC"
        )
        assert len(list(trigger)) == 3

    def test_default_start_is_one_interval_from_now(self) -> None:
        before = datetime.now(UTC)
        trigger = IntervalTrigger(hours=2)
        assert before + timedelta(hours=2) <= trigger.start_time
        assert trigger.start_time <= datetime.now(UTC) + timedelta(hours=2)

    def test_round_trip_and_text(self) -> None:
        trigger = IntervalTrigger(
            hours=1, minutes=30, start_time="2026-01-01", timezone="Europe/Berlin"
        )
        assert trigger_from_dict(trigger.to_dict()) == trigger
        assert str(trigger) == (
            "interval[hours=1, minutes=30, start_time='2026-01-01 00:00:00+01:00']"
        )

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({}, ValueError, "the interval must be longer than zero"),
            ({"seconds": 0}, ValueError, "the interval must be longer than zero"),
            ({"minutes": -5}, ValueError, "minutes must not be negative, got -5"),
            ({"hours": "1"}, TypeError, "hours must be a number, got '1'"),
            (
                {"seconds": 1, "start_time": "2026-02-01", "end_time": "2026-01-01"},
                ValueError,
                r"end_time .* is before start_time",
            ),
            (
                {"seconds": 1, "timezone": "Nowhere/City"},
                ValueError,
                "IntervalTrigger: timezone: unknown time zone 'Nowhere/City'",
            ),
            ({"seconds": float("nan")}, ValueError, "seconds must be a finite number, got nan"),
            ({"hours": float("inf")}, ValueError, "hours must be a finite number, got inf"),
            ({"days": 1e300}, ValueError, r"the interval \(days=1e\+300\) is too long"),
            (
                {"seconds": 1, "start_time": "9999-12-31 20:00", "timezone": "America/New_York"},
                ValueError,
                "start_time: 9999-12-31T20:00:00-05:00 is outside the range of datetime in UTC",
            ),
        ],
    )
    def test_bad_input(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            IntervalTrigger(**kwargs)  # type: ignore[arg-type]

    def test_no_fire_time_past_the_end_of_datetime(self) -> None:
        trigger = IntervalTrigger(days=1000, start_time="9990-01-01", timezone="UTC")
        assert trigger.next_fire_time(datetime(9999, 6, 1, tzinfo=UTC)) is None
        # the last one there is in UTC, then none in Tokyo where it would be past 9999
        hourly = IntervalTrigger(hours=1, start_time="9999-12-31 20:00", timezone="UTC")
        assert [value.hour for value in hourly] == [20, 21, 22, 23]
        tokyo = IntervalTrigger(
            hours=1, start_time=datetime(9999, 12, 31, 13, tzinfo=UTC), timezone="Asia/Tokyo"
        )
        assert [value.isoformat() for value in tokyo] == [
            "9999-12-31T22:00:00+09:00",
            "9999-12-31T23:00:00+09:00",
        ]
        # an ``after`` too late for datetime in UTC: nothing comes after it
        late = datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/New_York"))
        assert hourly.next_fire_time(late) is None

    @given(
        seconds=st.integers(1, 10**6),
        offset=st.integers(-(10**8), 10**8),
    )
    def test_next_fire_time_is_the_first_multiple_after(self, seconds: int, offset: int) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        trigger = IntervalTrigger(seconds=seconds, start_time=start, timezone=BERLIN)
        after = start + timedelta(seconds=offset)
        fire_time = trigger.next_fire_time(after)
        assert fire_time is not None
        assert fire_time > after or (offset < 0 and fire_time == start)
        assert (fire_time - start) % timedelta(seconds=seconds) == timedelta(0)
        assert fire_time - timedelta(seconds=seconds) <= after or fire_time == start
