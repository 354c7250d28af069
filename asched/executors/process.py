"""ProcessPoolJobExecutor: runs functions in worker processes, for CPU-bound work."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from anyio import CapacityLimiter, to_process

from .._coroutines import is_coroutine_callable
from .._structures import Job
from .base import JobExecutor


def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    return func(*args, **kwargs)


class ProcessPoolJobExecutor(JobExecutor):
    """Runs the job's function in a worker process, at most ``max_workers`` at a time.

    The function travels to the worker process by reference, so it must be importable: a
    module-level function (in a script's ``__main__`` too), not a lambda or a nested
    function. Arguments and return values must be picklable.

    Cancelling a job (``stop(wait=False)``, or leaving the scheduler's ``async with`` on an
    exception) kills the worker process running it with SIGKILL; the pool starts a new one
    for the next job.

    :param max_workers: the most processes running jobs at once (default: CPU count)
    :raises ValueError: if ``max_workers`` is less than 1
    """

    def __init__(self, max_workers: int | None = None):
        max_workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._limiter: CapacityLimiter | None = None

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Create the capacity limiter bounding the processes."""
        self._limiter = CapacityLimiter(self.max_workers)

    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        """Run the function in a worker process and return its result.

        Cancelled, it kills the worker process (the function cannot clean up).
        """
        return await to_process.run_sync(
            _call, func, job.args, dict(job.kwargs), cancellable=True, limiter=self._limiter
        )

    def check_function(self, func: Callable[..., Any], reference: str | None) -> None:
        """Refuse coroutine functions, and functions that a worker process cannot import."""
        if is_coroutine_callable(func):
            raise TypeError(
                f"the processpool executor runs plain functions, and {func!r} is a coroutine "
                "function: run it with the async executor (the default for coroutine functions)"
            )
        if reference is None:
            raise TypeError(
                f"the processpool executor cannot run {func!r}: it must be a module-level "
                "function that worker processes can import (not a lambda, a nested function "
                "or a bound method of an instance)"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_workers={self.max_workers})"
