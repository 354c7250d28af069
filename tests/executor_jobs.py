"""Importable job functions for the executor tests: some end their worker process abruptly."""

from __future__ import annotations

import os
import signal
import sys


def exit_abruptly(code: int) -> None:
    """End this process at once, with no cleanup and no reply to the pool."""
    os._exit(code)


def kill_own_process() -> None:
    """Send this process SIGKILL, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def call_sys_exit(code: int) -> None:
    sys.exit(code)
