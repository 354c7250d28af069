"""The contract every data store passes, run against each implementation.

Fixtures (tests/datastores/conftest.py): ``data_store`` is a started store; ``data_stores``
are three instances sharing one storage (separate connections for persistent stores), as
three schedulers would have; ``recorder`` holds the events they published; ``clock`` is
the time source they all use.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
import attrs
import pytest

from asched import (
    CoalescePolicy,
    ConflictingIdError,
    ConflictPolicy,
    DeserializationError,
    Job,
    JobOutcome,
    JobResult,
    RemoteJobError,
    Schedule,
    ScheduleUpdate,
    SerializationError,
    StaleScheduleError,
    Task,
    TaskLookupError,
)
from asched.datastores import BaseExternalDataStore, DataStore
from asched.datastores.base import UNREADABLE_SCHEDULE_PAUSE
from asched.events import (
    JobAcquired,
    JobAdded,
    JobDeserializationFailed,
    JobReleased,
    ScheduleAdded,
    ScheduleDeserializationFailed,
    ScheduleRemoved,
    ScheduleUpdated,
    TaskAdded,
    TaskRemoved,
    TaskUpdated,
)
from asched.triggers import IntervalTrigger
from tests.clock import FakeClock
from tests.conftest import EventRecorder, ids_of
from tests.unrestorable import Unrestorable

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=30)


def make_task(task_id: str = "task", **options: Any) -> Task:
    return Task(
        id=task_id,
        func_ref="tests.datastores.test_data_store:make_task",
        job_executor="async",
        **options,
    )


def make_schedule(
    clock: FakeClock, schedule_id: str = "s1", *, due_in: float = 0, **options: Any
) -> Schedule:
    fire_time = clock.now() + timedelta(seconds=due_in)
    options.setdefault("task_id", "task")
    return Schedule(
        id=schedule_id,
        trigger=IntervalTrigger(seconds=10, start_time=fire_time),
        next_fire_time=fire_time,
        next_run_time=fire_time,
        **options,
    )


def make_job(clock: FakeClock, **options: Any) -> Job:
    options.setdefault("task_id", "task")
    options.setdefault("created_at", clock.now())
    return Job(**options)


def finish(
    job: Job, clock: FakeClock, outcome: JobOutcome = JobOutcome.success, **kwargs: Any
) -> JobResult:
    return JobResult.for_job(job, outcome, finished_at=clock.now(), **kwargs)


async def release_as_fired(
    store: DataStore, clock: FakeClock, acquired: Schedule, next_fire_time: datetime
) -> None:
    """Release a schedule ``me`` acquired as firing it once does: one job, moved on."""
    await store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id=acquired.id,
                next_fire_time=next_fire_time,
                next_run_time=next_fire_time,
                last_fire_time=acquired.next_fire_time,
                jobs=(make_job(clock, schedule_id=acquired.id),),
            )
        ],
    )


async def add_jobs(store: DataStore, clock: FakeClock, count: int, **options: Any) -> list[Job]:
    jobs = []
    for _ in range(count):
        jobs.append(make_job(clock, **options))
        clock.advance(0.001)  # distinct creation times: acquisition order is by age
    await store.add_jobs(jobs)
    return jobs


#
# Tasks
#


async def test_added_task_can_be_read_back(data_store: DataStore, recorder: EventRecorder) -> None:
    task = make_task(
        max_running_jobs=3, misfire_grace_time=timedelta(seconds=5), metadata={"team": "ops"}
    )
    await data_store.add_task(task)

    assert await data_store.get_task("task") == task
    assert await data_store.get_tasks() == [task]
    assert [event.task_id for event in recorder.of_type(TaskAdded)] == ["task"]


async def test_adding_a_task_again_replaces_it(
    data_store: DataStore, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task(max_running_jobs=1))
    await data_store.add_task(make_task(max_running_jobs=5))

    assert (await data_store.get_task("task")).max_running_jobs == 5
    assert [event.task_id for event in recorder.of_type(TaskUpdated)] == ["task"]


async def test_tasks_are_listed_by_id(data_store: DataStore) -> None:
    for task_id in ("b", "c", "a"):
        await data_store.add_task(make_task(task_id))

    assert ids_of(await data_store.get_tasks()) == ["a", "b", "c"]


async def test_removed_task_is_gone(data_store: DataStore, recorder: EventRecorder) -> None:
    await data_store.add_task(make_task())
    await data_store.remove_task("task")

    with pytest.raises(TaskLookupError, match="'task'"):
        await data_store.get_task("task")
    assert [event.task_id for event in recorder.of_type(TaskRemoved)] == ["task"]


async def test_unknown_task_raises_lookup_error(data_store: DataStore) -> None:
    with pytest.raises(TaskLookupError, match="'nope'"):
        await data_store.get_task("nope")
    with pytest.raises(TaskLookupError, match="'nope'"):
        await data_store.remove_task("nope")


#
# Schedules
#


async def test_added_schedule_round_trips_every_field(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    schedule = make_schedule(
        clock,
        args=(1, "two", [3]),
        kwargs={"key": {"nested": True}},
        name="nightly",
        coalesce=CoalescePolicy.all,
        misfire_grace_time=timedelta(seconds=90),
        max_jitter=timedelta(seconds=4),
        max_running_jobs=2,
        job_executor="threadpool",
        job_result_expiration_time=timedelta(minutes=5),
        metadata={"owner": "me", "tags": ["a", "b"]},
        last_fire_time=clock.now() - timedelta(seconds=10),
    )
    await data_store.add_schedule(schedule, ConflictPolicy.exception)

    [stored] = await data_store.get_schedules(["s1"])
    assert stored == schedule
    assert stored.trigger.next_fire_time(stored.next_fire_time) == schedule.trigger.next_fire_time(
        schedule.next_fire_time
    )
    [event] = recorder.of_type(ScheduleAdded)
    assert (event.schedule_id, event.task_id, event.next_fire_time) == (
        "s1",
        "task",
        schedule.next_fire_time,
    )


async def test_conflict_do_nothing_keeps_the_stored_schedule(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, name="first"), ConflictPolicy.exception)
    await data_store.add_schedule(make_schedule(clock, name="second"), ConflictPolicy.do_nothing)

    [stored] = await data_store.get_schedules()
    assert stored.name == "first"
    assert not recorder.of_type(ScheduleUpdated)


async def test_conflict_replace_overwrites_the_stored_schedule(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, name="first"), ConflictPolicy.exception)
    await data_store.add_schedule(make_schedule(clock, name="second"), ConflictPolicy.replace)

    [stored] = await data_store.get_schedules()
    assert stored.name == "second"
    assert [event.schedule_id for event in recorder.of_type(ScheduleUpdated)] == ["s1"]


async def test_conflict_exception_raises(data_store: DataStore, clock: FakeClock) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)

    with pytest.raises(ConflictingIdError, match="'s1'"):
        await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)


async def test_a_definition_update_keeps_the_stored_progress_and_clears_the_lease(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, name="old"), ConflictPolicy.exception)
    [read] = await data_store.get_schedules()  # what an update_schedule() call reads...
    [acquired] = await data_store.acquire_schedules("me", LEASE, 10)  # ...while it fires
    moved_on = clock.now() + timedelta(seconds=10)
    await release_as_fired(data_store, clock, acquired, moved_on)
    recorder.clear()

    changed = attrs.evolve(read, name="new", args=(1, 2), metadata={"team": "ops"})
    updated = await data_store.update_schedule_definition(changed)

    [stored] = await data_store.get_schedules()
    assert updated == stored
    assert (stored.name, stored.args, stored.metadata) == ("new", (1, 2), {"team": "ops"})
    # the fire time that ran is not restored from the stale read
    assert (stored.next_fire_time, stored.last_fire_time) == (moved_on, acquired.next_fire_time)
    assert stored.acquired_by is None
    assert [event.schedule_id for event in recorder.of_type(ScheduleUpdated)] == ["s1"]


async def test_a_definition_update_of_a_leased_schedule_drops_the_leaseholders_release(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, name="old"), ConflictPolicy.exception)
    [acquired] = await data_store.acquire_schedules("me", LEASE, 10)

    await data_store.update_schedule_definition(attrs.evolve(acquired, name="new"))
    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=clock.now() + timedelta(seconds=10),
                next_run_time=clock.now() + timedelta(seconds=10),
                last_fire_time=acquired.next_fire_time,
                jobs=(make_job(clock, schedule_id="s1"),),
            )
        ],
    )

    # the fire time was not processed: it fires once, for whoever acquires it next
    assert await data_store.get_jobs() == []
    [again] = await data_store.acquire_schedules("other", LEASE, 10)
    assert (again.name, again.next_fire_time) == ("new", acquired.next_fire_time)


async def test_a_definition_update_of_a_missing_schedule_changes_nothing(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    assert await data_store.update_schedule_definition(make_schedule(clock, "ghost")) is None
    assert await data_store.get_schedules() == []
    assert not recorder.of_type(ScheduleUpdated)


async def test_a_new_schedule_starts_at_revision_zero_and_a_replacement_moves_it_on(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, revision=7), ConflictPolicy.exception)
    [added] = await data_store.get_schedules()
    assert added.revision == 0

    await data_store.add_schedule(make_schedule(clock, name="again"), ConflictPolicy.replace)
    [replaced] = await data_store.get_schedules()
    assert (replaced.name, replaced.revision) == ("again", 1)
    # a stale read (from before the replacement) no longer writes
    with pytest.raises(StaleScheduleError, match="'s1'"):
        await data_store.update_schedule_definition(attrs.evolve(added, name="stale"))
    assert (await data_store.get_schedules())[0].name == "again"


async def test_a_definition_update_from_a_stale_read_writes_nothing(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    # two update_schedule() calls read the schedule at once; the second to write must not
    # silently undo the first: it is told, and its caller reads again and reapplies
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [read] = await data_store.get_schedules()
    first = await data_store.update_schedule_definition(attrs.evolve(read, paused=True))
    assert first is not None
    assert first.revision == read.revision + 1
    recorder.clear()

    with pytest.raises(StaleScheduleError):
        await data_store.update_schedule_definition(attrs.evolve(read, args=(9,)))
    [stored] = await data_store.get_schedules()
    assert (stored.paused, stored.args, stored.revision) == (True, (), first.revision)
    assert not recorder.of_type(ScheduleUpdated)

    second = await data_store.update_schedule_definition(attrs.evolve(stored, args=(9,)))
    assert second is not None
    [stored] = await data_store.get_schedules()
    assert (stored.paused, stored.args, stored.revision) == (True, (9,), first.revision + 1)
    assert second == stored


@pytest.mark.parametrize("rescheduling", [False, True], ids=["definition", "rescheduling"])
async def test_an_update_never_brings_back_a_removed_schedule(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder, rescheduling: bool
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [read] = await data_store.get_schedules()
    await data_store.remove_schedules(["s1"])
    recorder.clear()

    later = clock.now() + timedelta(hours=1)
    changed = attrs.evolve(read, next_fire_time=later, next_run_time=later)
    updated = await data_store.update_schedule_definition(
        changed, rescheduled_from=read if rescheduling else None
    )

    assert updated is None
    assert await data_store.get_schedules() == []
    assert not recorder.of_type(ScheduleUpdated)


async def test_rescheduling_writes_the_new_fire_times_and_clears_the_lease(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [read] = await data_store.get_schedules()
    [acquired] = await data_store.acquire_schedules("me", LEASE, 10)  # fired, not released
    recorder.clear()

    later = clock.now() + timedelta(hours=1)
    trigger = IntervalTrigger(hours=1, start_time=later)
    rescheduled = attrs.evolve(read, trigger=trigger, next_fire_time=later, next_run_time=later)
    updated = await data_store.update_schedule_definition(rescheduled, rescheduled_from=read)

    [stored] = await data_store.get_schedules()
    assert updated == stored
    assert (stored.trigger, stored.next_fire_time, stored.next_run_time) == (
        trigger,
        later,
        later,
    )
    assert (stored.acquired_by, stored.revision) == (None, read.revision + 1)
    assert [event.next_fire_time for event in recorder.of_type(ScheduleUpdated)] == [later]
    # the leaseholder's release of the old fire time is dropped with its job
    assert acquired.next_fire_time is not None
    after_that = acquired.next_fire_time + timedelta(seconds=10)
    await release_as_fired(data_store, clock, acquired, after_that)
    assert await data_store.get_jobs() == []
    assert (await data_store.get_schedules())[0].next_fire_time == later


async def test_rescheduling_from_fire_times_processed_since_the_read_writes_nothing(
    data_store: DataStore, clock: FakeClock
) -> None:
    # update_schedule(trigger=...) works the new fire times out from what it read; had a
    # scheduler fired the schedule meanwhile, writing them could fire a fire time again
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [read] = await data_store.get_schedules()
    [acquired] = await data_store.acquire_schedules("me", LEASE, 10)
    moved_on = clock.now() + timedelta(seconds=10)
    await release_as_fired(data_store, clock, acquired, moved_on)

    rescheduled = attrs.evolve(read, name="new")  # its fire times: those read, now processed
    with pytest.raises(StaleScheduleError):
        await data_store.update_schedule_definition(rescheduled, rescheduled_from=read)

    [stored] = await data_store.get_schedules()
    assert (stored.name, stored.next_fire_time) == (None, moved_on)
    assert stored.revision == read.revision  # firing is progress, not a new revision


async def test_concurrent_read_modify_writes_lose_no_change(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    # Each of three stores (three schedulers) appends to the schedule's metadata 8 times,
    # reading again whenever its write finds the schedule changed: all 24 appends survive
    first = data_stores[0]
    await first.add_task(make_task())
    await first.add_schedule(make_schedule(clock, metadata={"seen": []}), ConflictPolicy.exception)

    async def append(store: DataStore, name: str) -> None:
        for index in range(8):
            while True:
                [current] = await store.get_schedules(["s1"])
                seen = [*current.metadata["seen"], f"{name}{index}"]
                try:
                    await store.update_schedule_definition(
                        attrs.evolve(current, metadata={"seen": seen})
                    )
                    break
                except StaleScheduleError:
                    await anyio.lowlevel.checkpoint()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as task_group:
            for number, store in enumerate(data_stores):
                task_group.start_soon(append, store, f"s{number}-")

    [stored] = await first.get_schedules()
    assert sorted(stored.metadata["seen"]) == sorted(
        f"s{number}-{index}" for number in range(3) for index in range(8)
    )
    assert stored.revision == 24


async def test_schedules_are_listed_by_id_and_filtered_by_ids(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    for schedule_id in ("b", "c", "a"):
        await data_store.add_schedule(make_schedule(clock, schedule_id), ConflictPolicy.exception)

    assert ids_of(await data_store.get_schedules()) == ["a", "b", "c"]
    assert ids_of(await data_store.get_schedules(["c", "a", "unknown"])) == ["a", "c"]
    assert await data_store.get_schedules([]) == []


async def test_removed_schedules_are_gone_and_reported(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    for schedule_id in ("a", "b", "c"):
        await data_store.add_schedule(make_schedule(clock, schedule_id), ConflictPolicy.exception)

    await data_store.remove_schedules(["a", "unknown"])
    await data_store.remove_schedules(["b"], finished=True)

    assert ids_of(await data_store.get_schedules()) == ["c"]
    removed = {event.schedule_id: event.finished for event in recorder.of_type(ScheduleRemoved)}
    assert removed == {"a": False, "b": True}


async def test_only_due_unpaused_schedules_are_acquired_earliest_first(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    for schedule_id, due_in, paused in [
        ("late", -5, False),
        ("later", -1, False),
        ("earliest", -10, False),
        ("paused", -20, True),
        ("future", 5, False),
    ]:
        await data_store.add_schedule(
            make_schedule(clock, schedule_id, due_in=due_in, paused=paused),
            ConflictPolicy.exception,
        )

    acquired = await data_store.acquire_schedules("me", LEASE, 10)

    assert ids_of(acquired) == ["earliest", "late", "later"]
    for schedule in acquired:
        assert schedule.acquired_by == "me"
        assert schedule.acquired_until == clock.now() + LEASE


async def test_acquisition_respects_the_limit(data_store: DataStore, clock: FakeClock) -> None:
    await data_store.add_task(make_task())
    for index in range(5):
        await data_store.add_schedule(
            make_schedule(clock, f"s{index}", due_in=-index), ConflictPolicy.exception
        )

    first = await data_store.acquire_schedules("me", LEASE, 2)
    second = await data_store.acquire_schedules("me", LEASE, 10)

    assert ids_of(first) == ["s4", "s3"]
    assert ids_of(second) == ["s2", "s1", "s0"]


async def test_acquired_schedule_shows_its_lease_and_is_not_acquired_again(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task())
    await store_a.add_schedule(make_schedule(clock), ConflictPolicy.exception)

    assert ids_of(await store_a.acquire_schedules("a", LEASE, 10)) == ["s1"]
    assert await store_b.acquire_schedules("b", LEASE, 10) == []
    [stored] = await store_b.get_schedules()
    assert (stored.acquired_by, stored.acquired_until) == ("a", clock.now() + LEASE)


async def test_schedule_with_expired_lease_can_be_acquired_by_another_scheduler(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task())
    await store_a.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    await store_a.acquire_schedules("a", LEASE, 10)

    clock.advance(LEASE.total_seconds() - 1)
    assert await store_b.acquire_schedules("b", LEASE, 10) == []
    clock.advance(2)
    [schedule] = await store_b.acquire_schedules("b", LEASE, 10)
    assert schedule.acquired_by == "b"


async def test_a_schedule_one_process_cannot_restore_is_left_to_the_others(
    data_stores: list[DataStore], clock: FakeClock, recorder: EventRecorder
) -> None:
    # a rolling deploy: held by a process that cannot read it, it would fire nowhere
    store_a, store_b, _ = data_stores
    if not isinstance(store_a, BaseExternalDataStore):
        pytest.skip("the memory store keeps objects as they are: there is nothing to restore")
    await store_a.add_task(make_task())
    await store_a.add_schedule(
        make_schedule(clock, "broken", args=(Unrestorable(),)), ConflictPolicy.exception
    )
    await store_a.add_schedule(make_schedule(clock, "later", due_in=600), ConflictPolicy.exception)

    def failures() -> list[str]:
        return [event.schedule_id for event in recorder.of_type(ScheduleDeserializationFailed)]

    assert await store_a.acquire_schedules("a", LEASE, 10) == []
    assert failures() == ["broken"]
    # given back at once: another process takes it (this one cannot read it either)
    assert await store_b.acquire_schedules("b", LEASE, 10) == []
    assert failures() == ["broken"] * 2
    # the first leaves it alone for a while: it neither takes it nor wakes up for it
    assert await store_a.acquire_schedules("a", LEASE, 10) == []
    assert failures() == ["broken"] * 2
    assert await store_a.get_next_schedule_run_time() == clock.now() + timedelta(seconds=600)
    clock.advance(UNREADABLE_SCHEDULE_PAUSE.total_seconds())
    assert await store_a.get_next_schedule_run_time() == clock.now() - UNREADABLE_SCHEDULE_PAUSE
    assert await store_a.acquire_schedules("a", LEASE, 10) == []
    assert failures() == ["broken"] * 3

    # replaced by code this process can read: the pause ends with the write
    await store_a.add_schedule(make_schedule(clock, "broken"), ConflictPolicy.replace)
    assert ids_of(await store_a.acquire_schedules("a", LEASE, 10)) == ["broken"]


async def test_concurrent_acquirers_never_get_the_same_schedule(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    await data_stores[0].add_task(make_task())
    expected = set()
    for index in range(60):
        schedule = make_schedule(clock, f"s{index:02}", due_in=-index / 10)
        await data_stores[0].add_schedule(schedule, ConflictPolicy.exception)
        expected.add(schedule.id)

    acquired: list[str] = []

    async def acquire_until_empty(store: DataStore, scheduler_id: str) -> None:
        while schedules := await store.acquire_schedules(scheduler_id, LEASE, 7):
            acquired.extend(ids_of(schedules))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as task_group:
        for index, store in enumerate(data_stores):
            task_group.start_soon(acquire_until_empty, store, f"scheduler-{index}")

    assert sorted(acquired) == sorted(expected)


async def test_release_moves_the_schedule_on_and_clears_the_lease(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [schedule] = await data_store.acquire_schedules("me", LEASE, 10)
    next_fire_time = clock.now() + timedelta(seconds=10)
    recorder.clear()

    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=next_fire_time,
                next_run_time=next_fire_time + timedelta(seconds=2),
                last_fire_time=schedule.next_fire_time,
            )
        ],
    )

    [stored] = await data_store.get_schedules()
    assert stored.next_fire_time == next_fire_time
    assert stored.next_run_time == next_fire_time + timedelta(seconds=2)
    assert stored.last_fire_time == schedule.next_fire_time
    assert (stored.acquired_by, stored.acquired_until) == (None, None)
    [event] = recorder.of_type(ScheduleUpdated)
    assert (event.schedule_id, event.next_fire_time) == ("s1", next_fire_time)
    # It is due again only at its new run time
    clock.advance(11)
    assert await data_store.acquire_schedules("me", LEASE, 10) == []
    clock.advance(1)
    assert ids_of(await data_store.acquire_schedules("me", LEASE, 10)) == ["s1"]


async def test_release_adds_the_jobs_of_the_update(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    [schedule] = await data_store.acquire_schedules("me", LEASE, 10)
    job = make_job(
        clock,
        schedule_id="s1",
        scheduled_fire_time=schedule.next_fire_time,
        args=(1,),
        kwargs={"a": 2},
    )

    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=clock.now() + timedelta(seconds=10),
                next_run_time=clock.now() + timedelta(seconds=10),
                last_fire_time=schedule.next_fire_time,
                jobs=(job,),
            )
        ],
    )

    assert await data_store.get_jobs() == [job]
    [event] = recorder.of_type(JobAdded)
    assert (event.job_id, event.task_id, event.schedule_id) == (job.id, "task", "s1")


async def test_release_reports_missed_jobs_and_keeps_their_results_when_asked(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    await data_store.acquire_schedules("me", LEASE, 10)
    kept = make_job(
        clock,
        schedule_id="s1",
        scheduled_fire_time=clock.now(),
        result_expiration_time=timedelta(minutes=1),
    )
    not_kept = make_job(clock, schedule_id="s1", scheduled_fire_time=clock.now())

    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=clock.now() + timedelta(seconds=10),
                next_run_time=clock.now() + timedelta(seconds=10),
                last_fire_time=clock.now(),
                missed_jobs=(kept, not_kept),
            )
        ],
    )

    assert await data_store.get_jobs() == []
    released = {event.job_id: event for event in recorder.of_type(JobReleased)}
    assert set(released) == {kept.id, not_kept.id}
    assert {event.outcome for event in released.values()} == {JobOutcome.missed_start_deadline}
    assert released[kept.id].schedule_id == "s1"
    result = await data_store.get_job_result(kept.id)
    assert result is not None
    assert result.outcome is JobOutcome.missed_start_deadline
    assert await data_store.get_job_result(not_kept.id) is None


async def test_release_without_next_fire_time_removes_the_finished_schedule(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    await data_store.acquire_schedules("me", LEASE, 10)
    job = make_job(clock, schedule_id="s1")

    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=None,
                next_run_time=None,
                last_fire_time=clock.now(),
                jobs=(job,),
            )
        ],
    )

    assert await data_store.get_schedules() == []
    assert ids_of(await data_store.get_jobs()) == [job.id]
    [event] = recorder.of_type(ScheduleRemoved)
    assert (event.schedule_id, event.finished) == ("s1", True)


async def test_release_by_a_scheduler_that_lost_the_lease_is_dropped_with_its_jobs(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task())
    await store_a.add_schedule(make_schedule(clock), ConflictPolicy.exception)
    await store_a.acquire_schedules("a", LEASE, 10)
    clock.advance(LEASE.total_seconds() + 1)
    await store_b.acquire_schedules("b", LEASE, 10)  # b takes over the expired lease
    next_time = clock.now() + timedelta(seconds=10)

    def update(job: Job) -> ScheduleUpdate:
        return ScheduleUpdate(
            schedule_id="s1",
            next_fire_time=next_time,
            next_run_time=next_time,
            last_fire_time=clock.now(),
            jobs=(job,),
        )

    late_job = make_job(clock, schedule_id="s1")
    await store_a.release_schedules("a", [update(late_job)])
    assert await store_a.get_jobs() == []
    [stored] = await store_a.get_schedules()
    assert stored.acquired_by == "b"

    job = make_job(clock, schedule_id="s1")
    await store_b.release_schedules("b", [update(job)])
    assert ids_of(await store_a.get_jobs()) == [job.id]


async def test_release_of_a_schedule_replaced_meanwhile_is_dropped(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, name="old"), ConflictPolicy.exception)
    await data_store.acquire_schedules("me", LEASE, 10)
    await data_store.add_schedule(make_schedule(clock, name="new"), ConflictPolicy.replace)

    await data_store.release_schedules(
        "me",
        [
            ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=None,
                next_run_time=None,
                last_fire_time=clock.now(),
                jobs=(make_job(clock),),
            )
        ],
    )

    [stored] = await data_store.get_schedules()
    assert (stored.name, stored.acquired_by) == ("new", None)
    assert await data_store.get_jobs() == []


async def test_next_schedule_run_time_is_the_earliest_unpaused_one(
    data_store: DataStore, clock: FakeClock
) -> None:
    assert await data_store.get_next_schedule_run_time() is None
    await data_store.add_task(make_task())
    await data_store.add_schedule(
        make_schedule(clock, "p", due_in=1, paused=True), ConflictPolicy.exception
    )
    assert await data_store.get_next_schedule_run_time() is None

    await data_store.add_schedule(make_schedule(clock, "a", due_in=30), ConflictPolicy.exception)
    await data_store.add_schedule(make_schedule(clock, "b", due_in=20), ConflictPolicy.exception)
    assert await data_store.get_next_schedule_run_time() == clock.now() + timedelta(seconds=20)

    await data_store.remove_schedules(["b"])
    assert await data_store.get_next_schedule_run_time() == clock.now() + timedelta(seconds=30)


async def test_next_schedule_run_time_of_a_leased_schedule_is_its_lease_expiry(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, "a"), ConflictPolicy.exception)
    await data_store.add_schedule(make_schedule(clock, "b", due_in=3600), ConflictPolicy.exception)
    await data_store.acquire_schedules("me", LEASE, 1)

    assert await data_store.get_next_schedule_run_time() == clock.now() + LEASE


async def test_unpausing_by_replacement_makes_a_schedule_acquirable(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(make_schedule(clock, paused=True), ConflictPolicy.exception)
    assert await data_store.acquire_schedules("me", LEASE, 10) == []

    await data_store.add_schedule(make_schedule(clock, paused=False), ConflictPolicy.replace)
    assert ids_of(await data_store.acquire_schedules("me", LEASE, 10)) == ["s1"]


#
# Jobs
#


async def test_added_jobs_are_listed_oldest_first(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    jobs = await add_jobs(data_store, clock, 3, args=("x", 1), kwargs={"y": [2]})

    assert await data_store.get_jobs() == jobs
    assert await data_store.get_jobs([jobs[2].id, uuid4(), jobs[0].id]) == [jobs[0], jobs[2]]
    assert [event.job_id for event in recorder.of_type(JobAdded)] == ids_of(jobs)


async def test_job_round_trips_every_field(data_store: DataStore, clock: FakeClock) -> None:
    await data_store.add_task(make_task())
    job = make_job(
        clock,
        args=(1, {"two": 2}),
        kwargs={"three": (3,)},
        schedule_id="s1",
        scheduled_fire_time=clock.now() - timedelta(seconds=3),
        jitter=timedelta(seconds=1.5),
        start_deadline=clock.now() + timedelta(minutes=1),
        job_executor="threadpool",
        result_expiration_time=timedelta(hours=1),
    )
    await data_store.add_jobs([job])

    assert await data_store.get_jobs() == [job]


async def test_jobs_are_acquired_oldest_first_with_a_lease(
    data_stores: list[DataStore], clock: FakeClock, recorder: EventRecorder
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task())
    jobs = await add_jobs(store_a, clock, 5)

    first = await store_a.acquire_jobs("a", LEASE, 2)
    second = await store_b.acquire_jobs("b", LEASE, 10)

    assert ids_of(first) == ids_of(jobs[:2])
    assert ids_of(second) == ids_of(jobs[2:])
    assert await store_a.acquire_jobs("a", LEASE, 10) == []
    leases = {job.id: (job.acquired_by, job.acquired_until) for job in await store_a.get_jobs()}
    assert leases[jobs[0].id] == ("a", clock.now() + LEASE)
    assert leases[jobs[4].id] == ("b", clock.now() + LEASE)
    acquired_by = {event.job_id: event.scheduler_id for event in recorder.of_type(JobAcquired)}
    assert acquired_by == {job.id: "a" if job in jobs[:2] else "b" for job in jobs}


async def test_concurrent_acquirers_never_get_the_same_job(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    await data_stores[0].add_task(make_task())
    jobs = await add_jobs(data_stores[0], clock, 60)
    acquired: list[UUID] = []

    async def acquire_until_empty(store: DataStore, scheduler_id: str) -> None:
        while batch := await store.acquire_jobs(scheduler_id, LEASE, 7):
            acquired.extend(ids_of(batch))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as task_group:
        for index, store in enumerate(data_stores):
            task_group.start_soon(acquire_until_empty, store, f"worker-{index}")

    assert sorted(acquired) == sorted(ids_of(jobs))


async def test_task_max_running_jobs_holds_jobs_back_until_a_slot_frees(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task(max_running_jobs=2))
    jobs = await add_jobs(data_store, clock, 4)

    running = await data_store.acquire_jobs("me", LEASE, 10)
    assert ids_of(running) == ids_of(jobs[:2])
    assert await data_store.acquire_jobs("me", LEASE, 10) == []

    await data_store.release_jobs("me", [finish(running[0], clock)])
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [jobs[2].id]
    assert await data_store.acquire_jobs("me", LEASE, 10) == []


async def test_schedule_max_running_jobs_holds_its_jobs_back(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_schedule(
        make_schedule(clock, "limited", due_in=3600, max_running_jobs=1), ConflictPolicy.exception
    )
    limited = await add_jobs(data_store, clock, 2, schedule_id="limited")
    free = await add_jobs(data_store, clock, 2)

    acquired = await data_store.acquire_jobs("me", LEASE, 10)

    assert ids_of(acquired) == [limited[0].id, free[0].id, free[1].id]
    await data_store.release_jobs("me", [finish(acquired[0], clock)])
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [limited[1].id]


@pytest.mark.parametrize("how", ["replace", "definition update"])
async def test_raising_a_schedules_limit_lets_its_held_back_jobs_start(
    data_store: DataStore, clock: FakeClock, how: str
) -> None:
    await data_store.add_task(make_task())
    schedule = make_schedule(clock, "limited", due_in=3600, max_running_jobs=1)
    await data_store.add_schedule(schedule, ConflictPolicy.exception)
    limited = await add_jobs(data_store, clock, 3, schedule_id="limited")
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [limited[0].id]

    raised = attrs.evolve(schedule, max_running_jobs=3)
    if how == "replace":
        await data_store.add_schedule(raised, ConflictPolicy.replace)
    else:
        await data_store.update_schedule_definition(raised)

    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == ids_of(limited[1:])


@pytest.mark.parametrize("limited_by", ["task", "schedule"])
async def test_a_saturated_backlog_does_not_hold_back_the_jobs_queued_behind_it(
    data_store: DataStore, clock: FakeClock, limited_by: str
) -> None:
    await data_store.add_task(make_task("A", max_running_jobs=1 if limited_by == "task" else None))
    await data_store.add_task(make_task("B"))
    options: dict[str, Any] = {"task_id": "A"}
    if limited_by == "schedule":
        await data_store.add_schedule(
            make_schedule(clock, "limited", task_id="A", due_in=3600, max_running_jobs=1),
            ConflictPolicy.exception,
        )
        options["schedule_id"] = "limited"
    backlog = await add_jobs(data_store, clock, 1000, **options)
    [other] = await add_jobs(data_store, clock, 1, task_id="B")

    # A0 and B in one call, while A's backlog waits: a worker given fewer jobs than it asked
    # for sleeps until something new happens, so B must not need a second call
    acquired = ids_of(await data_store.acquire_jobs("me", LEASE, 10))
    assert acquired == [backlog[0].id, other.id]
    # the backlog still runs one at a time, in order
    await data_store.release_jobs("me", [finish(backlog[0], clock)])
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [backlog[1].id]


async def test_concurrent_job_additions_are_each_stored_when_the_call_returns(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    batches = [[make_job(clock) for _ in range(3)] for _ in range(20)]

    async def add_and_read_back(batch: list[Job]) -> None:
        await data_store.add_jobs(batch)
        assert sorted(ids_of(await data_store.get_jobs(ids_of(batch)))) == sorted(ids_of(batch))

    async with anyio.create_task_group() as task_group:
        for batch in batches:
            task_group.start_soon(add_and_read_back, batch)

    assert len(await data_store.get_jobs()) == 60


async def test_a_job_that_cannot_be_serialized_fails_only_its_own_addition(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    good = [make_job(clock) for _ in range(5)]
    bad = make_job(clock, args=(lambda: None,))
    errors: list[BaseException] = []

    async def add(jobs: list[Job]) -> None:
        try:
            await data_store.add_jobs(jobs)
        except SerializationError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as task_group:
        for job in good[:2]:
            task_group.start_soon(add, [job])
        task_group.start_soon(add, [bad])
        for job in good[2:]:
            task_group.start_soon(add, [job])

    # persistent stores refuse the lambda; the memory store keeps objects as they are
    assert len(errors) <= 1
    assert set(ids_of(good)) <= set(ids_of(await data_store.get_jobs()))


async def test_cancelling_one_addition_keeps_the_concurrent_ones(
    data_store: DataStore, clock: FakeClock
) -> None:
    """Concurrent additions may share one write; cancelling its caller loses no other job."""
    await data_store.add_task(make_task())
    first, leader, others = make_job(clock), make_job(clock), [make_job(clock) for _ in range(8)]
    first_added = anyio.Event()
    leader_call = anyio.CancelScope()

    async def add_first() -> None:
        await data_store.add_jobs([first])
        first_added.set()

    async def add_leader() -> None:
        with leader_call:
            await data_store.add_jobs([leader])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(add_first)
            await anyio.wait_all_tasks_blocked()  # the first call is writing (persistent stores)
            task_group.start_soon(add_leader)
            await anyio.wait_all_tasks_blocked()
            for job in others:
                task_group.start_soon(data_store.add_jobs, [job])
            await first_added.wait()
            await anyio.wait_all_tasks_blocked()  # the leader's call writes its job and others
            leader_call.cancel()

    assert set(ids_of(others)) <= set(ids_of(await data_store.get_jobs()))


async def test_additions_cancelled_while_waiting_for_a_shared_write_never_stall_later_ones(
    data_store: DataStore, clock: FakeClock
) -> None:
    """Callers queued behind a write, cancelled at varied moments, leave the queue moving."""
    await data_store.add_task(make_task())
    chooser = random.Random(7)
    returned: list[Job] = []

    async def add(job: Job, scope: anyio.CancelScope, then_cancel: anyio.CancelScope) -> None:
        with scope:
            await data_store.add_jobs([job])
            returned.append(job)
        # the next caller was just handed the lead and has not resumed yet: cancel it now
        then_cancel.cancel()

    with anyio.fail_after(30):
        for _ in range(6):
            scopes = [anyio.CancelScope() for _ in range(12)]
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(add, make_job(clock), scopes[0], scopes[1])
                for scope in scopes[1:]:
                    task_group.start_soon(add, make_job(clock), scope, anyio.CancelScope())
                await anyio.wait_all_tasks_blocked()  # one call writes, the rest wait
                for scope in chooser.sample(scopes[2:], 5):
                    scope.cancel()
                    for _ in range(chooser.randrange(3)):
                        await anyio.lowlevel.checkpoint()
        last = make_job(clock)
        await data_store.add_jobs([last])

    assert len(returned) >= 6 * 6  # each round's six calls that nobody cancelled
    assert set(ids_of([*returned, last])) <= set(ids_of(await data_store.get_jobs()))


async def test_jobs_held_back_tells_whether_a_limit_kept_jobs_waiting(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    await data_store.add_task(make_task("limited", max_running_jobs=1))
    await add_jobs(data_store, clock, 2)

    await data_store.acquire_jobs("me", LEASE, 10)
    assert not data_store.jobs_held_back

    limited = await add_jobs(data_store, clock, 2, task_id="limited")
    running = await data_store.acquire_jobs("me", LEASE, 10)
    assert ids_of(running) == [limited[0].id]
    assert data_store.jobs_held_back

    await data_store.release_jobs("me", [finish(running[0], clock)])
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [limited[1].id]


async def test_max_running_jobs_holds_across_concurrent_workers(
    data_stores: list[DataStore], clock: FakeClock
) -> None:
    await data_stores[0].add_task(make_task(max_running_jobs=3))
    await add_jobs(data_stores[0], clock, 30)
    running: set[UUID] = set()
    peak = 0  # jobs held by the workers at once, as they know it
    peak_in_store = 0  # jobs acquired at once, as the store shows it
    finished = 0

    async def work(store: DataStore, worker: str) -> None:
        nonlocal peak, peak_in_store, finished
        while finished < 30:
            batch = await store.acquire_jobs(worker, LEASE, 2)
            if not batch:
                await anyio.sleep(0.001)
                continue
            running.update(ids_of(batch))
            peak = max(peak, len(running))
            acquired = [job for job in await store.get_jobs() if job.acquired_by is not None]
            peak_in_store = max(peak_in_store, len(acquired))
            await anyio.sleep(0.003)  # the jobs run a while, as the other workers ask for more
            # a job is "running" until its release is sent (its slot frees at the release)
            running.difference_update(ids_of(batch))
            await store.release_jobs(worker, [finish(job, clock) for job in batch])
            finished += len(batch)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as task_group:
            for index, store in enumerate(data_stores):
                task_group.start_soon(work, store, f"worker-{index}")

    assert finished == 30
    assert peak <= 3
    assert peak_in_store <= 3
    assert peak >= 2  # the workers did hold jobs at the same time


async def test_job_past_its_start_deadline_is_released_as_missed_instead_of_acquired(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    late = make_job(
        clock,
        start_deadline=clock.now() + timedelta(seconds=5),
        result_expiration_time=timedelta(minutes=1),
    )
    on_time = make_job(clock, start_deadline=clock.now() + timedelta(seconds=60))
    await data_store.add_jobs([late, on_time])
    clock.advance(10)

    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [on_time.id]
    [event] = recorder.of_type(JobReleased)
    assert (event.job_id, event.outcome) == (late.id, JobOutcome.missed_start_deadline)
    result = await data_store.get_job_result(late.id)
    assert result is not None
    assert result.outcome is JobOutcome.missed_start_deadline
    assert ids_of(await data_store.get_jobs()) == [on_time.id]


async def test_jobs_past_their_deadline_do_not_take_the_places_of_those_behind_them(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    # a worker back after downtime: a backlog of late jobs, then jobs that can still run
    await data_store.add_task(make_task())
    late = await add_jobs(data_store, clock, 25, start_deadline=clock.now())
    on_time = await add_jobs(data_store, clock, 3)
    clock.advance(10)

    # one call: a worker given fewer jobs than it asked for sleeps until something changes
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 3)) == ids_of(on_time)
    missed = {event.job_id for event in recorder.of_type(JobReleased)}
    assert missed == set(ids_of(late))
    assert ids_of(await data_store.get_jobs()) == ids_of(on_time)


async def test_released_job_is_gone_and_its_result_kept_if_asked(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    kept = make_job(
        clock,
        result_expiration_time=timedelta(minutes=1),
        schedule_id="s9",
        scheduled_fire_time=clock.now(),
    )
    not_kept = make_job(clock)
    await data_store.add_jobs([kept, not_kept])
    await data_store.acquire_jobs("me", LEASE, 10)
    started_at = clock.now()
    clock.advance(2)

    await data_store.release_jobs(
        "me",
        [
            finish(kept, clock, return_value={"answer": 42}, started_at=started_at),
            finish(not_kept, clock, return_value="dropped"),
        ],
    )

    assert await data_store.get_jobs() == []
    result = await data_store.get_job_result(kept.id)
    assert result is not None
    assert (result.outcome, result.return_value) == (JobOutcome.success, {"answer": 42})
    assert (result.started_at, result.finished_at) == (started_at, clock.now())
    assert result.expires_at == clock.now() + timedelta(minutes=1)
    assert await data_store.get_job_result(not_kept.id) is None
    events = {event.job_id: event for event in recorder.of_type(JobReleased)}
    assert events[kept.id].outcome is JobOutcome.success
    assert (
        events[kept.id].task_id,
        events[kept.id].schedule_id,
        events[kept.id].scheduled_fire_time,
    ) == (kept.task_id, "s9", kept.scheduled_fire_time)
    assert events[kept.id].scheduler_id == "me"


@pytest.mark.parametrize("cannot", ["be stored", "be restored"])
async def test_a_return_value_that_cannot_be_kept_fails_only_a_kept_result(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder, cannot: str
) -> None:
    # A persistent store cannot keep a lock, nor what pickles but does not unpickle: the kept
    # result becomes an error that says so, rather than one nobody can read (the memory store
    # keeps the object itself); a result that is not kept is never serialized, so that job
    # succeeds on every store
    await data_store.add_task(make_task())
    kept = make_job(clock, result_expiration_time=timedelta(minutes=1))
    not_kept = make_job(clock)
    await data_store.add_jobs([kept, not_kept])
    await data_store.acquire_jobs("me", LEASE, 10)
    unstorable = threading.Lock() if cannot == "be stored" else Unrestorable()

    await data_store.release_jobs(
        "me",
        [
            finish(kept, clock, return_value=unstorable),
            finish(not_kept, clock, return_value=unstorable),
        ],
    )

    assert await data_store.get_jobs() == []
    events = {event.job_id: event for event in recorder.of_type(JobReleased)}
    assert events[not_kept.id].outcome is JobOutcome.success
    result = await data_store.get_job_result(kept.id)
    assert result is not None
    assert events[kept.id].outcome is result.outcome
    if result.outcome is JobOutcome.success:
        assert result.return_value is unstorable
    else:
        assert result.outcome is JobOutcome.error
        assert isinstance(result.exception, SerializationError)
        assert events[kept.id].exception_type == "asched._exceptions.SerializationError"


async def test_error_result_keeps_the_exception_and_the_event_describes_it(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    [job] = await add_jobs(data_store, clock, 1, result_expiration_time=timedelta(minutes=1))
    await data_store.acquire_jobs("me", LEASE, 10)
    try:
        raise ValueError("bad input 42")
    except ValueError as exc:
        error = exc

    await data_store.release_jobs("me", [finish(job, clock, JobOutcome.error, exception=error)])

    result = await data_store.get_job_result(job.id)
    assert result is not None
    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, ValueError)
    assert str(result.exception) == "bad input 42"
    [event] = recorder.of_type(JobReleased)
    assert event.exception_type == "builtins.ValueError"
    assert event.exception_message == "bad input 42"
    assert event.exception_traceback is not None
    assert "bad input 42" in event.exception_traceback


class TwoPartError(Exception):
    """Pickles, but cannot be unpickled: its __init__ takes other arguments than its args."""

    def __init__(self, first: int, second: int):
        super().__init__(f"{first}/{second}")


async def test_an_exception_that_cannot_be_restored_still_leaves_a_readable_result(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task())
    [job] = await add_jobs(data_store, clock, 1, result_expiration_time=timedelta(minutes=1))
    await data_store.acquire_jobs("me", LEASE, 10)

    error = TwoPartError(1, 2)
    await data_store.release_jobs("me", [finish(job, clock, JobOutcome.error, exception=error)])

    result = await data_store.get_job_result(job.id)
    assert result is not None
    assert result.outcome is JobOutcome.error
    # kept as it is in memory, as a RemoteJobError with its type and message elsewhere
    assert isinstance(result.exception, (TwoPartError, RemoteJobError))
    assert "1/2" in str(result.exception)
    assert "TwoPartError" in repr(result.exception) + str(result.exception)


async def test_an_acquired_job_that_cannot_be_restored_is_released_as_an_error(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    if not isinstance(data_store, BaseExternalDataStore):
        pytest.skip("the memory store keeps objects as they are: there is nothing to restore")
    await data_store.add_task(make_task())
    [broken] = await add_jobs(
        data_store, clock, 1, args=(Unrestorable(),), result_expiration_time=timedelta(hours=1)
    )
    [fine] = await add_jobs(data_store, clock, 1)

    # it cannot run here; it is not left leased either (to come back as abandoned later)
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [fine.id]
    result = await data_store.get_job_result(broken.id)
    assert result is not None
    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, DeserializationError)
    assert [job.id for job in await data_store.get_jobs()] == [fine.id]
    [released] = [event for event in recorder.of_type(JobReleased) if event.job_id == broken.id]
    assert released.outcome is JobOutcome.error
    assert [event.job_id for event in recorder.of_type(JobDeserializationFailed)] == [broken.id]


async def test_unreadable_jobs_do_not_take_the_places_of_those_behind_them(
    data_store: DataStore, clock: FakeClock
) -> None:
    # a deploy that cannot read a backlog of jobs must still get to the jobs behind it
    if not isinstance(data_store, BaseExternalDataStore):
        pytest.skip("the memory store keeps objects as they are: there is nothing to restore")
    await data_store.add_task(make_task())
    broken = await add_jobs(
        data_store, clock, 5, args=(Unrestorable(),), result_expiration_time=timedelta(hours=1)
    )
    fine = await add_jobs(data_store, clock, 2)

    assert ids_of(await data_store.acquire_jobs("me", LEASE, 2)) == ids_of(fine)
    for job in broken:
        result = await data_store.get_job_result(job.id)
        assert result is not None
        assert result.outcome is JobOutcome.error


async def test_returned_jobs_are_queued_again_in_their_place(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    # a worker stopping without waiting gives back what it had not started
    await data_store.add_task(make_task())
    first, second, third = await add_jobs(data_store, clock, 3)
    taken = await data_store.acquire_jobs("me", LEASE, 2)
    assert ids_of(taken) == [first.id, second.id]
    recorder.clear()

    await data_store.return_jobs("me", taken)

    assert sorted(event.job_id for event in recorder.of_type(JobAdded)) == sorted(
        [first.id, second.id]
    )
    assert not recorder.of_type(JobReleased)
    assert [job.acquired_by for job in await data_store.get_jobs()] == [None, None, None]
    again = await data_store.acquire_jobs("other", LEASE, 10)
    assert ids_of(again) == [first.id, second.id, third.id]


async def test_only_jobs_the_scheduler_holds_are_returned(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    held, finished = await add_jobs(data_store, clock, 2)
    await data_store.acquire_jobs("me", LEASE, 10)
    await data_store.release_jobs("me", [finish(finished, clock)])
    recorder.clear()

    await data_store.return_jobs("someone else", [held])  # not theirs
    await data_store.return_jobs("me", [finished])  # released already

    assert not recorder.of_type(JobAdded)
    assert await data_store.acquire_jobs("other", LEASE, 10) == []
    [still_held] = await data_store.get_jobs()
    assert (still_held.id, still_held.acquired_by) == (held.id, "me")


async def test_returning_a_limited_tasks_job_frees_its_slot_for_it(
    data_store: DataStore, clock: FakeClock
) -> None:
    await data_store.add_task(make_task(max_running_jobs=1))
    first, _second = await add_jobs(data_store, clock, 2)
    taken = await data_store.acquire_jobs("me", LEASE, 10)
    assert ids_of(taken) == [first.id]

    await data_store.return_jobs("me", taken)

    # the slot is free again, and the returned job is still first in line
    assert ids_of(await data_store.acquire_jobs("other", LEASE, 10)) == [first.id]
    assert await data_store.acquire_jobs("other", LEASE, 10) == []


async def test_jobs_acquired_beside_an_unreadable_one_reach_the_worker_if_its_release_fails(
    data_store: DataStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(data_store, BaseExternalDataStore):
        pytest.skip("the memory store keeps objects as they are: there is nothing to restore")
    await data_store.add_task(make_task())
    await add_jobs(data_store, clock, 1, args=(Unrestorable(),))
    [fine] = await add_jobs(data_store, clock, 1)

    async def failing_release(scheduler_id: str, results: Any) -> None:
        raise ConnectionError("the server went away")

    monkeypatch.setattr(data_store, "release_jobs", failing_release)
    # the acquisition took (and leased) both: the one that can run must not be stranded
    assert ids_of(await data_store.acquire_jobs("me", LEASE, 10)) == [fine.id]


async def test_result_of_a_job_not_acquired_by_the_releaser_is_ignored(
    data_stores: list[DataStore], clock: FakeClock, recorder: EventRecorder
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task())
    [job] = await add_jobs(store_a, clock, 1, result_expiration_time=timedelta(minutes=1))
    await store_a.acquire_jobs("a", LEASE, 10)

    await store_b.release_jobs("b", [finish(job, clock, return_value="impostor")])
    assert ids_of(await store_a.get_jobs()) == [job.id]
    assert not recorder.of_type(JobReleased)

    await store_a.release_jobs("a", [finish(job, clock, return_value="real")])
    await store_a.release_jobs("a", [finish(job, clock, return_value="again")])
    result = await store_a.get_job_result(job.id)
    assert result is not None
    assert result.return_value == "real"
    assert len(recorder.of_type(JobReleased)) == 1


async def test_results_expire(data_store: DataStore, clock: FakeClock) -> None:
    await data_store.add_task(make_task())
    [job] = await add_jobs(data_store, clock, 1, result_expiration_time=timedelta(seconds=60))
    await data_store.acquire_jobs("me", LEASE, 10)
    await data_store.release_jobs("me", [finish(job, clock)])

    clock.advance(59)
    assert await data_store.get_job_result(job.id) is not None
    clock.advance(2)
    assert await data_store.get_job_result(job.id) is None
    await data_store.cleanup()
    assert await data_store.get_job_result(job.id) is None


async def test_unknown_job_has_no_result(data_store: DataStore) -> None:
    assert await data_store.get_job_result(uuid4()) is None


async def test_job_with_expired_lease_is_released_as_abandoned_once(
    data_stores: list[DataStore], clock: FakeClock, recorder: EventRecorder
) -> None:
    store_a, store_b, _ = data_stores
    await store_a.add_task(make_task(max_running_jobs=1))
    [job, waiting] = await add_jobs(store_a, clock, 2, result_expiration_time=timedelta(hours=1))
    await store_a.acquire_jobs("a", LEASE, 10)
    clock.advance(LEASE.total_seconds() + 1)

    await store_b.cleanup()
    await store_b.cleanup()
    # The vanished worker shows up late: its result is ignored
    await store_a.release_jobs("a", [finish(job, clock, return_value="too late")])

    [event] = recorder.of_type(JobReleased)
    assert (event.job_id, event.outcome) == (job.id, JobOutcome.abandoned)
    result = await store_b.get_job_result(job.id)
    assert result is not None
    assert result.outcome is JobOutcome.abandoned
    # The task's running slot was freed
    assert ids_of(await store_b.acquire_jobs("b", LEASE, 10)) == [waiting.id]


async def test_extended_lease_keeps_a_running_job_from_being_abandoned(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task())
    [job] = await add_jobs(data_store, clock, 1)
    await data_store.acquire_jobs("me", LEASE, 10)

    clock.advance(LEASE.total_seconds() - 1)
    await data_store.extend_acquired_leases("me", {job.id}, LEASE)
    await data_store.extend_acquired_leases("someone-else", {job.id}, timedelta(0))
    clock.advance(LEASE.total_seconds() - 1)
    await data_store.cleanup()

    assert not recorder.of_type(JobReleased)
    [stored] = await data_store.get_jobs()
    assert stored.acquired_until == clock.now() + timedelta(seconds=1)


async def test_cleanup_releases_jobs_that_waited_for_a_slot_past_their_deadline(
    data_store: DataStore, clock: FakeClock, recorder: EventRecorder
) -> None:
    await data_store.add_task(make_task(max_running_jobs=1))
    [running] = await add_jobs(data_store, clock, 1)
    [waiting] = await add_jobs(
        data_store, clock, 1, start_deadline=clock.now() + timedelta(seconds=10)
    )
    await data_store.acquire_jobs("me", LEASE, 10)
    clock.advance(11)

    await data_store.cleanup()

    [event] = recorder.of_type(JobReleased)
    assert (event.job_id, event.outcome) == (waiting.id, JobOutcome.missed_start_deadline)
    assert ids_of(await data_store.get_jobs()) == [running.id]
