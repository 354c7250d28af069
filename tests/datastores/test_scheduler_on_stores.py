"""Scheduler behaviour that depends on the data store, run on every store."""

from __future__ import annotations

from types import ModuleType

import anyio
import pytest

from asched import AsyncScheduler

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
