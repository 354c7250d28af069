"""What a process pool's worker process runs: read a call, make it, write back its outcome.

Started as ``python <the interpreter's flags> -u -c <bootstrap>`` by
:mod:`asched.executors._process_pool`; the bootstrap ignores SIGINT and SIGTERM and drops the
current directory from ``sys.path`` before importing anything. Requests and replies travel
over the process's standard input and output as frames. A request is an 8-byte length and a
pickle: ``("init", sys_path, sys_argv, main_module_name, main_module_path)`` once, then
``("run", func, args, kwargs)``. A reply is a header (a status byte, ``R`` returned or ``E``
raised, then the lengths of the three fields that follow), the outcome's type name, the
formatted traceback (empty unless raised), and the pickled return value or exception: the
pool can say what it was even when it cannot unpickle it. The pipes are moved off file
descriptors 0 and 1 first, and what the job prints goes to standard error: output of the
job's own (even from C code) can never corrupt a reply.
"""

from __future__ import annotations

import os
import pickle
import runpy
import struct
import sys
import traceback
from contextlib import suppress
from types import ModuleType
from typing import IO, Any

REQUEST_HEADER = struct.Struct("!Q")
#: status, then the lengths of the type name, the traceback and the pickled outcome
REPLY_HEADER = struct.Struct("!cIIQ")
RETURNED = b"R"
RAISED = b"E"


def _read_request(requests: IO[bytes]) -> bytes | None:
    header = requests.read(REQUEST_HEADER.size)
    if len(header) < REQUEST_HEADER.size:
        return None  # the pool closed the pipe: time to exit
    (length,) = REQUEST_HEADER.unpack(header)
    return requests.read(length)


def type_name(value: object) -> str:
    """Return the qualified name of the value's type (without ``builtins.``), for messages."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _as_job_error(exc: BaseException) -> BaseException:
    # SystemExit or KeyboardInterrupt re-raised in the scheduler would stop it: the job fails
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the function raised {type(exc).__name__}: {exc!r}")


def _format_traceback(exc: BaseException) -> str:
    # leave out this module's own frame (_handle): the traceback starts in the job
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


#: true while this worker process runs the parent's script: a process pool the script starts
#: at its top level then refuses to start processes (they would load the script in turn)
loading_main_module = False


def _load_main_module(name: str | None, path: str | None) -> None:
    # Functions of a script's __main__ are pickled as __main__.name: load the script under
    # another name, as multiprocessing does, so its `if __name__ == "__main__"` part stays out.
    # Run with -m, it is loaded by module name, so that its relative imports work.
    global loading_main_module
    if name is None and not (path and os.path.isfile(path)):
        return  # run from `-c` or the interactive prompt: nothing to load
    loading_main_module = True
    try:
        if name is not None:
            namespace = runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
        else:
            namespace = runpy.run_path(str(path), run_name="__mp_main__")
    finally:
        loading_main_module = False
    main = ModuleType("__mp_main__")
    main.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main


def _handle(request: bytes) -> tuple[bytes, Any, str]:
    """Make the call; return the status, the outcome and (if it raised) its traceback."""
    try:
        command, *arguments = pickle.loads(request)
        if command == "init":
            parent_sys_path, parent_sys_argv, main_module_name, main_module_path = arguments
            sys.path[:] = parent_sys_path
            sys.argv[:] = parent_sys_argv
            _load_main_module(main_module_name, main_module_path)
            return RETURNED, None, ""
        func, args, kwargs = arguments
        return RETURNED, func(*args, **kwargs), ""
    except BaseException as exc:
        return RAISED, _as_job_error(exc), _format_traceback(exc)


def _encode_reply(status: bytes, outcome: Any, traceback_text: str) -> bytes:
    try:
        payload = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        what = "return value" if status == RETURNED else "exception"
        error = RuntimeError(
            f"the worker process could not pickle the job's {what} "
            f"(of type {type_name(outcome)}): {exc}"
        )
        status, payload = RAISED, pickle.dumps(error, pickle.HIGHEST_PROTOCOL)
        outcome = error
    name = type_name(outcome).encode()
    text = traceback_text.encode(errors="backslashreplace")
    header = REPLY_HEADER.pack(status, len(name), len(text), len(payload))
    return header + name + text + payload


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # closed or replaced by the job: nothing to flush
            stream.flush()


def serve() -> None:
    """Answer requests from the pool until it closes this process's standard input."""
    pid = os.getpid()
    requests = open(os.dup(0), "rb")  # noqa: SIM115 - open for the process's lifetime
    replies = open(os.dup(1), "wb")  # noqa: SIM115
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    while (request := _read_request(requests)) is not None:
        status, outcome, traceback_text = _handle(request)
        if os.getpid() != pid:
            # a child the job forked, returning from the job too: only the worker replies
            _flush_standard_streams()
            os._exit(0)
        replies.write(_encode_reply(status, outcome, traceback_text))
        replies.flush()
        del outcome
