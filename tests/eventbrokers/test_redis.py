"""Redis broker specifics: starting against a server that refuses the connection for good."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from redis.exceptions import AuthenticationError

from asched.eventbrokers.redis import RedisEventBroker
from tests.services import REDIS_URL, require_redis

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


async def test_credentials_no_retry_can_mend_fail_the_start_at_once(
    logger: logging.Logger,
) -> None:
    require_redis()
    parts = urlsplit(REDIS_URL)
    host = f"asched-no-such-user:wrong@{parts.hostname}:{parts.port or 6379}"
    url = urlunsplit(parts._replace(netloc=host))
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            with pytest.raises(AuthenticationError):
                await RedisEventBroker(url).start(stack, logger)
