"""Where the test PostgreSQL and Redis servers are, and what to do when they don't answer.

On a laptop without the servers, tests that need them skip with a clear reason; in CI
(``CI=true``) an unreachable server fails the test instead.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlsplit

import pytest

POSTGRESQL_URL = os.environ.get(
    "ASCHED_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ASCHED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@cache
def _unreachable_reason(url: str, default_port: int) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc})"


def require_server(name: str, url: str, default_port: int) -> None:
    """Skip (or, in CI, fail) the calling test if the server at ``url`` does not answer."""
    reason = _unreachable_reason(url, default_port)
    if reason is None:
        return
    message = (
        f"{name} test server unreachable: {reason}; set ASCHED_TEST_"
        f"{name.upper()}_URL or start the server"
    )
    if running_in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_postgresql() -> None:
    require_server("PostgreSQL", POSTGRESQL_URL, 5432)


def require_redis() -> None:
    require_server("Redis", REDIS_URL, 6379)
