"""One scheduler process of a multi-process test (``python -m tests.cluster.node ...``).

It runs an AsyncScheduler on the given store and broker until a deadline, and writes what it
saw to two line-buffered files in ``--output`` (lines reach the kernel at once, so they
survive a SIGKILL): ``runs-<identity>.jsonl`` gets a line for every job this process started
and another (``{"job_id": ..., "finished": ...}``) when it finished, ``events-<identity>.jsonl``
every JobReleased event this process saw.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import anyio

from asched import AsyncScheduler, current_job
from asched.events import JobReleased

_runs: IO[str] | None = None
_identity = ""


async def record_fire(hold_seconds: float) -> None:
    """The job every schedule runs: note the fire time, stay busy for a moment, note the end."""
    job = current_job.get()
    assert job is not None
    assert _runs is not None
    fire_time = job.scheduled_fire_time.isoformat() if job.scheduled_fire_time else None
    _runs.write(
        json.dumps(
            {
                "job_id": str(job.id),
                "schedule_id": job.schedule_id,
                "fire_time": fire_time,
                "node": _identity,
                "started": datetime.now(timezone.utc).isoformat(),
            }
        )
        + "\n"
    )
    await anyio.sleep(hold_seconds)
    finished = datetime.now(timezone.utc).isoformat()
    _runs.write(json.dumps({"job_id": str(job.id), "finished": finished}) + "\n")


async def run(args: argparse.Namespace, events: IO[str]) -> None:
    def on_release(event: JobReleased) -> None:
        events.write(json.dumps(event.to_dict()) + "\n")

    scheduler = AsyncScheduler(
        args.store,
        args.broker or None,
        identity=args.identity,
        lease_duration=args.lease_seconds,
        cleanup_interval=1,
    )
    scheduler.subscribe(on_release, JobReleased)
    async with scheduler:
        await scheduler.start_in_background()
        print("started", flush=True)
        deadline = datetime.fromisoformat(args.until)
        await anyio.sleep(max(0.0, (deadline - datetime.now(timezone.utc)).total_seconds()))
        await scheduler.stop()
    print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--broker", default="")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--until", required=True, help="ISO datetime to stop at")
    parser.add_argument("--lease-seconds", type=float, default=3)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {args.identity} pid={os.getpid()} %(levelname)s %(name)s %(message)s",
    )
    output = Path(args.output)
    # Jobs reference "tests.cluster.node:record_fire", a second copy of this module when it
    # runs as __main__: set the globals there
    job_module = importlib.import_module("tests.cluster.node")
    setattr(job_module, "_identity", args.identity)  # noqa: B010
    with (
        (output / f"runs-{args.identity}.jsonl").open("a", buffering=1) as runs,
        (output / f"events-{args.identity}.jsonl").open("a", buffering=1) as events,
    ):
        setattr(job_module, "_runs", runs)  # noqa: B010
        anyio.run(run, args, events)


if __name__ == "__main__":
    main()
