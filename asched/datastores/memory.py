"""MemoryDataStore: keeps everything in this process's memory (the default store)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from heapq import heapify, heappop, heappush
from logging import Logger, getLogger
from uuid import UUID

import attrs

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._exceptions import ConflictingIdError, StaleScheduleError, TaskLookupError
from .._structures import Job, JobResult, Schedule, ScheduleUpdate, Task
from ..eventbrokers.base import EventBroker
from ..events import (
    Event,
    JobAcquired,
    JobAdded,
    ScheduleRemoved,
    TaskAdded,
    TaskRemoved,
    TaskUpdated,
)
from .base import DataStore, job_released_event, schedule_written_event

# Queued jobs wait in lanes, one per (task id, schedule id), because max_running_jobs limits
# apply per task and per schedule: a lane whose limit is reached is set aside as a whole
# instead of being skipped job by job on every acquisition.
_LaneKey = tuple[str, str | None]
_ZERO = timedelta(0)


def _created_at(job: Job) -> datetime:
    return job.created_at


def _decrement(counts: dict[str, int], key: str) -> None:
    """Count one less for ``key``, forgetting it at zero (ids come and go: no leftovers)."""
    count = counts[key] - 1
    if count:
        counts[key] = count
    else:
        del counts[key]


class MemoryDataStore(DataStore):
    """Keeps tasks, schedules, jobs and results in memory; nothing survives the process.

    Schedulers and workers sharing it must live in the same process (and event loop). Due
    schedules and queued jobs are kept in heaps: finding the next wake-up time is O(1),
    acquiring k items O(k log n), whatever the number of schedules.
    """

    def __init__(self) -> None:
        self._clock = Clock()
        self._event_broker: EventBroker | None = None
        self._logger = getLogger(__name__)
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}
        # (next_run_time, schedule id); entries go stale when a schedule changes and are
        # skipped (see _queued_schedule)
        self._schedule_queue: list[tuple[datetime, str]] = []
        self._leased_schedule_ids: set[str] = set()
        self._jobs: dict[UUID, Job] = {}
        self._job_leases: dict[UUID, tuple[str, datetime]] = {}
        self._job_sequence = itertools.count()
        self._lanes: dict[_LaneKey, deque[tuple[int, Job]]] = {}
        #: each job's place in the order it was added (to put a returned job back there)
        self._job_sequences: dict[UUID, int] = {}
        # (sequence number of the lane's first job, lane key); stale entries are skipped
        self._ready_lanes: list[tuple[int, _LaneKey]] = []
        self._lanes_blocked_by_task: dict[str, set[_LaneKey]] = {}
        self._lanes_blocked_by_schedule: dict[str, set[_LaneKey]] = {}
        self._jobs_held_back = False
        self._running_jobs_by_task: dict[str, int] = {}
        self._running_jobs_by_schedule: dict[str, int] = {}
        self._results: dict[UUID, JobResult] = {}
        self._result_expirations: list[tuple[datetime, UUID]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Remember the broker, logger and clock; see :meth:`DataStore.start`."""
        self._event_broker = event_broker
        self._logger = logger
        self._clock = clock

    async def _publish(self, events: Iterable[Event]) -> None:
        if self._event_broker is not None:
            for event in events:
                await self._event_broker.publish(event)

    #
    # Tasks
    #

    async def add_task(self, task: Task) -> None:
        """Add or replace a task; see :meth:`DataStore.add_task`."""
        replaced = task.id in self._tasks
        self._tasks[task.id] = task
        # A changed limit may free slots for waiting jobs
        self._unblock_lanes(self._lanes_blocked_by_task.pop(task.id, ()))
        event_class = TaskUpdated if replaced else TaskAdded
        await self._publish([event_class(task_id=task.id)])

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""
        if self._tasks.pop(task_id, None) is None:
            raise TaskLookupError(task_id)
        await self._publish([TaskRemoved(task_id=task_id)])

    async def get_task(self, task_id: str) -> Task:
        """Return a task; see :meth:`DataStore.get_task`."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskLookupError(task_id) from None

    async def get_tasks(self) -> list[Task]:
        """Return all tasks sorted by id."""
        return sorted(self._tasks.values(), key=lambda task: task.id)

    #
    # Schedules
    #

    def _enqueue_schedule(self, schedule: Schedule) -> None:
        if not schedule.paused and schedule.next_run_time is not None:
            heappush(self._schedule_queue, (schedule.next_run_time, schedule.id))
            # Replaced and unpaused schedules leave stale entries behind; keep them bounded
            if len(self._schedule_queue) > 2 * len(self._schedules) + 1024:
                self._schedule_queue = [
                    (schedule.next_run_time, schedule.id)
                    for schedule in self._schedules.values()
                    if schedule.next_run_time is not None
                    and not schedule.paused
                    and schedule.id not in self._leased_schedule_ids
                ]
                heapify(self._schedule_queue)

    def _queued_schedule(self, entry: tuple[datetime, str]) -> Schedule | None:
        """Return the schedule a queue entry stands for, or ``None`` if the entry is stale."""
        run_time, schedule_id = entry
        schedule = self._schedules.get(schedule_id)
        if (
            schedule is None
            or schedule.paused
            or schedule.next_run_time != run_time
            or schedule_id in self._leased_schedule_ids
        ):
            return None
        return schedule

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; see :meth:`DataStore.add_schedule`."""
        stored = self._schedules.get(schedule.id)
        if stored is not None:
            if conflict_policy is ConflictPolicy.do_nothing:
                return
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
        revision = 0 if stored is None else stored.revision + 1
        if schedule.acquired_by is not None or schedule.revision != revision:
            schedule = attrs.evolve(
                schedule, acquired_by=None, acquired_until=None, revision=revision
            )
        self._store_schedule(schedule)
        await self._publish([schedule_written_event(schedule, added=stored is None)])

    def _store_schedule(self, schedule: Schedule) -> None:
        self._schedules[schedule.id] = schedule
        self._leased_schedule_ids.discard(schedule.id)
        self._enqueue_schedule(schedule)
        # A changed limit may free slots for waiting jobs
        self._unblock_lanes(self._lanes_blocked_by_schedule.pop(schedule.id, ()))

    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        """Rewrite a schedule unless it changed since it was read; see the base class."""
        stored = self._schedules.get(schedule.id)
        if stored is None:
            return None
        if stored.revision != schedule.revision or (
            rescheduled_from is not None
            and (stored.next_fire_time, stored.last_fire_time)
            != (rescheduled_from.next_fire_time, rescheduled_from.last_fire_time)
        ):
            raise StaleScheduleError(schedule.id)

        progress = schedule if rescheduled_from is not None else stored
        updated = attrs.evolve(
            schedule,
            next_fire_time=progress.next_fire_time,
            next_run_time=progress.next_run_time,
            last_fire_time=progress.last_fire_time,
            acquired_by=None,
            acquired_until=None,
            revision=stored.revision + 1,
        )
        self._store_schedule(updated)
        await self._publish([schedule_written_event(updated)])
        return updated

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        events: list[Event] = []
        for schedule_id in ids:
            schedule = self._schedules.pop(schedule_id, None)
            if schedule is not None:
                self._leased_schedule_ids.discard(schedule_id)
                events.append(
                    ScheduleRemoved(
                        schedule_id=schedule_id, task_id=schedule.task_id, finished=finished
                    )
                )
        await self._publish(events)

    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        """Return schedules sorted by id; see :meth:`DataStore.get_schedules`."""
        if ids is None:
            schedules = list(self._schedules.values())
        else:
            schedules = [
                schedule
                for schedule_id in set(ids)
                if (schedule := self._schedules.get(schedule_id)) is not None
            ]
        return sorted(schedules, key=lambda schedule: schedule.id)

    def _requeue_expired_schedule_leases(self, now: datetime) -> None:
        for schedule_id in list(self._leased_schedule_ids):
            schedule = self._schedules[schedule_id]
            if schedule.acquired_until is not None and schedule.acquired_until <= now:
                # Its scheduler vanished: make it acquirable again
                schedule = attrs.evolve(schedule, acquired_by=None, acquired_until=None)
                self._schedules[schedule_id] = schedule
                self._leased_schedule_ids.discard(schedule_id)
                self._enqueue_schedule(schedule)

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """Lease due schedules; see :meth:`DataStore.acquire_schedules`."""
        now = self._clock.now()
        if self._leased_schedule_ids:
            self._requeue_expired_schedule_leases(now)

        acquired: list[Schedule] = []
        queue = self._schedule_queue
        acquired_until = now + lease_duration
        while queue and len(acquired) < limit and queue[0][0] <= now:
            schedule = self._queued_schedule(heappop(queue))
            if schedule is not None:
                schedule = attrs.evolve(
                    schedule, acquired_by=scheduler_id, acquired_until=acquired_until
                )
                self._schedules[schedule.id] = schedule
                self._leased_schedule_ids.add(schedule.id)
                acquired.append(schedule)

        return acquired

    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply scheduler decisions; see :meth:`DataStore.release_schedules`."""
        events: list[Event] = []
        for update in updates:
            schedule = self._schedules.get(update.schedule_id)
            if schedule is None or schedule.acquired_by != scheduler_id:
                self._logger.debug(
                    "Dropped the update of schedule %r: its lease was lost", update.schedule_id
                )
                continue

            self._add_jobs(update.jobs, events)
            finished_at = self._clock.now()
            for job in update.missed_jobs:
                self._release_job(
                    scheduler_id,
                    job,
                    JobResult.for_job(
                        job, JobOutcome.missed_start_deadline, finished_at=finished_at
                    ),
                    events,
                )

            self._leased_schedule_ids.discard(schedule.id)
            if update.next_fire_time is None:
                del self._schedules[schedule.id]
                events.append(
                    ScheduleRemoved(
                        schedule_id=schedule.id, task_id=schedule.task_id, finished=True
                    )
                )
            else:
                schedule = attrs.evolve(
                    schedule,
                    next_fire_time=update.next_fire_time,
                    next_run_time=update.next_run_time,
                    last_fire_time=update.last_fire_time,
                    acquired_by=None,
                    acquired_until=None,
                )
                self._schedules[schedule.id] = schedule
                self._enqueue_schedule(schedule)
                events.append(schedule_written_event(schedule))

        await self._publish(events)

    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time a schedule may be acquired; see the base class."""
        queue = self._schedule_queue
        while queue and self._queued_schedule(queue[0]) is None:
            heappop(queue)

        next_time = queue[0][0] if queue else None
        for schedule_id in self._leased_schedule_ids:
            lease_expiry = self._schedules[schedule_id].acquired_until
            if lease_expiry is not None and (next_time is None or lease_expiry < next_time):
                next_time = lease_expiry

        return next_time

    #
    # Jobs
    #

    def _add_jobs(self, jobs: Iterable[Job], events: list[Event]) -> None:
        for job in jobs:
            sequence = next(self._job_sequence)
            self._jobs[job.id] = job
            self._job_sequences[job.id] = sequence
            key = (job.task_id, job.schedule_id)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = deque()
                heappush(self._ready_lanes, (sequence, key))
            lane.append((sequence, job))
            events.append(
                JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            )

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; see :meth:`DataStore.add_jobs`."""
        events: list[Event] = []
        self._add_jobs(jobs, events)
        await self._publish(events)

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class."""
        if ids is None:
            jobs = list(self._jobs.values())
        else:
            found = (self._jobs.get(job_id) for job_id in set(ids))
            jobs = sorted((job for job in found if job is not None), key=_created_at)

        # The lease is kept beside the job (no copy per acquisition); show it here
        for index, job in enumerate(jobs):
            lease = self._job_leases.get(job.id)
            if lease is not None:
                jobs[index] = attrs.evolve(job, acquired_by=lease[0], acquired_until=lease[1])

        return jobs

    def _free_slots(self, key: _LaneKey) -> int | None:
        """Return how many more jobs of this lane may run now (``None``: no limit)."""
        task_id, schedule_id = key
        free: int | None = None
        task = self._tasks.get(task_id)
        if task is not None and task.max_running_jobs is not None:
            free = task.max_running_jobs - self._running_jobs_by_task.get(task_id, 0)
            if free <= 0:
                self._lanes_blocked_by_task.setdefault(task_id, set()).add(key)
                return 0
        if schedule_id is not None:
            schedule = self._schedules.get(schedule_id)
            if schedule is not None and schedule.max_running_jobs is not None:
                schedule_free = schedule.max_running_jobs - self._running_jobs_by_schedule.get(
                    schedule_id, 0
                )
                if schedule_free <= 0:
                    self._lanes_blocked_by_schedule.setdefault(schedule_id, set()).add(key)
                    return 0
                free = schedule_free if free is None else min(free, schedule_free)
        return free

    def _unblock_lanes(self, keys: Iterable[_LaneKey]) -> None:
        for key in keys:
            lane = self._lanes.get(key)
            if lane:
                heappush(self._ready_lanes, (lane[0][0], key))

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Job]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""
        now = self._clock.now()
        lease = (scheduler_id, now + lease_duration)
        acquired: list[Job] = []
        events: list[Event] = []
        ready_lanes = self._ready_lanes
        running_by_task = self._running_jobs_by_task
        running_by_schedule = self._running_jobs_by_schedule
        while ready_lanes and len(acquired) < limit:
            head_sequence, key = heappop(ready_lanes)
            lane = self._lanes.get(key)
            if not lane or lane[0][0] != head_sequence:
                continue  # stale entry

            room = limit - len(acquired)
            free = self._free_slots(key)
            if free is not None:
                if free == 0:
                    continue  # set aside until a slot frees up
                room = min(room, free)

            # Take jobs from this lane while they are older than every other lane's first job
            next_lane_sequence = ready_lanes[0][0] if ready_lanes else None
            task_id, schedule_id = key
            while lane and room:
                sequence, job = lane[0]
                if next_lane_sequence is not None and sequence > next_lane_sequence:
                    break
                lane.popleft()
                if job.start_deadline is not None and job.start_deadline < now:
                    self._release_job(
                        scheduler_id,
                        job,
                        JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now),
                        events,
                    )
                    continue

                self._job_leases[job.id] = lease
                running_by_task[task_id] = running_by_task.get(task_id, 0) + 1
                if schedule_id is not None:
                    running_by_schedule[schedule_id] = running_by_schedule.get(schedule_id, 0) + 1
                acquired.append(job)
                events.append(
                    JobAcquired(
                        timestamp=now,
                        job_id=job.id,
                        scheduler_id=scheduler_id,
                        task_id=task_id,
                        schedule_id=schedule_id,
                    )
                )
                room -= 1

            if lane:
                heappush(ready_lanes, (lane[0][0], key))
            else:
                del self._lanes[key]

        self._jobs_held_back = bool(self._lanes_blocked_by_task or self._lanes_blocked_by_schedule)
        await self._publish(events)
        return acquired

    def _release_job(
        self, scheduler_id: str, job: Job, result: JobResult, events: list[Event]
    ) -> None:
        """Record how a job ended: keep its result if asked to, and add the event."""
        if job.result_expiration_time > _ZERO:
            self._results[job.id] = result
            heappush(self._result_expirations, (result.expires_at, job.id))
        self._jobs.pop(job.id, None)
        self._job_sequences.pop(job.id, None)
        events.append(job_released_event(scheduler_id, job, result))

    def _free_running_slot(self, job: Job) -> None:
        task_id = job.task_id
        _decrement(self._running_jobs_by_task, task_id)
        blocked = self._lanes_blocked_by_task.pop(task_id, None)
        if blocked:
            self._unblock_lanes(blocked)
        schedule_id = job.schedule_id
        if schedule_id is not None:
            _decrement(self._running_jobs_by_schedule, schedule_id)
            blocked = self._lanes_blocked_by_schedule.pop(schedule_id, None)
            if blocked:
                self._unblock_lanes(blocked)

    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish acquired jobs; see :meth:`DataStore.release_jobs`."""
        events: list[Event] = []
        job_leases = self._job_leases
        for result in results:
            lease = job_leases.get(result.job_id)
            if lease is None or lease[0] != scheduler_id:
                self._logger.debug(
                    "Ignored the result of job %s: it is not acquired by %s",
                    result.job_id,
                    scheduler_id,
                )
                continue

            del job_leases[result.job_id]
            job = self._jobs[result.job_id]
            self._free_running_slot(job)
            self._release_job(scheduler_id, job, result, events)

        await self._publish(events)

    async def return_jobs(self, scheduler_id: str, jobs: Sequence[Job]) -> None:
        """Queue acquired, unstarted jobs again in their place; see the base class."""
        events: list[Event] = []
        for returned in jobs:
            lease = self._job_leases.get(returned.id)
            if lease is None or lease[0] != scheduler_id:
                continue
            del self._job_leases[returned.id]
            job = self._jobs[returned.id]
            self._free_running_slot(job)
            sequence = self._job_sequences[job.id]
            key = (job.task_id, job.schedule_id)
            lane = self._lanes.setdefault(key, deque())
            # back before the jobs queued after it (near the front: it was at the head)
            index = next(
                (index for index, (queued, _) in enumerate(lane) if queued > sequence),
                len(lane),
            )
            lane.insert(index, (sequence, job))
            if index == 0:
                heappush(self._ready_lanes, (sequence, key))
            events.append(
                JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            )
        await self._publish(events)

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""
        result = self._results.get(job_id)
        if result is not None and result.expires_at > self._clock.now():
            return result
        return None

    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Extend job leases; see :meth:`DataStore.extend_acquired_leases`."""
        lease = (scheduler_id, self._clock.now() + lease_duration)
        for job_id in job_ids:
            current = self._job_leases.get(job_id)
            if current is not None and current[0] == scheduler_id:
                self._job_leases[job_id] = lease

    async def cleanup(self) -> None:
        """Expire results, release abandoned and overdue jobs; see the base class."""
        now = self._clock.now()
        events: list[Event] = []

        expirations = self._result_expirations
        while expirations and expirations[0][0] <= now:
            _, job_id = heappop(expirations)
            result = self._results.get(job_id)
            if result is not None and result.expires_at <= now:
                del self._results[job_id]

        for job_id, (scheduler_id, acquired_until) in list(self._job_leases.items()):
            if acquired_until <= now:
                job = self._jobs[job_id]
                self._logger.warning(
                    "Job %s (task %r) was abandoned: the lease of %s on it expired",
                    job_id,
                    job.task_id,
                    scheduler_id,
                )
                del self._job_leases[job_id]
                self._free_running_slot(job)
                self._release_job(
                    scheduler_id,
                    job,
                    JobResult.for_job(job, JobOutcome.abandoned, finished_at=now),
                    events,
                )

        # Jobs still waiting for a max_running_jobs slot after their start deadline
        for key, lane in list(self._lanes.items()):
            overdue = [
                job
                for _, job in lane
                if job.start_deadline is not None and job.start_deadline < now
            ]
            if not overdue:
                continue
            overdue_ids = {job.id for job in overdue}
            remaining = deque(entry for entry in lane if entry[1].id not in overdue_ids)
            if remaining:
                self._lanes[key] = remaining
                heappush(self._ready_lanes, (remaining[0][0], key))
            else:
                del self._lanes[key]
            for job in overdue:
                self._release_job(
                    "cleanup",
                    job,
                    JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now),
                    events,
                )

        await self._publish(events)
