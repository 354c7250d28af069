"""Event brokers: deliver events to subscribers, locally or across processes.

:class:`PostgreSQLEventBroker` and :class:`RedisEventBroker` are imported on first use, so
importing this package needs neither asyncpg nor redis; using one whose extra is not
installed raises an :class:`ImportError` saying what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BaseEventBroker, BaseExternalEventBroker, EventBroker
from .local import LocalEventBroker

if TYPE_CHECKING:
    from .postgresql import PostgreSQLEventBroker
    from .redis import RedisEventBroker

__all__ = [
    "BaseEventBroker",
    "BaseExternalEventBroker",
    "EventBroker",
    "LocalEventBroker",
    "PostgreSQLEventBroker",
    "RedisEventBroker",
]

# name -> (submodule, pip extra its dependencies come from)
_LAZY: dict[str, tuple[str, str | None]] = {
    "PostgreSQLEventBroker": ("postgresql", "postgresql"),
    "RedisEventBroker": ("redis", "redis"),
}


def __getattr__(name: str) -> Any:
    from .._urls import import_lazily  # here: asched._urls imports this package

    value = import_lazily(__name__, name, _LAZY)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
