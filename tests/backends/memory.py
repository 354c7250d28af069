from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asched.datastores import DataStore, MemoryDataStore

SUPPORTS_TRIO = True


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    store = MemoryDataStore()
    yield [store] * count
