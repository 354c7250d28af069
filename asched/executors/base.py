"""The JobExecutor interface: runs a job's function somewhere and returns what it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from .._structures import Job


class JobExecutor(ABC):
    """Runs job functions: in the event loop, in a thread pool or in a process pool."""

    #: how many jobs it runs at once, for an executor with a bounded pool (``None``: no
    #: bound). A worker hands it no more jobs than that at a time, so that a job starts
    #: (its start deadline checked, its ``started_at`` taken) when it can really start,
    #: not when it begins waiting for a thread or process
    max_workers: int | None = None

    async def start(self, exit_stack: AsyncExitStack) -> None:  # noqa: B027 - optional hook
        """Prepare to run jobs; resources opened are released when ``exit_stack`` unwinds."""

    @abstractmethod
    async def run_job(self, func: Callable[..., Any], job: Job) -> Any:
        """Call ``func(*job.args, **job.kwargs)`` and return its return value.

        Exceptions the function raises propagate. Cancelling the calling task cancels the
        job where the executor can: a coroutine is cancelled, a worker process is killed; a
        thread cannot be interrupted, so the executor stops waiting for it.
        """

    def check_function(self, func: Callable[..., Any], reference: str | None) -> None:  # noqa: B027
        """Raise if this executor cannot run ``func``; called when a job or schedule is added.

        :param func: the function
        :param reference: its importable textual reference, if it has one
        :raises TypeError: with a message saying what to change
        """
