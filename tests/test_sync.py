"""Scheduler (the blocking twin) from plain threads, including signals in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone

import pytest

from asched import JobOutcome, RunState, Scheduler, current_job
from asched.events import JobReleased
from asched.triggers import IntervalTrigger
from tests import jobs


def test_run_job_blocks_until_the_result_is_there() -> None:
    with Scheduler() as scheduler:
        scheduler.start_in_background()
        assert scheduler.run_job(jobs.add, args=[2, 3]) == 5
        assert scheduler.run_job(jobs.async_echo, args=["async too"]) == "async too"


def test_background_scheduler_fires_schedules_while_the_caller_goes_on() -> None:
    fired = threading.Event()
    fire_times: list[datetime | None] = []

    def tick() -> None:
        job = current_job.get()
        fire_times.append(job.scheduled_fire_time if job else None)
        fired.set()

    with Scheduler() as scheduler:
        start = datetime.now(timezone.utc) + timedelta(milliseconds=50)
        scheduler.add_schedule(tick, IntervalTrigger(seconds=60, start_time=start), id="tick")
        scheduler.start_in_background()
        assert scheduler.state.name == "started"
        assert fired.wait(10)
        assert [schedule.id for schedule in scheduler.get_schedules()] == ["tick"]

    assert fire_times == [start]
    assert scheduler.state is RunState.stopped


def test_methods_work_from_several_threads_at_once() -> None:
    results: list[int] = []
    with Scheduler() as scheduler:
        scheduler.start_in_background()

        def submit(value: int) -> None:
            results.append(scheduler.run_job(jobs.add, args=[value, 1]))

        threads = [threading.Thread(target=submit, args=[n]) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

    assert sorted(results) == list(range(1, 9))


def test_subscription_delivers_events_and_can_be_cancelled_from_another_thread() -> None:
    received: list[JobReleased] = []
    with Scheduler() as scheduler:
        scheduler.start_in_background()
        subscription = scheduler.subscribe(received.append, JobReleased)
        job_id = scheduler.add_job(jobs.add, args=[1])
        assert scheduler.get_job_result(job_id).outcome is JobOutcome.success
        scheduler.run_job(jobs.add, args=[1])
        subscription.unsubscribe()
        scheduler.run_job(jobs.add, args=[1])

    assert len(received) == 2
    assert received[0].job_id == job_id


def test_scheduler_without_with_starts_itself_and_closes() -> None:
    scheduler = Scheduler()
    scheduler.start_in_background()
    try:
        assert scheduler.run_job(jobs.add, args=[20, 22]) == 42
    finally:
        scheduler.close()
    assert scheduler.state is RunState.stopped
    scheduler.close()  # a second close does nothing


def test_a_job_in_a_thread_can_stop_a_blocking_scheduler() -> None:
    with Scheduler() as scheduler:
        scheduler.add_job(lambda: scheduler.stop())
        scheduler.run_until_stopped()
        assert scheduler.state is RunState.stopped


SCRIPT = textwrap.dedent(
    """
    import sys
    from asched import Scheduler

    def ready():
        print("ready", flush=True)

    with Scheduler() as scheduler:
        scheduler.add_job(ready)
        scheduler.run_until_stopped()
    print("stopped cleanly", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_blocking_scheduler_stops_cleanly_on_a_signal(signum: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    assert "stopped cleanly" in stdout
    assert "Traceback" not in stderr
