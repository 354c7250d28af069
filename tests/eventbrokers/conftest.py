from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import ModuleType

import pytest

from asched.eventbrokers import EventBroker
from tests.backends import EVENT_BROKER_BACKENDS, backend

_CASES = [
    pytest.param((name, anyio_backend), id=f"{name}-{anyio_backend}")
    for name in EVENT_BROKER_BACKENDS
    for anyio_backend in ("asyncio", "trio")
    if anyio_backend == "asyncio" or backend(name).SUPPORTS_TRIO
]


@pytest.fixture(params=_CASES)
def broker_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(broker_case: tuple[str, str]) -> str:
    return broker_case[1]


@pytest.fixture
def broker_backend(broker_case: tuple[str, str]) -> ModuleType:
    return backend(broker_case[0])


@pytest.fixture
async def event_brokers(
    broker_backend: ModuleType, namespace: str, logger: logging.Logger
) -> AsyncIterator[list[EventBroker]]:
    """Two started brokers on the same channel (two processes, for external brokers)."""
    async with AsyncExitStack() as stack:
        brokers = await stack.enter_async_context(broker_backend.open_event_brokers(namespace, 2))
        for broker in brokers:
            await broker.start(stack, logger)
        yield brokers


@pytest.fixture
def event_broker(event_brokers: list[EventBroker]) -> EventBroker:
    return event_brokers[0]
