from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from asched.triggers import CronTrigger, trigger_from_dict

from . import instants

UTC = timezone.utc


def fire_times(trigger: CronTrigger, count: int, after: datetime | None = None) -> list[str]:
    return [value.isoformat() for value in islice(trigger.fire_times(after), count)]


def utc_cron(**fields: object) -> CronTrigger:
    return CronTrigger(**fields, timezone="UTC", start_time="2026-01-01 00:00:00")  # type: ignore[arg-type]


class TestExpressions:
    def test_every_five_minutes_at_hour(self) -> None:
        trigger = utc_cron(hour=17, minute="*/5")
        assert fire_times(trigger, 3) == [
            "2026-01-01T17:00:00+00:00",
            "2026-01-01T17:05:00+00:00",
            "2026-01-01T17:10:00+00:00",
        ]
        # after 17:55 comes the next day
        assert trigger.next_fire_time(datetime(2026, 1, 1, 17, 55, tzinfo=UTC)) == datetime(
            2026, 1, 2, 17, 0, tzinfo=UTC
        )

    def test_finer_fields_default_to_minimum_and_coarser_to_any(self) -> None:
        assert fire_times(utc_cron(hour=17), 2) == [
            "2026-01-01T17:00:00+00:00",
            "2026-01-02T17:00:00+00:00",
        ]
        assert fire_times(utc_cron(month=3), 2) == [
            "2026-03-01T00:00:00+00:00",
            "2027-03-01T00:00:00+00:00",
        ]
        assert fire_times(utc_cron(day_of_week="wed"), 2) == [
            "2026-01-07T00:00:00+00:00",
            "2026-01-14T00:00:00+00:00",
        ]

    def test_no_fields_fires_every_second(self) -> None:
        assert fire_times(utc_cron(), 2) == [
            "2026-01-01T00:00:00+00:00",
            "2026-01-01T00:00:01+00:00",
        ]

    def test_range_with_step(self) -> None:
        trigger = utc_cron(minute="10-30/10")
        assert fire_times(trigger, 4) == [
            "2026-01-01T00:10:00+00:00",
            "2026-01-01T00:20:00+00:00",
            "2026-01-01T00:30:00+00:00",
            "2026-01-01T01:10:00+00:00",
        ]

    def test_start_with_step_runs_to_the_end_of_the_range(self) -> None:
        assert fire_times(utc_cron(second="50/5"), 3) == [
            "2026-01-01T00:00:50+00:00",
            "2026-01-01T00:00:55+00:00",
            "2026-01-01T00:01:50+00:00",
        ]

    def test_lists_mix_forms(self) -> None:
        trigger = utc_cron(hour="1,3-4,20-23/2")
        hours = [value.hour for value in islice(trigger, 7)]
        assert hours == [1, 3, 4, 20, 22, 1, 3]

    @pytest.mark.parametrize(
        "month", ["jun-aug", "JUN-Aug", "6-8", "jun,jul,aug", "June-August", "june,jul,AUGUST"]
    )
    def test_month_names_in_any_case(self, month: str) -> None:
        assert [value.month for value in islice(utc_cron(month=month), 4)] == [6, 7, 8, 6]

    @pytest.mark.parametrize(
        "day_of_week", ["mon-fri", "MON-FRI", "0-4", "mon,tue,wed-fri", "Monday-Friday"]
    )
    def test_weekday_names_and_numbers_from_monday(self, day_of_week: str) -> None:
        trigger = utc_cron(day_of_week=day_of_week, hour=9)
        weekdays = [value.weekday() for value in islice(trigger, 7)]
        assert weekdays == [3, 4, 0, 1, 2, 3, 4]  # 2026-01-01 is a Thursday

    def test_nth_weekday_of_month(self) -> None:
        assert fire_times(utc_cron(day="3rd fri"), 3) == [
            "2026-01-16T00:00:00+00:00",
            "2026-02-20T00:00:00+00:00",
            "2026-03-20T00:00:00+00:00",
        ]

    @pytest.mark.parametrize("day", ["3rd Friday", "3RD FRI"])
    def test_nth_weekday_takes_full_names_in_any_case(self, day: str) -> None:
        assert fire_times(utc_cron(day=day), 1) == ["2026-01-16T00:00:00+00:00"]

    def test_fifth_weekday_skips_months_without_one(self) -> None:
        assert [value.date().isoformat() for value in islice(utc_cron(day="5th mon"), 3)] == [
            "2026-03-30",
            "2026-06-29",
            "2026-08-31",
        ]

    def test_last_weekday_of_month(self) -> None:
        assert fire_times(utc_cron(day="last fri"), 3) == [
            "2026-01-30T00:00:00+00:00",
            "2026-02-27T00:00:00+00:00",
            "2026-03-27T00:00:00+00:00",
        ]

    def test_last_day_of_month_including_leap_february(self) -> None:
        trigger = CronTrigger(day="last", timezone="UTC", start_time="2028-01-01")
        assert [value.date().isoformat() for value in islice(trigger, 3)] == [
            "2028-01-31",
            "2028-02-29",
            "2028-03-31",
        ]

    def test_day_31_skips_short_months(self) -> None:
        assert [value.month for value in islice(utc_cron(day=31), 4)] == [1, 3, 5, 7]

    def test_combined_day_forms(self) -> None:
        trigger = utc_cron(day="1,last,2nd mon", month=2)
        assert [value.day for value in islice(trigger, 3)] == [1, 9, 28]

    def test_third_friday_in_summer_and_winter_months(self) -> None:
        trigger = utc_cron(day="3rd fri", month="6-8,11-12")
        assert [value.date().isoformat() for value in islice(trigger, 5)] == [
            "2026-06-19",
            "2026-07-17",
            "2026-08-21",
            "2026-11-20",
            "2026-12-18",
        ]

    def test_day_and_day_of_week_must_both_match(self) -> None:
        # Friday the 13th
        trigger = utc_cron(day=13, day_of_week="fri")
        assert [value.date().isoformat() for value in islice(trigger, 3)] == [
            "2026-02-13",
            "2026-03-13",
            "2026-11-13",
        ]

    def test_iso_week(self) -> None:
        trigger = utc_cron(week=1, day_of_week="mon")
        # ISO week 1 of 2027 starts on 2027-01-04; 2026's started on 2025-12-29
        assert [value.date().isoformat() for value in islice(trigger, 2)] == [
            "2027-01-04",
            "2028-01-03",
        ]

    def test_week_53_only_in_long_years(self) -> None:
        trigger = utc_cron(week=53, day_of_week="thu")
        assert [value.date().isoformat() for value in islice(trigger, 2)] == [
            "2026-12-31",
            "2032-12-30",
        ]

    def test_sparse_yearly_expression(self) -> None:
        trigger = utc_cron(month="feb", day=29, hour=12)
        assert fire_times(trigger, 2) == [
            "2028-02-29T12:00:00+00:00",
            "2032-02-29T12:00:00+00:00",
        ]

    def test_year_range_ends(self) -> None:
        trigger = utc_cron(year="2026-2027", month=12, day=25)
        assert fire_times(trigger, 5) == [
            "2026-12-25T00:00:00+00:00",
            "2027-12-25T00:00:00+00:00",
        ]

    def test_impossible_date_is_exhausted(self) -> None:
        assert utc_cron(year=2027, month=2, day=30).next_fire_time() is None

    def test_start_time_is_inclusive_and_rounded_up(self) -> None:
        trigger = CronTrigger(second="*", timezone="UTC", start_time="2026-01-01 00:00:00.5")
        assert trigger.next_fire_time() == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
        trigger = CronTrigger(minute="*", timezone="UTC", start_time="2026-01-01 00:05:00")
        assert trigger.next_fire_time() == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)

    def test_after_is_exclusive(self) -> None:
        trigger = utc_cron(minute="*")
        after = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
        assert trigger.next_fire_time(after) == after + timedelta(minutes=1)
        just_before = after - timedelta(microseconds=1)
        assert trigger.next_fire_time(just_before) == after

    def test_end_time_is_inclusive_then_exhausted(self) -> None:
        trigger = CronTrigger(
            hour=12, timezone="UTC", start_time="2026-01-01", end_time="2026-01-03 12:00"
        )
        assert fire_times(trigger, 5) == [
            "2026-01-01T12:00:00+00:00",
            "2026-01-02T12:00:00+00:00",
            "2026-01-03T12:00:00+00:00",
        ]

    def test_after_in_another_zone(self) -> None:
        trigger = CronTrigger(hour=9, timezone="Asia/Kolkata", start_time="2026-01-01")
        after = datetime(2026, 5, 1, 4, 0, tzinfo=UTC)  # 09:30 in Kolkata
        assert trigger.next_fire_time(after) == datetime(
            2026, 5, 2, 9, 0, tzinfo=ZoneInfo("Asia/Kolkata")
        )

    def test_default_start_time_is_now(self) -> None:
        before = datetime.now(UTC)
        first = CronTrigger(second="*").next_fire_time()
        assert first is not None
        # never before the trigger was made, and at the next whole second at the latest
        assert before <= first <= datetime.now(UTC) + timedelta(seconds=1)


class TestCrontab:
    def test_five_fields(self) -> None:
        trigger = CronTrigger.from_crontab(
            "*/15 9-17 * * mon-fri", timezone="UTC", start_time="2026-01-02 17:30"
        )
        assert fire_times(trigger, 3) == [
            "2026-01-02T17:30:00+00:00",
            "2026-01-02T17:45:00+00:00",
            "2026-01-05T09:00:00+00:00",
        ]

    def test_six_fields_have_seconds_first(self) -> None:
        trigger = CronTrigger.from_crontab(
            "30 0 12 * * *", timezone="UTC", start_time="2026-01-01"
        )
        assert fire_times(trigger, 2) == [
            "2026-01-01T12:00:30+00:00",
            "2026-01-02T12:00:30+00:00",
        ]

    def test_six_fields_every_second_on_some_days(self) -> None:
        trigger = CronTrigger.from_crontab(
            "* * * * * mon-fri", timezone="UTC", start_time="2026-01-02 23:59:58"
        )
        assert fire_times(trigger, 3) == [
            "2026-01-02T23:59:58+00:00",
            "2026-01-02T23:59:59+00:00",
            "2026-01-05T00:00:00+00:00",
        ]
        assert trigger.next_fire_time(datetime(2026, 1, 5, 9, 30, 5, tzinfo=UTC)) == datetime(
            2026, 1, 5, 9, 30, 6, tzinfo=UTC
        )

    @pytest.mark.parametrize(
        ("shortcut", "expected"),
        [
            ("@yearly", ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
            ("@annually", ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
            ("@monthly", ["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]),
            ("@weekly", ["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"]),
            ("@daily", ["2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]),
            ("@midnight", ["2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]),
            ("@hourly", ["2026-01-01T01:00:00+00:00", "2026-01-01T02:00:00+00:00"]),
        ],
    )
    def test_shortcuts(self, shortcut: str, expected: list[str]) -> None:
        trigger = CronTrigger.from_crontab(
            shortcut, timezone="UTC", start_time="2026-01-01 00:00:01"
        )
        assert fire_times(trigger, 2) == expected

    @pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
    def test_zero_and_seven_are_sunday(self, sunday: str) -> None:
        trigger = CronTrigger.from_crontab(
            f"0 8 * * {sunday}", timezone="UTC", start_time="2026-01-01"
        )
        assert trigger.next_fire_time() == datetime(2026, 1, 4, 8, tzinfo=UTC)
        assert dict(trigger.fields)["day_of_week"] == "sun"

    def test_weekday_ranges_translate_to_names(self) -> None:
        def weekdays(expression: str) -> str:
            fields = dict(CronTrigger.from_crontab(f"0 0 * * {expression}").fields)
            return fields.get("day_of_week", "*")

        assert weekdays("1-5") == "mon-fri"
        assert weekdays("5-7") == "fri-sun"
        assert weekdays("0-2") == "mon-tue,sun"
        assert weekdays("*/2") == "tue,thu,sat-sun"
        assert weekdays("0-7") == "mon-sun"
        assert weekdays("Monday-Friday") == "mon-fri"

    def test_either_day_matches_when_both_are_restricted(self) -> None:
        # standard cron: the 13th of each month, and every Friday
        trigger = CronTrigger.from_crontab("0 9 13 * fri", timezone="UTC", start_time="2026-01-01")
        assert [value.date().isoformat() for value in islice(trigger, 4)] == [
            "2026-01-02",
            "2026-01-09",
            "2026-01-13",
            "2026-01-16",
        ]
        assert "match_either_day=True" in str(trigger)

    @pytest.mark.parametrize("every_day", ["1-7", "0-6", "0-7", "sun-sat", "SUN-SAT", "*/1"])
    def test_a_weekday_field_covering_every_day_still_counts_as_given(
        self, every_day: str
    ) -> None:
        # cron decides "restricted" by whether the field starts with "*", not by its values:
        # "0 0 1 * 1-7" fires every day (the 1st, or any day of the week)
        trigger = CronTrigger.from_crontab(
            f"0 0 1 * {every_day}", timezone="UTC", start_time="2026-01-01"
        )
        expected = 1 if every_day.startswith("*") else 4
        assert [value.day for value in islice(trigger, expected)] == [1, 2, 3, 4][:expected]
        if every_day.startswith("*"):
            assert trigger.next_fire_time(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
                2026, 2, 1, tzinfo=UTC
            )

    def test_a_range_wrapping_past_the_end_of_the_week_is_refused_with_a_hint(self) -> None:
        with pytest.raises(
            ValueError, match=r"range 'mon-sun' ends before it starts.*Monday to Sunday is '1-7'"
        ):
            CronTrigger.from_crontab("0 0 * * mon-sun")
        fields = dict(CronTrigger.from_crontab("0 0 * * mon-sat,sun").fields)
        assert fields["day_of_week"] == "mon-sun"

    def test_star_day_field_keeps_the_and_rule(self) -> None:
        trigger = CronTrigger.from_crontab(
            "0 9 */2 * fri", timezone="UTC", start_time="2026-01-01"
        )
        # odd days that are Fridays only
        assert [value.date().isoformat() for value in islice(trigger, 2)] == [
            "2026-01-09",
            "2026-01-23",
        ]
        assert not trigger.match_either_day

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("* * * *", "expected 5 fields"),
            ("* * * * * * *", "got 7"),
            ("@fortnightly", "unknown shortcut '@fortnightly'"),
            ("61 * * * *", "invalid value '61' for field 'minute'"),
            ("* * * * 8", r"invalid day of week '8' \(8 is out of range, expected 0-7"),
            ("* * * * 5l", r"'5l' is not a number or a name such as mon; days are 0-7"),
            ("* * 0 * *", "invalid value '0' for field 'day'"),
        ],
    )
    def test_bad_lines(self, expression: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            CronTrigger.from_crontab(expression)

    def test_not_a_string(self) -> None:
        with pytest.raises(TypeError, match="crontab: expected a string"):
            CronTrigger.from_crontab(5)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            (
                "0 9 L * *",
                r"^CronTrigger: invalid value 'L' for field 'day' \('L' is not a number; for "
                r"the last day of the month, write 'last'\)$",
            ),
            ("0 9 1-X * *", r"invalid value '1-X' for field 'day' \('X' is not a number\)$"),
            ("0 9 * JANX *", r"invalid value 'JANX' for field 'month' \('JANX' is not a number"),
            (
                "0 9 * * fri#3",
                r"^crontab: invalid day of week 'fri#3' \(cannot parse 'fri#3'; '#' is not "
                r"supported: the day field takes the nth weekday of the month, as in "
                r"CronTrigger\(day='3rd fri'\); days are 0-7 \(0 and 7 are Sunday\) or sun-sat\)$",
            ),
            ("0 9 * * Friday#2", r"cannot parse 'Friday#2'; .* CronTrigger\(day='2nd fri'\)"),
            ("0 9 * * MON-Funday", r"day of week 'MON-Funday' \('Funday' is not a number or a"),
            ("0 9 * * FRI-MON", r"day of week 'FRI-MON' \(the range 'FRI-MON' ends before it"),
        ],
    )
    def test_errors_quote_the_line_as_written(self, expression: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            CronTrigger.from_crontab(expression)

    @pytest.mark.parametrize("expression", ["0 9 * * 0sun", "0 9 * * */mon"])
    def test_a_weekday_name_is_a_whole_number_or_range_end(self, expression: str) -> None:
        # names were once replaced by numbers inside the text: "0sun" read as "00", Sunday
        with pytest.raises(ValueError, match="crontab: invalid day of week"):
            CronTrigger.from_crontab(expression)

    def test_names_in_any_case_give_the_same_trigger(self) -> None:
        upper = CronTrigger.from_crontab("0 9 LAST JAN-MAR MON-FRI", start_time="2026-01-01")
        lower = CronTrigger.from_crontab("0 9 last jan-mar mon-fri", start_time="2026-01-01")
        assert upper == lower
        assert upper._matcher is lower._matcher


class TestDaylightSaving:
    """Wall-clock semantics: gaps shift forward by their length, overlaps fire once."""

    @staticmethod
    def daily(zone: str, hour: int, minute: int, start: str) -> list[str]:
        trigger = CronTrigger(hour=hour, minute=minute, timezone=zone, start_time=start)
        return fire_times(trigger, 3)

    def test_berlin_spring_gap(self) -> None:
        assert self.daily("Europe/Berlin", 2, 30, "2026-03-28") == [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
            "2026-03-30T02:30:00+02:00",
        ]

    def test_berlin_autumn_overlap_fires_once(self) -> None:
        assert self.daily("Europe/Berlin", 2, 30, "2026-10-24") == [
            "2026-10-24T02:30:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00",
        ]

    def test_overlap_every_half_hour_skips_the_second_pass(self) -> None:
        trigger = CronTrigger(
            minute="*/30", timezone="Europe/Berlin", start_time="2026-10-25 01:30"
        )
        assert fire_times(trigger, 5) == [
            "2026-10-25T01:30:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T03:00:00+01:00",
            "2026-10-25T03:30:00+01:00",
        ]

    def test_after_in_the_second_pass_of_an_overlap(self) -> None:
        trigger = CronTrigger(minute="*/10", timezone="Europe/Berlin", start_time="2026-10-01")
        second_pass = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)  # 02:15 CET, the second time
        assert trigger.next_fire_time(second_pass) == datetime.fromisoformat(
            "2026-10-25T03:00:00+01:00"
        )

    def test_new_york(self) -> None:
        assert self.daily("America/New_York", 2, 30, "2026-03-07") == [
            "2026-03-07T02:30:00-05:00",
            "2026-03-08T03:30:00-04:00",
            "2026-03-09T02:30:00-04:00",
        ]
        assert self.daily("America/New_York", 1, 30, "2026-10-31") == [
            "2026-10-31T01:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
        ]

    def test_lord_howe_half_hour_shift(self) -> None:
        # 2026-10-04 02:00 -> 02:30: a 30-minute gap
        assert self.daily("Australia/Lord_Howe", 2, 15, "2026-10-03") == [
            "2026-10-03T02:15:00+10:30",
            "2026-10-04T02:45:00+11:00",
            "2026-10-05T02:15:00+11:00",
        ]
        # 2026-04-05 02:00 -> 01:30: 01:30-02:00 happens twice
        assert self.daily("Australia/Lord_Howe", 1, 45, "2026-04-04") == [
            "2026-04-04T01:45:00+11:00",
            "2026-04-05T01:45:00+11:00",
            "2026-04-06T01:45:00+10:30",
        ]

    def test_chatham(self) -> None:
        # 2026-09-27 02:45 -> 03:45 (UTC+12:45 -> +13:45)
        assert self.daily("Pacific/Chatham", 3, 0, "2026-09-26") == [
            "2026-09-26T03:00:00+12:45",
            "2026-09-27T04:00:00+13:45",
            "2026-09-28T03:00:00+13:45",
        ]

    def test_sao_paulo_historic_midnight_transitions(self) -> None:
        # 2018-11-04 00:00 -> 01:00: midnight did not exist
        assert self.daily("America/Sao_Paulo", 0, 0, "2018-11-03") == [
            "2018-11-03T00:00:00-03:00",
            "2018-11-04T01:00:00-02:00",
            "2018-11-05T00:00:00-02:00",
        ]
        # 2019-02-17 00:00 -> 2019-02-16 23:00: 23:xx on the 16th happened twice
        assert self.daily("America/Sao_Paulo", 23, 30, "2019-02-15") == [
            "2019-02-15T23:30:00-02:00",
            "2019-02-16T23:30:00-02:00",
            "2019-02-17T23:30:00-03:00",
        ]

    def test_kolkata_and_utc_have_no_transitions(self) -> None:
        assert self.daily("Asia/Kolkata", 9, 0, "2026-03-28") == [
            "2026-03-28T09:00:00+05:30",
            "2026-03-29T09:00:00+05:30",
            "2026-03-30T09:00:00+05:30",
        ]
        assert self.daily("UTC", 2, 30, "2026-03-28") == [
            "2026-03-28T02:30:00+00:00",
            "2026-03-29T02:30:00+00:00",
            "2026-03-30T02:30:00+00:00",
        ]

    def test_gap_time_shifted_past_later_wall_times_fires_in_instant_order(self) -> None:
        # Lord Howe, 2026-10-04: 02:00 -> 02:30. 02:20 does not exist and fires at 02:50, so
        # 02:40, which exists, comes first
        trigger = CronTrigger(
            hour=2, minute="20,40", timezone="Australia/Lord_Howe", start_time="2026-10-04 01:00"
        )
        assert fire_times(trigger, 3) == [
            "2026-10-04T02:40:00+11:00",
            "2026-10-04T02:50:00+11:00",
            "2026-10-05T02:20:00+11:00",
        ]

    def test_hour_long_gap_not_on_the_hour(self) -> None:
        # Chatham, 2026-09-27: 02:45 -> 03:45. 03:10 fires at 04:10, after 03:50
        trigger = CronTrigger(
            hour=3, minute="10,50", timezone="Pacific/Chatham", start_time="2026-09-27 01:00"
        )
        assert fire_times(trigger, 3) == [
            "2026-09-27T03:50:00+13:45",
            "2026-09-27T04:10:00+13:45",
            "2026-09-28T03:10:00+13:45",
        ]

    def test_fresh_search_after_a_time_just_past_a_gap(self) -> None:
        # not a chained call: ``after`` is after the gap, the shifted 02:20 (02:50) later
        trigger = CronTrigger(minute=20, timezone="Australia/Lord_Howe", start_time="2026-10-01")
        rebuilt = trigger_from_dict(trigger.to_dict())
        after = datetime.fromisoformat("2026-10-04T02:35:00+11:00")
        expected = datetime.fromisoformat("2026-10-04T02:50:00+11:00")
        assert trigger.next_fire_time(after) == expected
        assert rebuilt.next_fire_time(after.astimezone(UTC)) == expected

        both = CronTrigger(
            hour=2, minute="20,40", timezone="Australia/Lord_Howe", start_time="2026-10-01"
        )
        assert both.next_fire_time(
            datetime.fromisoformat("2026-10-04T02:40:00+11:00")
        ) == datetime.fromisoformat("2026-10-04T02:50:00+11:00")

    def test_start_time_just_past_a_gap(self) -> None:
        trigger = CronTrigger(
            minute=20, timezone="Australia/Lord_Howe", start_time="2026-10-04T02:35:00+11:00"
        )
        assert fire_times(trigger, 2) == [
            "2026-10-04T02:50:00+11:00",
            "2026-10-04T03:20:00+11:00",
        ]

    def test_end_time_between_a_shifted_time_and_an_earlier_one(self) -> None:
        trigger = CronTrigger(
            hour=2,
            minute="20,40",
            timezone="Australia/Lord_Howe",
            start_time="2026-10-04 01:00",
            end_time="2026-10-04T02:45:00+11:00",
        )
        assert fire_times(trigger, 3) == ["2026-10-04T02:40:00+11:00"]

    def test_every_second_after_a_time_in_the_second_pass_of_an_overlap(self) -> None:
        trigger = CronTrigger(second="*", timezone="Europe/Berlin", start_time="2026-10-01")
        second_pass = datetime(2026, 10, 25, 1, 0, 30, tzinfo=UTC)  # 02:00:30 CET
        assert trigger.next_fire_time(second_pass) == datetime.fromisoformat(
            "2026-10-25T03:00:00+01:00"
        )

    def test_fire_times_strictly_increase_across_transitions(self) -> None:
        for zone in ("Europe/Berlin", "Australia/Lord_Howe", "Pacific/Chatham"):
            trigger = CronTrigger(minute="*/15", timezone=zone, start_time="2026-01-01")
            instants = [value.astimezone(UTC) for value in islice(trigger, 4 * 24 * 366)]
            assert all(a < b for a, b in pairwise(instants)), zone


class TestSerialization:
    @pytest.mark.parametrize(
        "trigger",
        [
            CronTrigger(hour=17, minute="*/5", timezone="Europe/Berlin", start_time="2026-01-01"),
            CronTrigger(
                day="last fri,3rd mon",
                month="jun-aug",
                start_time="2026-01-01",
                end_time="2030-01-01",
                timezone="UTC",
            ),
            CronTrigger.from_crontab("0 9 13 * fri", timezone="America/New_York"),
        ],
    )
    def test_round_trip(self, trigger: CronTrigger) -> None:
        data = trigger.to_dict()
        assert data["type"] == "cron"
        rebuilt = trigger_from_dict(data)
        assert rebuilt == trigger
        after = datetime(2026, 6, 1, tzinfo=UTC)
        assert list(islice(rebuilt.fire_times(after), 5)) == list(
            islice(trigger.fire_times(after), 5)
        )

    def test_str_and_repr(self) -> None:
        trigger = CronTrigger(
            hour=17, minute="*/5", timezone="Europe/Berlin", start_time="2026-01-01"
        )
        assert str(trigger) == "cron[hour='17', minute='*/5']"
        assert repr(trigger) == (
            "CronTrigger(hour='17', minute='*/5', start_time='2026-01-01 00:00:00+01:00', "
            "timezone='Europe/Berlin')"
        )

    @pytest.mark.parametrize(
        "trigger",
        [
            CronTrigger(hour=9, timezone="Europe/Berlin", start_time="2026-01-01"),
            CronTrigger.from_crontab(
                "0 9 13 * fri", timezone="UTC", start_time="2026-01-01", end_time="2027-01-01"
            ),
        ],
    )
    def test_pickling_keeps_the_arguments_only(self, trigger: CronTrigger) -> None:
        fresh = pickle.dumps(trigger)
        assert len(fresh) < 1000  # not the matcher's 8,030 years
        list(islice(trigger, 3))  # fills the cache of the last fire time
        assert pickle.dumps(trigger) == fresh
        restored = pickle.loads(fresh)
        assert restored == trigger
        assert restored._matcher is trigger._matcher
        after = datetime(2026, 6, 1, tzinfo=UTC)
        assert list(islice(restored.fire_times(after), 5)) == list(
            islice(trigger.fire_times(after), 5)
        )

    def test_equal_specs_share_one_matcher(self) -> None:
        first = CronTrigger(hour="9-17", minute="*/5", timezone="UTC", start_time="2026-01-01")
        second = CronTrigger(hour="9-17", minute="*/5", timezone="UTC", start_time="2026-01-01")
        assert first == second
        assert hash(first) == hash(second)
        assert first._matcher is second._matcher


class TestErrors:
    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (
                {"hour": "25"},
                r"invalid value '25' for field 'hour' \(25 is out of range, expected 0-23\)",
            ),
            ({"hour": 24}, "field 'hour'"),
            ({"minute": "*/0"}, r"invalid value '\*/0' for field 'minute' \(the step '0'"),
            ({"minute": "5-2"}, r"'5-2' ends before it starts"),
            ({"day": "32nd fri"}, r"'32nd' is not an ordinal"),
            ({"day": "3rd fri-sat"}, r"'3rd fri-sat': an ordinal takes one weekday name"),
            ({"day": "1st fri/2"}, r"'1st fri/2': an ordinal takes one weekday name"),
            ({"day": "last mon-tue"}, "an ordinal takes one weekday name"),
            ({"day": "3rd fro"}, r"'fro' is not a weekday name"),
            ({"day": "0"}, "field 'day'"),
            ({"hour": "last"}, "only allowed on the 'day' field"),
            ({"day_of_week": "last fri"}, "only allowed on the 'day' field"),
            ({"day_of_week": "7"}, r"7 is out of range, expected 0-6"),
            ({"month": "foo"}, r"'foo' is not a number or a name"),
            ({"month": "13"}, "field 'month'"),
            ({"week": "54"}, "field 'week'"),
            ({"year": "1969"}, "field 'year'"),
            ({"second": ""}, "empty expression"),
            ({"second": "1,,2"}, "cannot parse ''"),
            ({"minute": "*-5"}, "'\\*' cannot start a range"),
            ({"minute": "-5"}, "cannot parse '-5'"),
        ],
    )
    def test_bad_fields(self, fields: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            CronTrigger(**fields)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"day": "L"}, r"^CronTrigger: invalid value 'L' for field 'day' \('L' is not a"),
            ({"day": "3RD Funday"}, r"invalid value '3RD Funday' .* \('Funday' is not a weekday"),
            ({"day": "6TH fri"}, r"invalid value '6TH fri' .* \('6TH' is not an ordinal"),
            ({"day": "Last Fri-Sat"}, r"\('Last Fri-Sat': an ordinal takes one weekday name"),
            ({"day_of_week": "LAST"}, r"invalid value 'LAST' .* \('LAST' is only allowed on"),
            ({"day_of_week": "Mon-Funday"}, r"invalid value 'Mon-Funday' .* \('Funday' is not"),
            (
                {"day_of_week": "Fri#3"},
                r"invalid value 'Fri#3' for field 'day_of_week' \(cannot parse 'Fri#3'; '#' is "
                r"not supported: .* as in CronTrigger\(day='3rd fri'\)\)$",
            ),
            ({"month": "JANX"}, r"invalid value 'JANX' for field 'month' \('JANX' is not a"),
            ({"hour": " 1 - 2/X "}, r"invalid value '1 - 2/X' .* \(the step 'X' must be a"),
            ({"hour": "²"}, r"invalid value '²' for field 'hour' \('²' is not a number\)$"),
            ({"minute": "*/²"}, r"\(the step '²' must be a positive integer\)$"),
        ],
    )
    def test_errors_quote_the_value_as_written(
        self, fields: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            CronTrigger(**fields)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [1.5, True, ["1"]])
    def test_bad_types(self, value: object) -> None:
        with pytest.raises(TypeError, match="field 'hour' must be an int or an expression"):
            CronTrigger(hour=value)  # type: ignore[arg-type]

    def test_unknown_zone(self) -> None:
        with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
            CronTrigger(hour=1, timezone="Mars/Olympus")

    def test_end_before_start(self) -> None:
        with pytest.raises(ValueError, match=r"end_time .* is before start_time"):
            CronTrigger(hour=1, timezone="UTC", start_time="2026-02-01", end_time="2026-01-01")

    def test_no_fire_time_past_the_end_of_datetime(self) -> None:
        every_second = CronTrigger(second="*", timezone="UTC", start_time="9999-12-31 23:59:58")
        assert fire_times(every_second, 5) == [
            "9999-12-31T23:59:58+00:00",
            "9999-12-31T23:59:59+00:00",
        ]
        # 22:00 on 9999-12-31 in New York is past the end of datetime in UTC
        new_york = CronTrigger(hour=22, timezone="America/New_York", start_time="9999-12-30")
        assert fire_times(new_york, 3) == ["9999-12-30T22:00:00-05:00"]
        assert new_york.next_fire_time(datetime(9999, 12, 31, 23, tzinfo=UTC)) is None
        tokyo = CronTrigger(hour=23, timezone="Asia/Tokyo", start_time="9999-12-30")
        assert fire_times(tokyo, 3) == ["9999-12-30T23:00:00+09:00", "9999-12-31T23:00:00+09:00"]

    def test_spaces_around_separators_are_accepted(self) -> None:
        assert CronTrigger(day_of_week="mon - fri", hour="1, 2").fields == (
            ("day_of_week", "mon-fri"),
            ("hour", "1,2"),
        )


@pytest.mark.parametrize(
    ("zone", "start", "fields"),
    [
        ("America/New_York", "2026-11-01T00:58:00-04:00", {"second": "*/20"}),  # overlap
        ("Europe/Berlin", "2026-10-25T01:50:00+02:00", {"minute": "*/5"}),  # overlap
        ("Europe/Berlin", "2026-03-29T01:50:00+01:00", {"minute": "*/5"}),  # gap
        ("Australia/Lord_Howe", "2026-10-04T01:40:00+10:30", {"minute": "*/10"}),  # half-hour gap
        ("Australia/Lord_Howe", "2026-10-04T01:00:00+10:30", {"minute": "20,40"}),
        ("Pacific/Chatham", "2026-09-27T01:00:00+12:45", {"minute": "10,50"}),
        ("Pacific/Chatham", "2026-09-27T02:40:00+12:45", {"second": "*/30", "minute": "*"}),
        ("Europe/Berlin", "2026-01-01T00:00:00+01:00", {"day": "last fri", "hour": 9}),
    ],
)
def test_chained_calls_agree_with_a_fresh_search(
    zone: str, start: str, fields: dict[str, str | int]
) -> None:
    # A trigger continues from the fire time it returned last: its answers must be those of
    # a trigger searching from scratch, for that fire time in any zone or fold
    def make() -> CronTrigger:
        return CronTrigger(**fields, start_time=start, timezone=zone)  # type: ignore[arg-type]

    chained = make()
    values = list(islice(chained, 40))
    for previous in values:
        for after in (previous, previous.astimezone(timezone.utc), previous.replace(fold=1)):
            assert chained.next_fire_time(previous) is not None  # ``previous`` is the last one
            assert instants([chained.next_fire_time(after)]) == instants(
                [make().next_fire_time(after)]
            )
    # the chain itself is strictly increasing in real time
    assert all(
        a.astimezone(timezone.utc) < b.astimezone(timezone.utc) for a, b in pairwise(values)
    )
