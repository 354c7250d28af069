"""PostgreSQL: each test namespace is its own schema (and NOTIFY channel), dropped on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from asched.datastores import DataStore
from asched.datastores.postgresql import PostgreSQLDataStore
from asched.eventbrokers import EventBroker
from asched.eventbrokers.postgresql import PostgreSQLEventBroker
from tests.cluster.harness import ClusterSetup
from tests.services import POSTGRESQL_URL, require_postgresql

SUPPORTS_TRIO = False
CROSS_PROCESS = True


def url_for(namespace: str) -> str:
    separator = "&" if "?" in POSTGRESQL_URL else "?"
    return f"{POSTGRESQL_URL}{separator}schema={namespace}"


async def drop_schema(namespace: str) -> None:
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    finally:
        await connection.close()


async def terminate_connections(namespace: str) -> int:
    """Kill, for real, every server connection of this test's application name."""
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                namespace,
            )
        )
    finally:
        await connection.close()


kill_connections = terminate_connections


def tagged_url(namespace: str) -> str:
    """The namespace's URL with its application name, so its connections can be found."""
    return f"{url_for(namespace)}&application_name={namespace}"


@asynccontextmanager
async def open_data_stores(namespace: str, count: int) -> AsyncIterator[list[DataStore]]:
    require_postgresql()
    try:
        yield [PostgreSQLDataStore(tagged_url(namespace)) for _ in range(count)]
    finally:
        await drop_schema(namespace)


@asynccontextmanager
async def open_event_brokers(namespace: str, count: int) -> AsyncIterator[list[EventBroker]]:
    require_postgresql()
    yield [PostgreSQLEventBroker(tagged_url(namespace), channel=namespace) for _ in range(count)]


@asynccontextmanager
async def open_cluster(namespace: str) -> AsyncIterator[ClusterSetup]:
    require_postgresql()

    async def fault() -> None:
        await terminate_connections(namespace)

    url = tagged_url(namespace)
    try:
        yield ClusterSetup(
            store_url=url, broker_url=url, nodes=4, schedules=500, seconds=20, fault=fault
        )
    finally:
        await drop_schema(namespace)
