"""ProcessPoolJobExecutor: runs functions in worker processes, for CPU-bound work."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from anyio.lowlevel import EventLoopToken, current_token

from .._coroutines import is_coroutine_callable
from .._structures import Job
from ._process_pool import ProcessPool
from .base import JobExecutor, job_starting


class ProcessPoolJobExecutor(JobExecutor):
    """Runs the job's function in a worker process, at most ``max_workers`` at a time.

    The function travels to the worker process by reference, so it must be importable: a
    module-level function (in a script's ``__main__`` too), not a lambda or a nested
    function. Arguments and return values must be picklable.

    Cancelling a job (``stop(wait=False)``, or leaving the scheduler's ``async with`` on an
    exception) kills the worker process running it with SIGKILL; the pool starts a new one
    for the next job. A worker process that dies while running a job (``os._exit()``, a
    crash, the out-of-memory killer) fails that job with :exc:`anyio.BrokenWorkerProcess`
    saying so, with the process's exit code or signal; it is replaced likewise.

    Worker processes ignore SIGINT and SIGTERM (a terminal's Ctrl+C and systemd's SIGTERM
    reach the whole process group): the scheduler decides, letting running jobs finish on the
    first signal and cancelling them on the second. Processes a job starts inherit that.

    An exception a job raises keeps its type; its ``__cause__`` carries the traceback from the
    worker process, so that logs show where it was raised. A return value or exception that
    the scheduler process cannot unpickle fails the job with
    :exc:`~asched.DeserializationError`, naming its type.

    Worker processes get the scheduler process's ``sys.path``, ``sys.argv`` and interpreter
    flags, and load its ``__main__`` (by module name when run with ``-m``, as
    ``__mp_main__``). What a job prints in a worker process goes to the scheduler process's
    standard error. The bound holds per event loop, as for :class:`ThreadPoolJobExecutor`.

    :param max_workers: the most processes running jobs at once (default: CPU count)
    :raises ValueError: if ``max_workers`` is less than 1
    """

    reports_job_start = True

    def __init__(self, max_workers: int | None = None):
        max_workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        # One pool per event loop (with the number of schedulers using it there): a process's
        # pipes belong to the loop that started it
        self._pools: dict[EventLoopToken, tuple[ProcessPool, int]] = {}

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Create this event loop's pool; its processes are stopped when the stack unwinds."""
        token = current_token()
        pool, users = self._pools.get(token) or (ProcessPool(self.max_workers), 0)
        self._pools[token] = (pool, users + 1)
        exit_stack.push_async_callback(self._release_pool, token)

    async def _release_pool(self, token: EventLoopToken) -> None:
        pool, users = self._pools[token]
        if users > 1:
            self._pools[token] = (pool, users - 1)
        else:
            del self._pools[token]
            await pool.aclose()

    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        """Run the function in a worker process and return its result.

        Cancelled, it kills the worker process (the function cannot clean up).

        :raises anyio.BrokenWorkerProcess: if the worker process died while running the job
        :raises DeserializationError: if its return value or exception cannot be unpickled
        """
        pool, _ = self._pools[current_token()]
        return await pool.run(
            func,
            job.args,
            job.kwargs,
            f"job {job.id} (task {job.task_id!r})",
            on_start=job_starting.get(),
        )

    def check_function(self, func: Callable[..., Any], reference: str | None) -> None:
        """Refuse coroutine functions, and functions that a worker process cannot import."""
        if is_coroutine_callable(func):
            raise TypeError(
                f"the processpool executor runs plain functions, and {func!r} is a coroutine "
                "function: run it with the async executor (job_executor='async')"
            )
        if reference is None:
            raise TypeError(
                f"the processpool executor cannot run {func!r}: it must be a module-level "
                "function that worker processes can import (not a lambda, a nested function "
                "or a bound method of an instance)"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers})"
