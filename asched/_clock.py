"""The clock: where the scheduler and the data stores get the current time and sleep."""

from __future__ import annotations

from datetime import datetime, timezone

import anyio


class Clock:
    """Source of the current time and of timed waits.

    The default reads the system clock. Tests subclass it to control time: a scheduler and its
    data store always share the scheduler's clock.
    """

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` of this clock's time to pass (cancellable)."""
        await anyio.sleep(seconds)
