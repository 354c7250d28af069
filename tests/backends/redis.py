"""Redis: each test namespace is its own key prefix (and pub/sub channel), deleted on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from asched.datastores import DataStore
from asched.datastores.redis import RedisDataStore
from asched.eventbrokers import EventBroker
from asched.eventbrokers.redis import RedisEventBroker
from tests.cluster.harness import ClusterSetup
from tests.services import REDIS_URL, require_redis

SUPPORTS_TRIO = False
CROSS_PROCESS = True


def url_for(namespace: str) -> str:
    separator = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{separator}prefix={namespace}"


async def delete_keys(namespace: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{{{namespace}}}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def kill_connections(namespace: str) -> int:
    """Kill, for real, every connection named after this namespace (CLIENT KILL)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        killed = 0
        for info in await client.client_list():
            if namespace in info.get("name", ""):
                killed += int(await client.client_kill_filter(_id=info["id"]))
        return killed
    finally:
        await client.aclose()


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    require_redis()
    try:
        yield [RedisDataStore(url_for(namespace)) for _ in range(count)]
    finally:
        await delete_keys(namespace)


@asynccontextmanager
async def open_event_brokers(namespace: str, count: int) -> AsyncIterator[list[EventBroker]]:
    require_redis()
    yield [RedisEventBroker(REDIS_URL, channel=namespace) for _ in range(count)]


@asynccontextmanager
async def open_cluster(namespace: str) -> AsyncIterator[ClusterSetup]:
    require_redis()

    async def fault() -> None:
        await kill_connections(namespace)

    url = url_for(namespace)
    try:
        yield ClusterSetup(
            store_url=url, broker_url=url, nodes=4, schedules=500, seconds=20, fault=fault
        )
    finally:
        await delete_keys(namespace)
