"""Scheduler (the blocking twin) from plain threads, including signals in a real process."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import CancelledError
from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest

from asched import (
    AsyncScheduler,
    JobOutcome,
    RunState,
    ScheduleLookupError,
    Scheduler,
    current_job,
)
from asched.events import JobAdded, JobReleased, Subscription
from asched.triggers import DateTrigger, IntervalTrigger
from tests import jobs


def test_every_async_scheduler_method_has_a_blocking_twin_with_the_same_parameters() -> None:
    for name, async_method in inspect.getmembers(AsyncScheduler, inspect.isfunction):
        if name.startswith("_"):
            continue
        parameters = dict(inspect.signature(async_method).parameters)
        if name == "run_until_stopped":
            del parameters["task_status"]  # anyio's task group protocol: no use when blocking
        twin = getattr(Scheduler, name, None)
        assert twin is not None, f"Scheduler has no {name}()"
        twin_parameters = inspect.signature(twin).parameters
        assert [
            (parameter.name, parameter.kind, parameter.default)
            for parameter in twin_parameters.values()
        ] == [
            (parameter.name, parameter.kind, parameter.default)
            for parameter in parameters.values()
        ], name


def test_schedules_and_tasks_are_managed_through_the_blocking_twin() -> None:
    far = datetime.now(timezone.utc) + timedelta(days=1)
    scheduler = Scheduler()

    @scheduler.task("adder", max_running_jobs=2)
    def add(a: int, b: int = 0) -> int:
        return a + b

    @scheduler.scheduled_job(DateTrigger(far), id="declared")
    def declared() -> None: ...

    with scheduler:
        assert scheduler.identity == scheduler.async_scheduler.identity
        scheduler.configure_task("echo", func=jobs.async_echo, metadata={"team": "ops"})
        scheduler.start_in_background()

        assert scheduler.run_job(add, args=[1], kwargs={"b": 2}) == 3
        tasks = {task.id: task for task in scheduler.get_tasks()}
        assert tasks["adder"].max_running_jobs == 2
        assert tasks["echo"].metadata == {"team": "ops"}

        scheduler.add_schedule(
            add, IntervalTrigger(hours=1, start_time=far), id="hourly", args=[1]
        )
        assert {schedule.id for schedule in scheduler.get_schedules()} == {"declared", "hourly"}
        updated = scheduler.update_schedule("hourly", args=[5])
        assert (updated.args, scheduler.get_schedule("hourly").args) == ((5,), (5,))
        scheduler.pause_schedule("hourly")
        assert scheduler.get_schedule("hourly").paused
        scheduler.unpause_schedule("hourly")
        assert not scheduler.get_schedule("hourly").paused
        scheduler.remove_schedule("hourly")
        with pytest.raises(ScheduleLookupError):
            scheduler.get_schedule("hourly")

        scheduler.pause()
        job_id = scheduler.add_job(add, args=[2])
        assert [job.id for job in scheduler.get_jobs()] == [job_id]
        scheduler.resume()
        assert scheduler.get_job_result(job_id).return_value == 2

        scheduler.stop()
        scheduler.wait_until_stopped()
        assert scheduler.state is RunState.stopped


def test_the_blocking_twin_refuses_bad_arguments_at_the_call_and_keeps_nothing() -> None:
    far = datetime.now(timezone.utc) + timedelta(days=1)
    with Scheduler() as scheduler:
        scheduler.configure_task(jobs.add)  # a known task: add_job checks in this thread
        with pytest.raises(TypeError, match=r"args: expected a list or tuple .* got 5"):
            scheduler.add_job(jobs.add, args=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"kwargs: expected a mapping .* got \[1\]"):
            scheduler.add_job(jobs.add, kwargs=[1])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"args: .*got the str 'ab'"):
            scheduler.add_job(jobs.async_echo, args="ab")  # not known yet: on the loop
        with pytest.raises(TypeError, match=r"paused: expected True or False, got 'no'"):
            scheduler.add_schedule(
                jobs.add,
                DateTrigger(far),
                args=[1],
                paused="no",  # type: ignore[arg-type]
            )
        with pytest.raises(TypeError, match=r"metadata\['a'\]: .* is not JSON-compatible"):
            scheduler.add_schedule(jobs.add, DateTrigger(far), args=[1], metadata={"a": {1}})
        with pytest.raises(TypeError, match=r"metadata: expected a dict"):
            scheduler.configure_task(jobs.async_echo, metadata=["ops"])  # type: ignore[arg-type]

        assert scheduler.get_jobs() == []
        assert scheduler.get_schedules() == []
        assert [task.id for task in scheduler.get_tasks()] == ["tests.jobs:add"]


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


def test_a_plain_callback_may_call_the_blocking_scheduler() -> None:
    # APScheduler 3's listeners may call their scheduler: a callback runs in a thread of its
    # own, not in the event loop the blocking call waits for
    answered = threading.Event()
    job_ids_seen: list[list[object]] = []
    with Scheduler() as scheduler:
        scheduler.start_in_background()

        def on_release(event: JobReleased) -> None:
            job_ids_seen.append([job.id for job in scheduler.get_jobs()])
            if len(job_ids_seen) == 1:
                scheduler.add_job(jobs.add, args=[2])  # a second job, added from the callback
            else:
                answered.set()

        scheduler.subscribe(on_release, JobReleased)
        scheduler.add_job(jobs.add, args=[1])
        assert answered.wait(10), "the callback's calls did not return"

    assert len(job_ids_seen) == 2


def test_a_callback_can_unsubscribe_itself_and_later_events_skip_it() -> None:
    calls: list[JobReleased] = []
    with Scheduler() as scheduler:
        scheduler.start_in_background()
        subscription: Subscription | None = None

        def once(event: JobReleased) -> None:
            calls.append(event)
            assert subscription is not None
            subscription.unsubscribe()

        subscription = scheduler.subscribe(once, JobReleased)
        for value in range(3):
            scheduler.run_job(jobs.add, args=[value])

    assert len(calls) == 1
    assert not subscription.active


def test_a_one_shot_subscription_ends_after_its_event() -> None:
    calls: list[JobReleased] = []
    with Scheduler() as scheduler:
        scheduler.start_in_background()
        subscription = scheduler.subscribe(calls.append, JobReleased, one_shot=True)
        first = scheduler.add_job(jobs.add, args=[1])
        scheduler.get_job_result(first)
        scheduler.run_job(jobs.add, args=[2])
        assert not subscription.active

    assert [event.job_id for event in calls] == [first]


def test_plain_callbacks_get_events_in_order_and_one_raising_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    added: list[UUID] = []

    def explode(event: JobAdded) -> None:
        raise RuntimeError("subscriber bug")

    with Scheduler() as scheduler:
        scheduler.subscribe(explode, JobAdded)
        scheduler.subscribe(lambda event: added.append(event.job_id), JobAdded)
        job_ids = [scheduler.add_job(jobs.add, args=[value]) for value in range(20)]

    assert added == job_ids
    failures = [record for record in caplog.records if record.exc_info is not None]
    assert len(failures) == 20
    assert all(
        "subscriber bug" in record.getMessage() + str(record.exc_info) for record in failures
    )


def test_a_coroutine_callback_runs_on_the_event_loop() -> None:
    loop_threads: list[str] = []

    async def on_release(event: JobReleased) -> None:
        loop_threads.append(threading.current_thread().name)

    with Scheduler() as scheduler:
        scheduler.start_in_background()
        scheduler.subscribe(on_release, JobReleased)
        scheduler.run_job(jobs.add, args=[1])

    assert len(loop_threads) == 1
    assert loop_threads[0] != threading.current_thread().name
    assert loop_threads[0] != "asched events"


def test_a_blocking_call_from_the_event_loop_thread_fails_clearly() -> None:
    with Scheduler() as scheduler:
        scheduler.start_in_background()

        async def calls_the_blocking_twin() -> None:
            scheduler.get_jobs()  # would wait for the loop it blocks

        job_id = scheduler.add_job(calls_the_blocking_twin)
        result = scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, RuntimeError)
    assert "event loop thread" in str(result.exception)
    assert "await scheduler.async_scheduler.get_jobs(...)" in str(result.exception)


def test_jobs_added_from_many_threads_all_reach_the_store_in_each_threads_order() -> None:
    with Scheduler() as scheduler:
        scheduler.start_in_background(paused=True)
        assert scheduler.paused
        scheduler.configure_task(jobs.add)
        added: dict[int, list[UUID]] = {}

        def add_many(thread_number: int) -> None:
            added[thread_number] = [
                scheduler.add_job(jobs.add, args=[thread_number]) for _ in range(500)
            ]

        threads = [threading.Thread(target=add_many, args=[number]) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        queued = scheduler.get_jobs()  # waits for every job added before it

    assert len(queued) == 2000
    for thread_number, job_ids in added.items():
        in_store = [job.id for job in queued if job.args == (thread_number,)]
        assert in_store == job_ids


def test_closing_waits_for_the_jobs_added_just_before() -> None:
    added: list[UUID] = []
    with Scheduler() as scheduler:
        scheduler.configure_task(jobs.add)
        scheduler.subscribe(lambda event: added.append(event.job_id), JobAdded)
        job_ids = [scheduler.add_job(jobs.add, args=[value]) for value in range(300)]

    assert added == job_ids


def test_scheduler_without_with_starts_itself_and_closes() -> None:
    scheduler = Scheduler()
    scheduler.start_in_background()
    try:
        assert scheduler.run_job(jobs.add, args=[20, 22]) == 42
    finally:
        scheduler.close()
    assert scheduler.state is RunState.stopped
    scheduler.close()  # a second close does nothing


def test_calls_racing_with_close_end_instead_of_hanging() -> None:
    scheduler = Scheduler()
    scheduler.start_in_background()
    outcomes: list[str] = []

    def keep_calling() -> None:
        for _ in range(300):
            try:
                scheduler.get_jobs()
                outcomes.append("answered")
            except (RuntimeError, CancelledError) as exc:
                outcomes.append(type(exc).__name__)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    scheduler.close()
    caller.join(30)
    alive = caller.is_alive()
    scheduler.close()  # a call after the first close opened the scheduler again

    assert not alive
    assert len(outcomes) == 300


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

    assert process.returncode == 0, (stdout, stderr)
    assert "stopped cleanly" in stdout
    assert "Traceback" not in stderr


EARLY_SIGNAL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from asched import Scheduler

    def interrupt():  # runs as soon as the scheduler starts: while run_until_stopped starts
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))

    with Scheduler() as scheduler:
        scheduler.add_job(interrupt)
        scheduler.run_until_stopped()
    print("stopped cleanly", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_run_until_stopped_starts_still_stops_cleanly(
    signum: signal.Signals,
) -> None:
    for _ in range(3):  # the signal lands at a slightly different moment each time
        completed = subprocess.run(
            [sys.executable, "-c", EARLY_SIGNAL_SCRIPT, signum.name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        assert "stopped cleanly" in completed.stdout
        assert "Traceback" not in completed.stderr


REPORT_SCRIPT = textwrap.dedent(
    """
    import sys
    from asched import Scheduler

    def report():
        print("report", flush=True)

    def busy():  # running until the test says so: the stop has to wait for it
        print("ready", flush=True)
        sys.stdin.readline()

    with Scheduler() as scheduler:
        scheduler.add_schedule(report, "0 9 * * mon-fri", id="report")
        scheduler.add_job(busy)
        scheduler.run_until_stopped()
    print("exited cleanly", flush=True)
    """
)


@pytest.mark.parametrize(
    "signums",
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGINT, signal.SIGINT),
    ],
    ids=["SIGINT-twice", "SIGTERM-twice", "SIGTERM-then-SIGINT", "SIGINT-three-times"],
)
def test_signals_back_to_back_still_exit_cleanly(signums: tuple[signal.Signals, ...]) -> None:
    # What `timeout -s INT` does: it signals the process and then its process group. A job
    # holds the stop until every signal is sent, so none can come after the scheduler stopped
    for _ in range(3):  # the signals land at slightly different moments each time
        process = subprocess.Popen(
            [sys.executable, "-c", REPORT_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            for signum in signums:
                os.kill(process.pid, signum)
            stdout, stderr = process.communicate("done\n", timeout=20)
        finally:
            process.kill()
            process.communicate()

        assert "Traceback" not in stderr, stderr
        assert process.returncode == 0, (stdout, stderr)
        assert stdout == "exited cleanly\n"


HANGING_JOB_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from asched import RunState, Scheduler
    from asched.events import JobReleased

    async def hang():
        print("ready", flush=True)
        while scheduler.async_scheduler.state is RunState.started:
            await asyncio.sleep(0.005)
        print("stopping", flush=True)  # the first signal let this job run on
        await asyncio.Event().wait()  # only a cancellation ends it

    with Scheduler() as scheduler:
        scheduler.subscribe(lambda event: print("released", event.outcome.name), JobReleased)
        scheduler.add_job(hang)
        scheduler.run_until_stopped()
    print("exited cleanly", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_cancels_the_running_jobs_and_exits_cleanly(
    signum: signal.Signals,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", HANGING_JOB_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        os.kill(process.pid, signum)
        assert process.stdout.readline().strip() == "stopping"
        os.kill(process.pid, signum)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
        process.communicate()

    assert "Traceback" not in stderr, stderr
    assert process.returncode == 0, (stdout, stderr)
    assert stdout.split("\n") == ["released cancelled", "exited cleanly", ""]


OTHER_THREAD_SIGNAL_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading
    from asched import Scheduler

    def interrupt():  # a job in a worker thread: the signal is delivered to this thread
        signal.pthread_kill(threading.get_ident(), getattr(signal, sys.argv[1]))

    with Scheduler() as scheduler:
        scheduler.add_job(interrupt)
        scheduler.run_until_stopped()
    print("stopped cleanly", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_delivered_to_another_thread_still_stops_the_scheduler(
    signum: signal.Signals,
) -> None:
    # Python runs the handler in the main thread, which must not sleep through it
    completed = subprocess.run(
        [sys.executable, "-c", OTHER_THREAD_SIGNAL_SCRIPT, signum.name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "stopped cleanly\n"
    assert "Traceback" not in completed.stderr
