"""The JobExecutor interface: runs a job's function somewhere and returns what it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextvars import ContextVar
from typing import Any

from .._structures import Job

#: Set while a worker hands a job to an executor that reports job starts
#: (:attr:`JobExecutor.reports_job_start`): the executor calls it, in any thread, when the
#: job really starts (a thread or process is free for it), and does not run the job if it
#: raises. The worker learns when the job started, checks its start deadline then, and gives
#: the job back to the store if a stop came first.
job_starting: ContextVar[Callable[[], None] | None] = ContextVar(
    "asched_job_starting", default=None
)


class JobExecutor(ABC):
    """Runs job functions: in the event loop, in a thread pool or in a process pool."""

    #: whether it calls :data:`job_starting` when a job really starts (an executor whose
    #: jobs may wait for a thread or process should); otherwise a job counts as started when
    #: it is handed over
    reports_job_start = False

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
