"""SQLite: each test namespace is its own database file in a temporary folder."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from asched.datastores import DataStore
from asched.datastores.sqlite import SQLiteDataStore
from tests.cluster.harness import ClusterSetup

SUPPORTS_TRIO = True


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    with tempfile.TemporaryDirectory(prefix="asched-") as folder:
        path = Path(folder) / f"{namespace}.sqlite"
        yield [SQLiteDataStore(path) for _ in range(count)]


@asynccontextmanager
async def open_cluster(namespace: str) -> AsyncIterator[ClusterSetup]:
    with tempfile.TemporaryDirectory(prefix="asched-") as folder:
        url = f"sqlite:///{Path(folder) / namespace}.sqlite"
        yield ClusterSetup(store_url=url, broker_url=None, nodes=2, schedules=200, seconds=10)
