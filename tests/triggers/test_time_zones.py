"""Time zones every trigger accepts: zoneinfo keys, UTC and fixed offsets from UTC."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from itertools import islice

import pytest

from asched.triggers import (
    CalendarIntervalTrigger,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    Trigger,
    trigger_from_dict,
)

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
