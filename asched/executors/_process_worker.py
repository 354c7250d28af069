"""What a process pool's worker process runs: read a call, make it, write back its outcome.

Started as ``python -u -c <bootstrap>`` by :mod:`asched.executors._process_pool`. Requests
and replies travel over the process's standard input and output as frames: a request is an
8-byte length and a pickle, ``("init", sys_path, main_module_path)`` once, then
``("run", func, args, kwargs)``; a reply is a status byte (``R`` returned, ``E`` raised), an
8-byte length and the pickled return value or exception. The pipes are moved off file
descriptors 0 and 1 first, and what the job prints goes to standard error: output of the
job's own (even from C code) can never corrupt a reply.
"""

from __future__ import annotations

import os
import pickle
import runpy
import struct
import sys
from types import ModuleType
from typing import IO, Any

REQUEST_HEADER = struct.Struct("!Q")
REPLY_HEADER = struct.Struct("!cQ")
RETURNED = b"R"
RAISED = b"E"


def _read_request(requests: IO[bytes]) -> bytes | None:
    header = requests.read(REQUEST_HEADER.size)
    if len(header) < REQUEST_HEADER.size:
        return None  # the pool closed the pipe: time to exit
    (length,) = REQUEST_HEADER.unpack(header)
    return requests.read(length)


def _as_job_error(exc: BaseException) -> BaseException:
    # SystemExit or KeyboardInterrupt re-raised in the scheduler would stop it: the job fails
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the function raised {type(exc).__name__}: {exc!r}")


#: true while this worker process runs the parent's script: a process pool the script starts
#: at its top level then refuses to start processes (they would load the script in turn)
loading_main_module = False


def _load_main_module(path: str | None) -> None:
    # Functions of a script's __main__ are pickled as __main__.name: load the script under
    # another name, as multiprocessing does, so its `if __name__ == "__main__"` part stays out
    global loading_main_module
    if path and os.path.isfile(path):
        loading_main_module = True
        try:
            namespace = runpy.run_path(path, run_name="__mp_main__")
        finally:
            loading_main_module = False
        main = ModuleType("__mp_main__")
        main.__dict__.update(namespace)
        sys.modules["__main__"] = sys.modules["__mp_main__"] = main


def _handle(request: bytes) -> tuple[bytes, Any]:
    try:
        command, *arguments = pickle.loads(request)
        if command == "init":
            parent_sys_path, main_module_path = arguments
            sys.path[:] = parent_sys_path
            _load_main_module(main_module_path)
            return RETURNED, None
        func, args, kwargs = arguments
        return RETURNED, func(*args, **kwargs)
    except BaseException as exc:
        return RAISED, _as_job_error(exc)


def _pickle_reply(status: bytes, outcome: Any) -> bytes:
    try:
        payload = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        what = "return value" if status == RETURNED else "exception"
        error = RuntimeError(
            f"the worker process could not pickle the job's {what} "
            f"(of type {type(outcome).__qualname__}): {exc}"
        )
        status, payload = RAISED, pickle.dumps(error, pickle.HIGHEST_PROTOCOL)
    return REPLY_HEADER.pack(status, len(payload)) + payload


def serve() -> None:
    """Answer requests from the pool until it closes this process's standard input."""
    requests = open(os.dup(0), "rb")  # noqa: SIM115 - open for the process's lifetime
    replies = open(os.dup(1), "wb")  # noqa: SIM115
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        while (request := _read_request(requests)) is not None:
            status, outcome = _handle(request)
            replies.write(_pickle_reply(status, outcome))
            replies.flush()
            del outcome
    except KeyboardInterrupt:
        pass  # Ctrl+C reaches the whole process group: the scheduler deals with it
