"""Scheduler behaviour that depends on the data store, run on every store."""

from __future__ import annotations

import contextlib
from functools import partial
from types import ModuleType
from typing import Any

import anyio
import pytest

from asched import AsyncScheduler, DeserializationError, ScheduleLookupError, SchedulerRole
from asched.events import JobAcquired, JobReleased, TaskAdded, TaskUpdated
from asched.triggers import IntervalTrigger
from tests.conftest import EventRecorder
from tests.unrestorable import Unrestorable

pytestmark = pytest.mark.anyio

started_steps: list[int] = []


async def step(number: int) -> int:
    started_steps.append(number)
    await anyio.lowlevel.checkpoint()
    return number


async def test_jobs_held_back_by_a_limit_run_as_slots_free(
    store_backend: ModuleType, namespace: str
) -> None:
    started_steps.clear()
    async with (
        store_backend.open_data_stores(namespace, 1) as (store,),
        AsyncScheduler(store) as scheduler,
    ):
        await scheduler.configure_task("step", func=step, max_running_jobs=1)
        job_ids = [
            await scheduler.add_job("step", args=[number], result_expiration_time=60)
            for number in range(3)
        ]
        await scheduler.start_in_background()
        # well inside the worker's 10 s idle poll: each release must wake it for the next
        with anyio.fail_after(5):
            results = [await scheduler.get_job_result(job_id) for job_id in job_ids]

    assert [result.return_value for result in results] == [0, 1, 2]
    assert started_steps == [0, 1, 2]


class _Holds:
    """Jobs of ``hold`` record that they started and wait until released."""

    started: list[anyio.Event] = []
    release: anyio.Event


async def hold() -> None:
    _Holds.started.pop(0).set()
    await _Holds.release.wait()


async def test_raising_a_task_limit_lets_held_back_jobs_start(
    store_backend: ModuleType, namespace: str
) -> None:
    first, second = anyio.Event(), anyio.Event()
    _Holds.started, _Holds.release = [first, second], anyio.Event()
    async with (
        store_backend.open_data_stores(namespace, 1) as (store,),
        AsyncScheduler(store) as scheduler,
    ):
        await scheduler.configure_task("hold", func=hold, max_running_jobs=1)
        for _ in range(2):
            await scheduler.add_job("hold", result_expiration_time=0)
        await scheduler.start_in_background()
        with anyio.fail_after(5):
            await first.wait()
            await scheduler.configure_task("hold", func=hold, max_running_jobs=2)
            # no job was released: the changed limit itself must make the worker look again
            await second.wait()
        _Holds.release.set()


async def record_nothing(*args: object) -> None:
    pass


async def test_concurrent_changes_to_one_schedule_all_take_effect(
    store_backend: ModuleType, namespace: str
) -> None:
    # Two schedulers change one schedule at the same moment, each reading it and writing it
    # back: neither may undo the other's acknowledged change
    async with (
        store_backend.open_data_stores(namespace, 2) as (first_store, second_store),
        AsyncScheduler(first_store) as first,
        AsyncScheduler(second_store) as second,
    ):
        await first.add_schedule(record_nothing, IntervalTrigger(hours=1), id="shared")
        for round_number in range(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(first.pause_schedule, "shared")
                task_group.start_soon(
                    partial(second.update_schedule, "shared", args=[round_number])
                )
            paused = await second.get_schedule("shared")
            assert (paused.paused, paused.args) == (True, (round_number,))

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(first.unpause_schedule, "shared")
                task_group.start_soon(
                    partial(second.update_schedule, "shared", metadata={"round": round_number})
                )
            resumed = await first.get_schedule("shared")
            assert (resumed.paused, resumed.metadata) == (False, {"round": round_number})


async def test_a_removed_schedule_stays_removed_whatever_update_races_its_removal(
    store_backend: ModuleType, namespace: str
) -> None:
    async def update_if_there(scheduler: AsyncScheduler, **changes: Any) -> None:
        with contextlib.suppress(ScheduleLookupError):  # the removal came first
            await scheduler.update_schedule("doomed", **changes)

    async with (
        store_backend.open_data_stores(namespace, 2) as (first_store, second_store),
        AsyncScheduler(first_store) as first,
        AsyncScheduler(second_store) as second,
    ):
        for round_number in range(10):
            await first.add_schedule(record_nothing, IntervalTrigger(hours=1), id="doomed")
            # a new trigger reschedules; args only rewrite the definition
            changes: dict[str, Any] = (
                {"trigger": IntervalTrigger(minutes=round_number + 1)}
                if round_number % 2
                else {"args": [round_number]}
            )
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(first.remove_schedule, "doomed")
                task_group.start_soon(partial(update_if_there, second, **changes))
            assert await second.get_schedules() == []


async def echo(value: int) -> int:
    return value


async def test_jobs_a_worker_stopping_at_once_had_not_started_run_elsewhere(
    store_backend: ModuleType, namespace: str
) -> None:
    # The first worker stops without waiting the moment its acquisition takes the jobs
    # (JobAcquired is published inside the acquisition), before it can start any: it gives
    # them back, and a second worker runs them, rather than their ending as cancelled
    async with store_backend.open_data_stores(namespace, 2) as (first_store, second_store):
        async with AsyncScheduler(first_store, role=SchedulerRole.worker) as leaving:
            job_ids = [
                await leaving.add_job(echo, args=[number], result_expiration_time=60)
                for number in range(3)
            ]
            stopping = anyio.Event()

            def stop_at_once(event: JobAcquired) -> None:
                if not stopping.is_set():
                    stopping.set()
                    # stop() never suspends: run it to its end here, inside the acquisition
                    # (a coroutine subscriber would run when the backend gets to it, on trio
                    # possibly after the jobs started)
                    with pytest.raises(StopIteration):
                        leaving.stop(wait=False).send(None)

            leaving.subscribe(stop_at_once, JobAcquired)
            released: list[JobReleased] = []
            leaving.subscribe(released.append, JobReleased)
            await leaving.start_in_background()
            with anyio.fail_after(10):
                await stopping.wait()
                await leaving.wait_until_stopped()
        assert released == []  # none ended as cancelled

        async with AsyncScheduler(second_store, role=SchedulerRole.worker) as staying:
            await staying.start_in_background()
            with anyio.fail_after(20):
                results = [await staying.get_job_result(job_id) for job_id in job_ids]
    assert [result.return_value for result in results] == [0, 1, 2]


async def test_a_schedule_that_cannot_be_restored_says_so_and_can_still_be_removed(
    store_backend: ModuleType, namespace: str
) -> None:
    if store_backend.__name__.endswith("memory"):
        pytest.skip("the memory store keeps objects as they are: there is nothing to restore")
    async with (
        store_backend.open_data_stores(namespace, 1) as (store,),
        AsyncScheduler(store) as scheduler,
    ):
        await scheduler.add_schedule(
            step, IntervalTrigger(hours=1), id="broken", args=[Unrestorable()]
        )

        # not "no such schedule": it is there, and the error says how to get rid of it
        with pytest.raises(DeserializationError, match="'broken' exists but cannot be restored"):
            await scheduler.get_schedule("broken")
        with pytest.raises(DeserializationError, match="remove_schedule"):
            await scheduler.pause_schedule("broken")

        await scheduler.remove_schedule("broken")
        with pytest.raises(ScheduleLookupError):
            await scheduler.get_schedule("broken")
        with pytest.raises(ScheduleLookupError):
            await scheduler.remove_schedule("broken")


async def test_concurrent_first_uses_of_a_function_store_its_task_once(
    store_backend: ModuleType, namespace: str
) -> None:
    # a web application's first requests: each would otherwise write the task again,
    # announcing an update that wakes every worker
    async with (
        store_backend.open_data_stores(namespace, 1) as (store,),
        AsyncScheduler(store, role=SchedulerRole.scheduler) as scheduler,
    ):
        recorder = EventRecorder()
        scheduler.subscribe(recorder, {TaskAdded, TaskUpdated})
        async with anyio.create_task_group() as task_group:
            for number in range(20):
                task_group.start_soon(partial(scheduler.add_job, step, args=[number]))
        assert len(await scheduler.get_jobs()) == 20
    assert [type(event) for event in recorder.events] == [TaskAdded]
