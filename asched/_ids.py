"""Random (version 4) UUIDs for jobs, drawn from a buffer of operating-system randomness.

``uuid.uuid4()`` makes one ``getrandom`` system call per id. Each call releases the GIL, and
with a busy thread pool the event loop then waits to get it back: at thousands of jobs per
second that wait showed as a tenth of the loop's time. Drawing 4 KiB at a time keeps the
same randomness (256 ids per call) without the per-id system call.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

_BUFFER_BYTES = 4096


class _Randomness(threading.local):
    """Each thread's buffer; a forked child starts with a fresh one (never its parent's)."""

    def __init__(self) -> None:
        self.discard()

    def discard(self) -> None:
        self.buffer = b""
        self.offset = _BUFFER_BYTES


_randomness = _Randomness()
os.register_at_fork(after_in_child=_randomness.discard)


def random_uuid() -> UUID:
    """Return a new random UUID, as ``uuid.uuid4()`` does."""
    state = _randomness
    offset = state.offset
    if offset == _BUFFER_BYTES:
        state.buffer = os.urandom(_BUFFER_BYTES)
        offset = 0
    state.offset = offset + 16
    return UUID(bytes=state.buffer[offset : offset + 16], version=4)
