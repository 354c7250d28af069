"""The ``asched`` command line: ``preview`` fire times, ``list`` a store's schedules, ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import islice
from typing import NamedTuple

import anyio

from ._converters import as_timezone
from ._listing import job_lines, schedule_lines
from ._structures import Job, Schedule
from ._urls import split_own_options
from .datastores.base import BaseExternalDataStore, DataStore, RetrySettings
from .datastores.memory import MemoryDataStore
from .events import JobDeserializationFailed, ScheduleDeserializationFailed
from .triggers import CronTrigger, IntervalTrigger

_CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")


def _keyword_fields(text: str) -> dict[str, str]:
    """Parse ``"hour=17,minute=*/5"`` (commas inside a value: ``"hour=1,3,minute=0"``)."""
    fields: dict[str, str] = {}
    current: str | None = None
    for piece in text.split(","):
        name, sep, value = piece.partition("=")
        if sep and name.strip() not in _CRON_FIELDS:
            # no cron expression holds "=": this piece names a field, and not a known one
            raise ValueError(
                f"--cron: unknown field {name.strip()!r} (fields: {', '.join(_CRON_FIELDS)})"
            )
        if sep:
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
        print(
            "preview: give either a crontab expression or --cron field=value,...", file=sys.stderr
        )
        return 2
    if args.count < 1:
        print(f"preview: --count must be at least 1, got {args.count}", file=sys.stderr)
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
    if not fire_times:
        # a typo more often than an intent ("0 0 30 2 *"): say so, and fail a script using it
        print("(no fire times from now on: the expression never matches again)")
        return 1
    if len(fire_times) < args.count:
        print("(no more fire times)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ._urls import data_store_from_url
    from .datastores.sqlite import SQLiteDataStore

    try:
        zone = as_timezone(args.timezone)
        store = data_store_from_url(args.store)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(store, MemoryDataStore):
        print(
            "error: a memory store lives inside its process; give a persistent store's URL",
            file=sys.stderr,
        )
        return 1
    if isinstance(store, BaseExternalDataStore):
        # a person is waiting: report an unreachable server after a second, not half a minute
        store.retry_settings = RetrySettings(attempts=3, wait_min=0.2, wait_max=0.5)
    if isinstance(store, SQLiteDataStore) and not store.path.is_file():
        print(f"error: no SQLite database at {store.path}", file=sys.stderr)
        return 1
    try:
        contents = anyio.run(_read_store, args.store, store)
    except Exception as exc:  # unreachable server, unreadable file, foreign schema version
        print(f"error: cannot read {args.store}: {_innermost(exc)}", file=sys.stderr)
        return 1
    if contents is None:
        print(f"error: no such schema in {args.store}", file=sys.stderr)
        return 1
    schedules, jobs, unreadable = contents

    print(f"{len(schedules)} schedule(s), {len(jobs)} job(s) queued or running")
    if schedules:
        print()
        print("\n".join(schedule_lines(schedules, zone)))
    if args.jobs and jobs:
        print()
        print("\n".join(job_lines(jobs, zone)))
    if unreadable:
        # left out above, but there: silence would hide them
        print()
        print(f"{len(unreadable)} more that this process cannot restore:")
        for failure in unreadable:
            if isinstance(failure, ScheduleDeserializationFailed):
                print(f"  schedule {failure.schedule_id}: {failure.error}")
            else:
                print(f"  job {failure.job_id}: {failure.error}")
    return 0


def _innermost(exc: BaseException) -> BaseException:
    """Return the one exception inside exception groups of one (from task groups)."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


async def _postgresql_schema_exists(url: str, store: DataStore) -> bool:
    """Tell whether a PostgreSQL store's schema exists (listing must not create it)."""
    try:
        from .datastores.postgresql import PostgreSQLDataStore
    except ImportError:  # no asyncpg: the store is not a PostgreSQL one
        return True
    if not isinstance(store, PostgreSQLDataStore):
        return True
    import asyncpg

    connection = await asyncpg.connect(split_own_options(url, "postgresql")[0])
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", store.schema
        )
    finally:
        await connection.close()
    return bool(found)


class _StoreContents(NamedTuple):
    schedules: list[Schedule]
    jobs: list[Job]
    #: what the store holds but could not restore (a class gone from the code, say)
    unreadable: list[ScheduleDeserializationFailed | JobDeserializationFailed]


async def _read_store(url: str, store: DataStore) -> _StoreContents | None:
    """Return the store's schedules and jobs (``None``: its PostgreSQL schema is missing)."""
    from . import AsyncScheduler
    from .eventbrokers.local import LocalEventBroker

    if not await _postgresql_schema_exists(url, store):
        return None
    unreadable: list[ScheduleDeserializationFailed | JobDeserializationFailed] = []
    async with AsyncScheduler(store, LocalEventBroker()) as scheduler:
        with scheduler.subscribe(
            unreadable.append, {ScheduleDeserializationFailed, JobDeserializationFailed}
        ):
            return _StoreContents(
                await scheduler.get_schedules(), await scheduler.get_jobs(), unreadable
            )


async def _demo(seconds: float, runs: int | None = None) -> None:
    """Run a cron, an interval and a one-off job on the memory store for ``seconds``.

    With ``runs``, stop as soon as the cron and the interval job have each run that many
    times (``seconds`` is then the most it may take).
    """
    from . import AsyncScheduler
    from .events import JobReleased

    started = datetime.now().astimezone()
    counts = {"cron */2 s": 0, "interval 3 s": 0}
    enough = anyio.Event()

    def report(name: str) -> str:
        elapsed = (datetime.now().astimezone() - started).total_seconds()
        line = f"[{elapsed:5.2f}s] {name} ran"
        print(line, flush=True)
        return line

    def count(event: JobReleased) -> None:
        print(f"         job released: {event.outcome.value}", flush=True)
        name = {"every-2s-cron": "cron */2 s", "every-3s-interval": "interval 3 s"}.get(
            event.schedule_id or ""
        )
        if name is not None:
            counts[name] += 1
            if runs is not None and min(counts.values()) >= runs:
                enough.set()

    async with AsyncScheduler() as scheduler:
        scheduler.subscribe(count, JobReleased)
        await scheduler.add_schedule(
            report,
            CronTrigger(second="*/2", start_time=started),
            id="every-2s-cron",
            args=["cron */2 s"],
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
        with anyio.move_on_after(seconds) as timer:
            await (enough.wait() if runs is not None else anyio.sleep_forever())
        await scheduler.stop()
    elapsed = (datetime.now().astimezone() - started).total_seconds()
    if timer.cancelled_caught:
        print(f"demo finished after {seconds:g} s")
    else:
        print(f"demo finished after {elapsed:.1f} s: each schedule ran {runs} time(s)")


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

    listing = commands.add_parser(
        "list",
        help="print the schedules (and jobs) in a data store",
        description="Print the schedules in a persistent data store, soonest first, and "
        "optionally its queued and running jobs. Pickled arguments are read back, so run it "
        "where your application's modules can be imported.",
    )
    listing.add_argument(
        "store", help="the store's URL, e.g. sqlite:///jobs.sqlite or postgresql://host/db"
    )
    listing.add_argument("--jobs", action="store_true", help="list queued and running jobs too")
    listing.add_argument("--timezone", help="zoneinfo key for times (default: the local zone)")

    demo = commands.add_parser("demo", help="run a short demo on the memory store")
    demo.add_argument("--seconds", type=float, default=7, help="how long to run (default 7)")
    demo.add_argument(
        "--runs",
        type=int,
        help="stop once the cron and the interval job ran this many times each (--seconds "
        "is then the most it may take)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "preview":
        return _preview(args)
    if args.command == "list":
        return _list(args)
    if args.runs is not None and args.runs < 1:
        print(f"error: --runs must be 1 or more, got {args.runs}", file=sys.stderr)
        return 2
    anyio.run(_demo, args.seconds, args.runs)
    return 0
