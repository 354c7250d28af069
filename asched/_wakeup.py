"""Wakeup: lets a loop sleep until a deadline or until something wakes it."""

from __future__ import annotations

from datetime import datetime

from anyio import CancelScope

from ._clock import Clock


class Wakeup:
    """Lets a loop sleep until a deadline or until something wakes it, whichever is first.

    Waking is a flag plus cancelling the sleep's scope: no task and no allocation per
    wake-up, and a wake-up that arrives while the loop is busy is not lost (the next
    :meth:`sleep` returns at once).
    """

    __slots__ = ("_scope", "pending", "sleeping_until")

    def __init__(self) -> None:
        self.pending = False
        #: the deadline of the current sleep, if the loop is sleeping towards one
        self.sleeping_until: datetime | None = None
        self._scope: CancelScope | None = None

    def wake(self) -> None:
        """End the current sleep, or make the next one return at once."""
        self.pending = True
        scope = self._scope
        if scope is not None:
            self._scope = None
            scope.cancel()

    async def sleep(self, clock: Clock, seconds: float, until: datetime | None = None) -> None:
        """Sleep for ``seconds`` of ``clock`` time unless woken (or a wake-up is pending)."""
        if self.pending or seconds <= 0:
            self.pending = False
            return
        with CancelScope() as scope:
            self._scope = scope
            self.sleeping_until = until
            await clock.sleep(seconds)
        self._scope = None
        self.sleeping_until = None
        self.pending = False
