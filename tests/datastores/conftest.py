from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import ModuleType

import pytest

from asched.datastores import DataStore
from asched.eventbrokers import LocalEventBroker
from tests.backends import DATA_STORE_BACKENDS, backend
from tests.clock import FakeClock
from tests.conftest import EventRecorder

# Every store on asyncio, and on trio those that support it; pytest ids read "memory-trio"
_CASES = [
    pytest.param((name, anyio_backend), id=f"{name}-{anyio_backend}")
    for name in DATA_STORE_BACKENDS
    for anyio_backend in ("asyncio", "trio")
    if anyio_backend == "asyncio" or backend(name).SUPPORTS_TRIO
]


@pytest.fixture(params=_CASES)
def store_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(store_case: tuple[str, str]) -> str:
    return store_case[1]


@pytest.fixture
def store_backend(store_case: tuple[str, str]) -> ModuleType:
    return backend(store_case[0])


StoreStarter = Callable[[int], "AsyncIterator[list[DataStore]]"]


@pytest.fixture
async def data_stores(
    store_backend: ModuleType,
    namespace: str,
    clock: FakeClock,
    recorder: EventRecorder,
    logger: logging.Logger,
) -> AsyncIterator[list[DataStore]]:
    """Three started instances sharing one storage, all publishing to ``recorder``."""
    async with AsyncExitStack() as stack:
        stores = await stack.enter_async_context(store_backend.open_data_stores(namespace, 3))
        broker = LocalEventBroker()
        await broker.start(stack, logger)
        broker.subscribe(recorder)
        started: list[DataStore] = []
        for store in stores:
            if store not in started:
                await store.start(stack, broker, logger, clock)
            started.append(store)
        yield started


@pytest.fixture
def data_store(data_stores: list[DataStore]) -> DataStore:
    return data_stores[0]
