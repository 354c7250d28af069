"""A pool of worker processes that knows which process runs which call.

anyio's ``to_process`` hides its processes: when one dies mid-call it raises a bare
``BrokenWorkerProcess`` (after killing the already dead process, which races asyncio's child
watcher for its exit status: "Unknown child process pid", exit code 255). This pool keeps
each call's process, so a death is reported with that process's own exit code or signal.
"""

from __future__ import annotations

import logging
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import attrs
from anyio import (
    BrokenResourceError,
    BrokenWorkerProcess,
    CancelScope,
    CapacityLimiter,
    EndOfStream,
    IncompleteRead,
    create_task_group,
    current_time,
    move_on_after,
    open_process,
)
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from .._exceptions import DeserializationError, describe_error
from . import _process_worker as protocol

logger = logging.getLogger(__name__)

#: how long an idle worker process is kept: it is stopped when a call comes after that
MAX_IDLE_SECONDS = 300
#: how long a process whose pipe closed gets to exit before it is killed
EXIT_GRACE_SECONDS = 5

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    # First of all, before any import: Ctrl+C in a terminal and systemd's SIGTERM reach the
    # whole process group, and the pool alone decides when a worker process ends (it lets a
    # running job finish, or kills it). _signal is built in: no file can shadow it. Then the
    # current directory (sys.path[0] under -c) goes, so that none of its files shadows a module.
    "import _signal, sys; "
    "_signal.signal(_signal.SIGINT, _signal.SIG_IGN); "
    "_signal.signal(_signal.SIGTERM, _signal.SIG_IGN); "
    "sys.path[:1] == [''] and sys.path.pop(0); "
    f"sys.path.insert(0, {_PACKAGE_ROOT!r}); "
    "from asched.executors._process_worker import serve; serve()"
)
# the pipe to or from the process closed under us: it exited (or is about to)
_PIPE_CLOSED = (EndOfStream, IncompleteRead, BrokenResourceError)


class _ProcessGone(Exception):
    pass


class _RequestNotDelivered(_ProcessGone):
    """The pipe was closed before the request was written: the process never got the call."""


class WorkerProcessTraceback(Exception):
    """The traceback of an exception raised in a worker process (set as its ``__cause__``).

    An exception pickled from one process to another loses its traceback: this keeps it, as
    text, so that logging the exception shows where in the job it was raised.
    """

    def __init__(self, traceback: str):
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback}"""'


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended, from its return code (negative: the signal that killed it)."""
    if returncode is None:
        return "it closed its pipe without exiting, and was killed"
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def _main_module() -> tuple[str | None, str | None]:
    """How a worker process loads this process's ``__main__``: by module name, or by path.

    Run with ``-m``, ``__main__`` has a spec naming the module: loading it by name keeps its
    relative imports working. A package's ``__main__`` is not loaded at all (as in
    multiprocessing): it typically runs its command line unconditionally.
    """
    main = sys.modules["__main__"]
    name: str | None = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and name.endswith(".__main__"):
        return None, None
    if name == "__main__":  # a directory or zip file run as a script: its __main__.py
        name = None
    return name, getattr(main, "__file__", None)


@attrs.define(frozen=True)
class _Reply:
    status: bytes
    type_name: str  # of the return value or exception, as the worker process saw it
    traceback: str  # formatted in the worker process; empty unless the call raised
    payload: bytes  # the pickled return value or exception


class _Worker:
    def __init__(self, process: Process):
        self.process = process
        self._requests = cast(ByteSendStream, process.stdin)
        self._replies = BufferedByteReceiveStream(cast(ByteReceiveStream, process.stdout))
        self.calls = 0  # completed: a process that has run none is new, not one that died idle

    async def call(self, request: bytes) -> _Reply:
        """Send one request; return the reply.

        :raises _RequestNotDelivered: if the process's input was closed before the request
        :raises _ProcessGone: if the process's pipes closed before the reply came
        """
        try:
            await self._requests.send(protocol.REQUEST_HEADER.pack(len(request)) + request)
        except _PIPE_CLOSED:
            raise _RequestNotDelivered from None
        try:
            header = await self._replies.receive_exactly(protocol.REPLY_HEADER.size)
            status, name_size, traceback_size, payload_size = protocol.REPLY_HEADER.unpack(header)
            name = await self._receive_exactly(name_size)
            traceback = await self._receive_exactly(traceback_size)
            payload = await self._receive_exactly(payload_size)
        except _PIPE_CLOSED:
            raise _ProcessGone from None
        return _Reply(status, name.decode(), traceback.decode(), payload)

    async def _receive_exactly(self, size: int) -> bytes:
        return await self._replies.receive_exactly(size) if size else b""

    async def wait_for_exit(self) -> int | None:
        """Reap a process whose pipe closed; its return code, or None if it had to be killed."""
        with CancelScope(shield=True):
            with move_on_after(EXIT_GRACE_SECONDS):
                await self.process.wait()
            returncode = self.process.returncode
            await self.kill()
        return returncode

    async def kill(self) -> None:
        """Kill the process (unless it has exited) and wait for it."""
        with CancelScope(shield=True):
            if self.process.returncode is None:
                with suppress(ProcessLookupError):  # exited since: nothing to kill
                    self.process.kill()
            await self.process.aclose()

    async def close_input(self) -> None:
        """Close the process's input: it exits when it has finished its current call."""
        with CancelScope(shield=True), suppress(*_PIPE_CLOSED):
            await self._requests.aclose()


async def _stop_all(workers: Iterable[_Worker]) -> None:
    """Close the processes' input, give them one common deadline to exit, kill the rest."""
    workers = list(workers)
    with CancelScope(shield=True):
        for worker in workers:
            await worker.close_input()
        with move_on_after(EXIT_GRACE_SECONDS):
            async with create_task_group() as task_group:
                for worker in workers:
                    task_group.start_soon(worker.process.wait)
        async with create_task_group() as task_group:
            for worker in workers:
                task_group.start_soon(worker.kill)


def _decode(reply: _Reply, description: str) -> Any:
    """Return the call's return value, or raise its exception with its traceback attached.

    :raises DeserializationError: if the return value or exception cannot be unpickled here
    """
    remote_traceback = WorkerProcessTraceback(reply.traceback) if reply.traceback else None
    try:
        outcome = pickle.loads(reply.payload)
    except Exception as exc:
        if reply.status == protocol.RAISED:
            raise DeserializationError(
                f"{description} raised {reply.type_name}, which could not be restored in the "
                f"scheduler process ({describe_error(exc)})"
            ) from remote_traceback
        raise DeserializationError(
            f"the return value of {description} (of type {reply.type_name}) could not be "
            f"restored in the scheduler process ({describe_error(exc)})"
        ) from None
    if reply.status == protocol.RAISED:
        if remote_traceback is not None:
            outcome.__cause__ = remote_traceback
        raise outcome
    return outcome


class ProcessPool:
    """Runs calls in at most ``max_workers`` worker processes of one event loop.

    A process is started when a call finds none idle, and kept for the next call. One idle
    for :data:`MAX_IDLE_SECONDS` is stopped when the next call comes (that call does not wait
    for it to exit), and all are stopped by :meth:`aclose`. A process running a call that is
    cancelled is killed.
    """

    def __init__(self, max_workers: int):
        self._limiter = CapacityLimiter(max_workers)
        self._idle: list[tuple[_Worker, float]] = []  # (worker, idle since), most recent last
        self._busy: set[_Worker] = set()
        # idle too long: input closed, then reaped once exited, or killed after its grace
        self._retiring: list[tuple[_Worker, float]] = []  # (worker, input closed at)
        self._closed = False

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        description: str,
        on_start: Callable[[], None] | None = None,
    ) -> Any:
        """Call ``func(*args, **kwargs)`` in a worker process and return what it returns.

        The exception the function raises is raised here, its ``__cause__`` a
        :exc:`WorkerProcessTraceback` with the traceback from the worker process.

        :param description: what the call is, for error messages (``"job … (task …)"``)
        :param on_start: called once the call has a process (after waiting for one, if all
            were busy); if it raises, the call is not made
        :raises BrokenWorkerProcess: if the process died during the call, saying how
        :raises DeserializationError: if the return value or exception cannot be unpickled
        """
        request = pickle.dumps(("run", func, args, dict(kwargs)), pickle.HIGHEST_PROTOCOL)
        async with self._limiter:
            if self._closed:
                raise RuntimeError("the process pool has been shut down")
            await self._retire_long_idle_workers()
            worker = self._take_idle_worker() or await self._start_worker()
            if on_start is not None:
                try:
                    on_start()
                except BaseException:
                    self._idle.append((worker, current_time()))  # it never got the call
                    raise
            try:
                reply = await self._call(worker, request, description)
            except _RequestNotDelivered:
                # the idle process had died (killed from outside) before this call reached it:
                # the call is not its to fail, and runs on a new process
                logger.debug("An idle worker process had exited; starting another")
                reply = await self._call(await self._start_worker(), request, description)
        return _decode(reply, description)

    async def _call(self, worker: _Worker, request: bytes, description: str) -> _Reply:
        """Make the call in the process, and put the process back to the idle ones.

        :raises _RequestNotDelivered: if the process (which had run calls before) had
            exited before the request reached it; it has been reaped
        """
        self._busy.add(worker)
        try:
            reply = await worker.call(request)
        except _ProcessGone as exc:
            self._busy.discard(worker)
            returncode = await worker.wait_for_exit()
            if isinstance(exc, _RequestNotDelivered) and worker.calls > 0:
                raise
            raise BrokenWorkerProcess(
                f"the worker process (pid {worker.process.pid}) running {description} "
                f"died ({describe_exit(returncode)})"
            ) from None
        except BaseException:  # cancelled: a call cannot be interrupted otherwise
            self._busy.discard(worker)
            await worker.kill()
            raise
        self._busy.discard(worker)
        worker.calls += 1
        self._idle.append((worker, current_time()))
        return reply

    async def _retire_long_idle_workers(self) -> None:
        # Neither step waits for a process to exit: the call that triggers them does not wait
        now = current_time()
        expired: list[_Worker] = []
        while self._idle and now - self._idle[0][1] >= MAX_IDLE_SECONDS:
            expired.append(self._idle.pop(0)[0])
        finished = [
            worker
            for worker, since in self._retiring
            if worker.process.returncode is not None or now - since >= EXIT_GRACE_SECONDS
        ]
        self._retiring = [entry for entry in self._retiring if entry[0] not in finished]
        self._retiring.extend((worker, now) for worker in expired)
        for worker in expired:
            await worker.close_input()
        for worker in finished:
            await worker.kill()  # exited: this just reaps it

    def _take_idle_worker(self) -> _Worker | None:
        while self._idle:
            worker, _ = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            self._retiring.append((worker, current_time()))  # exited while idle: reaped later
        return None

    async def _start_worker(self) -> _Worker:
        if protocol.loading_main_module:
            raise RuntimeError(
                "a process-pool worker process, loading the script of the process that "
                "started it, was asked to start worker processes of its own: the script "
                "starts its scheduler at its top level; keep that under `if __name__ == "
                '"__main__":`'
            )
        process = await open_process(
            # the interpreter's flags (-X, -W, -O, -I …) as multiprocessing passes them
            [sys.executable, *_interpreter_flags(), "-u", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the job's output, and Python's own message if the process crashes
        )
        worker = _Worker(process)
        main_module_name, main_module_path = _main_module()
        init = pickle.dumps(
            ("init", sys.path, sys.argv, main_module_name, main_module_path),
            pickle.HIGHEST_PROTOCOL,
        )
        try:
            reply = await worker.call(init)
        except _ProcessGone:
            exit_description = describe_exit(await worker.wait_for_exit())
            raise BrokenWorkerProcess(
                f"a worker process (pid {process.pid}) exited while starting ({exit_description})"
            ) from None
        except BaseException:
            await worker.kill()
            raise

        if reply.status == protocol.RAISED:
            await worker.kill()
            main_module = main_module_name or main_module_path
            try:
                _decode(reply, "loading the main module")
            except Exception as error:
                raise BrokenWorkerProcess(
                    f"a worker process could not load the main module {main_module!r} "
                    f"({describe_error(error)})"
                ) from error
        return worker

    async def aclose(self) -> None:
        """Stop the idle processes, kill any still running a call; refuse further calls."""
        self._closed = True
        idle = [worker for worker, _ in self._idle + self._retiring]
        busy = list(self._busy)
        self._idle.clear()
        self._retiring.clear()
        self._busy.clear()
        with CancelScope(shield=True):
            async with create_task_group() as task_group:
                task_group.start_soon(_stop_all, idle)
                for worker in busy:
                    task_group.start_soon(worker.kill)


def _interpreter_flags() -> list[str]:
    return cast("list[str]", subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]
