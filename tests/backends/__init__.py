"""One module per data store / event broker implementation, used by the contract suites.

Each data store module defines::

    SUPPORTS_TRIO: bool
    def open_data_stores(namespace: str, count: int) -> AsyncContextManager[list[DataStore]]

returning ``count`` unstarted store instances that share the same storage (a schema, key
prefix or file named after ``namespace``), and removing that storage on exit. Event broker
modules define ``open_event_brokers(namespace, count)`` the same way, plus
``CROSS_PROCESS: bool`` (whether separate instances see each other's events).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

DATA_STORE_BACKENDS = ("memory", "sqlite", "postgresql", "redis")
EVENT_BROKER_BACKENDS = ("local", "postgresql", "redis")


def backend(name: str) -> ModuleType:
    return import_module(f"tests.backends.{name}")
