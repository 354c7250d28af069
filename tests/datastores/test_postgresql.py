"""PostgreSQL specifics: schema management, isolation, real connection faults, big events."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import asyncpg
import pytest

from asched import AsyncScheduler
from asched._enums import ConflictPolicy
from asched._structures import Job, Task
from asched.datastores.postgresql import SCHEMA_VERSION, PostgreSQLDataStore
from asched.eventbrokers import LocalEventBroker
from tests.backends.postgresql import drop_schema, tagged_url, terminate_connections
from tests.clock import FakeClock
from tests.datastores import due_schedule
from tests.services import POSTGRESQL_URL, require_postgresql

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


@pytest.fixture(autouse=True)
def _postgresql() -> None:
    require_postgresql()


@pytest.fixture
async def schema(namespace: str) -> object:
    yield namespace
    await drop_schema(namespace)


async def started_store(
    stack: AsyncExitStack, url: str, clock: FakeClock, **kwargs: object
) -> PostgreSQLDataStore:
    store = PostgreSQLDataStore(url, **kwargs)  # type: ignore[arg-type]
    broker = LocalEventBroker()
    await broker.start(stack, logging.getLogger("test"))
    await store.start(stack, broker, logging.getLogger("test"), clock)
    return store


async def test_schema_records_its_version(schema: str, clock: FakeClock) -> None:
    async with AsyncExitStack() as stack:
        await started_store(stack, tagged_url(schema), clock)
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        version = await connection.fetchval(
            f'SELECT value FROM "{schema}".metadata WHERE key = $1', "schema_version"
        )
        await connection.execute(
            f"UPDATE \"{schema}\".metadata SET value = '999' WHERE key = 'schema_version'"
        )
    finally:
        await connection.close()
    assert version == str(SCHEMA_VERSION)

    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        store = PostgreSQLDataStore(tagged_url(schema))
        with pytest.raises(RuntimeError, match=f"schema '{schema}' has version 999"):
            await store.start(stack, broker, logging.getLogger("test"), clock)


async def test_concurrent_starts_create_the_schema_once(schema: str, clock: FakeClock) -> None:
    async def start_one(index: int) -> None:
        async with AsyncExitStack() as stack:
            store = await started_store(stack, tagged_url(schema), clock)
            await store.add_task(Task(id=f"task{index}", job_executor="async"))

    async with anyio.create_task_group() as task_group:
        for index in range(6):
            task_group.start_soon(start_one, index)

    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        assert [task.id for task in await store.get_tasks()] == [f"task{i}" for i in range(6)]


async def test_schemas_are_isolated(namespace: str, clock: FakeClock) -> None:
    other = f"{namespace}_other"
    try:
        async with AsyncExitStack() as stack:
            first = await started_store(stack, tagged_url(namespace), clock)
            second = await started_store(stack, tagged_url(namespace), clock, schema=other)
            await first.add_schedule(due_schedule("mine", clock), ConflictPolicy.exception)
            assert [item.id for item in await first.get_schedules()] == ["mine"]
            assert await second.get_schedules() == []
    finally:
        await drop_schema(namespace)
        await drop_schema(other)


@pytest.mark.parametrize(
    "name", ["bad-name", "1abc", 'x"; DROP TABLE y; --', "", "jobs\n", "x" * 64]
)
def test_schema_name_must_be_a_plain_identifier(name: str) -> None:
    with pytest.raises(ValueError, match="schema must be a plain identifier"):
        PostgreSQLDataStore(POSTGRESQL_URL, schema=name)


async def test_application_pool_is_used_and_left_open(schema: str, clock: FakeClock) -> None:
    pool = await asyncpg.create_pool(POSTGRESQL_URL, min_size=1, max_size=2)
    try:
        async with AsyncExitStack() as stack:
            store = await started_store(stack, pool, clock, schema=schema)
            await store.add_task(Task(id="task", job_executor="async"))
        assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".tasks') == 1
    finally:
        await pool.close()


async def test_operations_survive_killed_connections_without_duplicates(
    schema: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        added: list[Job] = []
        for round_number in range(20):
            # kill every connection of the store, for real, between and during operations
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(terminate_connections, schema)
                batch = [Job(task_id="task", created_at=clock.now()) for _ in range(5)]
                await store.add_jobs(batch)
                added.extend(batch)
            if round_number % 5 == 4:
                await terminate_connections(schema)

        jobs = await store.get_jobs()
        assert sorted(job.id for job in jobs) == sorted(job.id for job in added)

        acquired = await store.acquire_jobs("worker", timedelta(minutes=1), 1000)
        assert len({job.id for job in acquired}) == len(added)
        await terminate_connections(schema)
        assert await store.acquire_jobs("worker", timedelta(minutes=1), 1000) == []


async def test_scheduler_on_a_postgresql_url_runs_a_job(schema: str) -> None:
    async def double(value: int) -> int:
        return value * 2

    async with AsyncScheduler(tagged_url(schema)) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(20):
            assert await scheduler.run_job(double, args=[21]) == 42
