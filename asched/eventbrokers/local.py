"""LocalEventBroker: delivers events within one process (the default)."""

from __future__ import annotations

from ..events import Event
from .base import BaseEventBroker


class LocalEventBroker(BaseEventBroker):
    """Delivers events to subscribers in this process only.

    Use it with the memory and SQLite stores, or with any store when a single process runs
    all schedulers and workers. Sync callbacks run inline; coroutine callbacks in tasks.
    """

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to this process's subscribers."""
        self.publish_local(event)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
