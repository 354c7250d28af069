"""A pool of worker processes that knows which process runs which call.

anyio's ``to_process`` hides its processes: when one dies mid-call it raises a bare
``BrokenWorkerProcess`` (after killing the already dead process, which races asyncio's child
watcher for its exit status: "Unknown child process pid", exit code 255). This pool keeps
each call's process, so a death is reported with that process's own exit code or signal.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

from anyio import (
    BrokenResourceError,
    BrokenWorkerProcess,
    CancelScope,
    CapacityLimiter,
    EndOfStream,
    IncompleteRead,
    current_time,
    move_on_after,
    open_process,
)
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from . import _process_worker as protocol

#: how long an idle worker process is kept before it is stopped
MAX_IDLE_SECONDS = 300
#: how long a process whose pipe closed gets to exit before it is killed
EXIT_GRACE_SECONDS = 5

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
    "from asched.executors._process_worker import serve; serve()"
)
# the pipe to or from the process closed under us: it exited (or is about to)
_PIPE_CLOSED = (EndOfStream, IncompleteRead, BrokenResourceError)


class _ProcessGone(Exception):
    pass


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


class _Worker:
    def __init__(self, process: Process):
        self.process = process
        self._requests = cast(ByteSendStream, process.stdin)
        self._replies = BufferedByteReceiveStream(cast(ByteReceiveStream, process.stdout))

    async def call(self, request: bytes) -> tuple[bytes, bytes]:
        """Send one request; return the reply's status and payload.

        :raises _ProcessGone: if the process's pipes closed before the reply came
        """
        try:
            await self._requests.send(protocol.REQUEST_HEADER.pack(len(request)) + request)
            header = await self._replies.receive_exactly(protocol.REPLY_HEADER.size)
            status, length = protocol.REPLY_HEADER.unpack(header)
            return status, await self._replies.receive_exactly(length)
        except _PIPE_CLOSED:
            raise _ProcessGone from None

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

    async def stop(self) -> None:
        """Let the process exit by closing its input; kill it if it does not."""
        with CancelScope(shield=True):
            await self._requests.aclose()
            with move_on_after(EXIT_GRACE_SECONDS):
                await self.process.wait()
            await self.kill()


class ProcessPool:
    """Runs calls in at most ``max_workers`` worker processes of one event loop.

    A process is started when a call finds none idle, kept for the next call, stopped after
    :data:`MAX_IDLE_SECONDS` idle or by :meth:`aclose`, and killed if its call is cancelled.
    """

    def __init__(self, max_workers: int):
        self._limiter = CapacityLimiter(max_workers)
        self._idle: list[tuple[_Worker, float]] = []  # most recently used last
        self._busy: set[_Worker] = set()
        self._closed = False

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        description: str,
    ) -> Any:
        """Call ``func(*args, **kwargs)`` in a worker process and return what it returns.

        :param description: what the call is, for error messages (``"job … (task …)"``)
        :raises BrokenWorkerProcess: if the process died during the call, saying how
        """
        request = pickle.dumps(("run", func, args, dict(kwargs)), pickle.HIGHEST_PROTOCOL)
        async with self._limiter:
            if self._closed:
                raise RuntimeError("the process pool has been shut down")
            worker = await self._take_idle_worker() or await self._start_worker()
            self._busy.add(worker)
            try:
                status, payload = await worker.call(request)
            except _ProcessGone:
                self._busy.discard(worker)
                exit_description = describe_exit(await worker.wait_for_exit())
                raise BrokenWorkerProcess(
                    f"the worker process (pid {worker.process.pid}) running {description} "
                    f"died ({exit_description})"
                ) from None
            except BaseException:  # cancelled: a call cannot be interrupted otherwise
                self._busy.discard(worker)
                await worker.kill()
                raise
            self._busy.discard(worker)
            self._idle.append((worker, current_time()))

        outcome = pickle.loads(payload)
        if status == protocol.RAISED:
            raise outcome
        return outcome

    async def _take_idle_worker(self) -> _Worker | None:
        now = current_time()
        while self._idle and now - self._idle[0][1] >= MAX_IDLE_SECONDS:
            await self._idle.pop(0)[0].stop()
        while self._idle:
            worker, _ = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            await worker.kill()  # exited while idle (killed from outside): just reap it
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
            [sys.executable, "-u", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the job's output, and Python's own message if the process crashes
        )
        worker = _Worker(process)
        main_module_path = getattr(sys.modules["__main__"], "__file__", None)
        init = pickle.dumps(("init", sys.path, main_module_path), pickle.HIGHEST_PROTOCOL)
        try:
            status, payload = await worker.call(init)
        except _ProcessGone:
            exit_description = describe_exit(await worker.wait_for_exit())
            raise BrokenWorkerProcess(
                f"a worker process (pid {process.pid}) exited while starting ({exit_description})"
            ) from None
        except BaseException:
            await worker.kill()
            raise

        if status == protocol.RAISED:
            await worker.kill()
            error = pickle.loads(payload)
            raise BrokenWorkerProcess(
                f"a worker process could not load the main module {main_module_path!r} "
                f"({type(error).__name__}: {error})"
            ) from error
        return worker

    async def aclose(self) -> None:
        """Stop the idle processes, kill any still running a call; refuse further calls."""
        self._closed = True
        with CancelScope(shield=True):
            while self._idle:
                await self._idle.pop()[0].stop()
            while self._busy:
                await self._busy.pop().kill()
