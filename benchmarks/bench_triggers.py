"""Time per next-fire-time computation: asched vs APScheduler 3.11 and 4.0a6, in one run.

    python -m benchmarks.bench_triggers [--repeat 5] [--rounds 3]

Each side runs in its own interpreter (both APScheduler versions are the package
``apscheduler``): APScheduler 3.11 from ``benchmarks/.vendor/ap3`` and 4.0a6 from
``benchmarks/.vendor/ap4``, installed by ``python -m benchmarks.vendor``. Every case runs
from 2026-01-01 in Europe/Berlin, two ways, and reports the best of ``--repeat`` runs times
``--rounds`` turns, in microseconds per computation:

- chained: each computation starts from the previous fire time, as a schedule asks;
- cold: a trigger rebuilt from its serialized form (as a store loads it) is asked for the
  fire time after an instant that is not the last one it returned, the latest first. asched:
  ``next_fire_time(previous + 1 µs)``, so it cannot continue from its last answer.
  APScheduler keeps nothing between calls but the last fire time, so it answers the same
  questions: 3.11 ``get_next_fire_time(None, now=previous + 1 µs)`` for cron and interval
  (a search from ``now``) and ``get_next_fire_time(previous, now)`` for calendar interval
  (it can only step from a previous fire time); 4.0a6 ``next()`` with its last fire time
  set to the previous one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ZONE = "Europe/Berlin"
START = datetime(2026, 1, 1, tzinfo=ZoneInfo(ZONE))
VENDOR = Path(__file__).resolve().parent / ".vendor"

# (label, trigger kind, keyword arguments, computations per run)
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ('cron minute="*/5"', "cron", {"minute": "*/5"}, 20_000),
    ('cron second="*"', "cron", {"second": "*"}, 20_000),
    ('cron day="last fri"', "cron", {"day": "last fri"}, 2_000),
    (
        'cron day="3rd fri", month="6-8,11-12"',
        "cron",
        {"day": "3rd fri", "month": "6-8,11-12"},
        2_000,
    ),
    (
        "cron month=2, day=29, hour=12 (sparse yearly)",
        "cron",
        {"month": 2, "day": 29, "hour": 12},
        500,
    ),
    ("interval minutes=7", "interval", {"minutes": 7}, 20_000),
    ("calendar interval months=1, hour=9", "calendarinterval", {"months": 1, "hour": 9}, 2_000),
]


def _best_of(repeat: int, count: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


COLD = " (cold)"
ONE_MICROSECOND = timedelta(microseconds=1)


def asched_side(repeat: int) -> dict[str, float | None]:
    from asched.triggers import (
        CalendarIntervalTrigger,
        CronTrigger,
        IntervalTrigger,
        trigger_from_dict,
    )

    results: dict[str, float | None] = {}
    for label, kind, kwargs, count in CASES:
        if kind == "cron":
            trigger: Any = CronTrigger(**kwargs, start_time=START, timezone=ZONE)
        elif kind == "interval":
            trigger = IntervalTrigger(**kwargs, start_time=START, timezone=ZONE)
        else:
            trigger = CalendarIntervalTrigger(**kwargs, start_date=START.date(), timezone=ZONE)

        def run(trigger: Any = trigger, count: int = count) -> None:
            fire_time = None
            for _ in range(count):
                fire_time = trigger.next_fire_time(fire_time)

        results[label] = _best_of(repeat, count, run)

        # cold: just after each fire time, latest first (never after the last answer), on a
        # trigger loaded from its description
        afters = [fire_time + ONE_MICROSECOND for fire_time in islice(trigger, count)][::-1]
        rebuilt = trigger_from_dict(trigger.to_dict())

        def run_cold(trigger: Any = rebuilt, afters: list[datetime] = afters) -> None:
            for after in afters:
                trigger.next_fire_time(after)

        results[label + COLD] = _best_of(repeat, count, run_cold)
    return results


def apscheduler3_side(repeat: int) -> dict[str, float | None]:
    from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    results: dict[str, float | None] = {}
    for label, kind, kwargs, count in CASES:
        if kind == "cron":
            trigger: Any = CronTrigger(**kwargs, start_date=START, timezone=ZONE)
        elif kind == "interval":
            trigger = IntervalTrigger(**kwargs, start_date=START, timezone=ZONE)
        else:
            trigger = CalendarIntervalTrigger(**kwargs, start_date=START.date(), timezone=ZONE)

        def run(trigger: Any = trigger, count: int = count) -> None:
            fire_time = None
            now = START
            for _ in range(count):
                fire_time = trigger.get_next_fire_time(fire_time, now)
                now = fire_time + ONE_MICROSECOND

        results[label] = _best_of(repeat, count, run)

        fire_times = []
        fire_time, now = None, START
        for _ in range(count):
            fire_time = trigger.get_next_fire_time(fire_time, now)
            fire_times.append(fire_time)
            now = fire_time + ONE_MICROSECOND
        cls: Any = type(trigger)
        rebuilt = cls.__new__(cls)
        rebuilt.__setstate__(trigger.__getstate__())
        fire_times.reverse()  # the same order as asched's (it makes no difference here)

        if kind == "calendarinterval":

            def run_cold(trigger: Any = rebuilt, fire_times: list[Any] = fire_times) -> None:
                for fire_time in fire_times:
                    trigger.get_next_fire_time(fire_time, fire_time + ONE_MICROSECOND)

        else:

            def run_cold(trigger: Any = rebuilt, fire_times: list[Any] = fire_times) -> None:
                for fire_time in fire_times:
                    trigger.get_next_fire_time(None, fire_time + ONE_MICROSECOND)

        results[label + COLD] = _best_of(repeat, count, run_cold)
    return results


def apscheduler4_side(repeat: int) -> dict[str, float | None]:
    from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    results: dict[str, float | None] = {}
    for label, kind, kwargs, count in CASES:
        # 4.0 triggers are stateful: build a fresh one per run, outside the timing
        def build(kind: str = kind, kwargs: dict[str, Any] = kwargs) -> Any:
            if kind == "cron":
                return CronTrigger(**kwargs, start_time=START, timezone=ZONE)
            if kind == "interval":
                return IntervalTrigger(**kwargs, start_time=START)
            return CalendarIntervalTrigger(**kwargs, start_date=START.date(), timezone=ZONE)

        best = float("inf")
        for _ in range(repeat):
            trigger = build()
            started = time.perf_counter()
            for _ in range(count):
                trigger.next()
            best = min(best, time.perf_counter() - started)
        results[label] = best / count * 1e6

        # cold: a trigger restored with the previous fire time as its last one, each time
        trigger = build()
        fire_times = [trigger.next() for _ in range(count)]
        ap4_class: Any = type(trigger)
        rebuilt = ap4_class.__new__(ap4_class)
        rebuilt.__setstate__(trigger.__getstate__())
        attribute = "_last_fire_date" if kind == "calendarinterval" else "_last_fire_time"
        previous = [
            fire_time.date() if kind == "calendarinterval" else fire_time
            for fire_time in reversed(fire_times)
        ]
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            for value in previous:
                setattr(rebuilt, attribute, value)
                rebuilt.next()
            best = min(best, time.perf_counter() - started)
        results[label + COLD] = best / count * 1e6
    return results


SIDES = {"asched": asched_side, "ap3": apscheduler3_side, "ap4": apscheduler4_side}


def run_side(side: str, repeat: int) -> dict[str, float | None]:
    """Run one side in a fresh interpreter, with its own ``apscheduler`` on the path."""
    env = dict(os.environ)
    if side != "asched":
        vendor = VENDOR / side
        if not vendor.is_dir():
            sys.exit(f"{vendor} is missing: run `python -m benchmarks.vendor` first")
        env["PYTHONPATH"] = os.pathsep.join([str(vendor), env.get("PYTHONPATH", "")])
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_triggers",
            "--side",
            side,
            "--repeat",
            str(repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=sorted(SIDES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(SIDES[args.side](args.repeat)))
        return

    # Sides take turns for --rounds rounds and each keeps its best: a noisy phase of a shared
    # machine then hits every side alike instead of one
    results: dict[str, dict[str, float | None]] = {side: {} for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            for label, value in run_side(side, args.repeat).items():
                best = results[side].get(label)
                results[side][label] = value if best is None or value is None else min(best, value)
    print(
        "| trigger | asched µs | APScheduler 3.11 µs | APScheduler 4.0a6 µs | vs 3.11 | vs 4.0a6 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label in [case[0] + path for path in ("", COLD) for case in CASES]:
        ours, ap3, ap4 = (results[side][label] for side in SIDES)
        ratios = [f"{other / ours:.1f}x" if ours and other else "n/a" for other in (ap3, ap4)]
        print(f"| {label} | {_cell(ours)} | {_cell(ap3)} | {_cell(ap4)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
