"""A thread pool that hands results back to one asyncio loop in batches.

``loop.run_in_executor`` costs a concurrent future, a chained asyncio future and a write to
the loop's self-pipe for every call: with many short jobs the loop spends its time waking
up and contending for the GIL. This pool queues work on a ``SimpleQueue`` and collects
finished calls in a list that the loop drains in one callback, scheduled only when the
list goes from empty to non-empty; a burst of completions costs one wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from contextvars import Context
from queue import SimpleQueue
from typing import Any

logger = logging.getLogger(__name__)

# (future, context, function, positional arguments) or None: a thread's signal to exit
_WorkItem = tuple["asyncio.Future[Any]", Context, Callable[..., Any], tuple[Any, ...]]
# (future, raised, return value or exception)
_Completion = tuple["asyncio.Future[Any]", bool, Any]


def as_job_error(exc: BaseException) -> BaseException:
    """Return what a function's exception should become once it leaves its thread.

    A future refuses ``StopIteration``, and ``SystemExit`` or ``KeyboardInterrupt`` raised
    in an event loop task would stop the loop itself, while in a thread they only end the
    function: those become a ``RuntimeError`` caused by them (the job fails, nothing else).
    """
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    error = RuntimeError(f"the function raised {type(exc).__name__}: {exc!r}")
    error.__cause__ = exc
    return error


class LoopThreadPool:
    """Runs calls in at most ``max_workers`` threads; their outcomes resolve asyncio futures.

    Threads start on demand: a call claims an idle thread if there is one, otherwise starts a
    new thread while fewer than ``max_workers`` exist, so a call never waits behind a busy
    thread while the pool could grow. Threads inherit the daemon flag of the loop's thread: on
    a main-thread loop a call still running when the interpreter exits is waited for (as with
    the standard library's pool), while the blocking ``Scheduler``'s daemon loop thread gets
    daemon threads, which its exit handler stops before the interpreter would wait on them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_workers: int, name_prefix: str):
        self._loop = loop
        self._max_workers = max_workers
        self._name_prefix = name_prefix
        self._work: SimpleQueue[_WorkItem | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle_threads = 0
        self._lock = threading.Lock()  # guards _idle_threads and _completions
        self._completions: list[_Completion] = []
        self._shut_down = False

    def submit(
        self, context: Context, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        """Call ``context.run(func, *args)`` in a thread; the future resolves to its outcome.

        Must be called from the loop's thread. Cancelling the future before a thread takes
        the call skips it; a call already running finishes and its outcome is dropped.
        """
        if self._shut_down:
            raise RuntimeError("the thread pool has been shut down")
        future = self._loop.create_future()
        self._work.put((future, context, func, args))
        with self._lock:
            claimed_idle_thread = self._idle_threads > 0
            if claimed_idle_thread:
                self._idle_threads -= 1
        if not claimed_idle_thread and len(self._threads) < self._max_workers:
            thread = threading.Thread(
                target=self._work_until_shut_down,
                name=f"{self._name_prefix}_{len(self._threads)}",
            )
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": a process or memory limit
                if not self._threads:
                    future.cancel()  # queued, it must never run: its caller gets the error
                    raise
                # queued already: a running thread takes it once free (failing it here would
                # report an error for a call that still runs). The pool stops growing, rather
                # than failing to start a thread for every call from now on.
                self._max_workers = len(self._threads)
                logger.warning(
                    "Could not start another job thread (%s); the pool keeps the %d it has, "
                    "and jobs wait for them",
                    exc,
                    len(self._threads),
                )
            else:
                self._threads.append(thread)
        return future

    def shutdown(self) -> None:
        """Let every thread exit once it finishes its current call; does not wait for them."""
        self._shut_down = True
        for _ in self._threads:
            self._work.put(None)

    def _work_until_shut_down(self) -> None:
        work = self._work
        while (item := work.get()) is not None:
            future, context, func, args = item
            if not future.cancelled():  # a racy read is harmless: the drain checks again
                try:
                    completion: _Completion = (future, False, context.run(func, *args))
                except BaseException as exc:
                    completion = (future, True, exc)
                self._complete(completion)
                del completion
            del item, future, context, func, args  # keep no job alive while idle
            with self._lock:
                self._idle_threads += 1

    def _complete(self, completion: _Completion) -> None:
        with self._lock:
            self._completions.append(completion)
            first = len(self._completions) == 1
        if first:
            with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._resolve_completed)

    def _resolve_completed(self) -> None:
        with self._lock:
            completions, self._completions = self._completions, []
        for future, raised, outcome in completions:
            if future.cancelled():
                continue
            if raised:
                future.set_exception(as_job_error(outcome))
            else:
                future.set_result(outcome)
