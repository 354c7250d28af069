"""AsyncJobExecutor: runs jobs in the worker's event loop (default for coroutine functions)."""

from __future__ import annotations

from collections.abc import Callable
from inspect import isawaitable
from typing import Any

from .._structures import Job
from .base import JobExecutor


class AsyncJobExecutor(JobExecutor):
    """Runs the job's function directly in the worker's task; awaits what it returns.

    Meant for coroutine functions. A plain function given to it runs in the event loop
    thread, blocking it while it runs.
    """

    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        """Call the function and await its result if it is awaitable."""
        result = func(*job.args, **job.kwargs)
        if isawaitable(result):
            result = await result
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
