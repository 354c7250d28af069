from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from typing import Any, TypeVar
from uuid import uuid4

import anyio
import pytest

from asched.eventbrokers import EventBroker
from asched.events import Event
from tests.clock import FakeClock

_EventT = TypeVar("_EventT", bound=Event)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def namespace() -> str:
    """A unique name for the storage (schema, key prefix, file) of one test."""
    return f"t{uuid4().hex[:12]}"


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("asched.tests")


class EventRecorder:
    """Collects the events an event broker delivers, and waits for them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of_type(self, *types: type[_EventT]) -> list[_EventT]:
        return [event for event in self.events if isinstance(event, types)]

    def clear(self) -> None:
        self.events.clear()

    async def wait_for(
        self, event_type: type[_EventT], count: int = 1, *, within: float = 10
    ) -> list[_EventT]:
        """Wait until ``count`` events of ``event_type`` have been recorded."""
        with anyio.fail_after(within):
            while len(found := self.of_type(event_type)) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return found


@pytest.fixture
def recorder() -> EventRecorder:
    return EventRecorder()


async def start_broker(
    stack: AsyncExitStack, broker: EventBroker, logger: logging.Logger
) -> EventBroker:
    await broker.start(stack, logger)
    return broker


def ids_of(items: Iterable[Any]) -> list[Any]:
    return [item.id for item in items]


__all__ = ["AsyncIterator", "EventRecorder", "ids_of", "start_broker"]
