"""Rebuilding triggers from descriptions that are incomplete or wrong: ValueError, named."""

from __future__ import annotations

from typing import Any

import pytest

from asched.triggers import (
    AndTrigger,
    CalendarIntervalTrigger,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    OrTrigger,
    trigger_from_dict,
)

GOOD = {
    "date": DateTrigger("2026-01-01", timezone="UTC").to_dict(),
    "interval": IntervalTrigger(hours=1, start_time="2026-01-01", timezone="UTC").to_dict(),
    "calendarinterval": CalendarIntervalTrigger(
        days=1, start_date="2026-01-01", timezone="UTC"
    ).to_dict(),
    "cron": CronTrigger(hour=5, start_time="2026-01-01", timezone="UTC").to_dict(),
}
GOOD["and"] = {
    "type": "and",
    "triggers": [GOOD["cron"], GOOD["interval"]],
    "max_iterations": 100,
}
GOOD["or"] = {"type": "or", "triggers": [GOOD["cron"], GOOD["interval"]]}

REQUIRED = {
    "date": ["run_time", "timezone"],
    "interval": ["start_time", "timezone"],
    "calendarinterval": ["start_date", "timezone"],
    "cron": ["start_time", "timezone"],
    "and": ["triggers"],
    "or": ["triggers"],
}


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in data.items() if name != key}


def test_good_descriptions_rebuild() -> None:
    for data in GOOD.values():
        assert trigger_from_dict(data).to_dict() == data


@pytest.mark.parametrize(
    ("type_name", "key"),
    [(type_name, key) for type_name, keys in REQUIRED.items() for key in keys],
)
def test_a_missing_key_is_named(type_name: str, key: str) -> None:
    with pytest.raises(
        ValueError, match=f"'{type_name}' trigger description: missing key '{key}'"
    ):
        trigger_from_dict(without(GOOD[type_name], key))


def test_the_cron_example() -> None:
    with pytest.raises(ValueError, match="'cron' trigger description: missing key 'start_time'"):
        trigger_from_dict({"type": "cron", "hour": "5"})


@pytest.mark.parametrize("type_name", sorted(GOOD))
def test_an_unknown_key_is_named(type_name: str) -> None:
    with pytest.raises(ValueError, match=f"'{type_name}' trigger description: unknown key 'hours"):
        trigger_from_dict({**GOOD[type_name], "hourss": 5})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**GOOD["cron"], "hour": 1.5},
            r"'cron' trigger description: CronTrigger: field 'hour' must be an int",
        ),
        ({**GOOD["cron"], "hour": "25"}, r"invalid value '25' for field 'hour'"),
        (
            {**GOOD["interval"], "hours": "1"},
            "'interval' trigger description: IntervalTrigger: hours must be a number",
        ),
        (
            {**GOOD["calendarinterval"], "hour": "9"},
            "'calendarinterval' trigger description: CalendarIntervalTrigger: hour must be an int",
        ),
        ({**GOOD["date"], "run_time": 5}, "'date' trigger description: DateTrigger: run_time"),
        ({**GOOD["date"], "timezone": "X/Y"}, "DateTrigger: timezone: unknown time zone 'X/Y'"),
        ({**GOOD["date"], "timezone": 5}, "'date' trigger description: DateTrigger: timezone"),
        ({"type": "and", "triggers": "cron"}, "'and' trigger description: 'triggers' must be"),
        ({"type": "or", "triggers": [GOOD["cron"], 5]}, "not a trigger description"),
        (
            {**GOOD["and"], "max_iterations": "5"},
            "'and' trigger description: AndTrigger: max_iterations must be an int",
        ),
        ({"type": "or", "triggers": [GOOD["cron"]]}, "OrTrigger: needs at least 2 triggers"),
    ],
)
def test_a_bad_value_is_a_value_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trigger_from_dict(data)


@pytest.mark.parametrize(
    "cls",
    [DateTrigger, IntervalTrigger, CalendarIntervalTrigger, CronTrigger, AndTrigger, OrTrigger],
)
def test_from_dict_of_another_type_or_not_a_dict(cls: Any) -> None:
    other = "date" if cls is not DateTrigger else "cron"
    with pytest.raises(ValueError, match=f"'type' is '{other}', expected '{cls.type_name}'"):
        cls.from_dict(GOOD[other])
    with pytest.raises(ValueError, match="expected a dict, got 5"):
        cls.from_dict(5)
