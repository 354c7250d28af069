"""AsyncScheduler: turns due schedules into jobs and runs jobs, sharing a data store."""

from __future__ import annotations

import itertools
import math
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, tzinfo
from logging import Logger, getLogger
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from uuid import UUID, uuid4

import anyio
import attrs
from anyio import (
    CancelScope,
    create_task_group,
    get_cancelled_exc_class,
    move_on_after,
)
from anyio.abc import TaskGroup, TaskStatus

from ._clock import Clock
from ._converters import (
    as_aware_datetime,
    as_enum,
    as_timedelta,
    as_timezone,
    as_uuid,
    positive_int_or_none,
)
from ._coroutines import is_coroutine_callable
from ._enums import CoalescePolicy, ConflictPolicy, JobOutcome, RunState, SchedulerRole
from ._exceptions import (
    CallableLookupError,
    DeserializationError,
    JobAbandoned,
    JobCancelled,
    JobDeadlineMissed,
    JobLookupError,
    JobResultNotReady,
    ScheduleLookupError,
    SchedulerNotInitializedError,
    StaleScheduleError,
    TaskLookupError,
)
from ._firing import first_fire_and_run_times, plan_firing
from ._marshalling import callable_from_reference, callable_name, importable_reference
from ._signatures import check_arguments
from ._structures import Job, JobResult, Schedule, Task
from ._urls import data_store_from_url, event_broker_from_url
from ._wakeup import Wakeup
from ._worker import MAX_IDLE_SECONDS, Worker, backoff_delay
from .datastores.base import DataStore
from .datastores.memory import MemoryDataStore
from .eventbrokers.base import EventBroker
from .eventbrokers.local import LocalEventBroker
from .events import (
    BrokerReconnected,
    Event,
    JobAdded,
    JobReleased,
    ScheduleAdded,
    ScheduleDeserializationFailed,
    SchedulerStarted,
    SchedulerStopped,
    ScheduleUpdated,
    Subscription,
    TaskRemoved,
    TaskUpdated,
)
from .executors import _process_worker as process_worker
from .executors.async_ import AsyncJobExecutor
from .executors.base import JobExecutor
from .executors.process import ProcessPoolJobExecutor
from .executors.thread import ThreadPoolJobExecutor
from .triggers.base import Trigger
from .triggers.combining import AndTrigger, OrTrigger

_FuncT = TypeVar("_FuncT", bound=Callable[..., Any])


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()

_ZERO = timedelta(0)
#: how long add_job keeps results by default, so that get_job_result() finds them
DEFAULT_RESULT_EXPIRATION_TIME = timedelta(minutes=15)
DEFAULT_MAX_CONCURRENT_JOBS = 100
DEFAULT_LEASE_DURATION = timedelta(seconds=30)
DEFAULT_CLEANUP_INTERVAL = timedelta(minutes=15)
_SCHEDULE_BATCH_SIZE = 100
#: how long an update goes on reading a schedule again after finding it changed meanwhile,
#: and the longest pause between two attempts (a random one, doubling from 2 ms: writers
#: that collided do not collide again in step)
_REVISION_SECONDS = 60.0
_MAX_REVISION_PAUSE = 0.1


class _Revision(NamedTuple):
    """A change to write back to a schedule (see :meth:`AsyncScheduler._revise_schedule`)."""

    schedule: Schedule
    #: the schedule as read, if the change moves its fire times (see update_schedule_definition)
    rescheduled_from: Schedule | None = None


def _exception_text(exc: BaseException) -> str:
    exc_type = type(exc)
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


#
# Checking the values given for jobs and schedules (no I/O: also used from other threads)
#


def _as_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field}: expected True or False, got {value!r}")
    return value


def _as_args(value: object) -> tuple[Any, ...]:
    """Return positional arguments as a tuple: any iterable but a string, bytes or mapping.

    Those three are refused because they are nearly always a mistake (one argument given
    without brackets, or keyword arguments given as ``args``), which iterating would hide.
    """
    if type(value) is tuple:
        return value
    if type(value) is list:
        return tuple(value)
    expected = "args: expected a list or tuple of positional arguments"
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(
            f"{expected}, got the {type(value).__name__} {value!r} (for a single argument, "
            f"write args=[{value!r}])"
        )
    if isinstance(value, Mapping):
        raise TypeError(f"{expected}, got {value!r} (keyword arguments go in kwargs=)")
    if not isinstance(value, Iterable):
        raise TypeError(f"{expected}, got {value!r}")
    return tuple(value)


def _as_kwargs(value: object) -> dict[str, Any]:
    """Return keyword arguments as a new dict: a mapping with str keys, or ``None``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"kwargs: expected a mapping of argument names to values, got {value!r}")
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"kwargs: argument names must be strings, got {name!r}")
    return dict(value)


_JSON_VALUES = "None, a bool, an int, a float, a str, a list or a dict with str keys"


def _as_metadata(value: object) -> dict[str, Any]:
    """Return metadata as JSON would keep it (tuples become lists), or raise.

    Every store then keeps and returns the same value: what the memory store would accept
    as it is, a persistent store could not write.

    :raises TypeError: naming the path of a value that is not JSON-compatible
    :raises ValueError: for a float that JSON cannot hold (NaN, infinity) or a cycle
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"metadata: expected a dict with str keys and JSON-compatible values, got {value!r}"
        )
    metadata: dict[str, Any] = _json_compatible(value, "metadata", set())
    return metadata


def _json_compatible(value: object, path: str, enclosing: set[int]) -> Any:
    if value is None or type(value) is str or type(value) is int or type(value) is bool:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"{path}: {value!r} is not JSON-compatible (JSON has no NaN or infinity)"
            )
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum): its text, as JSON keeps it
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in enclosing:
            raise ValueError(f"{path}: contains itself")
        enclosing.add(id(value))
        try:
            if isinstance(value, Mapping):
                result: dict[str, Any] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise TypeError(f"{path}: keys must be strings, got {key!r}")
                    result[str.__str__(key)] = _json_compatible(
                        item, f"{path}[{key!r}]", enclosing
                    )
                return result
            return [
                _json_compatible(item, f"{path}[{index}]", enclosing)
                for index, item in enumerate(value)
            ]
        finally:
            enclosing.discard(id(value))
    raise TypeError(f"{path}: {value!r} is not JSON-compatible (expected {_JSON_VALUES})")


#: the options of add_schedule that scheduled_job takes, besides the trigger and the id
_SCHEDULE_OPTIONS = frozenset(
    {
        "args",
        "kwargs",
        "name",
        "paused",
        "coalesce",
        "misfire_grace_time",
        "max_jitter",
        "max_running_jobs",
        "job_executor",
        "job_result_expiration_time",
        "metadata",
        "conflict_policy",
    }
)


@attrs.define(kw_only=True)
class _TaskDeclaration:
    """Options given with the ``@scheduler.task`` decorator.

    Applied when the scheduler is initialized, or when the function is first used if it was
    declared after that.
    """

    id: str | None = None
    job_executor: str | None = None
    max_running_jobs: int | None = None
    misfire_grace_time: timedelta | None = None
    metadata: Mapping[str, Any] | None = None


class _ResolvedTask(NamedTuple):
    """The task a function or task id stands for, not yet registered in this scheduler.

    Resolving reads the store only: a task is stored (``unstored``) and its function
    remembered only once the schedule or job that uses it has been validated, so that a
    refused call leaves nothing behind.
    """

    task: Task
    function: Callable[..., Any] | None
    unstored: bool


@attrs.define(kw_only=True)
class _ScheduleDeclaration:
    """A schedule declared with ``@scheduler.scheduled_job``, added at initialization."""

    func: Callable[..., Any]
    trigger: Trigger | str
    options: dict[str, Any]


class AsyncScheduler:
    """An asyncio/trio-native scheduler: adds schedules and jobs, fires them, runs them.

    Use it as an async context manager, which starts its data store, event broker and
    executors; then call :meth:`start_in_background` or :meth:`run_until_stopped`::

        async with AsyncScheduler() as scheduler:
            await scheduler.add_schedule(tick, CronTrigger(hour=17, minute="*/5"))
            await scheduler.run_until_stopped()

    Any number of schedulers, in any number of processes, may share a persistent data store;
    each fire time of each schedule then yields at most one job.

    :param data_store: a :class:`~asched.datastores.DataStore` or a URL (``memory://``,
        ``sqlite:///path``, ``postgresql://…``, ``redis://…``); default: memory
    :param event_broker: an :class:`~asched.eventbrokers.EventBroker` or a URL; default: the
        broker matching a data store URL (PostgreSQL LISTEN/NOTIFY, Redis pub/sub), or the one
        a data store object offers (a Redis store's pub/sub, see
        :meth:`~asched.datastores.DataStore.default_event_broker`), else local
    :param identity: unique id of this scheduler among those sharing the store (default:
        host name, process id and object id, taken again when the scheduler is initialized,
        so that processes forked after it was made each have their own)
    :param role: ``scheduler`` (creates jobs from schedules), ``worker`` (runs jobs) or
        ``both``
    :param job_executors: extra or replacement executors by name; ``async``,
        ``threadpool`` (up to ``max_concurrent_jobs`` threads) and ``processpool`` (a
        process per CPU) are built in
    :param default_job_executor: executor for tasks that do not name one (default:
        ``async`` for coroutine functions, ``threadpool`` for plain functions); coroutine
        functions stay on ``async`` when it names a thread or process pool, which cannot
        run them
    :param max_concurrent_jobs: the most jobs this worker runs at once
    :param lease_duration: how long a schedule or job stays claimed by this scheduler
        without it showing signs of life (timedelta or seconds)
    :param cleanup_interval: how often to run data store housekeeping (expired results,
        abandoned jobs), in the roles ``scheduler`` and ``both`` only; ``None`` disables it
    :param timezone: zone for crontab strings given as triggers (default: local zone)
    :param logger: where to log (default: the ``asched._scheduler`` logger)
    :param clock: the time source; tests pass a controllable one
    :raises ValueError: on an invalid option value, naming it
    """

    def __init__(
        self,
        data_store: DataStore | str | None = None,
        event_broker: EventBroker | str | None = None,
        *,
        identity: str | None = None,
        role: SchedulerRole | str = SchedulerRole.both,
        job_executors: Mapping[str, JobExecutor] | None = None,
        default_job_executor: str | None = None,
        max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS,
        lease_duration: timedelta | float = DEFAULT_LEASE_DURATION,
        cleanup_interval: timedelta | float | None = DEFAULT_CLEANUP_INTERVAL,
        timezone: str | tzinfo | None = None,
        logger: Logger | None = None,
        clock: Clock | None = None,
    ):
        if data_store is None or isinstance(data_store, str):
            store_url = "memory://" if data_store is None else data_store
            self.data_store: DataStore = data_store_from_url(store_url)
            if event_broker is None:
                event_broker = store_url
        elif isinstance(data_store, DataStore):
            self.data_store = data_store
            if event_broker is None:
                # the store's own broker where it has one (on a channel of its own), else local
                event_broker = data_store.default_event_broker()
        else:
            raise TypeError(f"data_store: expected a DataStore or a URL, got {data_store!r}")

        if event_broker is None:
            self.event_broker: EventBroker = LocalEventBroker()
        elif isinstance(event_broker, str):
            self.event_broker = event_broker_from_url(event_broker)
        elif isinstance(event_broker, EventBroker):
            self.event_broker = event_broker
        else:
            raise TypeError(
                f"event_broker: expected an EventBroker or a URL, got {event_broker!r}"
            )

        self.role = as_enum(SchedulerRole, role, field="role")
        if identity is not None and not isinstance(identity, str):
            raise TypeError(f"identity: expected a non-empty string or None, got {identity!r}")
        if identity == "":  # leases are held in its name
            raise ValueError("identity: expected a non-empty string or None, got ''")
        self._identity_given = identity is not None
        self.identity = identity or self._make_identity()
        max_jobs = positive_int_or_none(max_concurrent_jobs, field="max_concurrent_jobs")
        if max_jobs is None:
            raise TypeError("max_concurrent_jobs: expected an int of at least 1, got None")
        self.max_concurrent_jobs: int = max_jobs
        self.job_executors: dict[str, JobExecutor] = {
            "async": AsyncJobExecutor(),
            # as many threads as the worker runs jobs: a sync job it takes never waits for
            # a thread while other workers could have run it
            "threadpool": ThreadPoolJobExecutor(max_workers=max_jobs),
            "processpool": ProcessPoolJobExecutor(),
        }
        for name, executor in (job_executors or {}).items():
            if not isinstance(name, str) or not isinstance(executor, JobExecutor):
                raise TypeError(
                    f"job_executors[{name!r}]: expected a JobExecutor under a str name, got "
                    f"{executor!r}"
                )
            self.job_executors[name] = executor
        if default_job_executor is not None:
            self._check_executor_name(default_job_executor, "default_job_executor")
        self.default_job_executor = default_job_executor
        lease = as_timedelta(lease_duration, field="lease_duration")
        if not lease:
            raise ValueError(f"lease_duration: must be positive, got {lease_duration!r}")
        self.lease_duration: timedelta = lease
        self.cleanup_interval = as_timedelta(cleanup_interval, field="cleanup_interval")
        if self.cleanup_interval == _ZERO:
            raise ValueError("cleanup_interval: must be positive or None, got 0")
        self.timezone = as_timezone(timezone)
        self.logger = logger or getLogger(__name__)
        self.clock = clock or Clock()

        self._state = RunState.stopped
        self._exit_stack: AsyncExitStack | None = None
        self._services_task_group: TaskGroup | None = None
        # Created when the scheduler runs: anyio primitives need a running event loop, and a
        # scheduler may be created at import time
        self._stopped_event: anyio.Event | None = None
        self._paused = False
        self._schedules_wakeup = Wakeup()
        self._cleanup_wakeup = Wakeup()
        self._worker: Worker | None = None

        # Tasks known to this scheduler, and the functions this process can run for them
        self._tasks: dict[str, Task] = {}
        self._task_functions: dict[str, Callable[..., Any]] = {}
        self._task_declarations: dict[Callable[..., Any], _TaskDeclaration] = {}
        self._tasks_being_stored: dict[str, anyio.Event] = {}
        self._schedule_declarations: list[_ScheduleDeclaration] = []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identity={self.identity!r}, role={self.role.name}, "
            f"data_store={self.data_store!r}, event_broker={self.event_broker!r})"
        )

    @property
    def state(self) -> RunState:
        """Whether the scheduler is stopped, starting, started or stopping."""
        return self._state

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` (or ``start_in_background(paused=True)``) holds it.

        A paused scheduler's :attr:`state` stays what it was: it runs, taking no new work.
        """
        return self._paused

    #
    # Life cycle
    #

    def _make_identity(self) -> str:
        return f"{platform.node()}-{os.getpid()}-{id(self)}"

    async def __aenter__(self) -> AsyncScheduler:
        if self._exit_stack is not None:
            raise RuntimeError("this scheduler is already initialized (nested 'async with')")
        if process_worker.loading_main_module:
            # a process-pool worker process loading the script that started it, whose top
            # level starts a scheduler: one in every worker process, on the same store
            raise RuntimeError(
                "a scheduler was started while a process-pool worker process loaded the "
                "script of the process that started it: the script starts its scheduler at "
                'its top level; keep that under `if __name__ == "__main__":`'
            )
        if not self._identity_given:
            # A scheduler made before a fork (gunicorn --preload) starts in each child: each
            # needs an identity of its own, or they would take each other's leases as theirs
            self.identity = self._make_identity()

        exit_stack = AsyncExitStack()
        await exit_stack.__aenter__()
        try:
            await self.event_broker.start(exit_stack, self.logger)
            await self.data_store.start(exit_stack, self.event_broker, self.logger, self.clock)
            for executor in self.job_executors.values():
                await executor.start(exit_stack)
            self._subscribe_to_own_events(exit_stack)
            self._services_task_group = await exit_stack.enter_async_context(create_task_group())
            self._exit_stack = exit_stack
            await self._add_declared_tasks()
            await self._add_declared_schedules()
        except BaseException:
            self._exit_stack = None
            self._services_task_group = None
            # as in __aexit__: the services need not see the exception, and would only wrap
            # it in exception groups (a broker that cannot connect should say so plainly)
            await exit_stack.__aexit__(None, None, None)
            raise

        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        exit_stack = self._exit_stack
        assert exit_stack is not None
        with CancelScope(shield=True):
            # Leaving on an exception (or cancellation) cancels running jobs
            await self.stop(wait=exc_type is None)
            await self.wait_until_stopped()

        self._exit_stack = None
        self._services_task_group = None
        # The services need not see the exception; passing it on would only get it wrapped in
        # an exception group by the task groups. Python re-raises it as it is.
        await exit_stack.__aexit__(None, None, None)
        return None

    def _ensure_initialized(self) -> None:
        if self._exit_stack is None:
            raise SchedulerNotInitializedError(
                "the scheduler is not initialized: use it in 'async with AsyncScheduler(...) "
                "as scheduler:' first"
            )

    def _subscribe_to_own_events(self, exit_stack: AsyncExitStack) -> None:
        subscriptions = [
            self.event_broker.subscribe(
                self._on_schedule_changed, {ScheduleAdded, ScheduleUpdated}
            ),
            self.event_broker.subscribe(self._on_job_added, {JobAdded}),
            self.event_broker.subscribe(self._on_job_released, {JobReleased}),
            self.event_broker.subscribe(self._on_task_changed, {TaskUpdated, TaskRemoved}),
            self.event_broker.subscribe(self._on_broker_reconnected, {BrokerReconnected}),
        ]
        for subscription in subscriptions:
            exit_stack.callback(subscription.unsubscribe)

    def _on_schedule_changed(self, event: ScheduleAdded | ScheduleUpdated) -> None:
        # a schedule's changed limit may let held-back jobs run
        if self._worker is not None and self.data_store.jobs_held_back:
            self._worker.wakeup.wake()
        fire_time = event.next_fire_time
        if fire_time is None:
            return
        wakeup = self._schedules_wakeup
        if wakeup.sleeping_until is None or fire_time < wakeup.sleeping_until:
            wakeup.wake()

    def _on_job_added(self, event: JobAdded) -> None:
        if self._worker is not None:
            self._worker.wakeup.wake()

    def _on_job_released(self, event: JobReleased) -> None:
        # A release frees a max_running_jobs slot, which matters only to held-back jobs
        if self._worker is not None and self.data_store.jobs_held_back:
            self._worker.wakeup.wake()

    def _on_broker_reconnected(self, event: BrokerReconnected) -> None:
        # what other processes announced meanwhile was lost: look at the store again now
        self._schedules_wakeup.wake()
        if self._worker is not None:
            self._worker.wakeup.wake()

    def _on_task_changed(self, event: TaskUpdated | TaskRemoved) -> None:
        self._tasks.pop(event.task_id, None)
        # a changed limit may let held-back jobs run
        if self._worker is not None:
            self._worker.wakeup.wake()

    async def start_in_background(self, *, paused: bool = False) -> None:
        """Start processing schedules and jobs in a background task, and return.

        The background task belongs to the ``async with`` block: leaving the block stops it.

        :param paused: start without taking new work until :meth:`resume` is called
        :raises SchedulerNotInitializedError: outside ``async with``
        :raises RuntimeError: if the scheduler is already running
        """
        self._ensure_initialized()
        assert self._services_task_group is not None
        if self._state is not RunState.stopped:
            raise RuntimeError(f"the scheduler is already {self._state.value}")
        self._paused = paused
        await self._services_task_group.start(self.run_until_stopped)

    async def run_until_stopped(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Process schedules and jobs until :meth:`stop` is called.

        Outside ``async with``, initializes the scheduler for the duration of the call.

        :raises RuntimeError: if the scheduler is already running
        """
        if self._exit_stack is None:
            async with self:
                await self.run_until_stopped(task_status=task_status)
            return

        if self._state is not RunState.stopped:
            raise RuntimeError(f"the scheduler is already {self._state.value}")

        self._state = RunState.starting
        stopped_event = self._stopped_event = anyio.Event()
        exception: BaseException | None = None
        try:
            async with create_task_group() as task_group:
                if self.role is not SchedulerRole.worker:
                    await task_group.start(self._process_schedules)
                    if self.cleanup_interval is not None:
                        task_group.start_soon(self._clean_up_periodically, self.cleanup_interval)
                if self.role is not SchedulerRole.scheduler:
                    self._worker = Worker(
                        data_store=self.data_store,
                        identity=self.identity,
                        lease_duration=self.lease_duration,
                        max_concurrent_jobs=self.max_concurrent_jobs,
                        clock=self.clock,
                        logger=self.logger,
                        resolve_job_runtime=self._get_job_runtime,
                    )
                    self._worker.paused = self._paused
                    await task_group.start(self._worker.run)

                self._state = RunState.started
                self.logger.info("Scheduler %s started (role: %s)", self.identity, self.role.value)
                await self.event_broker.publish(SchedulerStarted(scheduler_id=self.identity))
                task_status.started()
        except BaseException as exc:
            exception = exc
            raise
        finally:
            self._state = RunState.stopped
            self._worker = None
            if exception is None or isinstance(exception, get_cancelled_exc_class()):
                self.logger.info("Scheduler %s stopped", self.identity)
            else:
                self.logger.error("Scheduler %s crashed", self.identity, exc_info=exception)
            with move_on_after(5, shield=True):
                await self.event_broker.publish(
                    SchedulerStopped(
                        scheduler_id=self.identity,
                        exception_type=_exception_text(exception) if exception else None,
                        exception_message=str(exception) if exception else None,
                    )
                )
            stopped_event.set()

    async def stop(self, *, wait: bool = True) -> None:
        """Stop taking new work; running jobs finish (``wait=True``) or are cancelled.

        Returns at once; :meth:`wait_until_stopped` waits for the running jobs. With
        ``wait=False``, coroutine jobs are cancelled, process-pool jobs are ended by killing
        their worker process (SIGKILL: the function gets no chance to clean up), and
        thread-pool jobs, which cannot be interrupted, are left to finish on their own with
        their outcome discarded. All of them are released as ``cancelled``. Jobs acquired but
        not started yet are given back to the data store, queued in their place, for another
        worker. Calling it on a stopped scheduler does nothing.
        """
        if self._state in (RunState.starting, RunState.started):
            self._state = RunState.stopping
        if self._state is RunState.stopping:
            if self._worker is not None:
                self._worker.stop(cancel_jobs=not wait)
            self._schedules_wakeup.wake()
            self._cleanup_wakeup.wake()

    async def wait_until_stopped(self) -> None:
        """Wait until the scheduler has stopped (returns at once if it is not running)."""
        if self._stopped_event is not None:
            await self._stopped_event.wait()

    async def pause(self) -> None:
        """Stop taking new schedules and jobs in this scheduler; running jobs go on."""
        self._paused = True
        if self._worker is not None:
            self._worker.paused = True

    async def resume(self) -> None:
        """Take new schedules and jobs again after :meth:`pause`."""
        self._paused = False
        self._schedules_wakeup.wake()
        if self._worker is not None:
            self._worker.paused = False
            self._worker.wakeup.wake()

    def _running(self) -> bool:
        return self._state is RunState.started or self._state is RunState.starting

    #
    # The scheduler loop: due schedules -> jobs
    #

    async def _process_schedules(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        wakeup = self._schedules_wakeup
        failures = 0
        idle_seconds = min(MAX_IDLE_SECONDS, self.data_store.polling_interval or MAX_IDLE_SECONDS)
        while self._running():
            if self._paused:
                await wakeup.sleep(self.clock, idle_seconds)
                continue

            wakeup.pending = False
            try:
                schedules = await self.data_store.acquire_schedules(
                    self.identity, self.lease_duration, _SCHEDULE_BATCH_SIZE
                )
                if schedules:
                    now = self.clock.now()
                    updates = []
                    for schedule in schedules:
                        try:
                            updates.append(plan_firing(schedule, now, self.logger))
                        except Exception:
                            # Left leased: it is retried when the lease expires
                            self.logger.exception(
                                "Cannot compute the fire times of schedule %r (trigger %s); "
                                "retrying in %s",
                                schedule.id,
                                schedule.trigger,
                                self.lease_duration,
                            )
                    await self.data_store.release_schedules(self.identity, updates)
                    if len(schedules) == _SCHEDULE_BATCH_SIZE:
                        continue

                next_run_time = await self.data_store.get_next_schedule_run_time()
                failures = 0
            except Exception:
                failures += 1
                delay = backoff_delay(failures)
                self.logger.exception(
                    "Error while processing schedules; retrying in %.1f s", delay
                )
                await wakeup.sleep(self.clock, delay)
                continue

            if next_run_time is None:
                await wakeup.sleep(self.clock, idle_seconds)
            else:
                seconds = (next_run_time - self.clock.now()).total_seconds()
                await wakeup.sleep(self.clock, min(seconds, idle_seconds), next_run_time)

    async def _clean_up_periodically(self, interval: timedelta) -> None:
        while self._running():
            try:
                await self.data_store.cleanup()
            except Exception:
                self.logger.exception("Error while cleaning up the data store")
            await self._cleanup_wakeup.sleep(self.clock, interval.total_seconds())

    async def _get_job_runtime(self, job: Job) -> tuple[Callable[..., Any], JobExecutor]:
        task = self._tasks.get(job.task_id)
        if task is None:
            task = self._tasks[job.task_id] = await self.data_store.get_task(job.task_id)

        func = self._task_functions.get(task.id)
        if func is None:
            if task.func_ref is None:
                raise CallableLookupError(
                    f"task {task.id!r} has no importable function: it was registered by a "
                    "process running a lambda or local function, which only that process can "
                    "run"
                )
            func = self._task_functions[task.id] = callable_from_reference(task.func_ref)

        executor_name = job.job_executor or task.job_executor
        try:
            return func, self.job_executors[executor_name]
        except KeyError:
            raise LookupError(
                f"job executor {executor_name!r} is not configured in this scheduler "
                f"(configured: {', '.join(sorted(self.job_executors))})"
            ) from None

    #
    # Tasks
    #

    def _check_executor_name(self, name: str, field: str) -> None:
        if name not in self.job_executors:
            raise ValueError(
                f"{field}: unknown job executor {name!r} "
                f"(configured: {', '.join(sorted(self.job_executors))})"
            )

    def _check_executor_override(
        self, task: Task, function: Callable[..., Any] | None, job_executor: str
    ) -> None:
        """Refuse an executor, named for one schedule or job, that cannot run its task."""
        self._check_executor_name(job_executor, "job_executor")
        if function is not None:
            self.job_executors[job_executor].check_function(function, task.func_ref)

    def _default_executor_for(self, func: Callable[..., Any]) -> str:
        by_kind = "async" if is_coroutine_callable(func) else "threadpool"
        default = self.default_job_executor
        if default is None:
            return by_kind
        if by_kind == "async" and isinstance(
            self.job_executors[default], (ThreadPoolJobExecutor, ProcessPoolJobExecutor)
        ):
            return "async"  # a default for plain functions cannot run coroutine functions
        return default

    async def configure_task(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        func: Callable[..., Any] | None = None,
        job_executor: str | None = None,
        max_running_jobs: int | None = None,
        misfire_grace_time: timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Task:
        """Add or replace a task: a function under a stable id, with job defaults.

        :param func_or_task_id: the function (its id becomes ``"module:qualname"``), a
            reference to one (``"package.module:func"``), or a task id for ``func``
        :param func: the function, when the first argument is a plain task id
        :param job_executor: executor for its jobs (default: by function kind)
        :param max_running_jobs: how many of its jobs may run at once across all workers
        :param misfire_grace_time: default for its schedules: how late a job may start
        :param metadata: JSON-compatible data for the application: a dict with str keys whose
            values are ``None``, bools, ints, finite floats, strs, lists and such dicts
            (tuples are kept as lists, as JSON would)
        :return: the stored task
        :raises TypeError: if no function can be found for the task, or on a value of the
            wrong type (metadata that is not JSON-compatible), naming it
        :raises ValueError: on an invalid option value
        """
        self._ensure_initialized()
        task_id, function = self._task_id_and_function(func_or_task_id, func)
        if function is None:
            raise TypeError(
                f"configure_task: no function for task {task_id!r}; pass func=... or a "
                "'package.module:function' reference"
            )
        task = self._build_task(
            task_id,
            function,
            job_executor=job_executor,
            max_running_jobs=max_running_jobs,
            misfire_grace_time=misfire_grace_time,
            metadata=metadata,
        )
        await self._store_task(task)
        self._tasks[task.id] = task
        self._task_functions[task.id] = function
        return task

    def _build_task(
        self,
        task_id: str,
        func: Callable[..., Any],
        *,
        job_executor: str | None,
        max_running_jobs: int | None,
        misfire_grace_time: timedelta | float | None,
        metadata: Mapping[str, Any] | None,
    ) -> Task:
        reference = importable_reference(func)
        if job_executor is None:
            job_executor = self._default_executor_for(func)
        else:
            self._check_executor_name(job_executor, "job_executor")
        self.job_executors[job_executor].check_function(func, reference)
        return Task(
            id=task_id,
            func_ref=reference,
            job_executor=job_executor,
            max_running_jobs=positive_int_or_none(max_running_jobs, field="max_running_jobs"),
            misfire_grace_time=as_timedelta(misfire_grace_time, field="misfire_grace_time"),
            metadata=_as_metadata(metadata),
        )

    def _task_id_and_function(
        self, func_or_task_id: Callable[..., Any] | str, func: Callable[..., Any] | None
    ) -> tuple[str, Callable[..., Any] | None]:
        if callable(func_or_task_id):
            if func is not None:
                raise TypeError("give the function either as the first argument or as func=")
            declaration = self._task_declarations.get(func_or_task_id)
            if declaration is not None and declaration.id is not None:
                return declaration.id, func_or_task_id
            return callable_name(func_or_task_id), func_or_task_id
        if not isinstance(func_or_task_id, str) or not func_or_task_id:
            raise TypeError(
                f"expected a function, a 'package.module:function' reference or a task id, "
                f"got {func_or_task_id!r}"
            )
        if func is None and ":" in func_or_task_id and func_or_task_id not in self._tasks:
            func = self._task_functions.get(func_or_task_id) or callable_from_reference(
                func_or_task_id
            )
        return func_or_task_id, func

    async def _resolve_task(self, func_or_task_id: Callable[..., Any] | str) -> _ResolvedTask:
        """Return the task for a function, reference or task id, without registering it.

        A function seen for the first time gets a new task (``unstored``), unless another
        process already configured a task of the same id: that one is kept. Call
        :meth:`_register_task` once what uses the task has been validated.
        """
        task = self._known_task(func_or_task_id)
        if task is not None:
            return _ResolvedTask(task, self._task_functions.get(task.id), unstored=False)

        task_id, function = self._task_id_and_function(func_or_task_id, None)
        try:
            task = await self.data_store.get_task(task_id)
        except TaskLookupError:
            if function is None:
                raise
            declaration = (
                self._task_declarations.get(func_or_task_id, _TaskDeclaration())
                if callable(func_or_task_id)
                else _TaskDeclaration()
            )
            task = self._build_task(
                task_id,
                function,
                job_executor=declaration.job_executor,
                max_running_jobs=declaration.max_running_jobs,
                misfire_grace_time=declaration.misfire_grace_time,
                metadata=declaration.metadata,
            )
            return _ResolvedTask(task, function, unstored=True)
        return _ResolvedTask(task, function, unstored=False)

    async def _store_task(self, task: Task) -> None:
        await self.data_store.add_task(task)
        if isinstance(self.data_store, MemoryDataStore):
            return
        if task.func_ref is None:
            self.logger.warning(
                "Task %r: its function cannot be imported (a lambda, a nested function or a "
                "bound method?), so on this store, which other processes share, only this "
                "process can run its jobs; elsewhere they fail with CallableLookupError",
                task.id,
            )
        elif task.func_ref.startswith("__main__:"):
            self.logger.warning(
                "Task %r: its function is defined in the script being run (__main__), so on "
                "this store, which other processes share, only processes running this same "
                "script can run its jobs (another script's %s would run instead, or fail): "
                "move the function into a module",
                task.id,
                task.func_ref,
            )

    async def _register_task(self, resolved: _ResolvedTask) -> Task:
        """Store a resolved task if it is new, and remember it and its function."""
        task = resolved.task
        if resolved.unstored:
            # concurrent first uses of a function store its task once (each would otherwise
            # write it again, announcing an update that wakes every worker)
            while (storing := self._tasks_being_stored.get(task.id)) is not None:
                await storing.wait()
            if task.id in self._tasks:
                task = self._tasks[task.id]
            else:
                storing = self._tasks_being_stored[task.id] = anyio.Event()
                try:
                    await self._store_task(task)
                finally:
                    del self._tasks_being_stored[task.id]
                    storing.set()
        self._tasks[task.id] = task
        if resolved.function is not None:
            self._task_functions[task.id] = resolved.function
        return task

    def _known_task(self, func_or_task_id: Callable[..., Any] | str) -> Task | None:
        """Return the task already resolved for a function or task id, without any I/O.

        ``None`` if it takes the store to tell.

        :raises ValueError: if another function is registered under the function's task id
        """
        if isinstance(func_or_task_id, str):
            return self._tasks.get(func_or_task_id)
        if not callable(func_or_task_id):
            return None
        declaration = self._task_declarations.get(func_or_task_id)
        task_id = (
            declaration.id
            if declaration is not None and declaration.id is not None
            else callable_name(func_or_task_id)
        )
        task = self._tasks.get(task_id)
        known_function = self._task_functions.get(task_id)
        # == rather than "is": a bound method is a new object at every attribute access
        if task is not None and known_function == func_or_task_id:
            return task
        if known_function is not None and known_function != func_or_task_id:
            raise ValueError(
                f"another function is already registered as task {task_id!r}; give this "
                "one its own id with configure_task('some-id', func=...)"
            )
        return None

    async def get_tasks(self) -> list[Task]:
        """Return all tasks in the data store, sorted by id."""
        self._ensure_initialized()
        return await self.data_store.get_tasks()

    def task(
        self,
        id: str | None = None,
        *,
        job_executor: str | None = None,
        max_running_jobs: int | None = None,
        misfire_grace_time: timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Callable[[_FuncT], _FuncT]:
        """Decorate a function to give its task an id and job defaults.

        Tasks declared before the scheduler is initialized are stored when it is (a stored
        task of the same id with other options is replaced: the code's declaration wins), so
        ``add_job("reports")`` finds them by id; one declared later is stored when the
        function is first used in :meth:`add_schedule`, :meth:`add_job` or :meth:`run_job`::

            @scheduler.task("reports", max_running_jobs=1)
            async def build_report() -> None: ...

        Takes the options of :meth:`configure_task`.

        :raises ValueError: on an invalid option value
        :raises TypeError: on a value of the wrong type (metadata that is not
            JSON-compatible), naming it
        """
        if job_executor is not None:
            self._check_executor_name(job_executor, "job_executor")
        declaration = _TaskDeclaration(
            id=id,
            job_executor=job_executor,
            max_running_jobs=positive_int_or_none(max_running_jobs, field="max_running_jobs"),
            misfire_grace_time=as_timedelta(misfire_grace_time, field="misfire_grace_time"),
            metadata=_as_metadata(metadata),
        )

        def decorator(func: _FuncT) -> _FuncT:
            if not callable(func):
                raise TypeError(f"@task decorates a function, not {func!r}")
            self._task_declarations[func] = declaration
            return func

        return decorator

    def scheduled_job(
        self, trigger: Trigger | str, *, id: str | None = None, **options: Any
    ) -> Callable[[_FuncT], _FuncT]:
        """Decorate a function to schedule it when the scheduler is initialized.

        Takes the same options as :meth:`add_schedule`. The schedule id defaults to the task
        id. When the store already has the schedule with the same definition it is kept as it
        is (so fire times missed while the application was down still count); when the
        definition changed, it is replaced. A start time the trigger chose itself (an
        ``IntervalTrigger``, ``CronTrigger`` or ``CalendarIntervalTrigger`` made without
        ``start_time``/``start_date`` starts when it is made, so later at every start-up) is
        not part of the definition; any other difference is, an explicit start time
        included::

            @scheduler.scheduled_job(CronTrigger(hour=9, day_of_week="mon-fri"))
            async def morning_report() -> None: ...

        :raises RuntimeError: if the scheduler is already initialized (use add_schedule)
        :raises TypeError: on an unknown option, or a value of ``args``, ``kwargs``,
            ``paused`` or ``metadata`` of the wrong type (the other options are checked when
            the scheduler is initialized)
        :raises ValueError: on metadata that JSON cannot hold
        """
        if self._exit_stack is not None:
            raise RuntimeError(
                "scheduled_job declares schedules before the scheduler is initialized; "
                "call add_schedule() on it instead"
            )
        unknown = set(options) - _SCHEDULE_OPTIONS
        if unknown:
            raise TypeError(
                f"scheduled_job: unknown option(s) {', '.join(sorted(unknown))} "
                f"(allowed: id, {', '.join(sorted(_SCHEDULE_OPTIONS))})"
            )
        if "args" in options:
            options["args"] = _as_args(options["args"])
        if "kwargs" in options:
            options["kwargs"] = _as_kwargs(options["kwargs"])
        if "paused" in options:
            _as_flag(options["paused"], "paused")
        if "metadata" in options:
            options["metadata"] = _as_metadata(options["metadata"])

        def decorator(func: _FuncT) -> _FuncT:
            self._schedule_declarations.append(
                _ScheduleDeclaration(func=func, trigger=trigger, options={"id": id, **options})
            )
            return func

        return decorator

    async def _add_declared_tasks(self) -> None:
        """Store the tasks declared with ``@task``, replacing stored ones that differ."""
        for func, declaration in self._task_declarations.items():
            task = self._build_task(
                declaration.id or callable_name(func),
                func,
                job_executor=declaration.job_executor,
                max_running_jobs=declaration.max_running_jobs,
                misfire_grace_time=declaration.misfire_grace_time,
                metadata=declaration.metadata,
            )
            try:
                stored: Task | None = await self.data_store.get_task(task.id)
            except TaskLookupError:
                stored = None
            if stored != task:  # the code's declaration wins, as with scheduled_job
                await self._store_task(task)
            self._tasks[task.id] = task
            self._task_functions[task.id] = func

    async def _add_declared_schedules(self) -> None:
        for declaration in self._schedule_declarations:
            options = dict(declaration.options)
            resolved = await self._resolve_task(declaration.func)
            schedule_id = options.pop("id") or resolved.task.id
            options.pop("conflict_policy", None)
            schedule = self._build_schedule(
                resolved, declaration.trigger, id=schedule_id, **options
            )
            await self._register_task(resolved)
            existing = await self.data_store.get_schedules([schedule_id])
            if existing and _same_definition(existing[0], schedule):
                continue
            await self.data_store.add_schedule(schedule, ConflictPolicy.replace)

    #
    # Schedules
    #

    def _as_trigger(self, trigger: Trigger | str) -> Trigger:
        if isinstance(trigger, Trigger):
            return trigger
        if isinstance(trigger, str):
            from .triggers.cron import CronTrigger

            return CronTrigger.from_crontab(trigger, timezone=self.timezone)
        raise TypeError(f"trigger: expected a Trigger or a crontab string, got {trigger!r}")

    def _build_schedule(
        self,
        resolved: _ResolvedTask,
        trigger: Trigger | str,
        *,
        id: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        paused: bool = False,
        coalesce: CoalescePolicy | str = CoalescePolicy.latest,
        misfire_grace_time: timedelta | float | None = UNSET,
        max_jitter: timedelta | float | None = None,
        max_running_jobs: int | None = None,
        job_executor: str | None = None,
        job_result_expiration_time: timedelta | float = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Validate a schedule's options and build it (no I/O, nothing registered)."""
        task = resolved.task
        trigger = self._as_trigger(trigger)
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"id: expected a non-empty string, got {id!r}")
        coalesce = as_enum(CoalescePolicy, coalesce, field="coalesce")
        if job_executor is not None:
            self._check_executor_override(task, resolved.function, job_executor)
        if misfire_grace_time is UNSET:
            grace = task.misfire_grace_time
        else:
            grace = as_timedelta(misfire_grace_time, field="misfire_grace_time")
        jitter = as_timedelta(max_jitter, field="max_jitter")
        expiration = as_timedelta(job_result_expiration_time, field="job_result_expiration_time")
        next_fire_time, next_run_time = first_fire_and_run_times(trigger, jitter)
        if next_fire_time is None:
            raise ValueError(f"trigger: {trigger} has no fire times (it is already exhausted)")

        schedule = Schedule(
            id=id or str(uuid4()),
            task_id=task.id,
            trigger=trigger,
            args=_as_args(args),
            kwargs=_as_kwargs(kwargs),
            name=name,
            paused=_as_flag(paused, "paused"),
            coalesce=coalesce,
            misfire_grace_time=grace,
            max_jitter=jitter,
            max_running_jobs=positive_int_or_none(max_running_jobs, field="max_running_jobs"),
            job_executor=job_executor,
            job_result_expiration_time=expiration or _ZERO,
            metadata=_as_metadata(metadata),
            next_fire_time=next_fire_time,
            next_run_time=next_run_time,
        )
        # last: the options' own errors come first
        if resolved.function is not None:
            check_arguments(resolved.function, schedule.args, schedule.kwargs)
        return schedule

    async def add_schedule(
        self,
        func_or_task_id: Callable[..., Any] | str,
        trigger: Trigger | str,
        *,
        id: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        paused: bool = False,
        coalesce: CoalescePolicy | str = CoalescePolicy.latest,
        misfire_grace_time: timedelta | float | None = UNSET,
        max_jitter: timedelta | float | None = None,
        max_running_jobs: int | None = None,
        job_executor: str | None = None,
        job_result_expiration_time: timedelta | float = 0,
        metadata: Mapping[str, Any] | None = None,
        conflict_policy: ConflictPolicy | str = ConflictPolicy.do_nothing,
    ) -> str:
        """Schedule a function to run at the fire times of a trigger.

        The schedule starts at the trigger's first fire time; if that is already past, the
        misfire rules decide what runs (by default: one job, at once).

        :param func_or_task_id: a function, a ``"package.module:function"`` reference or the
            id of a configured task
        :param trigger: a trigger, or a crontab string (``"*/5 * * * *"``, in the scheduler's
            time zone)
        :param id: the schedule id (default: a random UUID; give one to add the same schedule
            idempotently at every start-up)
        :param args: positional arguments for the function: a list, tuple or other iterable,
            but not a str, bytes or mapping (one argument is ``args=["text"]``)
        :param kwargs: keyword arguments for the function: a mapping with str keys
        :param name: a human-readable name
        :param paused: add it paused (``True`` or ``False``)
        :param coalesce: which of several due fire times run (latest, earliest, all)
        :param misfire_grace_time: how late after its fire time a job may still start
            (default: the task's; ``None``: no limit)
        :param max_jitter: start each job up to this much after its fire time, at random
        :param max_running_jobs: how many of its jobs may run at once
        :param job_executor: executor for its jobs (default: the task's)
        :param job_result_expiration_time: how long to keep job results (default: not kept)
        :param metadata: JSON-compatible data for the application (see
            :meth:`configure_task`)
        :param conflict_policy: what to do if a schedule with this id exists
        :return: the schedule id
        :raises ConflictingIdError: with ``ConflictPolicy.exception`` if the id exists
        :raises ValueError: on an invalid option, or a trigger without fire times
        :raises TypeError: on an argument of the wrong type, naming it

        Nothing is stored (not even the function's task) unless every argument is valid.
        """
        self._ensure_initialized()
        conflict_policy = as_enum(ConflictPolicy, conflict_policy, field="conflict_policy")
        resolved = await self._resolve_task(func_or_task_id)
        schedule = self._build_schedule(
            resolved,
            trigger,
            id=id,
            args=args,
            kwargs=kwargs,
            name=name,
            paused=paused,
            coalesce=coalesce,
            misfire_grace_time=misfire_grace_time,
            max_jitter=max_jitter,
            max_running_jobs=max_running_jobs,
            job_executor=job_executor,
            job_result_expiration_time=job_result_expiration_time,
            metadata=metadata,
        )
        await self._register_task(resolved)
        await self.data_store.add_schedule(schedule, conflict_policy)
        self.logger.debug("Added schedule %r (trigger %s)", schedule.id, schedule.trigger)
        return schedule.id

    async def get_schedule(self, id: str) -> Schedule:
        """Return the schedule with the given id.

        :raises ScheduleLookupError: if there is no such schedule
        :raises DeserializationError: if it exists but cannot be restored here (its
            trigger, arguments or function reference are unreadable in this process):
            :meth:`remove_schedule` still removes it, and :meth:`add_schedule` with
            ``conflict_policy="replace"`` overwrites it
        """
        self._ensure_initialized()
        schedule, unreadable = await self._read_schedule(id)
        if schedule is not None:
            return schedule
        if unreadable is not None:
            raise DeserializationError(
                f"Schedule {id!r} exists but cannot be restored here ({unreadable}); "
                f"remove_schedule({id!r}) removes it, and add_schedule(..., id={id!r}, "
                f"conflict_policy='replace') overwrites it"
            )
        raise ScheduleLookupError(id)

    async def _read_schedule(self, id: str) -> tuple[Schedule | None, str | None]:
        """Return the schedule, or why it exists but cannot be read (None, None: no such)."""
        errors: list[str] = []

        def on_unreadable(event: ScheduleDeserializationFailed) -> None:
            if event.schedule_id == id:
                errors.append(event.error)

        # the store leaves an unreadable schedule out and reports it with this event, which
        # reaches this process's subscribers before get_schedules returns
        with self.event_broker.subscribe(on_unreadable, {ScheduleDeserializationFailed}):
            schedules = await self.data_store.get_schedules([id])
        if schedules:
            return schedules[0], None
        return None, errors[0] if errors else None

    async def get_schedules(self) -> list[Schedule]:
        """Return all schedules, sorted by id."""
        self._ensure_initialized()
        return await self.data_store.get_schedules()

    async def remove_schedule(self, id: str) -> None:
        """Remove a schedule; jobs it already created still run.

        Also removes a schedule that cannot be restored in this process (see
        :meth:`get_schedule`).

        :raises ScheduleLookupError: if there is no such schedule
        """
        self._ensure_initialized()
        schedule, unreadable = await self._read_schedule(id)
        if schedule is None and unreadable is None:
            raise ScheduleLookupError(id)
        await self.data_store.remove_schedules([id])

    async def update_schedule(self, id: str, **changes: Any) -> Schedule:
        """Change a schedule: its trigger, arguments, name or options.

        Changing the trigger reschedules: the next fire time becomes the new trigger's first
        fire time from now on (or, for a trigger whose fire times are all past, its first one,
        as in :meth:`add_schedule`). ``paused=False`` on a paused schedule resumes it from now,
        like :meth:`unpause_schedule`. Accepts the keyword arguments of :meth:`add_schedule` except
        ``id`` and ``conflict_policy`` (and ``func_or_task_id``: use ``task`` to point it at
        another task).

        :return: the schedule as stored by this update (if its first reply was lost and the
            retry found its write done, as stored now: with what any later writer changed)
        :raises ScheduleLookupError: if there is no such schedule
        :raises ValueError: on an invalid option, or a trigger without fire times
        :raises TypeError: on an unknown option, or a value of the wrong type
        :raises StaleScheduleError: if other writers kept changing the schedule for a whole
            minute (each change is written only over the revision it read; see the user guide)
        """
        allowed = (_SCHEDULE_OPTIONS - {"conflict_policy"}) | {"trigger", "task"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(
                f"update_schedule: unknown option(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )

        task_change = changes.pop("task", None)
        new_trigger = changes.pop("trigger", None)

        async def revise(current: Schedule) -> _Revision:
            resolved = await self._resolve_task(task_change or current.task_id)
            options: dict[str, Any] = {
                "args": current.args,
                "kwargs": current.kwargs,
                "name": current.name,
                "paused": current.paused,
                "coalesce": current.coalesce,
                "misfire_grace_time": current.misfire_grace_time,
                "max_jitter": current.max_jitter,
                "max_running_jobs": current.max_running_jobs,
                "job_executor": current.job_executor,
                "job_result_expiration_time": current.job_result_expiration_time,
                "metadata": current.metadata,
                **changes,
            }
            updated = self._build_schedule(
                resolved, new_trigger or current.trigger, id=id, **options
            )
            updated = attrs.evolve(updated, revision=current.revision)
            await self._register_task(resolved)
            unpausing = current.paused and not updated.paused
            if new_trigger is None and updated.max_jitter == current.max_jitter and not unpausing:
                # Same fire times: the store keeps the schedule's place in time as stored
                # *now* (a scheduler may be firing it meanwhile)
                return _Revision(updated)

            next_fire_time, next_run_time = _resumed_fire_and_run_times(
                current, updated.trigger, updated.max_jitter, self.clock.now()
            )
            if next_fire_time is None and new_trigger is None:
                raise ValueError(f"trigger: {updated.trigger} has no fire times from now on")
            if next_fire_time is not None:
                updated = attrs.evolve(
                    updated, next_fire_time=next_fire_time, next_run_time=next_run_time
                )
            # else: a new trigger whose fire times are all past keeps its first one, as in
            # add_schedule, and the misfire rules decide
            updated = attrs.evolve(updated, last_fire_time=current.last_fire_time)
            # written only if nobody fired it since it was read (the new fire times were
            # worked out from what was read)
            return _Revision(updated, rescheduled_from=current)

        return await self._revise_schedule(id, revise)

    async def _revise_schedule(
        self, id: str, revise: Callable[[Schedule], Awaitable[_Revision | None]]
    ) -> Schedule:
        """Read a schedule, change it with ``revise`` and write it back, atomically.

        The write goes through only if nobody changed the schedule since it was read
        (another update, a replacement, or, when ``revise`` reschedules, a scheduler firing
        it): otherwise the schedule is read again and ``revise`` applied again, so that
        concurrent updates from any number of processes all take effect. Between attempts it
        waits a random moment (up to 2 ms, doubling to 100 ms), so that writers that collided
        do not collide again in step.

        :return: the schedule as stored afterwards
        :raises StaleScheduleError: if the schedule kept changing under it for a whole minute
        :raises ScheduleLookupError: if there is no such schedule (or it was removed meanwhile)
        """
        deadline = time.monotonic() + _REVISION_SECONDS
        for attempt in itertools.count():
            current = await self.get_schedule(id)
            revision = await revise(current)
            if revision is None:
                return current
            try:
                stored = await self.data_store.update_schedule_definition(
                    revision.schedule, rescheduled_from=revision.rescheduled_from
                )
            except StaleScheduleError:
                if time.monotonic() >= deadline:
                    raise
                self.logger.debug("Schedule %r changed meanwhile; updating it again", id)
                pause = min(_MAX_REVISION_PAUSE, 0.002 * 2.0 ** min(attempt, 16))
                await anyio.sleep(random.uniform(0, pause))
                continue
            if stored is None:
                raise ScheduleLookupError(id)
            return stored
        raise AssertionError("unreachable")  # the loop returns or raises

    async def pause_schedule(self, id: str) -> None:
        """Pause a schedule: it is kept but creates no jobs until unpaused.

        Its progress (the fire times already processed) is kept as stored at that moment,
        even if a scheduler is firing it meanwhile.

        :raises ScheduleLookupError: if there is no such schedule
        """

        async def revise(current: Schedule) -> _Revision | None:
            return None if current.paused else _Revision(attrs.evolve(current, paused=True))

        await self._revise_schedule(id, revise)

    async def unpause_schedule(
        self, id: str, *, resume_from: datetime | str | None = None
    ) -> None:
        """Unpause a schedule.

        By default it resumes from now: fire times that passed while it was paused are
        dropped. With ``resume_from``, fire times from that moment on count, and the misfire
        and coalescing rules decide which of the past ones run. Either way a fire time that
        was already processed (run, missed or coalesced) before the pause never counts again:
        the search starts after the schedule's ``last_fire_time`` if that is later.

        Unpausing a schedule that is not paused does nothing (its due fire times stay due).

        :param resume_from: an aware datetime (or ISO string), or ``None`` for now
        :raises ScheduleLookupError: if there is no such schedule
        :raises ValueError: if the trigger has no fire times left
        """
        fixed_start = (
            None
            if resume_from is None
            else as_aware_datetime(resume_from, self.timezone, field="resume_from")
        )

        async def revise(current: Schedule) -> _Revision | None:
            if not current.paused:
                return None
            start = self.clock.now() if fixed_start is None else fixed_start
            next_fire_time, next_run_time = _resumed_fire_and_run_times(
                current, current.trigger, current.max_jitter, start
            )
            if next_fire_time is None:
                raise ValueError(f"schedule {id!r}: its trigger has no fire times after {start}")
            resumed = attrs.evolve(
                current, paused=False, next_fire_time=next_fire_time, next_run_time=next_run_time
            )
            return _Revision(resumed, rescheduled_from=current)

        await self._revise_schedule(id, revise)

    #
    # Jobs
    #

    async def add_job(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        job_executor: str | None = None,
        result_expiration_time: timedelta | float = DEFAULT_RESULT_EXPIRATION_TIME,
    ) -> UUID:
        """Queue a function to run once, as soon as a worker is free.

        :param func_or_task_id: a function, a ``"package.module:function"`` reference or the
            id of a configured task
        :param args: positional arguments for the function: a list, tuple or other iterable,
            but not a str, bytes or mapping
        :param kwargs: keyword arguments for the function: a mapping with str keys
        :param job_executor: executor for this job (default: the task's)
        :param result_expiration_time: how long to keep the result for
            :meth:`get_job_result` (default 15 minutes; 0: not kept)
        :return: the job id
        :raises ValueError: on an invalid option
        :raises TypeError: on an argument of the wrong type, naming it (nothing is stored,
            not even the function's task)
        """
        self._ensure_initialized()
        resolved = await self._resolve_task(func_or_task_id)
        job = self._build_job(
            resolved.task, resolved.function, args, kwargs, job_executor, result_expiration_time
        )
        await self._register_task(resolved)
        await self.data_store.add_jobs([job])
        return job.id

    def _build_job(
        self,
        task: Task,
        function: Callable[..., Any] | None,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
        job_executor: str | None,
        result_expiration_time: timedelta | float,
    ) -> Job:
        """Validate :meth:`add_job`'s options and build its job (no I/O, any thread)."""
        if job_executor is not None:
            self._check_executor_override(task, function, job_executor)
        if result_expiration_time is not DEFAULT_RESULT_EXPIRATION_TIME:
            result_expiration_time = (
                as_timedelta(result_expiration_time, field="result_expiration_time") or _ZERO
            )
        job_args, job_kwargs = _as_args(args), _as_kwargs(kwargs)
        if function is not None:
            check_arguments(function, job_args, job_kwargs)
        return Job(
            task_id=task.id,
            args=job_args,
            kwargs=job_kwargs,
            job_executor=job_executor,
            result_expiration_time=result_expiration_time,
        )

    async def get_jobs(self) -> list[Job]:
        """Return the queued and running jobs, oldest first."""
        self._ensure_initialized()
        return await self.data_store.get_jobs()

    async def get_job_result(self, job_id: UUID | str, *, wait: bool = True) -> JobResult:
        """Return the result of a job, waiting for it to finish if ``wait`` is true.

        :param job_id: the id :meth:`add_job` returned, or its text form
        :raises JobLookupError: if there is no such job and no kept result for it (results
            are kept only when the job has a positive ``result_expiration_time``)
        :raises JobResultNotReady: with ``wait=False``, if the job has not finished
        :raises ValueError: if ``job_id`` is text that is not a UUID
        """
        self._ensure_initialized()
        job_id = as_uuid(job_id, field="job_id")
        result = await self.data_store.get_job_result(job_id)
        if result is not None:
            return result

        jobs = await self.data_store.get_jobs([job_id])
        if not jobs:
            # It may have finished between the two reads (another process ran it)
            result = await self.data_store.get_job_result(job_id)
            if result is not None:
                return result
            raise JobLookupError(job_id, "no such job, and no kept result")
        if not wait:
            raise JobResultNotReady(job_id)
        if not jobs[0].result_expiration_time:
            option = (
                "its schedule's job_result_expiration_time"
                if jobs[0].schedule_id is not None
                else "add_job's result_expiration_time"
            )
            raise JobLookupError(job_id, f"its result is not kept ({option} is 0)")

        released = anyio.Event()

        def on_release(event: JobReleased) -> None:
            if event.job_id == job_id:
                released.set()

        with self.event_broker.subscribe(on_release, {JobReleased}):
            while True:
                result = await self.data_store.get_job_result(job_id)
                if result is not None:
                    return result
                # Look again now and then: an external broker may lose an event, and a local
                # one on a shared SQLite file hears nothing from other processes
                with move_on_after(
                    min(MAX_IDLE_SECONDS, self.data_store.polling_interval or MAX_IDLE_SECONDS)
                ):
                    await released.wait()
                if released.is_set():
                    # released: its result is stored by now, unless it has expired already
                    result = await self.data_store.get_job_result(job_id)
                    if result is not None:
                        return result
                    raise JobLookupError(job_id, "the job finished but its result is gone")
                if not await self.data_store.get_jobs([job_id]):
                    result = await self.data_store.get_job_result(job_id)
                    if result is None:
                        raise JobLookupError(job_id, "the job finished but its result is gone")
                elif not self._can_run_jobs_of_the_memory_store():
                    self.logger.warning(
                        "Still waiting for the result of job %s, which nothing runs: a job on "
                        "the memory store runs only in its own scheduler, and that is not "
                        "running jobs (start it with start_in_background() or "
                        "run_until_stopped(), role 'worker' or 'both', not paused)",
                        job_id,
                    )

    def _can_run_jobs_of_the_memory_store(self) -> bool:
        return not isinstance(self.data_store, MemoryDataStore) or (
            self.state is RunState.started and self._worker is not None and not self._paused
        )

    async def run_job(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        job_executor: str | None = None,
    ) -> Any:
        """Run a function as a job, wait for it, and return what it returned.

        :return: the function's return value
        :raises Exception: whatever the function raised
        :raises JobCancelled: if the job was cancelled
        :raises JobDeadlineMissed: if the job could not start in time
        :raises JobAbandoned: if its worker vanished
        """
        job_id = await self.add_job(
            func_or_task_id, args=args, kwargs=kwargs, job_executor=job_executor
        )
        result = await self.get_job_result(job_id)
        if result.outcome is JobOutcome.success:
            return result.return_value
        if result.outcome is JobOutcome.error:
            assert result.exception is not None
            raise result.exception
        if result.outcome is JobOutcome.missed_start_deadline:
            raise JobDeadlineMissed(job_id)
        if result.outcome is JobOutcome.abandoned:
            raise JobAbandoned(job_id)
        raise JobCancelled(job_id)

    #
    # Events
    #

    def subscribe(
        self,
        callback: Callable[[Any], Any],
        event_types: type[Event] | Iterable[type[Event]] | None = None,
        *,
        one_shot: bool = False,
    ) -> Subscription:
        """Call ``callback(event)`` for events of the given classes (all if ``None``).

        Callbacks may be plain functions (called at once, in the event loop) or coroutine
        functions (run in their own task). An exception a callback raises is logged; it never
        stops the scheduler.

        :param callback: the subscriber
        :param event_types: an event class or classes; a base class (``JobEvent``) includes
            its subclasses
        :param one_shot: unsubscribe after the first matching event
        :return: a handle with ``unsubscribe()`` (also a context manager)
        """
        if isinstance(event_types, type):
            event_types = [event_types]
        return self.event_broker.subscribe(callback, event_types, one_shot=one_shot)


def _resumed_fire_and_run_times(
    schedule: Schedule, trigger: Trigger, max_jitter: timedelta | None, start: datetime
) -> tuple[datetime | None, datetime | None]:
    """Return the first fire time of ``trigger`` from ``start`` on, and its run time.

    Never a fire time the schedule already processed: the search starts after its
    ``last_fire_time`` when that is later than ``start``, so that each fire time of a
    schedule yields at most one job however it is paused, unpaused or rescheduled.
    """
    after = start - timedelta(microseconds=1)
    if schedule.last_fire_time is not None and schedule.last_fire_time > after:
        after = schedule.last_fire_time
    return first_fire_and_run_times(trigger, max_jitter, after)


def _same_definition(stored: Schedule, declared: Schedule) -> bool:
    """Whether a declared schedule matches the stored one, apart from its state.

    Its state is its progress and whether it is paused: ``paused=`` in a declaration is how
    the schedule starts out, and pausing or unpausing it at run time outlasts a restart.
    """
    state = {
        "next_fire_time",
        "next_run_time",
        "last_fire_time",
        "acquired_by",
        "acquired_until",
        "paused",
        "revision",
    }
    fields = [
        field.name
        for field in attrs.fields(Schedule)
        if field.name not in state and field.name != "trigger"
    ]
    return _same_trigger(stored.trigger, declared.trigger) and all(
        getattr(stored, name) == getattr(declared, name) for name in fields
    )


#: the keys under which triggers describe their start (see _same_trigger)
_START_KEYS = ("start_time", "start_date")


def _same_trigger(stored: Trigger, declared: Trigger) -> bool:
    """Whether a declared trigger is the stored one, to the code that declared it.

    A trigger made without a start time (IntervalTrigger, CronTrigger,
    CalendarIntervalTrigger) starts when it is made, so the same line of code gives a later
    start at every start-up: such a start is not part of the definition. Any other difference
    is, an explicit start time included.
    """
    if type(stored) is not type(declared):
        return False
    if isinstance(stored, (AndTrigger, OrTrigger)) and isinstance(
        declared, (AndTrigger, OrTrigger)
    ):
        return (
            len(stored.triggers) == len(declared.triggers)
            and all(
                _same_trigger(stored_child, declared_child)
                for stored_child, declared_child in zip(
                    stored.triggers, declared.triggers, strict=True
                )
            )
            and _description(stored, "triggers") == _description(declared, "triggers")
        )
    # set by the triggers' constructors when they filled in the start themselves
    if getattr(declared, "_start_defaulted", False):
        return _description(stored, *_START_KEYS) == _description(declared, *_START_KEYS)
    return stored == declared


def _description(trigger: Trigger, *left_out: str) -> dict[str, Any]:
    """Return ``trigger.to_dict()`` without the given keys."""
    return {key: value for key, value in trigger.to_dict().items() if key not in left_out}
