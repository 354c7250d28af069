"""ThreadPoolJobExecutor: runs plain functions in worker threads (default for them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextvars import copy_context
from functools import partial
from inspect import iscoroutine
from typing import Any

from anyio import CapacityLimiter, to_thread

from .._coroutines import is_coroutine_callable
from .._event_loops import on_asyncio
from .._structures import Job
from ._thread_pool import LoopThreadPool, as_job_error
from .base import JobExecutor, job_starting


def _refuse_coroutine(func: Callable[..., Any], result: Any) -> Any:
    # A plain function wrapping a coroutine function gets past check_function: its coroutine
    # would be the job's "return value", never run
    if iscoroutine(result):
        result.close()
        raise TypeError(
            f"{func!r} returned a coroutine, which the threadpool executor cannot await: "
            "run it with the async executor (job_executor='async')"
        )
    return result


def _start_and_call(func: Callable[..., Any], *args: Any) -> Any:
    # in the job's thread, with the context of the worker's task (see job_starting)
    start = job_starting.get()
    if start is not None:
        start()
    return func(*args)


def _call_in_thread(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        # checked here: trio refuses a coroutine coming back from a thread, with its own error
        return _refuse_coroutine(func, _start_and_call(func, *args))
    except BaseException as exc:
        error = as_job_error(exc)
        if error is exc:
            raise
        raise error from exc


class ThreadPoolJobExecutor(JobExecutor):
    """Runs the job's function in a worker thread, at most ``max_workers`` at a time.

    The bound holds per event loop: schedulers sharing one executor on one loop share its
    threads, while a scheduler on another loop (another thread) gets threads of its own.

    Context variables (such as :data:`asched.current_job`) are visible in the thread. When
    the scheduler stops without waiting, the thread is left to finish on its own and its
    outcome is discarded: threads cannot be cancelled.

    :param max_workers: the most threads running jobs at once
    :raises ValueError: if ``max_workers`` is less than 1
    """

    reports_job_start = True

    def __init__(self, max_workers: int = 40):
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._limiter: CapacityLimiter | None = None
        # One pool per event loop (with the number of schedulers using it there): an
        # executor shared by schedulers on different loops hands results to the right one
        self._pools: dict[asyncio.AbstractEventLoop, tuple[LoopThreadPool, int]] = {}

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Create the threads' pool (asyncio) or the limiter bounding anyio's threads."""
        if not on_asyncio():
            self._limiter = CapacityLimiter(self.max_workers)
            return

        # On asyncio, a pool of our own hands results back to the loop in batches: far less
        # work per job than anyio's worker threads (which trio needs) or run_in_executor
        loop = asyncio.get_running_loop()
        pool, users = self._pools.get(loop) or (
            LoopThreadPool(loop, self.max_workers, name_prefix="asched-job"),
            0,
        )
        self._pools[loop] = (pool, users + 1)
        exit_stack.callback(self._release_pool, loop)

    def _release_pool(self, loop: asyncio.AbstractEventLoop) -> None:
        pool, users = self._pools[loop]
        if users > 1:
            self._pools[loop] = (pool, users - 1)
        else:
            del self._pools[loop]
            pool.shutdown()

    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        """Run the function in a thread and return its result.

        :raises TypeError: if the function returns a coroutine, which a thread cannot await
        """
        call = partial(func, **job.kwargs) if job.kwargs else func
        if self._pools:
            pool, _ = self._pools[asyncio.get_running_loop()]
            return _refuse_coroutine(
                func, await pool.submit(copy_context(), _start_and_call, call, *job.args)
            )
        return await to_thread.run_sync(
            _call_in_thread, call, job.args, abandon_on_cancel=True, limiter=self._limiter
        )

    def check_function(self, func: Callable[..., Any], reference: str | None) -> None:
        """Refuse coroutine functions: a thread would only create their coroutine."""
        if is_coroutine_callable(func):
            raise TypeError(
                f"the threadpool executor runs plain functions, and {func!r} is a coroutine "
                "function: run it with the async executor (job_executor='async')"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers})"
