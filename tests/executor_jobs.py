"""Importable job functions for the executor tests: some end their worker process abruptly."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import ModuleType


def exit_abruptly(code: int) -> None:
    """End this process at once, with no cleanup and no reply to the pool."""
    os._exit(code)


def kill_own_process() -> None:
    """Send this process SIGKILL, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def wait_for_release(fifo_path: str) -> str:
    """Say (on standard error) that this job started, in which process; then wait.

    The job returns once the writers of the named pipe ``fifo_path`` (one must have it open
    already) close it.
    """
    with open(fifo_path) as fifo:
        # one write (print makes several): lines of jobs in other processes cannot cut in
        os.write(2, f"started {os.getpid()}\n".encode())
        fifo.read()
    return "released"


def fail_deep_down() -> None:
    _look_up_a_missing_key()


def _look_up_a_missing_key() -> None:
    raise KeyError("missing-key")


class TwoArgumentError(Exception):
    """Pickles, but cannot be unpickled: pickle calls ``__init__`` with ``args`` (one)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def raise_two_argument_error() -> None:
    raise TwoArgumentError("needs two", 2)


def return_an_instance_of_a_worker_only_class() -> object:
    """Return an object whose class is in a module only this worker process has."""
    module = ModuleType("module_only_in_the_worker")
    only_here = type("OnlyHere", (), {"__module__": module.__name__})
    module.OnlyHere = only_here  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    return only_here()


def fork_and_return_in_both() -> tuple[str, int]:
    """Fork; both processes return (the child does not exit on its own)."""
    child_pid = os.fork()
    return ("child" if child_pid == 0 else "parent", os.getpid())


def start_a_thread_and_return_pid(seconds: float, pause: float = 0) -> int:
    """Start a non-daemon thread sleeping ``seconds`` (the process cannot exit meanwhile).

    :param pause: how long the job takes, so that jobs started together overlap
    """
    threading.Thread(target=time.sleep, args=[seconds]).start()
    time.sleep(pause)
    return os.getpid()


def pause(seconds: float) -> None:
    """Keep the worker process busy for ``seconds``."""
    time.sleep(seconds)
