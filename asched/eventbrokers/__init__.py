"""Event brokers: deliver events to subscribers, locally or across processes.

:class:`PostgreSQLEventBroker` and :class:`RedisEventBroker` are imported on first use, so
importing this package needs neither asyncpg nor redis; using one whose extra is not
installed raises an :class:`ImportError` saying what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
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
__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    __all__,
    {
        "PostgreSQLEventBroker": ("postgresql", "postgresql"),
        "RedisEventBroker": ("redis", "redis"),
    },
)
