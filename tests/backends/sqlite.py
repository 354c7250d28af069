from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from asched.datastores import DataStore

SUPPORTS_TRIO = False


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    pytest.skip("the sqlite data store is not implemented yet")
    yield []
