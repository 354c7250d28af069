"""The ``asched`` command line: ``preview`` fire times of an expression, run a ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import islice

import anyio

from .triggers import CronTrigger, IntervalTrigger

_CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")


def _keyword_fields(text: str) -> dict[str, str]:
    """Parse ``"hour=17,minute=*/5"`` (commas inside a value: ``"hour=1,3,minute=0"``)."""
    fields: dict[str, str] = {}
    current: str | None = None
    for piece in text.split(","):
        name, sep, value = piece.partition("=")
        if sep and name.strip() in _CRON_FIELDS:
            current = name.strip()
            fields[current] = value.strip()
        elif current is not None:
            fields[current] += "," + piece.strip()  # a list value: "hour=1,3"
        else:
            raise ValueError(
                f"--cron: expected field=value pairs such as 'hour=17,minute=*/5' with fields "
                f"{', '.join(_CRON_FIELDS)}; got {piece!r}"
            )
    return fields


def _preview(args: argparse.Namespace) -> int:
    if (args.expression is None) == (args.cron is None):
        print("preview: give either a crontab expression or --cron field=value,...")
        return 2
    if args.count < 1:
        print(f"preview: --count must be at least 1, got {args.count}")
        return 2
    try:
        if args.cron is not None:
            trigger = CronTrigger(**_keyword_fields(args.cron), timezone=args.timezone)  # type: ignore[arg-type]
        else:
            trigger = CronTrigger.from_crontab(args.expression, timezone=args.timezone)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(trigger)
    fire_times = list(islice(trigger, args.count))
    for fire_time in fire_times:
        print(fire_time.strftime("%a %Y-%m-%d %H:%M:%S %Z (UTC%z)"))
    if len(fire_times) < args.count:
        print("(no more fire times)")
    return 0


async def _demo(seconds: float) -> None:
    from . import AsyncScheduler
    from .events import JobReleased

    started = datetime.now().astimezone()

    def report(name: str) -> str:
        elapsed = (datetime.now().astimezone() - started).total_seconds()
        line = f"[{elapsed:5.2f}s] {name} ran"
        print(line, flush=True)
        return line

    async with AsyncScheduler() as scheduler:
        scheduler.subscribe(
            lambda event: print(f"         job released: {event.outcome.value}", flush=True),
            JobReleased,
        )
        await scheduler.add_schedule(
            report, CronTrigger(second="*/2"), id="every-2s-cron", args=["cron */2 s"]
        )
        await scheduler.add_schedule(
            report,
            IntervalTrigger(seconds=3, start_time=started + timedelta(seconds=1)),
            id="every-3s-interval",
            args=["interval 3 s"],
        )
        job_id = await scheduler.add_job(report, args=["one-off job"])
        await scheduler.start_in_background()
        result = await scheduler.get_job_result(job_id)
        print(f"         one-off job returned {result.return_value!r}", flush=True)
        await anyio.sleep(seconds)
        await scheduler.stop()
    print(f"demo finished after {seconds:g} s")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asched", description="asched job scheduler tools")
    commands = parser.add_subparsers(dest="command", required=True)

    preview = commands.add_parser(
        "preview",
        help="print the next fire times of a cron expression",
        description="Print the next fire times of a crontab line or of CronTrigger fields.",
    )
    preview.add_argument(
        "expression", nargs="?", help='a crontab line, e.g. "*/15 9-17 * * mon-fri"'
    )
    preview.add_argument(
        "--cron", metavar="FIELDS", help="CronTrigger keyword fields, e.g. hour=17,minute=*/5"
    )
    preview.add_argument("--count", type=int, default=10, help="how many (default 10)")
    preview.add_argument("--timezone", help="zoneinfo key (default: the local zone)")

    demo = commands.add_parser("demo", help="run a short demo on the memory store")
    demo.add_argument("--seconds", type=float, default=7, help="how long to run (default 7)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "preview":
        return _preview(args)
    anyio.run(_demo, args.seconds)
    return 0
