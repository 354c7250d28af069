"""Data store tests and their shared helpers."""

from __future__ import annotations

from asched._structures import Schedule
from asched.triggers import IntervalTrigger
from tests.clock import FakeClock


def due_schedule(schedule_id: str, clock: FakeClock) -> Schedule:
    """An every-second schedule, due now."""
    return Schedule(
        id=schedule_id,
        task_id="task",
        trigger=IntervalTrigger(seconds=1, start_time=clock.now()),
        next_fire_time=clock.now(),
        next_run_time=clock.now(),
    )
