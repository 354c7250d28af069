from __future__ import annotations

from datetime import datetime, timezone
from itertools import islice

import pytest

from asched.triggers import (
    AndTrigger,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    OrTrigger,
    trigger_from_dict,
)

UTC = timezone.utc
START = "2026-01-01 00:00"


def interval(*, hours: float = 0, minutes: float = 0) -> IntervalTrigger:
    return IntervalTrigger(hours=hours, minutes=minutes, start_time=START, timezone="UTC")


def times(trigger: AndTrigger | OrTrigger, count: int) -> list[str]:
    return [value.strftime("%m-%d %H:%M") for value in islice(trigger, count)]


class TestAndTrigger:
    def test_fires_where_all_agree(self) -> None:
        trigger = AndTrigger([interval(hours=2), interval(hours=3)])
        assert times(trigger, 3) == ["01-01 00:00", "01-01 06:00", "01-01 12:00"]

    def test_cron_and_interval(self) -> None:
        weekday_mornings = CronTrigger(
            day_of_week="mon-fri", hour="*", timezone="UTC", start_time=START
        )
        every_five_hours = interval(hours=5)
        trigger = AndTrigger([weekday_mornings, every_five_hours])
        # 2026-01-03/04 are a weekend: their multiples of five hours are skipped
        assert times(trigger, 6) == [
            "01-01 00:00",
            "01-01 05:00",
            "01-01 10:00",
            "01-01 15:00",
            "01-01 20:00",
            "01-02 01:00",
        ]
        assert trigger.next_fire_time(datetime(2026, 1, 2, 21, tzinfo=UTC)) == datetime(
            2026, 1, 5, 4, tzinfo=UTC
        )

    def test_never_agreeing_gives_up(self) -> None:
        out_of_phase = IntervalTrigger(hours=2, start_time="2026-01-01 01:00", timezone="UTC")
        trigger = AndTrigger([interval(hours=2), out_of_phase], max_iterations=50)
        assert trigger.next_fire_time() is None

    def test_exhausted_child_exhausts(self) -> None:
        trigger = AndTrigger([DateTrigger("2026-01-01 06:00", timezone="UTC"), interval(hours=3)])
        assert times(trigger, 5) == ["01-01 06:00"]

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match="AndTrigger: needs at least 2 triggers, got 1"):
            AndTrigger([interval(hours=1)])
        with pytest.raises(TypeError, match="AndTrigger: expected triggers, got 'hourly'"):
            AndTrigger([interval(hours=1), "hourly"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="max_iterations must be at least 1, got 0"):
            AndTrigger([interval(hours=1), interval(hours=2)], max_iterations=0)
        with pytest.raises(TypeError, match="max_iterations must be an int, got '5'"):
            AndTrigger([interval(hours=1), interval(hours=2)], max_iterations="5")  # type: ignore[arg-type]


class TestOrTrigger:
    def test_fires_when_any_fires_once_per_instant(self) -> None:
        trigger = OrTrigger([interval(hours=2), interval(hours=3)])
        assert times(trigger, 5) == [
            "01-01 00:00",
            "01-01 02:00",
            "01-01 03:00",
            "01-01 04:00",
            "01-01 06:00",
        ]

    def test_continues_after_a_child_is_exhausted(self) -> None:
        trigger = OrTrigger(
            [
                DateTrigger("2026-01-01 01:30", timezone="UTC"),
                IntervalTrigger(hours=1, start_time=START, end_time="2026-01-01 02:00"),
            ]
        )
        assert times(trigger, 10) == ["01-01 00:00", "01-01 01:00", "01-01 01:30", "01-01 02:00"]

    def test_needs_two_triggers(self) -> None:
        with pytest.raises(ValueError, match="OrTrigger: needs at least 2 triggers, got 0"):
            OrTrigger([])


@pytest.mark.parametrize(
    "trigger",
    [
        AndTrigger([interval(hours=2), CronTrigger(hour="*/3", timezone="UTC", start_time=START)]),
        OrTrigger(
            [
                DateTrigger("2026-05-01 12:00", timezone="UTC"),
                OrTrigger([interval(minutes=45), interval(hours=7)]),
            ]
        ),
    ],
)
def test_round_trip(trigger: AndTrigger | OrTrigger) -> None:
    rebuilt = trigger_from_dict(trigger.to_dict())
    assert rebuilt == trigger
    assert list(islice(rebuilt, 5)) == list(islice(trigger, 5))


def test_text() -> None:
    trigger = OrTrigger([DateTrigger("2026-05-01 12:00", timezone="UTC"), interval(hours=7)])
    assert str(trigger) == (
        "or[date[2026-05-01 12:00:00+00:00], "
        "interval[hours=7, start_time='2026-01-01 00:00:00+00:00']]"
    )
    assert repr(trigger).startswith("OrTrigger([DateTrigger(")
