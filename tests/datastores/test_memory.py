"""What only the memory store needs checking: that it keeps nothing for finished work."""

from __future__ import annotations

import pytest

from asched import AsyncScheduler
from asched.datastores import MemoryDataStore
from asched.events import JobReleased
from asched.triggers import DateTrigger
from tests.clock import FakeClock
from tests.conftest import EventRecorder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:  # not the per-store cases
    return str(request.param)


async def test_no_running_job_counts_are_kept_for_finished_schedules(
    clock: FakeClock, recorder: EventRecorder
) -> None:
    store = MemoryDataStore()
    async with AsyncScheduler(store, clock=clock) as scheduler:
        scheduler.subscribe(recorder, JobReleased)
        await scheduler.configure_task("noop", func=lambda: None, max_running_jobs=5)
        for _ in range(50):
            await scheduler.add_schedule("noop", DateTrigger(clock.now()), max_running_jobs=1)
        await scheduler.start_in_background()
        await recorder.wait_for(JobReleased, 50)
        assert await scheduler.get_schedules() == []

    # one-off schedules come and go: their counters must go with them
    assert store._running_jobs_by_schedule == {}
    assert store._running_jobs_by_task == {}
