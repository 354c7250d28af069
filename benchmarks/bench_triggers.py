"""Time per next-fire-time computation: asched vs APScheduler 3.11 and 4.0a6, in one run.

    python -m benchmarks.bench_triggers [--repeat 5] [--rounds 3]

Each side runs in its own interpreter (both APScheduler versions are the package
``apscheduler``): APScheduler 3.11 from ``benchmarks/.vendor/ap3`` and 4.0a6 from
``benchmarks/.vendor/ap4``, installed by ``python -m benchmarks.vendor``. Every case chains
fire times from 2026-01-01 in Europe/Berlin (each computation starts from the previous fire
time) and reports the best of ``--repeat`` runs times ``--rounds`` turns, in microseconds per
computation.
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


def asched_side(repeat: int) -> dict[str, float | None]:
    from asched.triggers import CalendarIntervalTrigger, CronTrigger, IntervalTrigger

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
                now = fire_time + timedelta(microseconds=1)

        results[label] = _best_of(repeat, count, run)
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
    for label, *_ in CASES:
        ours, ap3, ap4 = (results[side][label] for side in SIDES)
        ratios = [f"{other / ours:.1f}x" if ours and other else "n/a" for other in (ap3, ap4)]
        print(f"| {label} | {_cell(ours)} | {_cell(ap3)} | {_cell(ap4)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
