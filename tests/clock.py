"""A clock the tests move by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import anyio
from anyio.lowlevel import checkpoint

from asched import Clock


class FakeClock(Clock):
    """A clock that only moves when :meth:`advance` is called; sleepers wake as it passes."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
        self._sleepers: list[tuple[datetime, anyio.Event]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=seconds)
        if deadline <= self._now:
            await checkpoint()
            return
        entry = (deadline, anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        for deadline, event in self._sleepers:
            if deadline <= self._now:
                event.set()

    def set(self, moment: datetime) -> None:
        self.advance((moment - self._now).total_seconds())
