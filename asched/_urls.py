"""Creating data stores and event brokers from URLs (``memory://``, ``sqlite:///…``, …).

Also imports, on first use, the plug-ins that need an optional dependency (the subpackages'
PEP 562 ``__getattr__``), with an error naming the extra to install when it is missing.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Collection
from functools import cache
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from .datastores.base import DataStore
from .eventbrokers.base import EventBroker

# scheme -> (subpackage, class, whether it takes the URL); the subpackage imports the
# class's module on first use
_DATA_STORES = {
    "memory": ("asched.datastores", "MemoryDataStore", False),
    "sqlite": ("asched.datastores", "SQLiteDataStore", True),
    "postgresql": ("asched.datastores", "PostgreSQLDataStore", True),
    "postgres": ("asched.datastores", "PostgreSQLDataStore", True),
    "redis": ("asched.datastores", "RedisDataStore", True),
    "rediss": ("asched.datastores", "RedisDataStore", True),
}
_EVENT_BROKERS = {
    "local": ("asched.eventbrokers", "LocalEventBroker", False),
    "memory": ("asched.eventbrokers", "LocalEventBroker", False),
    "sqlite": ("asched.eventbrokers", "LocalEventBroker", False),
    "postgresql": ("asched.eventbrokers", "PostgreSQLEventBroker", True),
    "postgres": ("asched.eventbrokers", "PostgreSQLEventBroker", True),
    "redis": ("asched.eventbrokers", "RedisEventBroker", True),
    "rediss": ("asched.eventbrokers", "RedisEventBroker", True),
}

# Query options asched itself reads, per kind of URL (see split_own_options); the other
# backend's are refused with a pointer to the right one
_ASCHED_OPTIONS = {"postgresql": ("schema", "channel"), "redis": ("prefix", "channel")}

# What asyncpg takes from a DSN's query (asyncpg/connect_utils.py,
# _parse_connect_dsn_and_args); it sends every other option to the server as a setting
_ASYNCPG_OPTIONS = frozenset(
    {
        "service",
        "host",
        "port",
        "dbname",
        "database",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslnegotiation",
        "sslcrl",
        "sslpassword",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# libpq connection options asyncpg does not implement and PostgreSQL has no setting for:
# sent as settings, the server would refuse them at every connection attempt
_LIBPQ_ONLY_OPTIONS = frozenset(
    {
        "hostaddr",
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "fallback_application_name",
        "require_auth",
        "channel_binding",
        "gssencmode",
        "gssdelegation",
        "requiressl",
        "requirepeer",
        "sslcompression",
        "sslcertmode",
        "sslcrldir",
        "sslsni",
        "load_balance_hosts",
    }
)


def _scheme(url: str, what: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"{what}: expected a URL string, got {url!r}")
    if not url.strip():
        raise ValueError(
            f"{what}: the URL is empty (leave the argument out, or pass None, for the default)"
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"{what}: {url!r} is not a URL (expected e.g. 'memory://', 'sqlite:///jobs.sqlite', "
            "'postgresql://user@host/db' or 'redis://host:6379/0')"
        )
    return scheme.split("+", 1)[0].lower()


def _query_options(url: str, scheme: str, what: str) -> dict[str, str]:
    """Return the query options of ``url`` (names decoded); refuse malformed or repeated ones.

    A repeated option is refused, not resolved: asched and asyncpg would take its last
    value, redis-py its first.
    """
    try:
        query = urlsplit(url).query
    except ValueError as exc:
        raise ValueError(f"{what}: malformed {scheme}:// URL ({exc})") from None
    options: dict[str, str] = {}
    for field in query.split("&"):
        if not field:
            continue  # "a=1&&b=2", a trailing "&": nothing lost
        name, sep, value = field.partition("=")
        name = unquote_plus(name)  # as parse_qsl, and so split_own_options, reads it
        if not sep:
            raise ValueError(f"{what}: option {name!r} of the {scheme}:// URL has no '=value'")
        if name in options:
            raise ValueError(f"{what}: {_repeated(scheme, name)}")
        options[name] = value
    return options


def _repeated(scheme: str, name: str) -> str:
    # the values are left out: one may be a password
    return f"option {name!r} appears more than once in the {scheme}:// URL; give it once"


def _unknown(what: str, scheme: str, name: str, known: Collection[str], hint: str) -> ValueError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(
        f"{what}: unknown option {name!r} in the {scheme}:// URL: {suggestion}{hint}"
    )


@cache
def _redis_client_options(scheme: str) -> frozenset[str]:
    """Return the query options redis-py takes from a URL.

    redis-py passes every option on as a keyword argument to the connection pool and the
    connection class, so these are exactly their parameters.
    """
    from redis.asyncio import connection

    classes: list[Any] = [connection.AbstractConnection, connection.Connection]
    if scheme == "rediss":
        classes.append(connection.SSLConnection)
    names = {"max_connections"}  # the pool's, not the connection's
    for cls in classes:
        names.update(
            parameter.name
            for parameter in inspect.signature(cls.__init__).parameters.values()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            and parameter.name != "self"
        )
    return frozenset(names)


def _check_redis_database(url: str, scheme: str, what: str, options: dict[str, str]) -> None:
    """Refuse a database that redis-py would ignore (a path such as ``/abc``) or refuse late."""
    # redis-py takes int() of the path with its slashes removed, and silently uses database
    # 0 when that fails; a "db" option overrides the path (as documented), and one that is
    # not a number fails only when the client is made, at start()
    path = urlsplit(url).path
    if path not in ("", "/") and not re.fullmatch(r"/[0-9]+", path):
        if "@" in path:  # an unencoded "/" in the password: the rest of it is in the path
            raise ValueError(
                f"{what}: the path of the {scheme}:// URL is not a database number; "
                "a '/', '?' or '#' in the password must be percent-encoded"
            )
        raise ValueError(
            f"{what}: the path {path!r} of the {scheme}:// URL is not a database number "
            "(expected none, or one such as '/0')"
        )
    db = unquote_plus(options.get("db", "0"))
    if not re.fullmatch(r"[0-9]+", db):
        raise ValueError(
            f"{what}: option 'db' of the {scheme}:// URL must be a database number, got {db!r}"
        )


def _check_redis_url(url: str, scheme: str, what: str) -> None:
    ours = _ASCHED_OPTIONS["redis"]
    client = _redis_client_options(scheme)
    options = _query_options(url, scheme, what)
    _check_redis_database(url, scheme, what, options)
    for name, value in options.items():
        if name in ours and not value:
            raise ValueError(f"{what}: option {name!r} of the {scheme}:// URL has no value")
        if name in ours or name in client:
            continue
        if name == "schema":
            hint = "a Redis store takes 'prefix' where a PostgreSQL one takes 'schema'"
        elif scheme == "redis" and name in _redis_client_options("rediss"):
            hint = "TLS options need a rediss:// URL"
        else:
            hint = (
                f"asched takes {' and '.join(ours)}, redis-py its connection options "
                "(db, socket_timeout, client_name, …)"
            )
        raise _unknown(what, scheme, name, {*ours, *client}, hint)


def _check_postgresql_url(url: str, scheme: str, what: str) -> None:
    # Any other option is a server setting to asyncpg (application_name, search_path,
    # options, custom "x.y" ones …), too many to list: refuse only what cannot work
    ours = _ASCHED_OPTIONS["postgresql"]
    known = {*ours, *_ASYNCPG_OPTIONS}
    for name, value in _query_options(url, scheme, what).items():
        if name in ours and not value:
            raise ValueError(f"{what}: option {name!r} of the {scheme}:// URL has no value")
        if name in known:
            continue
        if name == "prefix":
            raise _unknown(
                what,
                scheme,
                name,
                (),
                "a PostgreSQL store takes 'schema' where Redis takes 'prefix'",
            )
        if name in _LIBPQ_ONLY_OPTIONS:
            raise ValueError(
                f"{what}: {name!r} in the {scheme}:// URL is a libpq option that asyncpg does "
                "not support; the server would refuse it as an unknown setting"
            )
        if "." not in name and difflib.get_close_matches(name, known, n=1, cutoff=0.8):
            raise _unknown(
                what,
                scheme,
                name,
                known,
                f"asched takes {' and '.join(ours)}; asyncpg sends unknown options to the "
                "server as settings",
            )


def _check_url(url: str, scheme: str, what: str) -> None:
    """Refuse what the URL's store or broker would silently misread."""
    if scheme in ("memory", "local"):
        if url.partition("://")[2]:
            raise ValueError(f"{what}: {scheme}:// URLs take nothing after the '://', got {url!r}")
    elif scheme == "sqlite":
        path = url.partition("://")[2]
        if "?" in path or "#" in path:
            options = ", ".join(
                repr(field.partition("=")[0])
                for field in path.partition("?")[2].partition("#")[0].split("&")
                if field
            )
            raise ValueError(
                f"{what}: sqlite:// URLs take no query options"
                + (f", got {options}" if options else "")
                + " (for a file name containing '?' or '#', pass SQLiteDataStore(path))"
            )
    elif scheme in ("redis", "rediss"):
        _check_redis_url(url, scheme, what)
    elif scheme in ("postgresql", "postgres"):
        _check_postgresql_url(url, scheme, what)


def check_url(url: str, what: str) -> None:
    """Refuse a URL a store or broker given it directly would misread (see :func:`_check_url`).

    :param what: how errors name the argument (the class given the URL, say)
    :raises ValueError: on an empty or malformed URL, or query options the URL's store or
        broker would not understand
    """
    _check_url(url, _scheme(url, what), what)


def _instantiate(url: str, scheme: str, entry: tuple[str, str, bool], what: str) -> Any:
    package, class_name, takes_url = entry
    try:
        cls = getattr(import_module(package), class_name)
    except ImportError as exc:
        raise ImportError(f"cannot use {scheme}:// URLs: {exc}", name=exc.name) from exc
    if not takes_url:
        _check_url(url, scheme, what)  # a class given the URL checks it itself
        return cls()
    try:
        return cls(url)
    except ValueError as exc:  # named after the argument the URL was given as
        raise ValueError(f"{what}: {exc}") from None


def data_store_from_url(url: str) -> DataStore:
    """Return a data store for ``url``.

    :raises ValueError: on an empty or malformed URL, an unknown scheme, or query options
        the store would not understand
    :raises ImportError: if the store needs an extra that is not installed
    """
    scheme = _scheme(url, "data_store")
    try:
        entry = _DATA_STORES[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in _DATA_STORES)
        raise ValueError(f"data_store: unknown URL scheme in {url!r} (known: {known})") from None
    store: DataStore = _instantiate(url, scheme, entry, "data_store")
    return store


def event_broker_from_url(url: str) -> EventBroker:
    """Return an event broker for ``url`` (``local://`` for the in-process broker).

    For a data store's URL this is the matching broker: PostgreSQL LISTEN/NOTIFY for
    ``postgresql://``, Redis pub/sub for ``redis://``, the local broker otherwise.

    :raises ValueError: on an empty or malformed URL, an unknown scheme, or query options
        the broker would not understand
    :raises ImportError: if the broker needs an extra that is not installed
    """
    scheme = _scheme(url, "event_broker")
    try:
        entry = _EVENT_BROKERS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in _EVENT_BROKERS)
        raise ValueError(f"event_broker: unknown URL scheme in {url!r} (known: {known})") from None
    broker: EventBroker = _instantiate(url, scheme, entry, "event_broker")
    return broker


def split_own_options(url: str, kind: str) -> tuple[str, dict[str, str]]:
    """Split asched's own query options off a ``postgresql`` or ``redis`` URL.

    :return: the URL for the client library (a PostgreSQL scheme's ``+driver`` suffix
        dropped, as asyncpg wants), and asched's options (``schema``, ``prefix``,
        ``channel``): asyncpg would send them to the server as settings
    """
    parts = urlsplit(url)
    if kind == "postgresql":
        parts = parts._replace(scheme=parts.scheme.split("+", 1)[0])
    own_names = _ASCHED_OPTIONS[kind]
    theirs: list[tuple[str, str]] = []
    ours: dict[str, str] = {}
    for name, value in parse_qsl(parts.query):
        if name not in own_names:
            theirs.append((name, value))
        elif name in ours:
            # check_url refuses this first; callers that skip it must not get one at random
            raise ValueError(_repeated(parts.scheme, name))
        else:
            ours[name] = value
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours
