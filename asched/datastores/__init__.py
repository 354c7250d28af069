"""Data stores: where schedules, jobs and results live and where schedulers coordinate.

:class:`SQLiteDataStore`, :class:`PostgreSQLDataStore` and :class:`RedisDataStore` are
imported on first use, so importing this package needs neither asyncpg nor redis; using one
whose extra is not installed raises an :class:`ImportError` saying what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .base import BaseExternalDataStore, DataStore, RetrySettings
from .memory import MemoryDataStore

if TYPE_CHECKING:
    from .postgresql import PostgreSQLDataStore
    from .redis import RedisDataStore
    from .sqlite import SQLiteDataStore

__all__ = [
    "BaseExternalDataStore",
    "DataStore",
    "MemoryDataStore",
    "PostgreSQLDataStore",
    "RedisDataStore",
    "RetrySettings",
    "SQLiteDataStore",
]

# name -> (submodule, pip extra its dependencies come from)
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    __all__,
    {
        "PostgreSQLDataStore": ("postgresql", "postgresql"),
        "RedisDataStore": ("redis", "redis"),
        "SQLiteDataStore": ("sqlite", None),
    },
)
