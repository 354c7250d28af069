"""AsyncScheduler behaviour through its public API, on the memory store, asyncio and trio.

Time is the fake clock's: the scheduler sleeps on it, and tests move it with
``clock.advance()``; events (``recorder``) tell when something happened.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from asched import (
    AsyncScheduler,
    CallableLookupError,
    CoalescePolicy,
    ConflictingIdError,
    ConflictPolicy,
    Job,
    JobAbandoned,
    JobCancelled,
    JobLookupError,
    JobOutcome,
    JobResultNotReady,
    RunState,
    Schedule,
    ScheduleLookupError,
    SchedulerNotInitializedError,
    SchedulerRole,
    StaleScheduleError,
    Task,
    current_job,
)
from asched._structures import ScheduleUpdate
from asched.datastores import MemoryDataStore
from asched.eventbrokers import LocalEventBroker
from asched.events import (
    BrokerReconnected,
    JobAdded,
    JobReleased,
    ScheduleRemoved,
    SchedulerStarted,
    SchedulerStopped,
)
from asched.triggers import (
    CalendarIntervalTrigger,
    CronTrigger,
    DateTrigger,
    IntervalTrigger,
    OrTrigger,
    Trigger,
)
from tests import jobs, process_jobs
from tests.clock import FakeClock
from tests.conftest import EventRecorder

pytestmark = pytest.mark.anyio


@pytest.fixture
async def scheduler(clock: FakeClock, recorder: EventRecorder) -> AsyncIterator[AsyncScheduler]:
    async with AsyncScheduler(clock=clock) as scheduler:
        scheduler.subscribe(recorder)
        yield scheduler


class Calls:
    """``calls.record`` is a job function that records its calls; ``calls.wait(n)`` waits."""

    def __init__(self) -> None:
        self.calls: list[tuple[Job | None, tuple[Any, ...], dict[str, Any]]] = []
        self._changed = anyio.Event()

    async def record(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((current_job.get(), args, kwargs))
        self._changed.set()
        self._changed = anyio.Event()
        return "done"

    async def wait(self, count: int = 1) -> None:
        with anyio.fail_after(10):
            while len(self.calls) < count:
                await self._changed.wait()

    @property
    def fire_times(self) -> list[datetime | None]:
        return [job.scheduled_fire_time if job else None for job, _, _ in self.calls]


def every(clock: FakeClock, seconds: float, *, first_in: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=seconds, start_time=clock.now() + timedelta(seconds=first_in))


async def idle() -> None:
    """Let every task run until all are blocked (to assert that something did NOT happen)."""
    await anyio.wait_all_tasks_blocked()


#
# Running jobs
#


async def test_schedule_fires_at_its_fire_time_with_its_arguments(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    await scheduler.add_schedule(
        calls.record, every(clock, 10, first_in=10), args=[1], kwargs={"k": 2}
    )
    await scheduler.start_in_background()

    await idle()
    assert calls.calls == []
    clock.advance(10)
    await calls.wait()

    job, args, kwargs = calls.calls[0]
    assert (args, kwargs) == ((1,), {"k": 2})
    assert job is not None
    assert job.scheduled_fire_time == clock.now()
    clock.advance(10)
    await calls.wait(2)
    assert calls.fire_times == [clock.now() - timedelta(seconds=10), clock.now()]


async def test_add_job_runs_once_and_keeps_its_result(scheduler: AsyncScheduler) -> None:
    await scheduler.start_in_background()
    job_id = await scheduler.add_job(jobs.async_echo, args=["hello"])

    result = await scheduler.get_job_result(job_id)

    assert (result.outcome, result.return_value) == (JobOutcome.success, "hello")
    assert await scheduler.get_jobs() == []


async def test_plain_function_runs_in_a_worker_thread(scheduler: AsyncScheduler) -> None:
    await scheduler.start_in_background()

    thread_id = await scheduler.run_job(threading.get_ident)

    assert thread_id != threading.get_ident()


async def test_plain_function_sees_current_job_in_its_thread(scheduler: AsyncScheduler) -> None:
    await scheduler.start_in_background()

    def job_id_in_thread() -> object:
        job = current_job.get()
        return job.id if job else None

    job_id = await scheduler.add_job(job_id_in_thread)
    result = await scheduler.get_job_result(job_id)
    assert result.return_value == job_id


async def test_process_pool_runs_importable_function_in_another_process(
    scheduler: AsyncScheduler,
) -> None:
    import os

    await scheduler.start_in_background()

    pid = await scheduler.run_job(jobs.process_id, job_executor="processpool")

    assert isinstance(pid, int)
    assert pid != os.getpid()


async def test_process_pool_refuses_a_function_it_cannot_import(
    scheduler: AsyncScheduler,
) -> None:
    with pytest.raises(TypeError, match=r"processpool executor cannot run .*lambda"):
        await scheduler.configure_task("local", func=lambda: 1, job_executor="processpool")


async def test_process_pool_for_one_job_refuses_a_function_it_cannot_import(
    scheduler: AsyncScheduler,
) -> None:
    def nested() -> int:
        return 1

    with pytest.raises(TypeError, match=r"processpool executor cannot run .*nested"):
        await scheduler.add_job(nested, job_executor="processpool")
    with pytest.raises(TypeError, match=r"processpool executor cannot run .*nested"):
        await scheduler.run_job(nested, job_executor="processpool")
    assert await scheduler.get_jobs() == []


async def test_process_pool_refuses_a_coroutine_function(scheduler: AsyncScheduler) -> None:
    with pytest.raises(TypeError, match=r"runs plain functions.*async_echo.*async executor"):
        await scheduler.configure_task(jobs.async_echo, job_executor="processpool")
    with pytest.raises(TypeError, match=r"runs plain functions"):
        await scheduler.add_job(jobs.async_echo, args=[1], job_executor="processpool")


async def test_run_job_reraises_what_the_function_raised(scheduler: AsyncScheduler) -> None:
    await scheduler.start_in_background()

    with pytest.raises(ValueError, match="broken on purpose"):
        await scheduler.run_job(jobs.fail, args=["broken on purpose"])


async def test_failed_job_result_holds_the_exception_and_the_event_describes_it(
    scheduler: AsyncScheduler, recorder: EventRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    await scheduler.start_in_background()

    job_id = await scheduler.add_job(jobs.fail, args=["nope"])
    result = await scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, ValueError)
    [event] = recorder.of_type(JobReleased)
    assert (event.exception_type, event.exception_message) == ("builtins.ValueError", "nope")
    assert f"Job {job_id} (task 'tests.jobs:fail') raised an exception" in caplog.text


async def test_a_successful_job_is_logged_at_debug_level_only(
    scheduler: AsyncScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    await scheduler.start_in_background()
    with caplog.at_level(logging.INFO, logger="asched"):
        await scheduler.run_job(jobs.add, args=[1])
    assert "succeeded" not in caplog.text

    with caplog.at_level(logging.DEBUG, logger="asched"):
        job_id = await scheduler.add_job(jobs.add, args=[2])
        await scheduler.get_job_result(job_id)
    assert f"Job {job_id} (task 'tests.jobs:add') succeeded" in caplog.text


async def test_function_given_as_reference_text_runs(scheduler: AsyncScheduler) -> None:
    await scheduler.start_in_background()

    assert await scheduler.run_job("tests.jobs:add", args=[2, 3]) == 5


async def test_unresolvable_reference_is_a_clear_error(scheduler: AsyncScheduler) -> None:
    with pytest.raises(CallableLookupError, match=r"'tests.jobs:missing'.*no attribute"):
        await scheduler.add_job("tests.jobs:missing")
    with pytest.raises(CallableLookupError, match="cannot import module 'no_such_module'"):
        await scheduler.add_job("no_such_module:func")


async def test_max_concurrent_jobs_bounds_the_worker(clock: FakeClock) -> None:
    running = 0
    peak = 0
    release = anyio.Event()

    async def blocker() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async with AsyncScheduler(clock=clock, max_concurrent_jobs=2) as scheduler:
        await scheduler.start_in_background()
        job_ids = [await scheduler.add_job(blocker) for _ in range(5)]
        await idle()
        assert (running, len(await scheduler.get_jobs())) == (2, 5)
        release.set()
        for job_id in job_ids:
            assert (await scheduler.get_job_result(job_id)).outcome is JobOutcome.success

    assert peak == 2


async def test_jobs_that_wait_for_each_other_run_side_by_side_round_after_round(
    clock: FakeClock,
) -> None:
    """Each round needs every job running at once: runners left idle must all come back."""
    arrived = 0
    all_arrived = anyio.Event()

    async def meet(round_size: int) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == round_size:
            all_arrived.set()
        await all_arrived.wait()

    async with AsyncScheduler(clock=clock, max_concurrent_jobs=6) as scheduler:
        await scheduler.start_in_background()
        for round_size in (6, 3, 6):
            arrived, all_arrived = 0, anyio.Event()
            job_ids = [await scheduler.add_job(meet, args=[round_size]) for _ in range(round_size)]
            with anyio.fail_after(10):
                results = [await scheduler.get_job_result(job_id) for job_id in job_ids]
            assert [result.outcome for result in results] == [JobOutcome.success] * round_size


#
# Life cycle
#


async def test_methods_need_an_initialized_scheduler() -> None:
    scheduler = AsyncScheduler()
    with pytest.raises(SchedulerNotInitializedError, match="async with"):
        await scheduler.add_job(jobs.add, args=[1])


async def test_run_until_stopped_initializes_itself_and_a_job_can_stop_it() -> None:
    scheduler = AsyncScheduler()
    started = anyio.Event()

    async def stop_from_a_job() -> None:
        await scheduler.stop()

    scheduler.subscribe(lambda event: started.set(), SchedulerStarted)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(scheduler.run_until_stopped)
        with anyio.fail_after(10):
            await started.wait()
        await scheduler.add_job(stop_from_a_job)

    assert scheduler.state is RunState.stopped


async def test_state_and_lifecycle_events(
    scheduler: AsyncScheduler, recorder: EventRecorder
) -> None:
    assert scheduler.state is RunState.stopped
    await scheduler.start_in_background()
    assert scheduler.state.name == "started"
    with pytest.raises(RuntimeError, match="already started"):
        await scheduler.start_in_background()

    await scheduler.stop()
    await scheduler.wait_until_stopped()

    assert scheduler.state is RunState.stopped
    [started] = recorder.of_type(SchedulerStarted)
    [stopped] = recorder.of_type(SchedulerStopped)
    assert started.scheduler_id == stopped.scheduler_id == scheduler.identity
    assert stopped.exception_type is None


async def test_paused_scheduler_takes_no_work_until_resumed(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    await scheduler.add_schedule(calls.record, every(clock, 10, first_in=5))
    await scheduler.start_in_background(paused=True)
    assert (scheduler.state, scheduler.paused) == (RunState.started, True)
    await scheduler.add_job(calls.record)

    clock.advance(5)
    await idle()
    assert calls.calls == []

    await scheduler.resume()
    assert not scheduler.paused
    await calls.wait(2)
    await scheduler.pause()
    assert scheduler.paused
    clock.advance(10)
    await idle()
    assert len(calls.calls) == 2


async def test_worker_only_scheduler_runs_jobs_scheduled_by_another(clock: FakeClock) -> None:
    store, broker = MemoryDataStore(), LocalEventBroker()
    jobs.RECORDED.clear()
    recorder = EventRecorder()
    async with (
        AsyncScheduler(store, broker, clock=clock, role=SchedulerRole.scheduler) as creator,
        AsyncScheduler(store, broker, clock=clock, role=SchedulerRole.worker) as runner,
    ):
        runner.subscribe(recorder, JobReleased)
        await creator.add_schedule(jobs.record, every(clock, 10, first_in=10), args=["tick"])
        await creator.start_in_background()
        await runner.start_in_background()
        clock.advance(10)
        [event] = await recorder.wait_for(JobReleased)

    assert (event.scheduler_id, event.outcome) == (runner.identity, JobOutcome.success)
    assert jobs.RECORDED == ["tick"]


async def test_scheduler_only_instance_runs_no_jobs(clock: FakeClock) -> None:
    async with AsyncScheduler(clock=clock, role=SchedulerRole.scheduler) as scheduler:
        await scheduler.start_in_background()
        await scheduler.add_job(jobs.async_echo, args=[1])
        await idle()
        assert len(await scheduler.get_jobs()) == 1


#
# Schedules
#


async def test_conflicting_schedule_ids_follow_the_conflict_policy(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=1), id="s", args=[1])

    assert (
        await scheduler.add_schedule(jobs.add, every(clock, 5, first_in=1), id="s", args=[3])
        == "s"
    )
    assert (await scheduler.get_schedule("s")).args == (1,)

    await scheduler.add_schedule(
        jobs.add,
        every(clock, 5, first_in=1),
        id="s",
        args=[2],
        conflict_policy=ConflictPolicy.replace,
    )
    assert (await scheduler.get_schedule("s")).args == (2,)

    with pytest.raises(ConflictingIdError, match="'s'"):
        await scheduler.add_schedule(
            jobs.add,
            every(clock, 5, first_in=1),
            id="s",
            args=[3],
            conflict_policy=ConflictPolicy.exception,
        )


async def test_unknown_schedule_is_a_lookup_error(scheduler: AsyncScheduler) -> None:
    for method in (scheduler.get_schedule, scheduler.remove_schedule, scheduler.pause_schedule):
        with pytest.raises(ScheduleLookupError, match="'nope'"):
            await method("nope")


async def test_removed_schedule_fires_no_more(
    scheduler: AsyncScheduler, clock: FakeClock, recorder: EventRecorder
) -> None:
    calls = Calls()
    schedule_id = await scheduler.add_schedule(calls.record, every(clock, 10, first_in=10))
    await scheduler.start_in_background()
    await scheduler.remove_schedule(schedule_id)

    clock.advance(20)
    await idle()
    assert calls.calls == []
    assert await scheduler.get_schedules() == []
    [event] = recorder.of_type(ScheduleRemoved)
    assert event.finished is False


async def test_exhausted_trigger_removes_its_schedule_after_the_last_job(
    scheduler: AsyncScheduler, clock: FakeClock, recorder: EventRecorder
) -> None:
    calls = Calls()
    await scheduler.add_schedule(
        calls.record, DateTrigger(clock.now() + timedelta(seconds=5)), id="once"
    )
    await scheduler.start_in_background()

    clock.advance(5)
    await calls.wait()
    await recorder.wait_for(ScheduleRemoved)

    [event] = recorder.of_type(ScheduleRemoved)
    assert (event.schedule_id, event.finished) == ("once", True)
    assert await scheduler.get_schedules() == []


class NeverTrigger(Trigger):
    """A trigger with no fire times at all."""

    type_name = "never"

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeverTrigger:
        return cls()


async def test_trigger_without_fire_times_is_refused(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="has no fire times"):
        await scheduler.add_schedule(jobs.add, NeverTrigger(), args=[1])

    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=1), args=[1])
    with pytest.raises(ValueError, match="has no fire times"):
        await scheduler.update_schedule(schedule_id, trigger=NeverTrigger())


async def test_update_schedule_to_a_past_date_fires_it_as_add_schedule_would(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    schedule_id = await scheduler.add_schedule(calls.record, every(clock, 100, first_in=100))
    past = clock.now() - timedelta(seconds=1)

    updated = await scheduler.update_schedule(schedule_id, trigger=DateTrigger(past))
    await scheduler.start_in_background()

    assert updated.next_fire_time == past
    await calls.wait()
    assert calls.fire_times == [past]


class BrokenOnceTrigger(Trigger):
    """Delegates to an interval trigger, but its second computation raises."""

    type_name = "broken_once"

    def __init__(self, inner: IntervalTrigger):
        self.inner = inner
        self.computations = 0

    def next_fire_time(self, after: datetime | None = None) -> datetime | None:
        self.computations += 1
        if self.computations == 2:
            raise RuntimeError("the trigger broke this once")
        return self.inner.next_fire_time(after)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrokenOnceTrigger:
        raise NotImplementedError


async def test_a_trigger_that_raises_is_logged_and_its_schedule_retried_after_the_lease(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    trigger = BrokenOnceTrigger(every(clock, 100, first_in=1))
    first_fire_time = trigger.inner.next_fire_time()
    async with AsyncScheduler(clock=clock, lease_duration=30) as scheduler:
        await scheduler.start_in_background()
        await scheduler.add_schedule(calls.record, trigger, id="fragile")
        clock.advance(1)
        await idle()
        assert "Cannot compute the fire times of schedule 'fragile'" in caplog.text
        assert calls.calls == []

        clock.advance(30)  # the lease left on the schedule runs out
        await calls.wait(1)

    assert calls.fire_times == [first_fire_time]


async def test_update_schedule_with_a_new_trigger_reschedules_from_now(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    schedule_id = await scheduler.add_schedule(calls.record, every(clock, 100, first_in=100))
    await scheduler.start_in_background()
    clock.advance(30)

    updated = await scheduler.update_schedule(
        schedule_id, trigger=every(clock, 20, first_in=-50), args=["new"]
    )

    # first fire time of the new trigger at or after now: -50 + 3 * 20 = +10 s
    assert updated.next_fire_time == clock.now() + timedelta(seconds=10)
    clock.advance(10)
    await calls.wait()
    assert calls.calls[0][1] == ("new",)
    assert calls.fire_times == [clock.now()]


async def test_update_schedule_without_trigger_keeps_its_place_in_time(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=10), args=[1])
    before = await scheduler.get_schedule(schedule_id)

    updated = await scheduler.update_schedule(
        schedule_id, args=[5], name="renamed", misfire_grace_time=3
    )

    assert updated.next_fire_time == before.next_fire_time
    assert (updated.args, updated.name) == ((5,), "renamed")
    assert updated.misfire_grace_time == timedelta(seconds=3)
    assert await scheduler.get_schedule(schedule_id) == updated


async def test_update_schedule_unpausing_resumes_from_now(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=10), args=[1])
    await scheduler.pause_schedule(schedule_id)
    clock.advance(95)  # nine fire times pass while it is paused

    updated = await scheduler.update_schedule(schedule_id, paused=False)

    assert not updated.paused
    assert updated.next_fire_time == clock.now() + timedelta(seconds=5)
    assert await scheduler.get_schedule(schedule_id) == updated


async def test_update_schedule_rejects_unknown_options(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=1), args=[1])
    with pytest.raises(TypeError, match=r"unknown option.*colour"):
        await scheduler.update_schedule(schedule_id, colour="red")


async def test_paused_schedule_is_kept_but_fires_not_and_resumes_from_now(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    schedule_id = await scheduler.add_schedule(calls.record, every(clock, 10, first_in=10))
    await scheduler.start_in_background()
    await scheduler.pause_schedule(schedule_id)
    assert (await scheduler.get_schedule(schedule_id)).paused

    clock.advance(35)
    await idle()
    assert calls.calls == []

    await scheduler.unpause_schedule(schedule_id)
    await idle()
    assert calls.calls == []  # the fire times missed while paused are dropped
    clock.advance(5)
    await calls.wait()
    assert calls.fire_times == [clock.now()]


async def test_unpause_from_a_past_moment_applies_the_misfire_rules(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    schedule_id = await scheduler.add_schedule(
        calls.record, every(clock, 10, first_in=10), paused=True
    )
    await scheduler.start_in_background()
    clock.advance(35)

    await scheduler.unpause_schedule(schedule_id, resume_from=clock.now() - timedelta(seconds=30))

    await calls.wait()  # fire times +10, +20, +30 are due; coalesced to the latest
    assert calls.fire_times == [clock.now() - timedelta(seconds=5)]


@pytest.mark.parametrize("misfire_grace_time", [None, 3])
async def test_unpausing_from_before_the_last_fire_time_yields_no_fire_time_twice(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    recorder: EventRecorder,
    misfire_grace_time: float | None,
) -> None:
    start = clock.now()
    calls = Calls()
    schedule_id = await scheduler.add_schedule(
        calls.record,
        every(clock, 10, first_in=10),
        coalesce=CoalescePolicy.all,
        misfire_grace_time=misfire_grace_time,
    )
    await scheduler.start_in_background()
    clock.advance(10)
    await calls.wait()  # +10 s ran
    await recorder.wait_for(JobReleased)
    await scheduler.pause_schedule(schedule_id)
    clock.advance(12)  # +20 s passes while paused

    await scheduler.unpause_schedule(schedule_id, resume_from=start)

    await calls.wait(2)
    await recorder.wait_for(JobReleased, 2)
    await idle()
    released = recorder.of_type(JobReleased)
    assert [event.scheduled_fire_time for event in released] == [
        start + timedelta(seconds=10),
        start + timedelta(seconds=20),
    ]
    assert {event.outcome for event in released} == {JobOutcome.success}


class FiringWhileRead(MemoryDataStore):
    """A memory store that, once armed, lets another scheduler fire a schedule right after
    a read: the interleaving that a read-modify-write of the schedule would lose."""

    fire: Callable[[], Awaitable[None]] | None = None

    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        schedules = await super().get_schedules(ids)
        if self.fire is not None:
            fire, self.fire = self.fire, None
            await fire()
        return schedules


async def test_pausing_keeps_the_progress_a_scheduler_made_meanwhile(clock: FakeClock) -> None:
    store = FiringWhileRead()
    async with AsyncScheduler(store, clock=clock) as scheduler:
        schedule_id = await scheduler.add_schedule(
            jobs.add, every(clock, 10, first_in=-5), args=[1]
        )
        [acquired] = await store.acquire_schedules("other", timedelta(minutes=1), 10)
        assert acquired.next_fire_time is not None
        moved_on = acquired.next_fire_time + timedelta(seconds=10)

        async def fire() -> None:
            update = ScheduleUpdate(
                schedule_id=schedule_id,
                next_fire_time=moved_on,
                next_run_time=moved_on,
                last_fire_time=acquired.next_fire_time,
            )
            await store.release_schedules("other", [update])

        store.fire = fire
        await scheduler.pause_schedule(schedule_id)
        stored = await scheduler.get_schedule(schedule_id)

    assert stored.paused
    # the fire time the other scheduler processed is not put back to fire again
    assert (stored.next_fire_time, stored.last_fire_time) == (moved_on, acquired.next_fire_time)


async def test_unpausing_a_schedule_that_is_not_paused_changes_nothing(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=-5), args=[1])
    before = await scheduler.get_schedule(schedule_id)  # a fire time is due

    await scheduler.unpause_schedule(schedule_id)
    await scheduler.unpause_schedule(schedule_id, resume_from=clock.now() + timedelta(hours=1))

    assert await scheduler.get_schedule(schedule_id) == before


#
# Misfires, coalescing, jitter, limits
#


@pytest.mark.parametrize(
    ("coalesce", "expected_offsets"),
    [
        (CoalescePolicy.latest, [-5]),
        (CoalescePolicy.earliest, [-35]),
        (CoalescePolicy.all, [-35, -25, -15, -5]),
    ],
)
async def test_overdue_fire_times_are_coalesced(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    recorder: EventRecorder,
    coalesce: CoalescePolicy,
    expected_offsets: list[int],
) -> None:
    calls = Calls()
    await scheduler.add_schedule(calls.record, every(clock, 10, first_in=-35), coalesce=coalesce)
    await scheduler.start_in_background()

    await calls.wait(len(expected_offsets))
    await recorder.wait_for(JobReleased, len(expected_offsets))
    await idle()

    assert calls.fire_times == [clock.now() + timedelta(seconds=s) for s in expected_offsets]
    assert {event.outcome for event in recorder.of_type(JobReleased)} == {JobOutcome.success}


async def test_fire_times_past_the_grace_time_are_missed_and_reported(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    recorder: EventRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    await scheduler.add_schedule(
        calls.record,
        every(clock, 10, first_in=-35),
        id="late",
        misfire_grace_time=12,
        job_result_expiration_time=60,
    )
    await scheduler.start_in_background()

    await calls.wait()
    released = await recorder.wait_for(JobReleased, 4)

    assert calls.fire_times == [clock.now() - timedelta(seconds=5)]
    missed = [event for event in released if event.outcome is JobOutcome.missed_start_deadline]
    assert sorted(event.scheduled_fire_time for event in missed) == [  # type: ignore[type-var]
        clock.now() - timedelta(seconds=s) for s in (35, 25, 15)
    ]
    result = await scheduler.get_job_result(missed[0].job_id)
    assert result.outcome is JobOutcome.missed_start_deadline
    [warning] = [record for record in caplog.records if "missed" in record.getMessage()]
    assert warning.levelno == logging.WARNING
    first_missed = (clock.now() - timedelta(seconds=35)).isoformat()
    assert f"Schedule 'late' missed 3 fire time(s) from {first_missed}" in warning.getMessage()


async def test_a_year_of_missed_fire_times_is_processed_in_bounded_work(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    recorder: EventRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    await scheduler.add_schedule(
        calls.record, every(clock, 1, first_in=-365 * 86400), misfire_grace_time=10
    )
    await scheduler.start_in_background()

    with anyio.fail_after(30):
        await calls.wait()

    assert len(calls.calls) == 1
    assert calls.fire_times[0] == clock.now()  # the latest fire time within the grace time
    assert len(recorder.of_type(JobReleased)) <= 1001
    assert "missed more than 1000 fire times" in caplog.text


async def test_job_waiting_for_a_slot_past_its_deadline_is_missed(
    clock: FakeClock, recorder: EventRecorder
) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> None:
        started.set()
        await release.wait()

    async with AsyncScheduler(clock=clock) as scheduler:
        scheduler.subscribe(recorder)
        await scheduler.configure_task("slow", func=slow, max_running_jobs=1)
        await scheduler.add_schedule(
            "slow",
            every(clock, 10, first_in=10),
            misfire_grace_time=5,
            coalesce=CoalescePolicy.all,
        )
        await scheduler.start_in_background()
        clock.advance(10)
        with anyio.fail_after(10):
            await started.wait()
        clock.advance(10)  # the second job waits for the only slot...
        await recorder.wait_for(JobAdded, 2)
        clock.advance(6)  # ...past its start deadline
        release.set()

        released = await recorder.wait_for(JobReleased, 2)

    assert [event.outcome for event in released] == [
        JobOutcome.success,
        JobOutcome.missed_start_deadline,
    ]


async def test_schedule_max_running_jobs_lets_one_run_at_a_time(
    scheduler: AsyncScheduler, clock: FakeClock, recorder: EventRecorder
) -> None:
    running = 0
    peak = 0
    release = anyio.Event()

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    await scheduler.add_schedule(
        slow, every(clock, 1, first_in=1), max_running_jobs=1, coalesce=CoalescePolicy.all
    )
    await scheduler.start_in_background()
    for _ in range(3):
        clock.advance(1)
        await idle()
    assert (running, len(await scheduler.get_jobs())) == (1, 3)

    release.set()
    await recorder.wait_for(JobReleased, 3)
    assert peak == 1


async def test_raising_a_schedules_limit_starts_its_waiting_jobs_at_once(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    running = 0
    all_started = anyio.Event()
    release = anyio.Event()

    async def slow() -> None:
        nonlocal running
        running += 1
        if running == 3:
            all_started.set()
        await release.wait()

    schedule_id = await scheduler.add_schedule(
        slow, every(clock, 1, first_in=1), max_running_jobs=1, coalesce=CoalescePolicy.all
    )
    await scheduler.start_in_background()
    for _ in range(3):
        clock.advance(1)
        await idle()
    assert running == 1

    await scheduler.update_schedule(schedule_id, max_running_jobs=3)

    with anyio.fail_after(5):  # no job ended: nothing but the update can wake the worker
        await all_started.wait()
    release.set()


async def test_jitter_delays_each_job_within_bounds_and_before_the_next_fire_time(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    calls = Calls()
    run_times: list[datetime] = []

    async def record() -> None:
        run_times.append(clock.now())
        await calls.record()

    await scheduler.add_schedule(
        record, every(clock, 10, first_in=10), max_jitter=30, coalesce=CoalescePolicy.all
    )
    await scheduler.start_in_background()
    for _ in range(400):  # 100 s in quarter seconds
        clock.advance(0.25)
        await idle()

    jitters = [job.jitter for job, _, _ in calls.calls if job]
    assert len(jitters) >= 9
    assert all(timedelta(0) <= jitter < timedelta(seconds=10) for jitter in jitters)
    assert len(set(jitters)) > 1
    for (job, _, _), run_time in zip(calls.calls, run_times, strict=True):
        assert job is not None
        assert job.scheduled_fire_time is not None
        run_at = job.scheduled_fire_time + job.jitter
        assert run_at <= run_time < run_at + timedelta(seconds=0.25)


#
# Results, leases, stopping
#


async def test_results_expire(scheduler: AsyncScheduler, clock: FakeClock) -> None:
    await scheduler.start_in_background()
    job_id = await scheduler.add_job(jobs.async_echo, args=[1], result_expiration_time=60)
    await scheduler.get_job_result(job_id)

    clock.advance(61)

    with pytest.raises(JobLookupError, match=str(job_id)):
        await scheduler.get_job_result(job_id)


async def test_job_without_kept_result_cannot_be_waited_for(scheduler: AsyncScheduler) -> None:
    job_id = await scheduler.add_job(jobs.async_echo, args=[1], result_expiration_time=0)

    with pytest.raises(JobLookupError, match="add_job's result_expiration_time is 0"):
        await scheduler.get_job_result(job_id)


async def test_unfinished_job_result_without_waiting_is_not_ready(
    scheduler: AsyncScheduler,
) -> None:
    job_id = await scheduler.add_job(jobs.async_echo, args=[1])

    with pytest.raises(JobResultNotReady, match=str(job_id)):
        await scheduler.get_job_result(job_id, wait=False)
    with pytest.raises(JobLookupError):
        await scheduler.get_job_result(uuid4())


async def test_waiting_for_a_result_that_expired_as_it_was_released_says_it_is_gone(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    # the release wakes the waiter, which finds no result: it must not spin
    job_id = await scheduler.add_job(jobs.async_echo, args=[1], result_expiration_time=1)
    scheduler.subscribe(lambda event: clock.advance(2), JobReleased)  # before the waiter reads
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(scheduler.start_in_background)
            with pytest.raises(JobLookupError, match="the job finished but its result is gone"):
                await scheduler.get_job_result(job_id)


async def test_job_results_are_found_by_the_text_of_the_id_too(
    scheduler: AsyncScheduler,
) -> None:
    # a web API hands the id to its client as text, and gets it back as text
    await scheduler.start_in_background()
    job_id = await scheduler.add_job(jobs.async_echo, args=[7])

    assert (await scheduler.get_job_result(str(job_id))).return_value == 7
    with pytest.raises(ValueError, match="job_id: not a UUID: 'zzz'"):
        await scheduler.get_job_result("zzz")
    with pytest.raises(TypeError, match="job_id: expected a UUID or its text, got 5"):
        await scheduler.get_job_result(5)  # type: ignore[arg-type]


async def test_waiting_for_a_result_nothing_will_produce_says_so_then_gets_it(
    scheduler: AsyncScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the memory store's job runs only in its own scheduler, which has not been started: the
    # wait would be silent forever
    monkeypatch.setattr("asched._scheduler.MAX_IDLE_SECONDS", 0.01)
    warned = anyio.Event()

    class Warned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "which nothing runs" in record.getMessage():
                warned.set()

    handler = Warned()
    scheduler.logger.addHandler(handler)
    job_id = await scheduler.add_job(jobs.async_echo, args=[1])
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                results: list[Any] = []

                async def wait_for_result() -> None:
                    results.append(await scheduler.get_job_result(job_id))

                task_group.start_soon(wait_for_result)
                await warned.wait()
                await scheduler.start_in_background()
    finally:
        scheduler.logger.removeHandler(handler)
    assert [result.return_value for result in results] == [1]


async def test_job_whose_worker_vanished_is_released_as_abandoned(
    clock: FakeClock, recorder: EventRecorder
) -> None:
    store = MemoryDataStore()
    async with AsyncScheduler(store, clock=clock, cleanup_interval=10) as scheduler:
        scheduler.subscribe(recorder)
        job_id = await scheduler.add_job(jobs.async_echo, args=[1])
        # a worker that takes the job and is never heard of again
        await store.acquire_jobs("ghost", timedelta(seconds=30), 10)
        await scheduler.start_in_background()

        for _ in range(4):
            clock.advance(10)
            await idle()

        result = await scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.abandoned
    [event] = recorder.of_type(JobReleased)
    assert (event.outcome, event.scheduler_id) == (JobOutcome.abandoned, "ghost")


class FlakyMemoryDataStore(MemoryDataStore):
    """A memory store whose next acquire_jobs / release_jobs calls fail, as a lost server's."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_acquires = self.failing_releases = self.failing_schedule_acquires = 0

    async def acquire_schedules(self, *args: Any, **kwargs: Any) -> list[Schedule]:
        if self.failing_schedule_acquires:
            self.failing_schedule_acquires -= 1
            raise ConnectionError("server unreachable (schedules)")
        return await super().acquire_schedules(*args, **kwargs)

    async def acquire_jobs(self, *args: Any, **kwargs: Any) -> list[Job]:
        if self.failing_acquires:
            self.failing_acquires -= 1
            raise ConnectionError("server unreachable (acquire)")
        return await super().acquire_jobs(*args, **kwargs)

    async def release_jobs(self, *args: Any, **kwargs: Any) -> None:
        if self.failing_releases:
            self.failing_releases -= 1
            raise ConnectionError("server unreachable (release)")
        await super().release_jobs(*args, **kwargs)


async def test_worker_rides_out_failing_acquires_and_releases_and_loses_no_result(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyMemoryDataStore()
    store.failing_acquires, store.failing_releases = 2, 2
    released: list[JobReleased] = []
    async with AsyncScheduler(store, clock=clock) as scheduler:
        scheduler.subscribe(released.append, JobReleased)
        await scheduler.start_in_background()
        job_ids = [await scheduler.add_job(jobs.async_echo, args=[n]) for n in range(3)]
        # back-off waits (1 s doubling) run on the fake clock
        with anyio.fail_after(10):
            while len(released) < 3:
                clock.advance(5)
                await idle()
        results = [await scheduler.get_job_result(job_id, wait=False) for job_id in job_ids]

    assert [result.return_value for result in results] == [0, 1, 2]
    assert (store.failing_acquires, store.failing_releases) == (0, 0)
    assert caplog.text.count("Error while acquiring jobs; retrying in") == 2
    assert caplog.text.count("Error releasing job results; retrying in") == 2


async def test_run_job_raises_job_cancelled_when_a_stop_cancels_its_job(
    clock: FakeClock,
) -> None:
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    outcome: list[BaseException] = []

    async def run_forever(scheduler: AsyncScheduler) -> None:
        try:
            await scheduler.run_job(forever)
        except JobCancelled as exc:
            outcome.append(exc)

    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(run_forever, scheduler)
                await started.wait()
                await scheduler.stop(wait=False)

    assert len(outcome) == 1
    assert "cancel" in str(outcome[0])


async def test_run_job_raises_job_abandoned_when_its_worker_vanishes(clock: FakeClock) -> None:
    store = MemoryDataStore()
    outcome: list[BaseException] = []

    async def run(scheduler: AsyncScheduler) -> None:
        try:
            await scheduler.run_job(jobs.async_echo, args=[1])
        except JobAbandoned as exc:
            outcome.append(exc)

    async with AsyncScheduler(store, clock=clock, cleanup_interval=10) as scheduler:
        added = anyio.Event()
        scheduler.subscribe(lambda _: added.set(), JobAdded, one_shot=True)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(run, scheduler)
                await added.wait()
                # a worker that takes the job and is never heard of again
                assert len(await store.acquire_jobs("ghost", timedelta(seconds=30), 10)) == 1
                await scheduler.start_in_background()
                while not outcome:
                    clock.advance(10)
                    await idle()

    assert "was abandoned: the worker running it stopped responding" in str(outcome[0])


async def test_scheduler_rides_out_failing_schedule_acquisitions_and_fires_late(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyMemoryDataStore()
    store.failing_schedule_acquires = 2
    calls = Calls()
    trigger = every(clock, 100, first_in=1)
    async with AsyncScheduler(store, clock=clock) as scheduler:
        await scheduler.start_in_background()
        await scheduler.add_schedule(calls.record, trigger)
        with anyio.fail_after(10):
            while not calls.calls:
                clock.advance(1)
                await idle()

    assert calls.fire_times == [trigger.next_fire_time()]
    assert caplog.text.count("Error while processing schedules; retrying in") == 2


async def test_graceful_stop_lets_running_jobs_finish(clock: FakeClock) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "finished"

    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        job_id = await scheduler.add_job(slow)
        await started.wait()
        await scheduler.stop()
        assert scheduler.state is RunState.stopping
        release.set()
        await scheduler.wait_until_stopped()
        result = await scheduler.get_job_result(job_id)

    assert (result.outcome, result.return_value) == (JobOutcome.success, "finished")


async def test_stop_without_waiting_cancels_running_jobs(clock: FakeClock) -> None:
    started = anyio.Event()
    cancelled = False

    async def forever() -> None:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise

    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        job_id = await scheduler.add_job(forever)
        await started.wait()
        await scheduler.stop(wait=False)
        with anyio.fail_after(10):
            await scheduler.wait_until_stopped()
        result = await scheduler.get_job_result(job_id, wait=False)

    assert cancelled
    assert result.outcome is JobOutcome.cancelled


async def test_stop_without_waiting_leaves_threads_behind(clock: FakeClock) -> None:
    started, release = threading.Event(), threading.Event()

    def blocking() -> None:
        started.set()
        release.wait(30)

    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        job_id = await scheduler.add_job(blocking)
        await anyio.to_thread.run_sync(started.wait, 10)
        await scheduler.stop(wait=False)
        with anyio.fail_after(10):
            await scheduler.wait_until_stopped()
        result = await scheduler.get_job_result(job_id, wait=False)

    release.set()
    assert result.outcome is JobOutcome.cancelled


async def test_stop_without_waiting_kills_running_process_jobs(
    clock: FakeClock, tmp_path: Path
) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)

    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        job_id = await scheduler.add_job(
            process_jobs.announce_pid_and_sleep, args=[str(fifo), 60], job_executor="processpool"
        )
        with anyio.fail_after(30):  # reading waits until the job runs in its worker process
            pid = int(await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True))

        await scheduler.stop(wait=False)
        with anyio.fail_after(10):  # not the job's 60 s
            await scheduler.wait_until_stopped()
        result = await scheduler.get_job_result(job_id, wait=False)

    assert result.outcome is JobOutcome.cancelled
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker process was killed (and reaped)


async def test_leaving_the_context_on_an_error_cancels_running_jobs(clock: FakeClock) -> None:
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    scheduler = AsyncScheduler(clock=clock)

    async def run_and_fail() -> None:
        async with scheduler:
            await scheduler.start_in_background()
            job_id = await scheduler.add_job(forever)
            await started.wait()
            raise RuntimeError(f"application error {job_id}")

    with anyio.fail_after(10), pytest.raises(RuntimeError, match="application error") as caught:
        await run_and_fail()

    job_id = caught.value.args[0].split()[-1]
    result = await scheduler.data_store.get_job_result(UUID(job_id))
    assert result is not None
    assert result.outcome is JobOutcome.cancelled
    assert scheduler.state is RunState.stopped


#
# Events
#


async def test_subscribers_get_events_and_a_raising_one_does_no_harm(
    scheduler: AsyncScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[JobReleased] = []
    delivered = anyio.Event()

    async def async_subscriber(event: JobReleased) -> None:
        received.append(event)
        delivered.set()

    def broken(event: JobReleased) -> None:
        raise RuntimeError("subscriber bug")

    scheduler.subscribe(broken, JobReleased)
    scheduler.subscribe(async_subscriber, JobReleased)
    await scheduler.start_in_background()

    assert await scheduler.run_job(jobs.async_echo, args=["ok"]) == "ok"
    with anyio.fail_after(10):
        await delivered.wait()
    assert received[0].outcome is JobOutcome.success
    assert "subscriber bug" in caplog.text


#
# Tasks
#


FORKING_SCRIPT = """
import os
import anyio
from asched import AsyncScheduler

scheduler = AsyncScheduler()  # made at import, as under gunicorn --preload


async def identity() -> str:
    async with scheduler:
        return scheduler.identity


children = []
for _ in range(2):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, anyio.run(identity).encode())
        os._exit(0)
    os.close(write_end)
    children.append((pid, read_end))
for pid, read_end in children:
    os.waitpid(pid, 0)
    print(os.read(read_end, 1000).decode())
print(scheduler.identity)
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_scheduler_made_before_a_fork_has_its_own_identity_in_each_child() -> None:
    completed = await anyio.run_process([sys.executable, "-c", FORKING_SCRIPT])
    identities = completed.stdout.decode().split()
    assert len(identities) == 3
    assert len(set(identities)) == 3  # two children and the parent

    named = AsyncScheduler(identity="worker-1")
    async with named:
        assert named.identity == "worker-1"  # a given identity is kept as it is


async def test_task_decorator_sets_id_and_limits(clock: FakeClock) -> None:
    scheduler = AsyncScheduler(clock=clock)

    @scheduler.task("reports", max_running_jobs=1, metadata={"team": "ops"})
    async def build_report() -> str:
        return "report"

    async with scheduler:
        await scheduler.start_in_background()
        assert await scheduler.run_job(build_report) == "report"
        [task] = await scheduler.get_tasks()

    assert (task.id, task.max_running_jobs, task.metadata) == ("reports", 1, {"team": "ops"})
    assert task.job_executor == "async"


async def test_declared_tasks_are_stored_at_start_and_found_by_id(clock: FakeClock) -> None:
    store = MemoryDataStore()

    def declare(scheduler: AsyncScheduler, limit: int) -> None:
        @scheduler.task("reports", max_running_jobs=limit)
        async def build_report() -> str:
            return "report"

    first = AsyncScheduler(store, clock=clock)
    declare(first, limit=1)
    async with first:
        assert [task.id for task in await first.get_tasks()] == ["reports"]
        await first.start_in_background()
        assert await first.run_job("reports") == "report"  # by id, never used as a function

    second = AsyncScheduler(store, clock=clock)
    declare(second, limit=3)  # the code changed between runs: its declaration wins
    async with second:
        [task] = await second.get_tasks()
    assert task.max_running_jobs == 3


async def test_scheduled_job_decorator_adds_the_schedule_and_keeps_it_across_restarts(
    clock: FakeClock,
) -> None:
    store = MemoryDataStore()
    trigger = every(clock, 60, first_in=60)

    def declare(scheduler: AsyncScheduler, **options: Any) -> None:
        @scheduler.scheduled_job(trigger, id="nightly", **options)
        async def nightly() -> None:
            pass

    first = AsyncScheduler(store, clock=clock)
    declare(first)
    async with first:
        [schedule] = await first.get_schedules()
        assert schedule.id == "nightly"

    clock.advance(120)  # down for two fire times: the stored progress must survive
    second = AsyncScheduler(store, clock=clock)
    declare(second)
    async with second:
        assert await second.get_schedules() == [schedule]

    third = AsyncScheduler(store, clock=clock)
    declare(third, max_jitter=5)
    async with third:
        [changed] = await third.get_schedules()
        assert changed.max_jitter == timedelta(seconds=5)

    async with AsyncScheduler(clock=clock) as running:
        with pytest.raises(RuntimeError, match="before the scheduler is initialized"):
            running.scheduled_job(trigger)


@pytest.fixture
def triggers_use_the_fake_clock(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Triggers made without a start time start at the fake clock's now."""
    for module in ("interval", "cron.trigger", "calendarinterval"):
        monkeypatch.setattr(f"asched.triggers.{module}.utc_now", clock.now)


TRIGGERS_WITHOUT_START = [
    pytest.param(lambda: IntervalTrigger(minutes=1), id="interval"),
    pytest.param(lambda: CronTrigger(minute="*/5", timezone="UTC"), id="cron"),
    pytest.param(lambda: CalendarIntervalTrigger(days=1, hour=9, timezone="UTC"), id="calendar"),
    pytest.param(
        lambda: OrTrigger([IntervalTrigger(hours=1), CronTrigger(hour=9, timezone="UTC")]),
        id="or",
    ),
]


@pytest.mark.usefixtures("triggers_use_the_fake_clock")
@pytest.mark.parametrize("make_trigger", TRIGGERS_WITHOUT_START)
@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_scheduled_job_keeps_its_schedule_when_a_new_identical_trigger_starts_later(
    clock: FakeClock, tmp_path: Path, store: str, make_trigger: Callable[[], Trigger]
) -> None:
    data_store: Any = MemoryDataStore() if store == "memory" else f"sqlite:///{tmp_path}/db"

    async def start(trigger: Trigger) -> list[Schedule]:
        scheduler = AsyncScheduler(data_store, clock=clock)

        @scheduler.scheduled_job(trigger, id="report", args=[1])
        def report(value: int) -> None: ...

        async with scheduler:
            return await scheduler.get_schedules()

    [schedule] = await start(make_trigger())
    clock.advance(3 * 86400)  # down for three days: a trigger made now starts later

    second_trigger = make_trigger()
    assert second_trigger.to_dict() != schedule.trigger.to_dict()
    assert await start(second_trigger) == [schedule]  # its progress kept


EARLY = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


@pytest.mark.usefixtures("triggers_use_the_fake_clock")
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            (lambda: IntervalTrigger(minutes=1), {}),
            (lambda: IntervalTrigger(minutes=2), {}),
            id="interval-length",
        ),
        pytest.param(
            (lambda: CronTrigger(minute="*/5", timezone="UTC"), {}),
            (lambda: CronTrigger(minute="*/10", timezone="UTC"), {}),
            id="cron-fields",
        ),
        pytest.param(
            (lambda: IntervalTrigger(minutes=1, start_time=EARLY), {}),
            (lambda: IntervalTrigger(minutes=1, start_time=EARLY + timedelta(hours=1)), {}),
            id="explicit-start-time",
        ),
        pytest.param(
            (lambda: IntervalTrigger(minutes=1), {"args": [1]}),
            (lambda: IntervalTrigger(minutes=1), {"args": [2]}),
            id="args",
        ),
        pytest.param(
            (lambda: IntervalTrigger(minutes=1), {}),
            (lambda: IntervalTrigger(minutes=1), {"max_jitter": 5}),
            id="options",
        ),
    ],
)
async def test_scheduled_job_replaces_its_schedule_when_its_definition_changed(
    clock: FakeClock,
    first: tuple[Callable[[], Trigger], dict[str, Any]],
    second: tuple[Callable[[], Trigger], dict[str, Any]],
) -> None:
    store = MemoryDataStore()

    async def start(trigger: Trigger, options: dict[str, Any]) -> Schedule:
        scheduler = AsyncScheduler(store, clock=clock)

        @scheduler.scheduled_job(trigger, id="report", **options)
        def report(value: int = 0) -> None: ...

        async with scheduler:
            [schedule] = await scheduler.get_schedules()
            return schedule

    before = await start(first[0](), first[1])
    clock.advance(3 * 86400)
    new_trigger = second[0]()
    after = await start(new_trigger, second[1])

    assert after != before
    assert after.trigger is new_trigger
    assert after.next_fire_time == new_trigger.next_fire_time()


@pytest.mark.parametrize("declared_paused", [False, True])
async def test_scheduled_job_keeps_a_pause_or_unpause_made_at_run_time_across_restarts(
    clock: FakeClock, declared_paused: bool
) -> None:
    store = MemoryDataStore()
    trigger = every(clock, 60, first_in=60)

    async def start() -> AsyncScheduler:
        scheduler = AsyncScheduler(store, clock=clock)

        @scheduler.scheduled_job(trigger, id="report", paused=declared_paused)
        def report() -> None: ...

        return scheduler

    async with await start() as first:
        if declared_paused:
            await first.unpause_schedule("report")
        else:
            await first.pause_schedule("report")
        [toggled] = await first.get_schedules()
        assert toggled.paused is not declared_paused

    async with await start() as second:
        assert await second.get_schedules() == [toggled]


async def test_two_functions_with_the_same_name_need_their_own_task_ids(
    scheduler: AsyncScheduler,
) -> None:
    await scheduler.add_job(lambda: 1)
    with pytest.raises(ValueError, match="another function is already registered"):
        await scheduler.add_job(lambda: 2)


async def test_using_a_function_does_not_overwrite_its_configured_task(
    clock: FakeClock,
) -> None:
    store, broker = MemoryDataStore(), LocalEventBroker()
    async with AsyncScheduler(store, broker, clock=clock) as first:
        await first.configure_task(jobs.async_echo, max_running_jobs=2)
    async with AsyncScheduler(store, broker, clock=clock) as second:
        await second.add_job(jobs.async_echo, args=[1])
        [task] = await second.get_tasks()

    assert task.max_running_jobs == 2


#
# Bad input
#

ARGUMENT_ERRORS = [
    ({"args": 5}, TypeError, r"args: expected a list or tuple of positional arguments, got 5"),
    ({"args": "ab"}, TypeError, r"args: expected a list .*got the str 'ab' \(for a single"),
    ({"args": b"ab"}, TypeError, r"args: expected a list .*got the bytes b'ab'"),
    ({"args": {"a": 1}}, TypeError, r"args: expected a list .*\(keyword arguments go in kwargs"),
    ({"kwargs": [1]}, TypeError, r"kwargs: expected a mapping of argument names to values"),
    ({"kwargs": "a=1"}, TypeError, r"kwargs: expected a mapping .*got 'a=1'"),
    ({"kwargs": {1: 2}}, TypeError, r"kwargs: argument names must be strings, got 1"),
]
METADATA_ERRORS = [
    ({"a": object()}, TypeError, r"metadata\['a'\]: <object object at .*> is not JSON-compat"),
    ([1], TypeError, r"metadata: expected a dict with str keys"),
    ({1: "x"}, TypeError, r"metadata: keys must be strings, got 1"),
    ({"a": [1, {2}]}, TypeError, r"metadata\['a'\]\[1\]: \{2\} is not JSON-compatible"),
    ({"a": [float("nan")]}, ValueError, r"metadata\['a'\]\[0\]: nan is not JSON-compatible"),
]
SCHEDULE_VALUE_ERRORS = [
    *ARGUMENT_ERRORS,
    ({"paused": "no"}, TypeError, r"paused: expected True or False, got 'no'"),
    ({"paused": 1}, TypeError, r"paused: expected True or False, got 1"),
    *[({"metadata": metadata}, error, match) for metadata, error, match in METADATA_ERRORS],
]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_concurrent_jobs": 0}, ValueError, "max_concurrent_jobs: must be at least 1"),
        ({"lease_duration": 0}, ValueError, "lease_duration: must be positive"),
        ({"lease_duration": -1}, ValueError, "lease_duration: must not be negative"),
        ({"cleanup_interval": "soon"}, TypeError, "cleanup_interval: expected a timedelta"),
        ({"default_job_executor": "gpu"}, ValueError, "unknown job executor 'gpu'"),
        ({"data_store": "bogus://x"}, ValueError, "unknown URL scheme in 'bogus://x'"),
        ({"data_store": "jobs.sqlite"}, ValueError, "not a URL"),
        ({"data_store": 42}, TypeError, "data_store: expected a DataStore or a URL"),
        ({"event_broker": 42}, TypeError, "event_broker: expected an EventBroker or a URL"),
        ({"role": "wizard"}, ValueError, "role: expected one of 'scheduler', 'worker', 'both'"),
        ({"role": 1}, TypeError, "role: expected a SchedulerRole or one of"),
        ({"timezone": "Mars/Olympus"}, ValueError, "unknown time zone 'Mars/Olympus'"),
        ({"identity": ""}, ValueError, "identity: expected a non-empty string or None, got ''"),
        ({"identity": 7}, TypeError, "identity: expected a non-empty string or None, got 7"),
        (
            {"job_executors": {"gpu": object()}},
            TypeError,
            r"job_executors\['gpu'\]: expected a JobExecutor under a str name, got <object",
        ),
    ],
)
def test_invalid_scheduler_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AsyncScheduler(**options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_running_jobs": 0}, ValueError, "max_running_jobs: must be at least 1"),
        ({"misfire_grace_time": -1}, ValueError, "misfire_grace_time: must not be negative"),
        ({"max_jitter": "1s"}, TypeError, "max_jitter: expected a timedelta"),
        ({"job_executor": "gpu"}, ValueError, "job_executor: unknown job executor 'gpu'"),
        ({"coalesce": "newest"}, ValueError, "coalesce: expected one of 'earliest', 'latest'"),
        ({"coalesce": True}, TypeError, "coalesce: expected a CoalescePolicy or one of"),
        ({"conflict_policy": "overwrite"}, ValueError, "conflict_policy: expected one of"),
        ({"args": [1, 2, 3]}, TypeError, r"args/kwargs do not fit tests.jobs:add\(a: 'int'"),
        ({"kwargs": {"c": 1}}, TypeError, "got an unexpected keyword argument 'c'"),
        # a misspelled keyword, which bind() would report as the argument it stood for
        ({"args": [], "kwargs": {"aa": 1}}, TypeError, "'a'; no parameter is named 'aa'"),
        ({"id": ""}, ValueError, "id: expected a non-empty string"),
        ({"trigger": "not a trigger"}, ValueError, "crontab"),
        ({"trigger": 5}, TypeError, "trigger: expected a Trigger or a crontab string"),
        *SCHEDULE_VALUE_ERRORS,
    ],
)
async def test_invalid_schedule_options_are_refused(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    options = {"trigger": every(clock, 10, first_in=10), "args": [1], **options}
    with pytest.raises(error, match=match):
        await scheduler.add_schedule(jobs.add, **options)
    assert await scheduler.get_schedules() == []
    assert await scheduler.get_tasks() == []  # nothing of a refused schedule is kept


async def test_enum_options_take_their_values_as_text(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    await scheduler.add_schedule(
        jobs.add, every(clock, 10, first_in=10), id="s", args=[1], coalesce="All"
    )
    assert (await scheduler.get_schedule("s")).coalesce is CoalescePolicy.all
    await scheduler.add_schedule(
        jobs.add, every(clock, 10, first_in=10), id="s", args=[2], conflict_policy="replace"
    )
    schedule = await scheduler.get_schedule("s")
    assert (schedule.args, schedule.coalesce) == ((2,), CoalescePolicy.latest)
    assert AsyncScheduler(role="worker").role is SchedulerRole.worker


async def test_arguments_that_do_not_fit_the_function_are_refused_when_added(
    scheduler: AsyncScheduler,
) -> None:
    # as APScheduler checks them: not first when the job runs, hours later
    with pytest.raises(TypeError, match="too many positional arguments"):
        await scheduler.add_job(jobs.add, args=[1, 2, 3])
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        await scheduler.add_job(jobs.add)
    assert await scheduler.get_jobs() == []
    # what fits goes through, keyword arguments included
    await scheduler.add_job(jobs.add, args=[1], kwargs={"b": 2})
    assert len(await scheduler.get_jobs()) == 1


@pytest.mark.parametrize(("options", "error", "match"), ARGUMENT_ERRORS)
async def test_invalid_job_arguments_are_refused(
    scheduler: AsyncScheduler, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await scheduler.add_job(jobs.add, **options)
    with pytest.raises(error, match=match):
        await scheduler.run_job(jobs.add, **options)
    assert await scheduler.get_jobs() == []
    assert await scheduler.get_tasks() == []


@pytest.mark.parametrize(("options", "error", "match"), SCHEDULE_VALUE_ERRORS)
async def test_invalid_schedule_changes_are_refused(
    scheduler: AsyncScheduler,
    clock: FakeClock,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    schedule_id = await scheduler.add_schedule(jobs.add, every(clock, 10, first_in=10), args=[1])
    before = await scheduler.get_schedule(schedule_id)

    with pytest.raises(error, match=match):
        await scheduler.update_schedule(schedule_id, **options)
    with pytest.raises(error, match=match):
        await scheduler.update_schedule(schedule_id, task=jobs.async_echo, **options)

    assert await scheduler.get_schedules() == [before]
    assert [task.id for task in await scheduler.get_tasks()] == ["tests.jobs:add"]


@pytest.mark.parametrize(("metadata", "error", "match"), METADATA_ERRORS)
async def test_task_metadata_must_be_json_compatible(
    scheduler: AsyncScheduler, metadata: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await scheduler.configure_task(jobs.add, metadata=metadata)
    with pytest.raises(error, match=match):
        scheduler.task("reports", metadata=metadata)
    assert await scheduler.get_tasks() == []


@pytest.mark.parametrize(("options", "error", "match"), SCHEDULE_VALUE_ERRORS)
def test_scheduled_job_refuses_invalid_values_when_declared(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AsyncScheduler().scheduled_job("* * * * *", **options)


def test_scheduled_job_refuses_unknown_options_when_declared() -> None:
    with pytest.raises(TypeError, match=r"scheduled_job: unknown option\(s\) colour"):
        AsyncScheduler().scheduled_job("* * * * *", colour="red")


async def test_metadata_is_kept_as_json_would_keep_it(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    metadata = {"tags": ("a", "b"), "nested": {"n": 1, "x": None, "ok": True, "f": 0.5}}

    schedule_id = await scheduler.add_schedule(
        jobs.add, every(clock, 10, first_in=10), args=[1], metadata=metadata
    )
    task = await scheduler.configure_task(jobs.async_echo, metadata=metadata)

    expected = {"tags": ["a", "b"], "nested": {"n": 1, "x": None, "ok": True, "f": 0.5}}
    assert (await scheduler.get_schedule(schedule_id)).metadata == expected
    assert task.metadata == expected


async def test_a_refused_schedule_or_job_registers_no_task(
    scheduler: AsyncScheduler, clock: FakeClock
) -> None:
    with pytest.raises(TypeError, match="processpool executor cannot run"):
        await scheduler.add_schedule(
            lambda: 1, every(clock, 10, first_in=10), job_executor="processpool"
        )
    # the same default task id: not "another function is already registered"
    with pytest.raises(TypeError, match="processpool executor cannot run"):
        await scheduler.add_job(lambda: 2, job_executor="processpool")

    assert await scheduler.get_tasks() == []
    assert await scheduler.add_job(lambda: 3)  # the task id is still free


async def test_logs_name_the_job_that_failed(
    scheduler: AsyncScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    await scheduler.start_in_background()
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="x"):
        await scheduler.run_job(jobs.fail, args=["x"])

    [record] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "tests.jobs:fail" in record.getMessage()
    assert record.exc_info is not None


def test_fixed_times_are_utc() -> None:
    assert FakeClock().now().tzinfo is timezone.utc


async def test_a_reconnected_broker_makes_the_scheduler_look_at_the_store_again(
    clock: FakeClock,
) -> None:
    # Two schedulers share a store but not a broker, as when one's broker connection was
    # down while the other added a job: the job's JobAdded never reaches the first, whose
    # worker sleeps until its next poll (never, on this clock) unless told to look again
    store = MemoryDataStore()
    broker = LocalEventBroker()
    async with (
        AsyncScheduler(store, broker, clock=clock) as worker,
        AsyncScheduler(store, LocalEventBroker(), clock=clock, role="scheduler") as adder,
    ):
        await worker.start_in_background()
        job_id = await adder.add_job(jobs.async_echo, args=[7])

        broker.publish_local(BrokerReconnected())

        # (the shared store publishes through the broker it was last started with, the
        # adder's: the adder hears the job's release)
        with anyio.fail_after(5):
            assert (await adder.get_job_result(job_id)).return_value == 7


class ContendedStore(MemoryDataStore):
    """Finds its schedules changed meanwhile the first ``collisions`` times it is asked to
    write one, as under many concurrent writers."""

    def __init__(self, collisions: int) -> None:
        super().__init__()
        self.collisions = collisions

    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        if self.collisions:
            self.collisions -= 1
            raise StaleScheduleError(schedule.id)
        return await super().update_schedule_definition(
            schedule, rescheduled_from=rescheduled_from
        )


async def test_an_update_outlasts_long_contention_then_takes_effect(clock: FakeClock) -> None:
    # more collisions in a row than a fixed number of immediate retries would take
    store = ContendedStore(collisions=60)
    async with AsyncScheduler(store, clock=clock) as scheduler:
        await scheduler.add_schedule(jobs.add, every(clock, 60, first_in=60), id="s", args=[1])
        with anyio.fail_after(30):
            updated = await scheduler.update_schedule("s", args=[2])

    assert store.collisions == 0
    assert updated.args == (2,)


class SlowTaskLookups(MemoryDataStore):
    """Once ``blocking``, task lookups wait until cancelled (the worker looks a task up
    before it starts a job of a task it has not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocking = False
        self.looking_up = anyio.Event()

    async def get_task(self, task_id: str) -> Task:
        if self.blocking:
            self.looking_up.set()
            await anyio.sleep_forever()
        return await super().get_task(task_id)


async def test_a_job_whose_task_was_being_looked_up_at_a_cancelling_stop_goes_back(
    clock: FakeClock,
) -> None:
    store = SlowTaskLookups()
    async with AsyncScheduler(store, clock=clock, role="scheduler") as adder:
        job_id = await adder.add_job(jobs.async_echo, args=[5], result_expiration_time=60)

    store.blocking = True
    async with AsyncScheduler(store, clock=clock) as leaving:
        await leaving.start_in_background()
        with anyio.fail_after(5):
            await store.looking_up.wait()  # acquired, not started
            await leaving.stop(wait=False)
            await leaving.wait_until_stopped()

    [job] = await store.get_jobs()
    assert (job.id, job.acquired_by) == (job_id, None)  # queued again, not left leased
    store.blocking = False
    async with AsyncScheduler(store, clock=clock) as staying:
        await staying.start_in_background()
        with anyio.fail_after(5):
            assert (await staying.get_job_result(job_id)).return_value == 5


class Unhashable:
    """A callable object that cannot be hashed (its signature cannot be remembered)."""

    __hash__ = None  # type: ignore[assignment]

    def __call__(self, value: int) -> int:
        return value


async def test_arguments_for_a_callable_object_are_checked_too(
    scheduler: AsyncScheduler,
) -> None:
    await scheduler.configure_task("object", func=Unhashable())
    for _ in range(2):  # checked every time, not remembered
        with pytest.raises(TypeError, match=r"Unhashable object .*\(value: 'int'\)"):
            await scheduler.add_job("object")
    await scheduler.add_job("object", args=[1])
    assert len(await scheduler.get_jobs()) == 1
