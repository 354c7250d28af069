"""Data stores: where schedules, jobs and results live and where schedulers coordinate.

:class:`SQLiteDataStore`, :class:`PostgreSQLDataStore` and :class:`RedisDataStore` are
imported on first use, so importing this package needs neither asyncpg nor redis; using one
whose extra is not installed raises an :class:`ImportError` saying what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
_LAZY: dict[str, tuple[str, str | None]] = {
    "PostgreSQLDataStore": ("postgresql", "postgresql"),
    "RedisDataStore": ("redis", "redis"),
    "SQLiteDataStore": ("sqlite", None),
}


def __getattr__(name: str) -> Any:
    from .._urls import import_lazily  # here: asched._urls imports this package

    value = import_lazily(__name__, name, _LAZY)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
