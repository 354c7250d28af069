from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asched.eventbrokers import EventBroker, LocalEventBroker

SUPPORTS_TRIO = True
CROSS_PROCESS = False


@asynccontextmanager
async def open_event_brokers(namespace: str, count: int) -> AsyncIterator[list[EventBroker]]:
    yield [LocalEventBroker() for _ in range(count)]
