"""Time zones every trigger accepts: zoneinfo keys, UTC and fixed offsets from UTC."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from asched.triggers import (
    AndTrigger,
    CalendarIntervalTrigger,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    OrTrigger,
    Trigger,
    trigger_from_dict,
)

from . import instants

UTC = timezone.utc
PLUS_FIVE = timezone(timedelta(hours=5))

TRIGGERS: dict[str, Callable[[tzinfo], Trigger]] = {
    "date": lambda tz: DateTrigger(datetime(2026, 4, 30, 8, tzinfo=tz)),
    "interval start_time": lambda tz: IntervalTrigger(
        hours=1, start_time=datetime(2026, 1, 1, tzinfo=tz)
    ),
    "cron": lambda tz: CronTrigger(hour=9, start_time="2026-01-01", timezone=tz),
    "calendarinterval": lambda tz: CalendarIntervalTrigger(
        days=1, hour=9, start_date="2026-01-01", timezone=tz
    ),
}


@pytest.mark.parametrize("make", TRIGGERS.values(), ids=TRIGGERS.keys())
@pytest.mark.parametrize(
    ("tz", "key"),
    [
        (PLUS_FIVE, "+05:00"),
        (timezone(-timedelta(hours=3, minutes=30)), "-03:30"),
        (timezone(timedelta(hours=5, minutes=45, seconds=10)), "+05:45:10"),
        (timezone(timedelta(0)), "UTC"),
        (timezone(timedelta(hours=1), "CET"), "+01:00"),
    ],
)
def test_fixed_offsets_round_trip(make: Callable[[tzinfo], Trigger], tz: tzinfo, key: str) -> None:
    trigger = make(tz)
    data = trigger.to_dict()
    assert data["timezone"] == key
    rebuilt = trigger_from_dict(json.loads(json.dumps(data)))
    assert rebuilt == trigger
    assert list(islice(rebuilt, 3)) == list(islice(trigger, 3))
    assert f"timezone='{key}'" in repr(trigger)


def test_the_local_zone_as_datetime_gives_it() -> None:
    # datetime.now().astimezone() carries a fixed offset, not a zone
    now = datetime.now().astimezone()
    trigger = CronTrigger(hour=9, start_time=now)
    assert isinstance(trigger.timezone, timezone)
    assert trigger_from_dict(trigger.to_dict()) == trigger
    assert repr(trigger).startswith("CronTrigger(hour='9'")


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+05:00", timedelta(hours=5)), ("-09:30", -timedelta(hours=9, minutes=30))],
)
def test_an_offset_string_is_a_time_zone(text: str, offset: timedelta) -> None:
    trigger = CronTrigger(hour=9, start_time="2026-01-01", timezone=text)
    assert trigger.timezone == timezone(offset)
    first = trigger.next_fire_time()
    assert first is not None
    assert first.utcoffset() == offset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("+24:00", r"invalid UTC offset '\+24:00' \(must be less than 24 hours\)"),
        ("+05:60", r"invalid UTC offset '\+05:60'"),
        ("+5:00", r"unknown time zone '\+5:00'"),
    ],
)
def test_bad_offset_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronTrigger(hour=9, timezone=text)


class _CustomZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "CUSTOM"

    def __repr__(self) -> str:
        return "<custom zone>"


def test_a_zone_without_a_portable_name_still_has_a_repr() -> None:
    trigger = CronTrigger(hour=9, start_time="2026-01-01", timezone=_CustomZone())
    assert repr(trigger).endswith("timezone='<custom zone>')")
    with pytest.raises(ValueError, match="has no portable name"):
        trigger.to_dict()


TOKYO = "Asia/Tokyo"
NAIVE_TRIGGERS: dict[str, Callable[[], Trigger]] = {
    "date": lambda: DateTrigger("2026-01-05 09:00", timezone=TOKYO),
    "interval": lambda: IntervalTrigger(hours=24, start_time="2026-01-01 09:00", timezone=TOKYO),
    "calendarinterval": lambda: CalendarIntervalTrigger(
        days=1, hour=9, start_date="2026-01-01", timezone=TOKYO
    ),
    "cron": lambda: CronTrigger(hour=9, start_time="2026-01-01", timezone=TOKYO),
}


@pytest.mark.parametrize("make", NAIVE_TRIGGERS.values(), ids=NAIVE_TRIGGERS.keys())
def test_a_naive_after_is_wall_time_in_the_trigger_zone(make: Callable[[], Trigger]) -> None:
    trigger = make()
    nine = datetime.fromisoformat("2026-01-05T09:00:00+09:00")
    assert trigger.next_fire_time(datetime(2026, 1, 5, 8, 59)) == nine
    assert trigger.next_fire_time(datetime(2026, 1, 5, 8, 59, tzinfo=UTC)) != nine
    assert next(trigger.fire_times(datetime(2026, 1, 5, 8, 59))) == nine
    following = trigger.next_fire_time(datetime(2026, 1, 5, 9))
    assert following is None or following == nine + timedelta(days=1)


@pytest.mark.parametrize(
    ("naive", "expected"),
    [
        # in the gap: read as shifted forward, like a naive start_time (03:20+02:00)
        (datetime(2026, 3, 29, 2, 20), "2026-03-29T03:30:00+02:00"),
        # ambiguous: its first occurrence (02:20+02:00)
        (datetime(2026, 10, 25, 2, 20), "2026-10-25T02:30:00+02:00"),
    ],
)
def test_a_naive_after_across_dst_reads_like_a_naive_start_time(
    naive: datetime, expected: str
) -> None:
    # an ambiguous time never equals one in another zone: compare instants and offsets
    cron = CronTrigger(minute="*/15", start_time="2026-01-01", timezone="Europe/Berlin")
    assert instants([cron.next_fire_time(naive)]) == instants([datetime.fromisoformat(expected)])
    interval = IntervalTrigger(minutes=15, start_time="2026-01-01", timezone="Europe/Berlin")
    assert instants([interval.next_fire_time(naive)]) == instants(
        [datetime.fromisoformat(expected)]
    )


def test_combining_triggers_hand_a_naive_after_to_each_trigger() -> None:
    tokyo = CronTrigger(hour=9, start_time="2026-01-01", timezone=TOKYO)
    utc = CronTrigger(hour=9, start_time="2026-01-01", timezone="UTC")
    either = OrTrigger([utc, tokyo])
    # each reads 08:59 on its own wall clock: Tokyo's 09:00 (00:00 UTC) comes first
    assert either.next_fire_time(datetime(2026, 1, 5, 8, 59)) == datetime.fromisoformat(
        "2026-01-05T09:00:00+09:00"
    )
    both = AndTrigger([utc, CronTrigger(minute=0, start_time="2026-01-01", timezone="UTC")])
    assert both.next_fire_time(datetime(2026, 1, 5, 8, 59)) == datetime(2026, 1, 5, 9, tzinfo=UTC)


@pytest.mark.parametrize("fold", [0, 1])
def test_an_after_in_a_dst_gap_is_the_instant_python_gives_it(fold: int) -> None:
    # 02:30 on 2026-03-29 never showed in Berlin; Python reads it with the offset from before
    # the gap (fold 0: 01:30 UTC, 03:30 CEST) or after it (fold 1: 00:30 UTC, 01:30 CET)
    after = datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=fold)
    instant = after.astimezone(UTC)
    triggers: list[Trigger] = [
        CronTrigger(hour="1,3", minute=15, start_time="2026-03-01", timezone="Europe/Berlin"),
        CalendarIntervalTrigger(
            days=1, hour=3, minute=15, start_date="2026-03-01", timezone="Europe/Berlin"
        ),
        CalendarIntervalTrigger(
            days=1, hour=1, minute=45, start_date="2026-03-01", timezone="Europe/Berlin"
        ),
        IntervalTrigger(minutes=45, start_time="2026-03-01", timezone="Europe/Berlin"),
    ]
    for trigger in triggers:
        expected = trigger_from_dict(trigger.to_dict()).next_fire_time(instant)
        assert expected is not None
        assert expected > instant
        assert trigger.next_fire_time(after) == expected, trigger
