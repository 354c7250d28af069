"""Scheduler: the blocking twin of AsyncScheduler, for code without an event loop."""

from __future__ import annotations

import asyncio
import atexit
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime, timedelta, tzinfo
from functools import partial
from logging import Logger
from types import FrameType, TracebackType
from typing import Any, TypeVar
from uuid import UUID

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._clock import Clock
from ._coroutines import is_coroutine_callable
from ._enums import CoalescePolicy, ConflictPolicy, RunState, SchedulerRole
from ._event_thread import EventThread, ThreadedCallback
from ._scheduler import (
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_LEASE_DURATION,
    DEFAULT_MAX_CONCURRENT_JOBS,
    DEFAULT_RESULT_EXPIRATION_TIME,
    UNSET,
    AsyncScheduler,
)
from ._structures import Job, JobResult, Schedule, Task
from .datastores.base import DataStore
from .datastores.memory import MemoryDataStore
from .eventbrokers.base import EventBroker
from .events import Event, Subscription
from .executors.base import JobExecutor
from .triggers.base import Trigger

_T = TypeVar("_T")
_FuncT = TypeVar("_FuncT", bound=Callable[..., Any])


#: how often a waiting call checks that the scheduler's event loop is still there
_LOOP_CHECK_SECONDS = 1.0


class _StopSignals:
    """Ctrl+C (SIGINT) and SIGTERM turned into stop requests for a running scheduler.

    The handler never raises: an exception could land anywhere in the main thread, even in
    the middle of the call that stops the scheduler. It only counts the signal and, once
    :meth:`arm` is called, has the event loop apply the count: the first signal stops the
    scheduler letting running jobs finish, the second cancels them, later ones change nothing.
    Signals that come before :meth:`arm` (while the scheduler is still starting, when a stop
    could be missed) are counted and applied by :meth:`arm`.
    """

    def __init__(self, scheduler: AsyncScheduler, loop: asyncio.AbstractEventLoop):
        self._scheduler = scheduler
        self._loop = loop
        self._armed = False
        self._received = 0  # written in the main thread only
        self._applied = 0  # read and written on the loop only
        self._stopping: set[asyncio.Task[None]] = set()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None  # (reader, writer)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self._received += 1
        if self._armed:
            self._apply_soon()

    def arm(self) -> None:
        self._armed = True
        if self._received:
            self._apply_soon()  # a duplicate request from a handler meanwhile is harmless

    def wait(self, future: Future[_T]) -> _T:
        """Wait for ``future``, handling each signal as soon as it comes."""
        if self._wakeup is None:
            return future.result()
        # A signal may be delivered to any thread; Python runs its handler in the main thread,
        # but only once that thread runs again. So the main thread does not wait on the
        # future's lock (a signal delivered elsewhere would not wake it) but reads a socket
        # that both the signal (set_wakeup_fd) and the future's completion write to.
        reader, writer = self._wakeup
        future.add_done_callback(lambda _: _send_quietly(writer))
        while not future.done():
            reader.recv(64)
        return future.result()

    def _apply_soon(self) -> None:
        # No lock or blocking call here: the main thread may be anywhere, even in this method
        with suppress(RuntimeError):  # the loop has closed: the scheduler has stopped anyway
            self._loop.call_soon_threadsafe(self._apply)

    def _apply(self) -> None:
        level = min(self._received, 2)
        if level <= self._applied:
            return
        self._applied = level
        logger = self._scheduler.logger
        if level == 1:
            logger.info("Stopping on a signal; running jobs may finish (signal again to cancel)")
        else:
            logger.info("Stopping on a second signal; cancelling running jobs")
        task = self._loop.create_task(self._scheduler.stop(wait=level == 1))
        self._stopping.add(task)  # the loop only keeps weak references to its tasks
        task.add_done_callback(self._stopping.discard)


def _send_quietly(writer: socket.socket) -> None:
    with suppress(OSError):  # closed already, or full: the reader is awake either way
        writer.send(b"\0")


@contextmanager
def _stop_signals(
    scheduler: AsyncScheduler, loop: asyncio.AbstractEventLoop
) -> Iterator[_StopSignals]:
    """Handle SIGINT and SIGTERM with a :class:`_StopSignals` (in the main thread only)."""
    signals = _StopSignals(scheduler, loop)
    if threading.current_thread() is not threading.main_thread():
        yield signals  # Python handles signals in the main thread only
        return

    reader, writer = socket.socketpair()
    writer.setblocking(False)  # as set_wakeup_fd requires
    signals._wakeup = reader, writer
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = {
        signum: signal.signal(signum, signals.handle) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()


class _JobHandoff:
    """Jobs added from plain code to a memory store, handed to the event loop unawaited.

    The memory store lives in this process and refuses nothing a job built and checked here
    could hold, so a blocking ``add_job`` need not wait for a round trip to the loop's
    thread: it queues the job and returns its id. The loop adds what is queued in batches,
    in order, in a task of the scheduler's; every other blocking call first waits for the
    jobs queued before it, so ``get_jobs()`` right after ``add_job()`` sees the job.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: AsyncScheduler) -> None:
        self._loop = loop
        self._scheduler = scheduler
        self._logger = scheduler.logger
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._draining = False
        self.queued = 0  # jobs queued so far
        self._added = 0  # of those, jobs the store has taken (written on the loop only)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def put(self, job: Job) -> None:
        """Queue ``job`` for the store (from any thread but the loop's)."""
        with self._lock:
            self._queue.append(job)
            self.queued += 1
            if self._draining:
                return  # the running drain takes it
            self._draining = True
        # Like every blocking call, a task on the loop (close() waits for it to finish)
        drain = self._drain()
        try:
            asyncio.run_coroutine_threadsafe(drain, self._loop)
        except RuntimeError:  # the loop is closed
            drain.close()
            raise RuntimeError("the scheduler's event loop has stopped") from None

    def pending(self) -> bool:
        """Whether some queued jobs are not in the store yet."""
        return self._added < self.queued

    async def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            try:
                await self._scheduler.data_store.add_jobs(batch)
            except Exception:
                self._logger.exception("Could not add %d job(s) added from plain code", len(batch))
            self._added += len(batch)
            waiting, self._waiters = self._waiters, []
            for target, future in waiting:
                if target <= self._added:
                    if not future.done():
                        future.set_result(None)
                else:
                    self._waiters.append((target, future))

    async def wait_for(self, count: int) -> None:
        """Wait until the store has the first ``count`` jobs queued (on the loop)."""
        if self._added >= count:
            return
        future = self._loop.create_future()
        self._waiters.append((count, future))
        await future

    async def after(self, count: int, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` once the store has the first ``count`` jobs queued."""
        try:
            await self.wait_for(count)
        except BaseException:
            coroutine.close()
            raise
        return await coroutine


class Scheduler:
    """A scheduler for code without an event loop of its own.

    It runs an :class:`AsyncScheduler` on an event loop in a background thread and offers the
    same methods, blocking. ``run_until_stopped()`` blocks (APScheduler's
    ``BlockingScheduler``); ``start_in_background()`` returns at once while schedules keep
    firing (its ``BackgroundScheduler``). Methods may be called from any thread::

        with Scheduler("sqlite:///jobs.sqlite") as scheduler:
            scheduler.add_schedule(report, CronTrigger(hour=9), id="report")
            scheduler.run_until_stopped()  # Ctrl+C or SIGTERM stops it cleanly

    Used without ``with``, it starts its thread on the first call and stops it at interpreter
    exit (or on :meth:`close`). Plain event callbacks run in a thread of their own, so they
    may call the scheduler's methods (see :meth:`subscribe`). Its methods cannot be called
    from the event loop's own thread (a coroutine job or callback): there, await the same
    methods of :attr:`async_scheduler`.

    Takes the same arguments as :class:`AsyncScheduler`.
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
        self.async_scheduler = AsyncScheduler(
            data_store,
            event_broker,
            identity=identity,
            role=role,
            job_executors=job_executors,
            default_job_executor=default_job_executor,
            max_concurrent_jobs=max_concurrent_jobs,
            lease_duration=lease_duration,
            cleanup_interval=cleanup_interval,
            timezone=timezone,
            logger=logger,
            clock=clock,
        )
        self._lock = threading.RLock()
        self._exit_stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._event_thread = EventThread(self.async_scheduler.logger)
        self._job_handoff: _JobHandoff | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.async_scheduler!r})"

    @property
    def identity(self) -> str:
        """The id of this scheduler among those sharing the data store."""
        return self.async_scheduler.identity

    @property
    def state(self) -> RunState:
        """Whether the scheduler is stopped, starting, started or stopping."""
        return self.async_scheduler.state

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` (or ``start_in_background(paused=True)``) holds it."""
        return self.async_scheduler.paused

    #
    # Life cycle
    #

    def __enter__(self) -> Scheduler:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._close(wait=exc_type is None)

    def _open(self) -> BlockingPortal:
        with self._lock:
            if self._portal is not None:
                return self._portal
            exit_stack = ExitStack()
            try:
                portal = exit_stack.enter_context(start_blocking_portal())
                exit_stack.enter_context(portal.wrap_async_context_manager(self.async_scheduler))
                loop = portal.call(asyncio.get_running_loop)
                self._loop_thread_id = portal.call(threading.get_ident)
            except BaseException:
                exit_stack.close()
                raise
            if isinstance(self.async_scheduler.data_store, MemoryDataStore):
                self._job_handoff = _JobHandoff(loop, self.async_scheduler)
            self._exit_stack, self._portal, self._loop = exit_stack, portal, loop
            return portal

    def _close(self, *, wait: bool) -> None:
        with self._lock:
            exit_stack, portal, handoff = self._exit_stack, self._portal, self._job_handoff
            self._exit_stack = self._portal = self._loop = self._job_handoff = None
        if exit_stack is None or portal is None:
            return
        try:
            if handoff is not None:
                portal.call(handoff.wait_for, handoff.queued)
            portal.call(partial(self.async_scheduler.stop, wait=wait))
            portal.call(self.async_scheduler.wait_until_stopped)
        finally:
            exit_stack.close()
            self._event_thread.close()  # after the last events (SchedulerStopped) are queued

    def close(self) -> None:
        """Stop the scheduler (letting running jobs finish) and its background thread.

        Only needed when the scheduler is used without ``with``; calling it again does
        nothing.
        """
        atexit.unregister(self.close)
        self._close(wait=True)

    def _on_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread_id

    def _call(
        self, method: Callable[..., Coroutine[Any, Any, _T]], /, *args: Any, **kwargs: Any
    ) -> _T:
        if self._on_loop_thread():
            # Waiting here would block the very loop that has to answer
            raise RuntimeError(
                f"Scheduler.{method.__name__}() was called from the scheduler's event loop "
                f"thread (a coroutine job or event callback), where it cannot wait: use "
                f"'await scheduler.async_scheduler.{method.__name__}(...)' there instead"
            )
        loop = self._loop
        if loop is None:
            self._open()
            atexit.register(self.close)
            loop = self._loop
            assert loop is not None
        # Straight onto the loop rather than through the portal (which spawns a task in
        # its own task group for every call): about a fifth less time per call
        coroutine = method(*args, **kwargs)
        handoff = self._job_handoff
        if handoff is not None and handoff.pending():
            coroutine = handoff.after(handoff.queued, coroutine)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise RuntimeError("the scheduler's event loop has stopped") from None
        while True:
            try:
                return future.result(timeout=_LOOP_CHECK_SECONDS)
            except FutureTimeoutError:
                # A call that reached a loop in its last moments would never be answered
                if loop.is_closed() and not future.done():
                    raise RuntimeError("the scheduler's event loop has stopped") from None

    def start_in_background(self, *, paused: bool = False) -> None:
        """Start processing schedules and jobs in the background thread, and return.

        :param paused: start without taking new work until :meth:`resume`
        """
        self._call(self.async_scheduler.start_in_background, paused=paused)

    def run_until_stopped(self) -> None:
        """Process schedules and jobs, blocking, until :meth:`stop`, Ctrl+C or SIGTERM.

        On Ctrl+C or SIGTERM the scheduler stops taking new work and waits for running jobs;
        a second Ctrl+C or SIGTERM cancels them (as :meth:`stop` with ``wait=False``), and
        later ones are ignored. Either way the call returns normally once the scheduler has
        stopped, so a ``with`` block around it exits cleanly. Signals are only handled when
        called from the main thread.
        """
        portal = self._portal or self._open()
        loop = self._loop
        assert loop is not None
        with _stop_signals(self.async_scheduler, loop) as signals:
            # start_task: a stop requested before the scheduler has started could be lost
            future, _ = portal.start_task(self.async_scheduler.run_until_stopped)
            signals.arm()
            signals.wait(future)

    def stop(self, *, wait: bool = True) -> None:
        """Stop taking new work; see :meth:`AsyncScheduler.stop`."""
        self._call(self.async_scheduler.stop, wait=wait)

    def wait_until_stopped(self) -> None:
        """Block until the scheduler has stopped."""
        self._call(self.async_scheduler.wait_until_stopped)

    def pause(self) -> None:
        """Stop taking new work in this scheduler; see :meth:`AsyncScheduler.pause`."""
        self._call(self.async_scheduler.pause)

    def resume(self) -> None:
        """Take new work again after :meth:`pause`."""
        self._call(self.async_scheduler.resume)

    #
    # Tasks, schedules, jobs: AsyncScheduler's methods, blocking
    #

    def configure_task(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        func: Callable[..., Any] | None = None,
        job_executor: str | None = None,
        max_running_jobs: int | None = None,
        misfire_grace_time: timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Task:
        """Add or replace a task; see :meth:`AsyncScheduler.configure_task`."""
        task: Task = self._call(
            self.async_scheduler.configure_task,
            func_or_task_id,
            func=func,
            job_executor=job_executor,
            max_running_jobs=max_running_jobs,
            misfire_grace_time=misfire_grace_time,
            metadata=metadata,
        )
        return task

    def get_tasks(self) -> list[Task]:
        """Return all tasks; see :meth:`AsyncScheduler.get_tasks`."""
        tasks: list[Task] = self._call(self.async_scheduler.get_tasks)
        return tasks

    def task(
        self,
        id: str | None = None,
        *,
        job_executor: str | None = None,
        max_running_jobs: int | None = None,
        misfire_grace_time: timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Callable[[_FuncT], _FuncT]:
        """Decorate a function to configure its task; see :meth:`AsyncScheduler.task`."""
        return self.async_scheduler.task(
            id,
            job_executor=job_executor,
            max_running_jobs=max_running_jobs,
            misfire_grace_time=misfire_grace_time,
            metadata=metadata,
        )

    def scheduled_job(
        self, trigger: Trigger | str, *, id: str | None = None, **options: Any
    ) -> Callable[[_FuncT], _FuncT]:
        """Decorate a function to schedule it; see :meth:`AsyncScheduler.scheduled_job`."""
        return self.async_scheduler.scheduled_job(trigger, id=id, **options)

    def add_schedule(
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
        """Schedule a function; see :meth:`AsyncScheduler.add_schedule`."""
        schedule_id: str = self._call(
            self.async_scheduler.add_schedule,
            func_or_task_id,
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
            conflict_policy=conflict_policy,
        )
        return schedule_id

    def get_schedule(self, id: str) -> Schedule:
        """Return a schedule; see :meth:`AsyncScheduler.get_schedule`."""
        schedule: Schedule = self._call(self.async_scheduler.get_schedule, id)
        return schedule

    def get_schedules(self) -> list[Schedule]:
        """Return all schedules; see :meth:`AsyncScheduler.get_schedules`."""
        schedules: list[Schedule] = self._call(self.async_scheduler.get_schedules)
        return schedules

    def update_schedule(self, id: str, **changes: Any) -> Schedule:
        """Change a schedule; see :meth:`AsyncScheduler.update_schedule`."""
        schedule: Schedule = self._call(self.async_scheduler.update_schedule, id, **changes)
        return schedule

    def remove_schedule(self, id: str) -> None:
        """Remove a schedule; see :meth:`AsyncScheduler.remove_schedule`."""
        self._call(self.async_scheduler.remove_schedule, id)

    def pause_schedule(self, id: str) -> None:
        """Pause a schedule; see :meth:`AsyncScheduler.pause_schedule`."""
        self._call(self.async_scheduler.pause_schedule, id)

    def unpause_schedule(self, id: str, *, resume_from: datetime | str | None = None) -> None:
        """Unpause a schedule; see :meth:`AsyncScheduler.unpause_schedule`."""
        self._call(self.async_scheduler.unpause_schedule, id, resume_from=resume_from)

    def add_job(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        job_executor: str | None = None,
        result_expiration_time: timedelta | float = DEFAULT_RESULT_EXPIRATION_TIME,
    ) -> UUID:
        """Queue a function to run once; see :meth:`AsyncScheduler.add_job`.

        On the memory store, a function whose task is already known is queued for the event
        loop without waiting for it (nothing there can refuse the job); other calls still see
        the job, as they wait for the jobs queued before them.
        """
        handoff = self._job_handoff
        if handoff is not None and not self._on_loop_thread():
            task = self.async_scheduler._known_task(func_or_task_id)
            if task is not None:
                job = self.async_scheduler._build_job(
                    task,
                    self.async_scheduler._task_functions.get(task.id),
                    args,
                    kwargs,
                    job_executor,
                    result_expiration_time,
                )
                handoff.put(job)
                return job.id

        job_id: UUID = self._call(
            self.async_scheduler.add_job,
            func_or_task_id,
            args=args,
            kwargs=kwargs,
            job_executor=job_executor,
            result_expiration_time=result_expiration_time,
        )
        return job_id

    def get_jobs(self) -> list[Job]:
        """Return queued and running jobs; see :meth:`AsyncScheduler.get_jobs`."""
        jobs: list[Job] = self._call(self.async_scheduler.get_jobs)
        return jobs

    def get_job_result(self, job_id: UUID | str, *, wait: bool = True) -> JobResult:
        """Return a job's result, blocking until it finishes if ``wait``.

        See :meth:`AsyncScheduler.get_job_result`.
        """
        result: JobResult = self._call(self.async_scheduler.get_job_result, job_id, wait=wait)
        return result

    def run_job(
        self,
        func_or_task_id: Callable[..., Any] | str,
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        job_executor: str | None = None,
    ) -> Any:
        """Run a function as a job and return its result; see :meth:`AsyncScheduler.run_job`."""
        return self._call(
            self.async_scheduler.run_job,
            func_or_task_id,
            args=args,
            kwargs=kwargs,
            job_executor=job_executor,
        )

    def subscribe(
        self,
        callback: Callable[[Any], Any],
        event_types: type[Event] | Iterable[type[Event]] | None = None,
        *,
        one_shot: bool = False,
    ) -> Subscription:
        """Receive events; see :meth:`AsyncScheduler.subscribe`.

        Plain callbacks run in the scheduler's event thread, one at a time and in the order
        the events came, so they may call this scheduler's methods (a slow one delays the
        events after it, never the scheduler). Coroutine functions run on the scheduler's
        event loop. The returned subscription may be cancelled from any thread: events that
        came before are still delivered, later ones are not (from the callback itself, it
        takes effect at once).
        """
        if is_coroutine_callable(callback):
            return self._on_loop(
                partial(self.async_scheduler.subscribe, callback, event_types, one_shot=one_shot)
            )

        threaded = ThreadedCallback(callback, self._event_thread)

        def subscribe_on_loop() -> Subscription:  # on the loop: no event comes in between
            def unsubscribe(handle: Subscription) -> None:
                self._event_thread.cancel(threaded)
                self._on_loop_soon(inner.unsubscribe)

            def forward_once(event: Event) -> None:
                handle.active = False  # the broker ends the inner subscription too
                threaded(event)

            inner = self.async_scheduler.subscribe(
                forward_once if one_shot else threaded, event_types, one_shot=one_shot
            )
            handle = Subscription(callback, inner.event_types, one_shot, unsubscribe)
            return handle

        return self._on_loop(subscribe_on_loop)

    def _on_loop(self, function: Callable[[], _T]) -> _T:
        """Run a plain function on the scheduler's event loop (directly if not running)."""
        loop = self._loop
        if loop is None or self._on_loop_thread():
            return function()
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop has closed: nothing runs there any more
            return function()
        while True:
            try:
                return future.result(timeout=_LOOP_CHECK_SECONDS)
            except FutureTimeoutError:
                if loop.is_closed() and not future.done():
                    return function()

    def _on_loop_soon(self, function: Callable[[], object]) -> None:
        """Have the event loop run ``function`` soon, without waiting (from any thread)."""
        loop = self._loop
        if loop is None or self._on_loop_thread():
            function()
            return
        try:
            loop.call_soon_threadsafe(function)
        except RuntimeError:  # the loop closed meanwhile: nothing is delivered any more
            function()
