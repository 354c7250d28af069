"""Deciding what a due schedule fires: misfires, coalescing and jitter (pure functions).

Given a schedule whose fire time has come and the current time, :func:`plan_firing` works
out which fire times become jobs, which were missed, and the schedule's next fire and run
times. It does bounded work whatever the backlog (a schedule firing every second that was
down for a year): it enumerates at most ``MAX_FIRE_TIMES_PER_PASS`` fire times and jumps
over longer stretches by probing the trigger.

All datetimes here are UTC: aware datetimes sharing a zone compare by wall-clock time,
which would be wrong across a DST change.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from logging import Logger

from ._enums import CoalescePolicy
from ._structures import Job, Schedule, ScheduleUpdate
from .triggers.base import Trigger

#: how many fire times of one schedule one pass enumerates at most; beyond it, missed fire
#: times are skipped with a single log message, and CoalescePolicy.all continues next pass
MAX_FIRE_TIMES_PER_PASS = 1000

_ZERO = timedelta(0)
_MICROSECOND = timedelta(microseconds=1)
_UTC = timezone.utc
_FIRST_PROBE_SPAN = timedelta(seconds=1)


def next_fire_time_utc(trigger: Trigger, after: datetime | None) -> datetime | None:
    """Return the trigger's next fire time after ``after``, in UTC."""
    fire_time = trigger.next_fire_time(after)
    return None if fire_time is None else fire_time.astimezone(_UTC)


def choose_jitter(
    trigger: Trigger, fire_time: datetime, max_jitter: timedelta | None
) -> timedelta:
    """Return a random delay in ``[0, max_jitter]`` that stays before the next fire time."""
    if not max_jitter:
        return _ZERO
    limit = max_jitter
    following = next_fire_time_utc(trigger, fire_time)
    if following is not None:
        limit = min(limit, following - fire_time - _MICROSECOND)
    if limit <= _ZERO:
        return _ZERO
    return timedelta(microseconds=random.randint(0, limit // _MICROSECOND))


def first_fire_and_run_times(
    trigger: Trigger, max_jitter: timedelta | None, after: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """Return the first fire time after ``after`` (or the very first) and its run time."""
    fire_time = next_fire_time_utc(trigger, after)
    if fire_time is None:
        return None, None
    return fire_time, fire_time + choose_jitter(trigger, fire_time, max_jitter)


def latest_fire_time(trigger: Trigger, due: datetime, now: datetime) -> datetime:
    """Return the latest fire time at or before ``now``, given one (``due``) that is.

    Walks a few steps, then probes backwards from ``now`` with doubling spans, so a backlog
    of millions of fire times costs a few dozen trigger calls.
    """
    for _ in range(8):
        following = next_fire_time_utc(trigger, due)
        if following is None or following > now:
            return due
        due = following

    span = _FIRST_PROBE_SPAN
    while True:
        probe = now - span
        if probe <= due:
            start = due
        else:
            candidate = next_fire_time_utc(trigger, probe)
            if candidate is None or candidate > now:
                span *= 2
                continue
            start = candidate

        # (now - span / 2, now] held no fire time, so this walk is short
        while True:
            following = next_fire_time_utc(trigger, start)
            if following is None or following > now:
                return start
            start = following


def _make_job(schedule: Schedule, fire_time: datetime, jitter: timedelta) -> Job:
    grace = schedule.misfire_grace_time
    return Job(
        task_id=schedule.task_id,
        args=schedule.args,
        kwargs=schedule.kwargs,
        schedule_id=schedule.id,
        scheduled_fire_time=fire_time,
        jitter=jitter,
        start_deadline=None if grace is None else fire_time + jitter + grace,
        job_executor=schedule.job_executor,
        result_expiration_time=schedule.job_result_expiration_time,
    )


def plan_firing(schedule: Schedule, now: datetime, logger: Logger) -> ScheduleUpdate:
    """Decide the jobs, misses and next fire time of a schedule whose run time has come.

    Fire times whose start deadline (fire time + jitter + ``misfire_grace_time``) is already
    past are missed. Of the rest, ``CoalescePolicy.latest`` makes one job for the newest,
    ``earliest`` one for the oldest, ``all`` one job each. Only the first fire time carries
    the jitter chosen for it earlier (``next_run_time - next_fire_time``); later ones are
    late already and get none.

    :param schedule: an acquired schedule with ``next_fire_time`` at or before ``now``
    :param now: the current time (UTC)
    :param logger: where to report skipped stretches of missed fire times
    :raises Exception: whatever the trigger raises
    """
    trigger = schedule.trigger
    head = schedule.next_fire_time
    assert head is not None
    head = head.astimezone(_UTC)
    head_jitter = (
        schedule.next_run_time.astimezone(_UTC) - head if schedule.next_run_time else _ZERO
    )
    grace = schedule.misfire_grace_time

    def jitter_of(fire_time: datetime) -> timedelta:
        return head_jitter if fire_time == head else _ZERO

    fire_time: datetime | None = head
    last_processed: datetime | None = schedule.last_fire_time
    missed: list[Job] = []
    last_missed = head

    # Fire times whose start deadline has passed
    if grace is not None:
        while (
            fire_time is not None
            and fire_time + jitter_of(fire_time) + grace < now
            and len(missed) < MAX_FIRE_TIMES_PER_PASS
        ):
            missed.append(_make_job(schedule, fire_time, jitter_of(fire_time)))
            last_processed = last_missed = fire_time
            fire_time = next_fire_time_utc(trigger, fire_time)

        if fire_time is not None and fire_time + grace < now:
            # A long outage: jump to the first fire time that can still start in time
            skipped_from = fire_time
            fire_time = next_fire_time_utc(trigger, now - grace - _MICROSECOND)
            logger.warning(
                "Schedule %r missed more than %d fire times; skipped the missed fire times "
                "from %s to %s without reporting each",
                schedule.id,
                MAX_FIRE_TIMES_PER_PASS,
                skipped_from.isoformat(),
                (now - grace).isoformat(),
            )

    if missed:
        logger.warning(
            "Schedule %r missed %d fire time(s) from %s to %s: too late to start within its "
            "misfire grace time (%s)",
            schedule.id,
            len(missed),
            head.isoformat(),  # misses start at the first due fire time
            last_missed.isoformat(),
            grace,
        )

    jobs: list[Job] = []
    if fire_time is not None and fire_time <= now:
        if schedule.coalesce is CoalescePolicy.all:
            while (
                fire_time is not None
                and fire_time <= now
                and len(jobs) + len(missed) < MAX_FIRE_TIMES_PER_PASS
            ):
                jobs.append(_make_job(schedule, fire_time, jitter_of(fire_time)))
                last_processed = fire_time
                fire_time = next_fire_time_utc(trigger, fire_time)
        else:
            latest = latest_fire_time(trigger, fire_time, now)
            chosen = latest if schedule.coalesce is CoalescePolicy.latest else fire_time
            jobs.append(_make_job(schedule, chosen, jitter_of(chosen)))
            last_processed = latest
            fire_time = next_fire_time_utc(trigger, latest)

    next_run_time = (
        None
        if fire_time is None
        else fire_time + choose_jitter(trigger, fire_time, schedule.max_jitter)
    )
    return ScheduleUpdate(
        schedule_id=schedule.id,
        next_fire_time=fire_time,
        next_run_time=next_run_time,
        last_fire_time=last_processed,
        jobs=tuple(jobs),
        missed_jobs=tuple(missed),
    )
