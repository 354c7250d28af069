"""Runs several scheduler processes on one store, injects faults, and accounts for every fire.

The accounting is exact: every schedule fires every second between ``first_fire`` and
``last_fire`` with ``CoalescePolicy.all`` and no misfire grace time, so each (schedule, fire
time) must end up with exactly one run, whatever the faults. A job whose process was
SIGKILLed while it ran shows up as a run *and* as an ``abandoned`` release; it must never be
run a second time. The victim is killed only while it is running jobs (frozen with SIGSTOP
first, so that what its runs file shows is what it is doing), so that there always are some.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
from anyio.abc import Process

from asched import AsyncScheduler, CoalescePolicy, JobOutcome
from asched.triggers import IntervalTrigger

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class ClusterSetup:
    """What a backend module's ``open_cluster(namespace)`` yields for the multi-process tests."""

    store_url: str
    broker_url: str | None
    nodes: int
    schedules: int
    seconds: int
    #: breaks the processes' connections for real; None if there are none to break
    fault: Callable[[], Awaitable[None]] | None = None


@dataclass
class ClusterResult:
    expected: set[tuple[str, str]]
    runs: Counter[tuple[str, str]]
    runs_by_node: Counter[str]
    outcomes: dict[str, str]  # job id -> outcome (last one seen; releases are unique)
    #: the nodes that held the lease of a job released as abandoned
    abandoned_job_nodes: set[str]
    #: (schedule id, fire time) of every job released as abandoned
    abandoned_fires: set[tuple[str, str]]
    killed_node: str | None
    #: how many distinct releases (JobReleased events) each job had; 1 unless released twice
    releases: Counter[str] = field(default_factory=Counter)
    #: ids of the jobs the killed node had started and not finished when it was killed
    running_at_kill: set[str] = field(default_factory=set)
    stderr: dict[str, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> dict[tuple[str, str], int]:
        return {key: count for key, count in self.runs.items() if count > 1}

    @property
    def released_twice(self) -> dict[str, int]:
        return {job_id: count for job_id, count in self.releases.items() if count > 1}

    @property
    def missing(self) -> set[tuple[str, str]]:
        return self.expected - set(self.runs)

    @property
    def unexpected(self) -> set[tuple[str, str]]:
        return set(self.runs) - self.expected

    def count(self, outcome: JobOutcome) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome.value)


async def run_cluster(
    *,
    store_url: str,
    broker_url: str | None,
    output: Path,
    nodes: int,
    schedules: int,
    seconds: int,
    hold_seconds: float = 0.2,
    kill_node_after: float | None = None,
    fault: Callable[[], Awaitable[None]] | None = None,
    fault_interval: float = 0.3,
) -> ClusterResult:
    """Add ``schedules`` schedules firing every second for ``seconds`` s; run ``nodes``
    scheduler processes until they are all done; optionally SIGKILL one of them
    (``node1``) at the first moment from ``kill_node_after`` seconds into the firing at
    which it is running a job, and call ``fault()`` every ``fault_interval`` seconds
    meanwhile."""
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
    last_fire = start + timedelta(seconds=seconds - 1)
    async with AsyncScheduler(store_url, broker_url) as setup:
        for index in range(schedules):
            await setup.add_schedule(
                "tests.cluster.node:record_fire",
                IntervalTrigger(seconds=1, start_time=start, end_time=last_fire),
                id=f"s{index:04}",
                kwargs={"hold_seconds": hold_seconds},
                coalesce=CoalescePolicy.all,
                misfire_grace_time=None,
            )

    # Run long enough for a killed node's leases to expire and its work to be taken over
    until = last_fire + timedelta(seconds=12)
    processes: dict[str, Process] = {}
    for index in range(nodes):
        identity = f"node{index}"
        command = [
            sys.executable, "-m", "tests.cluster.node",
            "--store", store_url, "--broker", broker_url or "", "--identity", identity,
            "--output", str(output), "--until", until.isoformat(),
        ]  # fmt: skip
        # Files, not pipes: a chatty process must never block on a full pipe
        with (output / f"stderr-{identity}.txt").open("wb") as log:
            processes[identity] = await anyio.open_process(
                command,
                cwd=REPOSITORY,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    killed: str | None = None
    running_at_kill: set[str] = set()
    try:
        async with anyio.create_task_group() as task_group:
            if fault is not None:

                async def keep_faulting() -> None:
                    assert fault is not None
                    while datetime.now(timezone.utc) < last_fire + timedelta(seconds=2):
                        await fault()
                        await anyio.sleep(fault_interval)

                task_group.start_soon(keep_faulting)

            if kill_node_after is not None:
                await anyio.sleep(
                    (start - datetime.now(timezone.utc)).total_seconds() + kill_node_after
                )
                killed = "node1"
                runs = output / f"runs-{killed}.jsonl"
                # bounded: the victim runs its share of every second's jobs until last_fire
                wait = (last_fire - datetime.now(timezone.utc)).total_seconds()
                try:
                    with anyio.fail_after(max(wait, 1.0)):
                        running_at_kill = await _kill_while_running(processes[killed], runs)
                except TimeoutError:
                    raise AssertionError(
                        f"{killed} was running no job at any moment in the {wait:.1f} s "
                        "before the last fire: nothing to kill it in the middle of"
                    ) from None

            with anyio.fail_after(60 + seconds):
                for process in processes.values():
                    await process.wait()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()

    stderr = {
        name: (output / f"stderr-{name}.txt").read_text(errors="replace") for name in processes
    }
    for name, process in processes.items():
        if name != killed and process.returncode != 0:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{stderr[name]}")

    result = _collect(output, schedules, start, seconds, killed, stderr)
    result.running_at_kill = running_at_kill
    return result


def _running_jobs(runs: Path) -> set[str]:
    """The jobs a runs file shows started and not finished."""
    started: set[str] = set()
    finished: set[str] = set()
    for line in runs.read_text().splitlines() if runs.exists() else []:
        if line.endswith("}"):  # a line being written may be cut short
            run = json.loads(line)
            (finished if "finished" in run else started).add(run["job_id"])
    return started - finished


def _is_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` has stopped (Linux: /proc/<pid>/task)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # a thread that has just exited
        # the state follows the parenthesized thread name, which may hold spaces
        if stat.rpartition(")")[2].split()[0] not in ("T", "t"):
            return False
    return True


async def _wait_until_stopped(pid: int) -> None:
    """Wait until SIGSTOP has taken effect on every thread of process ``pid``."""
    while not _is_stopped(pid):  # noqa: ASYNC110
        await anyio.sleep(0.001)  # another process's state: no event to wait on


async def _kill_while_running(process: Process, runs: Path) -> set[str]:
    """SIGKILL ``process`` at a moment it is running jobs; return those jobs' ids.

    The process is frozen (SIGSTOP) before its runs file is read for the decision, so the
    jobs it shows running are still running at the kill: none can finish in between.
    """
    while True:
        if _running_jobs(runs):
            process.send_signal(signal.SIGSTOP)
            await _wait_until_stopped(process.pid)
            running = _running_jobs(runs)
            if running:
                process.send_signal(signal.SIGKILL)
                await process.wait()
                # a stopped process writes nothing more: what it showed is what it was doing
                assert _running_jobs(runs) == running
                return running
            process.send_signal(signal.SIGCONT)
        await anyio.sleep(0.005)  # another process's file: no event crosses to this one


def _collect(
    output: Path,
    schedules: int,
    start: datetime,
    seconds: int,
    killed: str | None,
    stderr: dict[str, str],
) -> ClusterResult:
    expected = {
        (f"s{index:04}", (start + timedelta(seconds=offset)).isoformat())
        for index in range(schedules)
        for offset in range(seconds)
    }
    runs: Counter[tuple[str, str]] = Counter()
    runs_by_node: Counter[str] = Counter()
    node_of_job: dict[str, str] = {}
    for path in output.glob("runs-*.jsonl"):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # the last line of a killed process may be cut short
            run = json.loads(line)
            if "finished" in run:
                continue  # the end of a run counted at its start
            fire_time = datetime.fromisoformat(run["fire_time"]).astimezone(timezone.utc)
            runs[(run["schedule_id"], fire_time.isoformat())] += 1
            runs_by_node[run["node"]] += 1
            node_of_job[run["job_id"]] = run["node"]

    outcomes: dict[str, str] = {}
    abandoned_nodes: set[str] = set()
    abandoned_fires: set[tuple[str, str]] = set()
    # Every node hears every release through the broker (or only its own, without one): the
    # same release is the same (job, outcome, releaser, time) in each file
    distinct_releases: set[tuple[str, str, str, str]] = set()
    for path in output.glob("events-*.jsonl"):
        for line in path.read_text().splitlines():
            if line.endswith("}"):
                event = json.loads(line)
                distinct_releases.add(
                    (event["job_id"], event["outcome"], event["scheduler_id"], event["timestamp"])
                )
                outcomes[event["job_id"]] = event["outcome"]
                if event["outcome"] == JobOutcome.abandoned.value:
                    abandoned_nodes.add(event["scheduler_id"])
                    fire_time = datetime.fromisoformat(event["scheduled_fire_time"])
                    abandoned_fires.add(
                        (event["schedule_id"], fire_time.astimezone(timezone.utc).isoformat())
                    )

    return ClusterResult(
        expected=expected,
        runs=runs,
        runs_by_node=runs_by_node,
        outcomes=outcomes,
        abandoned_job_nodes=abandoned_nodes,
        abandoned_fires=abandoned_fires,
        killed_node=killed,
        releases=Counter(job_id for job_id, *_ in distinct_releases),
        stderr=stderr,
    )
