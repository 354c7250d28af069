"""The PostgreSQL and Redis plug-ins under trio: a clear error, before any connection."""

from __future__ import annotations

import pytest

from asched import AsyncScheduler
from asched.datastores import PostgreSQLDataStore, RedisDataStore
from asched.eventbrokers import LocalEventBroker
from tests.services import POSTGRESQL_URL, REDIS_URL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.parametrize(
    ("url", "store_class", "library"),
    [
        (POSTGRESQL_URL, PostgreSQLDataStore, "asyncpg"),
        (REDIS_URL, RedisDataStore, "redis-py's asyncio client"),
    ],
    ids=["postgresql", "redis"],
)
async def test_under_trio_the_store_and_broker_say_they_need_asyncio(
    url: str, store_class: type[PostgreSQLDataStore | RedisDataStore], library: str
) -> None:
    # their client libraries run on asyncio only: under trio they would fail deep inside,
    # with "no running event loop" or worse
    broker_name = store_class.__name__.replace("DataStore", "EventBroker")
    with pytest.raises(RuntimeError, match=f"{broker_name} needs asyncio \\({library}"):
        async with AsyncScheduler(url):
            pass
    with pytest.raises(RuntimeError, match=f"{store_class.__name__} needs asyncio"):
        async with AsyncScheduler(store_class(url), LocalEventBroker()):
            pass
