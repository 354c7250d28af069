"""Importable job functions for tests that run jobs in worker processes."""

from __future__ import annotations

import os
import time


def announce_pid_and_sleep(fifo_path: str, seconds: float) -> None:
    """Write this process's id to the named pipe ``fifo_path``, then sleep."""
    with open(fifo_path, "w") as fifo:
        fifo.write(str(os.getpid()))
    time.sleep(seconds)
