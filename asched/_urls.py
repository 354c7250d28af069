"""Creating data stores and event brokers from URLs (``memory://``, ``sqlite:///…``, …)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .datastores.base import DataStore
from .eventbrokers.base import EventBroker

# scheme -> (module, class, pip extra needed or None)
_DATA_STORES = {
    "memory": ("asched.datastores.memory", "MemoryDataStore", None),
    "sqlite": ("asched.datastores.sqlite", "SQLiteDataStore", None),
    "postgresql": ("asched.datastores.postgresql", "PostgreSQLDataStore", "postgresql"),
    "postgres": ("asched.datastores.postgresql", "PostgreSQLDataStore", "postgresql"),
    "redis": ("asched.datastores.redis", "RedisDataStore", "redis"),
    "rediss": ("asched.datastores.redis", "RedisDataStore", "redis"),
}
_EVENT_BROKERS = {
    "local": ("asched.eventbrokers.local", "LocalEventBroker", None),
    "memory": ("asched.eventbrokers.local", "LocalEventBroker", None),
    "sqlite": ("asched.eventbrokers.local", "LocalEventBroker", None),
    "postgresql": ("asched.eventbrokers.postgresql", "PostgreSQLEventBroker", "postgresql"),
    "postgres": ("asched.eventbrokers.postgresql", "PostgreSQLEventBroker", "postgresql"),
    "redis": ("asched.eventbrokers.redis", "RedisEventBroker", "redis"),
    "rediss": ("asched.eventbrokers.redis", "RedisEventBroker", "redis"),
}


def _scheme(url: str, what: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"{what}: {url!r} is not a URL (expected e.g. 'memory://', 'sqlite:///jobs.sqlite', "
            "'postgresql://user@host/db' or 'redis://host:6379/0')"
        )
    return scheme.split("+", 1)[0].lower()


def _instantiate(
    url: str, scheme: str, entry: tuple[str, str, str | None], needs_url: bool
) -> Any:
    module_name, class_name, extra = entry
    try:
        module = import_module(module_name)
    except ImportError as exc:
        hint = f' (install it with: pip install "asched[{extra}]")' if extra else ""
        raise ImportError(f"cannot use {scheme}:// URLs: {exc}{hint}") from exc
    cls = getattr(module, class_name)
    return cls(url) if needs_url else cls()


def data_store_from_url(url: str) -> DataStore:
    """Return a data store for ``url``.

    :raises ValueError: on an unknown scheme or a malformed URL
    :raises ImportError: if the store needs an extra that is not installed
    """
    scheme = _scheme(url, "data_store")
    try:
        entry = _DATA_STORES[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in _DATA_STORES)
        raise ValueError(f"data_store: unknown URL scheme in {url!r} (known: {known})") from None
    store: DataStore = _instantiate(url, scheme, entry, needs_url=scheme != "memory")
    return store


def event_broker_from_url(url: str) -> EventBroker:
    """Return an event broker for ``url`` (``local://`` for the in-process broker).

    For a data store's URL this is the matching broker: PostgreSQL LISTEN/NOTIFY for
    ``postgresql://``, Redis pub/sub for ``redis://``, the local broker otherwise.

    :raises ValueError: on an unknown scheme or a malformed URL
    :raises ImportError: if the broker needs an extra that is not installed
    """
    scheme = _scheme(url, "event_broker")
    try:
        entry = _EVENT_BROKERS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in _EVENT_BROKERS)
        raise ValueError(f"event_broker: unknown URL scheme in {url!r} (known: {known})") from None
    broker: EventBroker = _instantiate(url, scheme, entry, needs_url=entry[2] is not None)
    return broker
