from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from asched.datastores import DataStore
from asched.eventbrokers import EventBroker

SUPPORTS_TRIO = False


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    pytest.skip("the postgresql data store is not implemented yet")
    yield []


CROSS_PROCESS = True


@asynccontextmanager
async def open_event_brokers(namespace: str, count: int) -> AsyncIterator[list[EventBroker]]:
    pytest.skip("the postgresql event broker is not implemented yet")
    yield []
