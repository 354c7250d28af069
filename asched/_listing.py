"""What ``python -m asched list`` prints: a data store's schedules and jobs as text tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from ._structures import Job, Schedule


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[index]) for row in (header, *rows)) for index in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _moment(moment: datetime | None, zone: tzinfo) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def schedule_lines(schedules: Sequence[Schedule], zone: tzinfo) -> list[str]:
    """One line per schedule, soonest first (paused and finished ones last), under a header."""

    def order(schedule: Schedule) -> tuple[bool, float, str]:
        moment = schedule.next_fire_time
        if schedule.paused or moment is None:
            return (True, 0.0, schedule.id)
        return (False, moment.timestamp(), schedule.id)  # instants, whatever their zones

    rows = []
    for schedule in sorted(schedules, key=order):
        if schedule.paused:
            state = "paused"
        elif schedule.acquired_by is not None:
            state = f"firing ({schedule.acquired_by})"
        else:
            state = "waiting"
        rows.append(
            [
                schedule.id,
                schedule.task_id,
                _moment(schedule.next_fire_time, zone),
                state,
                str(schedule.trigger),
            ]
        )
    return _table(["ID", "TASK", "NEXT FIRE TIME", "STATE", "TRIGGER"], rows)


def job_lines(jobs: Sequence[Job], zone: tzinfo) -> list[str]:
    """One line per queued or running job, oldest first, under a header."""
    rows = [
        [
            str(job.id),
            job.task_id,
            job.schedule_id or "-",
            _moment(job.created_at, zone),
            f"running ({job.acquired_by})" if job.acquired_by is not None else "queued",
        ]
        for job in sorted(jobs, key=lambda job: job.created_at)
    ]
    return _table(["ID", "TASK", "SCHEDULE", "CREATED", "STATE"], rows)
