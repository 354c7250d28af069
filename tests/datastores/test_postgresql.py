"""PostgreSQL specifics: schema management, isolation, real connection faults, big events."""

from __future__ import annotations

import json
import logging
import pickle
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from asched import (
    AsyncScheduler,
    Clock,
    ConflictingIdError,
    JobOutcome,
    JobResult,
    Schedule,
    StaleScheduleError,
)
from asched._enums import ConflictPolicy
from asched._structures import Job, ScheduleUpdate, Task
from asched.datastores.base import RetrySettings
from asched.datastores.postgresql import SCHEMA_VERSION, PostgreSQLDataStore
from asched.eventbrokers import LocalEventBroker
from asched.events import JobAdded, ScheduleAdded, ScheduleUpdated
from asched.triggers import IntervalTrigger
from tests.backends.postgresql import drop_schema, tagged_url, terminate_connections
from tests.clock import FakeClock
from tests.conftest import EventRecorder
from tests.datastores import due_schedule
from tests.lost_replies import ReplyDroppingProxy, reply_dropping_proxy
from tests.services import POSTGRESQL_URL, require_postgresql

pytestmark = pytest.mark.anyio

LEASE = timedelta(minutes=1)


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
    finally:
        await connection.close()
    assert version == str(SCHEMA_VERSION) == "3"


async def table_columns(schema: str) -> dict[str, list[str]]:
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        rows = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
            schema,
        )
    finally:
        await connection.close()
    columns: dict[str, list[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], []).append(row["column_name"])
    return columns


async def test_schema_of_a_newer_version_is_refused_untouched(
    schema: str, clock: FakeClock
) -> None:
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        # what a later asched might have written: other columns, other tables
        await connection.execute(
            f"""
            CREATE SCHEMA "{schema}";
            CREATE TABLE "{schema}".metadata (key text PRIMARY KEY, value text NOT NULL);
            INSERT INTO "{schema}".metadata VALUES ('schema_version', '4');
            CREATE TABLE "{schema}".schedules (id text PRIMARY KEY, due_at timestamptz);
            """
        )
    finally:
        await connection.close()
    before = await table_columns(schema)

    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        store = PostgreSQLDataStore(tagged_url(schema))
        message = f"schema '{schema}' has version 4, this asched uses version {SCHEMA_VERSION}"
        with pytest.raises(RuntimeError, match=message):
            await store.start(stack, broker, logging.getLogger("test"), clock)

    assert await table_columns(schema) == before


async def test_schema_with_tables_but_no_metadata_is_refused_untouched(
    schema: str, clock: FakeClock
) -> None:
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        await connection.execute(
            f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".jobs (name text)'
        )
    finally:
        await connection.close()

    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        store = PostgreSQLDataStore(tagged_url(schema))
        with pytest.raises(RuntimeError, match=r"has tables \['jobs'\] but no asched metadata"):
            await store.start(stack, broker, logging.getLogger("test"), clock)

    assert await table_columns(schema) == {"jobs": ["name"]}


V1_SCHEMA = Path(__file__).with_name("postgresql_schema_v1.sql").read_text()


async def test_version_1_schema_is_migrated_in_place(schema: str, clock: FakeClock) -> None:
    quoted = f'"{schema}"'
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        await connection.execute(V1_SCHEMA.format(schema=quoted))
        await connection.execute(
            f"INSERT INTO {quoted}.metadata VALUES ('schema_version', '1');"
            f"INSERT INTO {quoted}.tasks VALUES ('limited', NULL, 'async', 1, NULL, '{{}}')"
        )
        # one job of the limited task running (it holds the task's only slot), one queued
        for created_at, acquired_by, acquired_until in [
            (clock.now(), "old-worker", clock.now() + timedelta(minutes=1)),
            (clock.now() + timedelta(seconds=1), None, None),
        ]:
            await connection.execute(
                f"INSERT INTO {quoted}.jobs (id, task_id, args, kwargs, jitter, "
                "result_expiration_time, created_at, acquired_by, acquired_until) "
                "VALUES (gen_random_uuid(), 'limited', $4, $5, 0, 0, $1, $2, $3)",
                created_at,
                acquired_by,
                acquired_until,
                pickle.dumps(()),
                pickle.dumps({}),
            )
    finally:
        await connection.close()

    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        # the running job still holds the slot: the queued one waits
        assert await store.acquire_jobs("new-worker", timedelta(minutes=1), 10) == []
        [running, queued] = await store.get_jobs()
        await store.release_jobs(
            "old-worker", [JobResult.for_job(running, JobOutcome.success, finished_at=clock.now())]
        )
        assert [job.id for job in await store.acquire_jobs("new", timedelta(minutes=1), 10)] == [
            queued.id
        ]
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
        assert [item.id for item in await store.acquire_schedules("new", timedelta(1), 10)] == [
            "s1"
        ]

    columns = await table_columns(schema)
    assert "sequence" not in columns["jobs"]
    assert columns["job_slots"] == ["kind", "id", "taken"]
    assert columns["schedules"][-1] == "revision"  # on through version 2
    assert columns["schedule_writes"] == ["token", "written_at"]
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        assert await connection.fetchval(
            f"SELECT value FROM {quoted}.metadata WHERE key = 'schema_version'"
        ) == str(SCHEMA_VERSION)
        indexes = {
            row["indexname"]: row["indexdef"]
            for row in await connection.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
            )
        }
    finally:
        await connection.close()
    assert "(next_run_time, id)" in indexes["schedules_due"]
    assert "acquired_by IS NULL" in indexes["schedules_due"]
    assert "(created_at, id)" in indexes["jobs_queued"]
    assert "(written_at)" in indexes["schedule_writes_age"]


V2_SCHEMA = Path(__file__).with_name("postgresql_schema_v2.sql").read_text()


async def test_version_2_schema_is_migrated_in_place(schema: str, clock: FakeClock) -> None:
    quoted = f'"{schema}"'
    schedule = due_schedule("s1", clock)
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        await connection.execute(V2_SCHEMA.format(schema=quoted))
        await connection.execute(
            f"INSERT INTO {quoted}.metadata VALUES ('schema_version', '2');"
            f"INSERT INTO {quoted}.tasks VALUES ('task', NULL, 'async', NULL, NULL, '{{}}')"
        )
        # a schedule as version 2 stored it (no revision), leased by a scheduler
        await connection.execute(
            f"INSERT INTO {quoted}.schedules (id, task_id, trigger, args, kwargs, paused, "
            "coalesce, job_result_expiration_time, metadata, next_fire_time, next_run_time, "
            "acquired_by, acquired_until) "
            "VALUES ('s1', 'task', $1, $2, $3, false, 'latest', 0, '{}', $4, $4, 'old', $5)",
            json.dumps(schedule.trigger.to_dict()),
            pickle.dumps(()),
            pickle.dumps({}),
            clock.now(),
            clock.now() + LEASE,
        )
    finally:
        await connection.close()
    before = await table_columns(schema)

    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        [stored] = await store.get_schedules()
        assert (stored.revision, stored.acquired_by, stored.trigger) == (
            0,
            "old",
            schedule.trigger,
        )
        # the old scheduler's release still applies: progress is no revision
        later = clock.now() + timedelta(seconds=1)
        update = ScheduleUpdate(
            schedule_id="s1", next_fire_time=later, next_run_time=later, last_fire_time=None
        )
        await store.release_schedules("old", [update])
        [released] = await store.get_schedules()
        assert (released.acquired_by, released.revision) == (None, 0)
        updated = await store.update_schedule_definition(attrs.evolve(released, name="new"))
        assert updated is not None
        assert (updated.name, updated.revision) == ("new", 1)
        with pytest.raises(StaleScheduleError):
            await store.update_schedule_definition(attrs.evolve(released, name="stale"))

    # one column added at the end, one table (that the update above wrote to); nothing else
    # changed
    after = await table_columns(schema)
    assert after == {
        **before,
        "schedules": [*before["schedules"], "revision"],
        "schedule_writes": ["token", "written_at"],
    }
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        assert await connection.fetchval(
            f"SELECT value FROM {quoted}.metadata WHERE key = 'schema_version'"
        ) == str(SCHEMA_VERSION)
        assert await connection.fetchval(f"SELECT count(*) FROM {quoted}.schedule_writes") == 1
        assert await connection.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
            schema,
            "schedule_writes_age",
        )
    finally:
        await connection.close()


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


#
# Isolation, retries, statements
#


@pytest.fixture(params=["url", "application-pool"])
async def repeatable_read_stores(
    request: pytest.FixtureRequest, schema: str, clock: FakeClock
) -> object:
    """Four stores on one schema whose connections default to REPEATABLE READ."""
    async with AsyncExitStack() as stack:
        if request.param == "url":
            sources: list[Any] = [
                f"{tagged_url(schema)}&default_transaction_isolation=repeatable%20read"
            ] * 4
        else:
            pool = await asyncpg.create_pool(
                POSTGRESQL_URL,
                min_size=1,
                max_size=8,
                server_settings={"default_transaction_isolation": "repeatable read"},
            )
            stack.push_async_callback(pool.close)
            assert await pool.fetchval("SHOW default_transaction_isolation") == "repeatable read"
            sources = [pool] * 4
        yield [await started_store(stack, source, clock, schema=schema) for source in sources]


async def test_max_running_jobs_holds_when_the_server_defaults_to_repeatable_read(
    repeatable_read_stores: list[PostgreSQLDataStore], clock: FakeClock
) -> None:
    stores = repeatable_read_stores
    await stores[0].add_task(Task(id="limited", job_executor="async", max_running_jobs=1))

    async def acquire(acquired: list[list[Job]], index: int) -> None:
        acquired[index] = await stores[index].acquire_jobs(
            f"worker-{index}", timedelta(minutes=1), 2
        )

    for _ in range(20):
        await stores[0].add_jobs(
            [Job(task_id="limited", created_at=clock.now()) for _ in range(6)]
        )
        acquired: list[list[Job]] = [[] for _ in stores]
        async with anyio.create_task_group() as task_group:
            for index in range(len(stores)):
                task_group.start_soon(acquire, acquired, index)

        running = [job for job in await stores[0].get_jobs() if job.acquired_by is not None]
        assert len(running) == sum(map(len, acquired)) == 1
        [(index, [job])] = [(index, jobs) for index, jobs in enumerate(acquired) if jobs]
        await stores[index].release_jobs(
            f"worker-{index}",
            [JobResult.for_job(job, JobOutcome.success, finished_at=clock.now())],
        )
        # the rest of the round's jobs are done with before the next round
        for _ in await stores[0].get_jobs():
            [taken] = await stores[0].acquire_jobs("drain", timedelta(minutes=1), 1)
            await stores[0].release_jobs(
                "drain", [JobResult.for_job(taken, JobOutcome.success, finished_at=clock.now())]
            )


async def fail_next_update(schema: str, table: str) -> None:
    """Make the next UPDATE of ``table`` fail, once, with a real serialization failure."""
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        await connection.execute(
            f"""
            CREATE SEQUENCE IF NOT EXISTS "{schema}".injected_failures;
            ALTER SEQUENCE "{schema}".injected_failures RESTART;
            CREATE OR REPLACE FUNCTION "{schema}".fail_once() RETURNS trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('"{schema}".injected_failures') = 1 THEN
                        RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
                    END IF;
                    RETURN NEW;
                END $$;
            CREATE OR REPLACE TRIGGER fail_once BEFORE UPDATE ON "{schema}".{table}
                FOR EACH ROW EXECUTE FUNCTION "{schema}".fail_once();
            """
        )
    finally:
        await connection.close()


async def test_a_retried_operation_leases_from_its_own_attempt(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease starts at the attempt that succeeded, not before the first wait."""
    lease = timedelta(seconds=2)
    clock = Clock()  # real time: the retry waits a real second

    async with AsyncExitStack() as stack:
        store = await started_store(
            stack,
            tagged_url(schema),
            clock,  # type: ignore[arg-type]
            retry_settings=RetrySettings(attempts=3, wait_min=1.0),
        )
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_jobs([Job(task_id="task", created_at=clock.now())])
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)  # type: ignore[arg-type]

        with caplog.at_level(logging.WARNING):
            await fail_next_update(schema, "jobs")
            [job] = await store.acquire_jobs("me", lease, 10)
            [stored] = await store.get_jobs()
            assert stored.acquired_until is not None
            assert stored.acquired_until - clock.now() > lease - timedelta(seconds=0.5)

            await fail_next_update(schema, "jobs")
            await store.extend_acquired_leases("me", [job.id], lease)
            [stored] = await store.get_jobs()
            assert stored.acquired_until is not None
            assert stored.acquired_until - clock.now() > lease - timedelta(seconds=0.5)

            await fail_next_update(schema, "schedules")
            [schedule] = await store.acquire_schedules("me", lease, 10)
            assert schedule.acquired_until is not None
            assert schedule.acquired_until - clock.now() > lease - timedelta(seconds=0.5)

    retries = [record for record in caplog.records if "transient error" in record.getMessage()]
    assert len(retries) == 3


async def store_behind_a_proxy(
    stack: AsyncExitStack, schema: str, clock: FakeClock, **options: Any
) -> tuple[ReplyDroppingProxy, PostgreSQLDataStore]:
    """A started store connected through a reply-dropping proxy."""
    proxy, proxied_url = await stack.enter_async_context(reply_dropping_proxy(tagged_url(schema)))
    return proxy, await started_store(stack, proxied_url, clock, **options)


async def three_due_behind_a_proxy(
    stack: AsyncExitStack, schema: str, clock: FakeClock, retry_settings: RetrySettings
) -> tuple[ReplyDroppingProxy, PostgreSQLDataStore]:
    """A store connected through a reply-dropping proxy, with three due jobs and schedules."""
    proxy, store = await store_behind_a_proxy(stack, schema, clock, retry_settings=retry_settings)
    await store.add_task(Task(id="task", job_executor="async"))
    await store.add_jobs([Job(task_id="task", created_at=clock.now()) for _ in range(3)])
    for index in range(3):
        await store.add_schedule(due_schedule(f"s{index}", clock), ConflictPolicy.exception)
    return proxy, store


@pytest.mark.parametrize("what", ["jobs", "schedules"])
async def test_an_acquisition_whose_reply_was_lost_after_commit_is_taken_back_by_its_retry(
    schema: str, clock: FakeClock, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    """What a committed attempt leased is returned by the retry, not stranded in a lease."""
    async with AsyncExitStack() as stack:
        proxy, store = await three_due_behind_a_proxy(
            stack, schema, clock, RetrySettings(attempts=3, wait_min=0.01)
        )
        table = f'"{schema}".{what}'
        proxy.drop_reply_to(lambda text: "SKIP LOCKED" in text and f"UPDATE {table}" in text)
        acquired: set[object]
        stored: list[Job] | list[Schedule]
        with caplog.at_level(logging.WARNING):
            if what == "jobs":
                acquired = {job.id for job in await store.acquire_jobs("me", LEASE, 10)}
                stored = await store.get_jobs()
            else:
                acquired = {s.id for s in await store.acquire_schedules("me", LEASE, 10)}
                stored = await store.get_schedules()

    assert proxy.dropped == 1
    assert any("transient error" in record.getMessage() for record in caplog.records)
    # every row the lost attempt leased came back to the caller, under the retry's lease
    assert acquired == {row.id for row in stored}
    lease_ends = {row.acquired_until for row in stored}
    assert len(lease_ends) == 1
    assert all(row.acquired_by == "me" for row in stored)


@pytest.mark.parametrize("max_running_jobs", [None, 2])
async def test_an_addition_whose_reply_was_lost_after_commit_is_not_a_conflict_on_retry(
    schema: str, clock: FakeClock, max_running_jobs: int | None
) -> None:
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack, schema, clock, retry_settings=RetrySettings(attempts=3, wait_min=0.01)
        )
        assert store._event_broker is not None
        store._event_broker.subscribe(recorder)
        await store.add_task(Task(id="task", job_executor="async"))
        schedule = attrs.evolve(due_schedule("s1", clock), max_running_jobs=max_running_jobs)

        proxy.drop_reply_to(lambda text: f'INSERT INTO "{schema}".schedules' in text)
        await store.add_schedule(schedule, ConflictPolicy.exception)

        assert proxy.dropped == 1
        assert await store.get_schedules() == [schedule]
        assert [event.schedule_id for event in recorder.of_type(ScheduleAdded)] == ["s1"]
        # another schedule of that id is still a conflict
        with pytest.raises(ConflictingIdError):
            await store.add_schedule(attrs.evolve(schedule, args=(1,)), ConflictPolicy.exception)


@pytest.mark.parametrize("rescheduling", [False, True], ids=["definition", "rescheduling"])
async def test_an_update_whose_reply_was_lost_after_commit_is_not_stale_on_retry(
    schema: str, clock: FakeClock, rescheduling: bool
) -> None:
    """The retry finds the lost attempt's write (its token): success, not StaleScheduleError.

    A scheduler leases the schedule between the commit and the retry: progress and lease
    moving on do not make the committed update look like someone else's.
    """
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack, schema, clock, retry_settings=RetrySettings(attempts=3, wait_min=0.5)
        )
        other = await started_store(stack, tagged_url(schema), clock)
        assert store._event_broker is not None
        store._event_broker.subscribe(recorder)
        await store.add_task(Task(id="task", job_executor="async"))
        schedule = attrs.evolve(due_schedule("s1", clock), max_running_jobs=2)
        await store.add_schedule(schedule, ConflictPolicy.exception)
        [read] = await store.get_schedules()
        changed = attrs.evolve(read, name="new", max_running_jobs=3)
        if rescheduling:
            later = clock.now() + timedelta(minutes=1)
            changed = attrs.evolve(changed, next_fire_time=later, next_run_time=later)
        recorder.clear()

        async def lease_it_meanwhile() -> None:
            with anyio.fail_after(10):
                while not proxy.dropped:  # noqa: ASYNC110 - the proxy only counts
                    await anyio.sleep(0.01)
            clock.advance(60)
            assert [item.id for item in await other.acquire_schedules("other", LEASE, 1)] == ["s1"]

        proxy.drop_reply_to(
            lambda text: f'UPDATE "{schema}".schedules' in text and "revision + 1" in text
        )
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(lease_it_meanwhile)
            updated = await store.update_schedule_definition(
                changed, rescheduled_from=read if rescheduling else None
            )

        assert proxy.dropped == 1
        [stored] = await store.get_schedules()
        assert updated == stored
        assert (stored.name, stored.max_running_jobs, stored.revision) == ("new", 3, 1)
        assert stored.acquired_by == "other"
        assert stored.next_fire_time == changed.next_fire_time
        assert [event.schedule_id for event in recorder.of_type(ScheduleUpdated)] == ["s1"]
        # the schedule's counter was created once
        assert await slot_counts(schema) == {("schedule", "s1"): 0}
        with pytest.raises(StaleScheduleError):
            await store.update_schedule_definition(attrs.evolve(read, name="again"))


@pytest.mark.parametrize("rescheduling", [False, True], ids=["definition", "rescheduling"])
async def test_an_update_whose_reply_was_lost_is_not_written_again_over_a_later_write(
    schema: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, rescheduling: bool
) -> None:
    """Another store writes over the lost attempt's update before the retry.

    The retry recognizes its own committed write (by the operation's token, although the row
    is at the read revision plus two by then): success, so its caller does not read again
    and write its change a second time, over the other writer's acknowledged one.
    """
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack, schema, clock, retry_settings=RetrySettings(attempts=3, wait_min=0.01)
        )
        other = await started_store(stack, tagged_url(schema), clock)
        assert store._event_broker is not None
        store._event_broker.subscribe(recorder)
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
        [read] = await store.get_schedules()
        changed = attrs.evolve(read, args=(1,))
        later = clock.now() + timedelta(minutes=1)
        if rescheduling:
            changed = attrs.evolve(changed, next_fire_time=later, next_run_time=later)
        recorder.clear()

        # the retry waits until the other store has read the lost attempt's write and
        # written over it
        overwritten = anyio.Event()
        pooled = store._pooled

        @asynccontextmanager
        async def retry_after_the_other_write() -> AsyncIterator[asyncpg.Connection]:
            if proxy.dropped:
                await overwritten.wait()
            async with pooled() as connection:
                yield connection

        monkeypatch.setattr(store, "_pooled", retry_after_the_other_write)

        async def write_over_it_meanwhile() -> None:
            with anyio.fail_after(10):
                while not proxy.dropped:  # noqa: ASYNC110 - the proxy only counts
                    await anyio.sleep(0.01)
            [seen] = await other.get_schedules()
            assert (seen.args, seen.revision) == ((1,), read.revision + 1)
            assert await other.update_schedule_definition(attrs.evolve(seen, args=(2,)))
            overwritten.set()

        proxy.drop_reply_to(
            lambda text: f'UPDATE "{schema}".schedules' in text and "revision + 1" in text
        )
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(write_over_it_meanwhile)
            updated = await store.update_schedule_definition(
                changed, rescheduled_from=read if rescheduling else None
            )

        assert proxy.dropped == 1
        [stored] = await store.get_schedules()
        assert updated == stored  # as stored now: with the other write
        assert (stored.args, stored.revision) == ((2,), read.revision + 2)
        assert stored.next_fire_time == (later if rescheduling else read.next_fire_time)
        # one event for this store's write (the retry's), none for the other store's
        assert [event.schedule_id for event in recorder.of_type(ScheduleUpdated)] == ["s1"]


async def test_a_stale_update_whose_reply_was_lost_is_still_stale_on_retry(
    schema: str, clock: FakeClock
) -> None:
    """Only a write leaves the operation's token: a retry of a stale attempt is stale too."""
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack, schema, clock, retry_settings=RetrySettings(attempts=3, wait_min=0.01)
        )
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
        [read] = await store.get_schedules()
        assert await store.update_schedule_definition(attrs.evolve(read, name="first"))

        proxy.drop_reply_to(
            lambda text: f'UPDATE "{schema}".schedules' in text and "revision + 1" in text
        )
        with pytest.raises(StaleScheduleError):
            await store.update_schedule_definition(attrs.evolve(read, name="stale"))

        assert proxy.dropped == 1
        [stored] = await store.get_schedules()
        assert (stored.name, stored.revision) == ("first", 1)


async def test_a_second_update_from_the_same_read_is_stale_even_if_it_changes_the_same(
    schema: str, clock: FakeClock
) -> None:
    """A stored row alike to what an update writes is not its own write: only its token is."""
    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
        [read] = await store.get_schedules()
        paused = attrs.evolve(read, paused=True)
        first = await store.update_schedule_definition(paused)
        assert first is not None
        assert first.revision == 1

        with pytest.raises(StaleScheduleError):
            await store.update_schedule_definition(paused)
        assert (await store.get_schedules())[0].revision == 1


async def test_cleanup_forgets_the_tokens_of_schedule_writes_after_an_hour(
    schema: str, clock: FakeClock
) -> None:
    async def tokens() -> int:
        connection = await asyncpg.connect(POSTGRESQL_URL)
        try:
            count: int = await connection.fetchval(
                f'SELECT count(*) FROM "{schema}".schedule_writes'
            )
            return count
        finally:
            await connection.close()

    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
        [read] = await store.get_schedules()
        first = await store.update_schedule_definition(attrs.evolve(read, name="first"))
        assert first is not None
        clock.advance(30 * 60)
        assert await store.update_schedule_definition(attrs.evolve(first, name="second"))
        with pytest.raises(StaleScheduleError):  # a stale update leaves no token
            await store.update_schedule_definition(attrs.evolve(read, name="stale"))
        assert await tokens() == 2

        clock.advance(30 * 60)  # the first write is an hour old: kept up to then
        await store.cleanup()
        assert await tokens() == 2
        clock.advance(1)
        await store.cleanup()
        assert await tokens() == 1
        clock.advance(30 * 60)
        await store.cleanup()
        assert await tokens() == 0
        assert [s.name for s in await store.get_schedules()] == ["second"]


@pytest.mark.parametrize("what", ["jobs", "schedules"])
async def test_what_a_failed_acquisition_leased_goes_to_the_schedulers_next_one(
    schema: str, clock: FakeClock, what: str
) -> None:
    async with AsyncExitStack() as stack:
        proxy, store = await three_due_behind_a_proxy(
            stack, schema, clock, RetrySettings(attempts=1)
        )
        table = f'"{schema}".{what}'
        proxy.drop_reply_to(lambda text: "SKIP LOCKED" in text and f"UPDATE {table}" in text)
        acquire = store.acquire_jobs if what == "jobs" else store.acquire_schedules
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await acquire("me", LEASE, 10)  # committed, but no attempt is left to retry
        assert await acquire("other", LEASE, 10) == []  # leased to "me" meanwhile

        again = await acquire("me", LEASE, 10)

    assert proxy.dropped == 1
    assert len(again) == 3


async def test_an_attempt_waiting_on_a_silent_connection_times_out_and_is_retried(
    schema: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack,
            schema,
            clock,
            timeout=0.5,
            retry_settings=RetrySettings(attempts=3, wait_min=0.01),
        )
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_jobs([Job(task_id="task", created_at=clock.now())])

        proxy.drop_reply_to(lambda text: "SKIP LOCKED" in text, stall=True)
        with caplog.at_level(logging.WARNING), anyio.fail_after(10):
            acquired = await store.acquire_jobs("me", LEASE, 10)

    assert len(acquired) == 1
    assert proxy.dropped == 1
    retries = [record for record in caplog.records if "transient error" in record.getMessage()]
    assert len(retries) == 1
    assert "TimeoutError" in retries[0].getMessage()


async def test_an_exhausted_application_pool_is_waited_on_for_a_bounded_time_and_retried(
    schema: str, clock: FakeClock
) -> None:
    pool = await asyncpg.create_pool(POSTGRESQL_URL, min_size=1, max_size=1)
    try:
        async with AsyncExitStack() as stack:
            store = await started_store(
                stack,
                pool,
                clock,
                schema=schema,
                timeout=0.2,
                retry_settings=RetrySettings(attempts=50, wait_min=0.01, wait_max=0.01),
            )
            await store.add_task(Task(id="task", job_executor="async"))
            held = await pool.acquire()  # the application holds the pool's only connection
            tasks: list[Task] = []
            timed_out = anyio.Event()

            class TimeoutSeen(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    if "TimeoutError" in record.getMessage():
                        timed_out.set()

            async def read_tasks() -> None:
                tasks.extend(await store.get_tasks())

            handler = TimeoutSeen()
            logging.getLogger("test").addHandler(handler)
            try:
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(read_tasks)
                        await timed_out.wait()  # an attempt gave up waiting for a connection
                        await pool.release(held)  # the next attempt gets it
            finally:
                logging.getLogger("test").removeHandler(handler)
        assert [task.id for task in tasks] == ["task"]
    finally:
        await pool.close()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be positive, got 0"):
        PostgreSQLDataStore(POSTGRESQL_URL, timeout=0)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def test_next_lookups_read_one_partial_index_each(schema: str, clock: FakeClock) -> None:
    """With 20,000 schedules and jobs, each "next" lookup walks its own index in order."""
    async with AsyncExitStack() as stack:
        store = await started_store(stack, tagged_url(schema), clock)
        statements = store._sql
    quoted = f'"{schema}"'
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        # a tenth paused, a hundredth leased; jobs likewise a hundredth running
        await connection.execute(
            f"""
            INSERT INTO {quoted}.schedules (id, task_id, trigger, args, kwargs, paused,
                coalesce, job_result_expiration_time, metadata, next_fire_time,
                next_run_time, acquired_by, acquired_until)
            SELECT 's' || g, 'task', '{{}}', '', '', g % 10 = 0, 'latest', 0, '{{}}',
                   $1::timestamptz + g * interval '1 second',
                   $1::timestamptz + g * interval '1 second',
                   CASE WHEN g % 100 = 1 THEN 'other' END,
                   CASE WHEN g % 100 = 1 THEN $1::timestamptz + interval '1 hour' END
            FROM generate_series(1, 20000) g;
            """,
            clock.now(),
        )
        await connection.execute(
            f"""
            INSERT INTO {quoted}.jobs (id, task_id, args, kwargs, jitter,
                result_expiration_time, created_at, acquired_by, acquired_until)
            SELECT gen_random_uuid(), 'task', '', '', 0, 0, $1::timestamptz + g * interval '1 ms',
                   CASE WHEN g % 100 = 1 THEN 'other' END,
                   CASE WHEN g % 100 = 1 THEN $1::timestamptz + interval '1 hour' END
            FROM generate_series(1, 20000) g
            """,
            clock.now(),
        )
        for table in ("schedules", "jobs", "tasks", "job_slots"):
            await connection.execute(f"VACUUM ANALYZE {quoted}.{table}")  # sets the visibility map

        # the plans the store runs: its pool keeps one generic plan per prepared statement
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        types = {
            "next_schedule_run_time": "",
            "acquire_schedules": "text, timestamptz, timestamptz, bigint, text[]",
            "acquire_jobs": "text, timestamptz, timestamptz, bigint",
        }

        async def plan(name: str, *args: object) -> list[dict[str, Any]]:
            parameters = f"({types[name]})" if types[name] else ""
            await connection.execute(f"PREPARE {name} {parameters} AS {statements[name]}")
            # EXPLAIN EXECUTE takes no bound parameters: the arguments go in as literals
            arguments = ", ".join(
                f"'{arg.isoformat()}'" if isinstance(arg, datetime) else repr(arg) for arg in args
            )
            execute = f"EXECUTE {name}({arguments})" if args else f"EXECUTE {name}"
            text = await connection.fetchval(f"EXPLAIN (FORMAT JSON) {execute}")
            return list(plan_nodes(json.loads(text)[0]["Plan"]))

        soon = clock.now() + timedelta(minutes=30)
        nodes = await plan("next_schedule_run_time")
        index_only = {n["Index Name"] for n in nodes if n["Node Type"] == "Index Only Scan"}
        assert index_only == {"schedules_due", "schedules_leased"}
        assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Index Scan", "Sort")]

        # acquisitions lock the rows they take, so they read the heap, but only for the rows
        # they return: an ordered range scan of the partial index, no sort, no other scan
        for name, table, index, args in [
            ("acquire_schedules", "schedules", "schedules_due", ("me", soon, soon, 100, "{}")),
            ("acquire_jobs", "jobs", "jobs_queued", ("me", soon, soon, 100)),
        ]:
            nodes = await plan(name, *args)
            [lock] = [
                node
                for node in nodes
                if node["Node Type"] == "LockRows"
                and any(n.get("Index Name") == index for n in plan_nodes(node))
            ]
            [scan] = [n for n in plan_nodes(lock) if n.get("Relation Name") == table]
            assert (scan["Node Type"], scan["Index Name"]) == ("Index Scan", index)
            assert not [n for n in plan_nodes(lock) if n["Node Type"] == "Sort"]
            seq_scans = [n for n in nodes if n["Node Type"] == "Seq Scan"]
            assert not [n for n in seq_scans if n["Relation Name"] in ("schedules", "jobs")]
    finally:
        await connection.close()


async def test_batch_operations_are_one_statement_each(schema: str, clock: FakeClock) -> None:
    sent: list[str] = []
    pool = await asyncpg.create_pool(
        tagged_url(schema).replace(f"schema={schema}&", ""),
        min_size=1,
        max_size=2,
        init=logging_queries_to(sent),
        reset=without_reset,
    )
    try:
        async with AsyncExitStack() as stack:
            store = await started_store(stack, pool, clock, schema=schema)
            await store.add_task(Task(id="limited", job_executor="async", max_running_jobs=5))
            await store.add_schedule(due_schedule("s1", clock), ConflictPolicy.exception)
            await store.add_jobs(
                [Job(task_id="limited", created_at=clock.now()) for _ in range(5)]
            )
            counts: dict[str, int] = {}

            async def count(name: str, operation: Any) -> Any:
                sent.clear()
                result = await operation
                counts[name] = len(sent)
                return result

            jobs = await count("acquire_jobs", store.acquire_jobs("me", timedelta(minutes=1), 3))
            assert len(jobs) == 3
            results = [
                JobResult.for_job(job, JobOutcome.success, finished_at=clock.now()) for job in jobs
            ]
            await count("release_jobs", store.release_jobs("me", results))
            unstarted = await store.acquire_jobs("me", timedelta(minutes=1), 5)
            assert len(unstarted) == 2
            await count("return_jobs", store.return_jobs("me", unstarted))
            schedules = await count(
                "acquire_schedules", store.acquire_schedules("me", timedelta(minutes=1), 5)
            )
            assert len(schedules) == 1
            update = ScheduleUpdate(
                schedule_id="s1",
                next_fire_time=clock.now() + timedelta(seconds=1),
                next_run_time=clock.now() + timedelta(seconds=1),
                last_fire_time=clock.now(),
                jobs=tuple(
                    Job(task_id="limited", schedule_id="s1", created_at=clock.now())
                    for _ in range(3)
                ),
            )
            await count("release_schedules", store.release_schedules("me", [update]))
            await count("cleanup", store.cleanup())
            await count("next_schedule_run_time", store.get_next_schedule_run_time())
            [schedule] = await store.get_schedules()
            rescheduled = attrs.evolve(
                schedule, name="new", next_fire_time=clock.now(), next_run_time=clock.now()
            )
            for rescheduled_from in (None, schedule):
                sent.clear()
                with pytest.raises(StaleScheduleError):  # told apart from missing at once
                    await store.update_schedule_definition(
                        attrs.evolve(rescheduled, revision=5), rescheduled_from=rescheduled_from
                    )
                counts["stale_update_schedule_definition"] = len(sent)
                written = await count(
                    "update_schedule_definition",
                    store.update_schedule_definition(
                        rescheduled, rescheduled_from=rescheduled_from
                    ),
                )
                assert written is not None
                rescheduled = attrs.evolve(rescheduled, revision=written.revision)
    finally:
        await pool.close()
    assert counts == dict.fromkeys(counts, 1)
    assert len(counts) == 9


def logging_queries_to(sent: list[str]) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """A pool ``init`` that appends each query a connection sends to ``sent``."""

    async def init(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda record: sent.append(record.query))

    return init


async def without_reset(connection: asyncpg.Connection) -> None:
    """A pool ``reset`` that sends nothing (as the store's own pool does)."""


#
# Running-job counters
#


async def slot_counts(schema: str) -> dict[tuple[str, str], int]:
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        rows = await connection.fetch(f'SELECT kind, id, taken FROM "{schema}".job_slots')
    finally:
        await connection.close()
    return {(row["kind"], row["id"]): row["taken"] for row in rows}


async def limited_store(
    stack: AsyncExitStack, schema: str, clock: FakeClock
) -> PostgreSQLDataStore:
    """A store with a task and a schedule of that task, each limited to 5 running jobs."""
    store = await started_store(stack, tagged_url(schema), clock)
    await store.add_task(Task(id="task", job_executor="async", max_running_jobs=5))
    far = clock.now() + timedelta(days=1)
    await store.add_schedule(
        Schedule(
            id="s1",
            task_id="task",
            trigger=due_schedule("s1", clock).trigger,
            next_fire_time=far,
            next_run_time=far,
            max_running_jobs=5,
        ),
        ConflictPolicy.exception,
    )
    return store


async def wait_for_a_lock_wait(connection: asyncpg.Connection, application_name: str) -> None:
    """Return once a connection of ``application_name`` waits for a lock (the server says)."""
    with anyio.fail_after(10):
        for _ in range(1000):
            if await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            ):
                return
            await anyio.sleep(0.01)
    raise AssertionError(f"no connection of {application_name!r} waited for a lock")


@pytest.mark.parametrize("kind", ["schedule", "task"])
async def test_operations_waiting_on_a_counter_updated_meanwhile_keep_it_exact(
    schema: str, clock: FakeClock, kind: str
) -> None:
    """A counter row another transaction changes under an operation is re-read, not lost."""
    async with AsyncExitStack() as stack:
        store = await limited_store(stack, schema, clock)
        await store.add_jobs(
            [Job(task_id="task", schedule_id="s1", created_at=clock.now()) for _ in range(3)]
        )
        [first] = await store.acquire_jobs("me", timedelta(minutes=1), 1)

        async def while_counter_is_changed_elsewhere(operation: Any) -> Any:
            other = await asyncpg.connect(POSTGRESQL_URL)
            try:
                transaction = other.transaction()
                await transaction.start()
                await other.execute(
                    f'UPDATE "{schema}".job_slots SET taken = taken WHERE kind = $1', kind
                )
                outcome: list[Any] = []

                async def run() -> None:
                    outcome.append(await operation)

                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(run)
                    await wait_for_a_lock_wait(other, schema)  # the operation waits for the row
                    await transaction.commit()
                return outcome[0]
            finally:
                await other.close()

        await while_counter_is_changed_elsewhere(
            store.release_jobs(
                "me", [JobResult.for_job(first, JobOutcome.success, finished_at=clock.now())]
            )
        )
        assert await slot_counts(schema) == {("task", "task"): 0, ("schedule", "s1"): 0}

        acquired = await while_counter_is_changed_elsewhere(
            store.acquire_jobs("me", timedelta(minutes=1), 1)
        )
        assert len(acquired) == 1
        assert await slot_counts(schema) == {("task", "task"): 1, ("schedule", "s1"): 1}

        await while_counter_is_changed_elsewhere(store.return_jobs("me", acquired))
        assert await slot_counts(schema) == {("task", "task"): 0, ("schedule", "s1"): 0}


async def slot_flags(schema: str) -> dict[object, tuple[bool, bool]]:
    """Which counters each stored job holds: (task_slot, schedule_slot) by job id."""
    connection = await asyncpg.connect(POSTGRESQL_URL)
    try:
        rows = await connection.fetch(f'SELECT id, task_slot, schedule_slot FROM "{schema}".jobs')
    finally:
        await connection.close()
    return {row["id"]: (row["task_slot"], row["schedule_slot"]) for row in rows}


async def test_returned_jobs_give_their_slots_back_and_hold_them_once_when_taken_again(
    schema: str, clock: FakeClock
) -> None:
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        store = await limited_store(stack, schema, clock)
        other = await started_store(stack, tagged_url(schema), clock)
        assert store._event_broker is not None
        store._event_broker.subscribe(recorder)
        jobs = [
            Job(
                task_id="task",
                schedule_id="s1" if index % 2 else None,
                created_at=clock.now() + timedelta(microseconds=index),
            )
            for index in range(7)
        ]
        await store.add_jobs(jobs)
        taken = await store.acquire_jobs("me", LEASE, 10)
        assert [job.id for job in taken] == [job.id for job in jobs[:5]]
        assert await slot_counts(schema) == {("task", "task"): 5, ("schedule", "s1"): 2}
        recorder.clear()

        await store.return_jobs("someone else", [taken[0]])  # not theirs: ignored
        await store.return_jobs("me", [*taken[1:4], jobs[6]])  # jobs[6] is queued: ignored

        assert [event.job_id for event in recorder.of_type(JobAdded)] == [
            job.id for job in jobs[1:4]
        ]
        assert await slot_counts(schema) == {("task", "task"): 2, ("schedule", "s1"): 0}
        flags = await slot_flags(schema)
        assert [flags[job.id] for job in jobs] == [
            (True, False),
            (False, False),  # returned: queued rows hold no slot
            (False, False),
            (False, False),
            (True, False),
            (False, False),
            (False, False),
        ]

        # three free task slots: the returned jobs, first in line again, each counted once
        again = await other.acquire_jobs("other", LEASE, 10)
        assert [job.id for job in again] == [job.id for job in jobs[1:4]]
        assert await slot_counts(schema) == {("task", "task"): 5, ("schedule", "s1"): 2}

        await store.release_jobs(
            "me",
            [
                JobResult.for_job(job, JobOutcome.success, finished_at=clock.now())
                for job in (taken[0], taken[4])
            ],
        )
        await other.return_jobs("other", again)
        assert await slot_counts(schema) == {("task", "task"): 0, ("schedule", "s1"): 0}
        assert all(held == (False, False) for held in (await slot_flags(schema)).values())


async def test_a_return_whose_reply_was_lost_after_commit_is_not_repeated_by_its_retry(
    schema: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        proxy, store = await store_behind_a_proxy(
            stack, schema, clock, retry_settings=RetrySettings(attempts=3, wait_min=0.01)
        )
        assert store._event_broker is not None
        store._event_broker.subscribe(recorder)
        await store.add_task(Task(id="task", job_executor="async", max_running_jobs=2))
        jobs = [
            Job(task_id="task", created_at=clock.now() + timedelta(microseconds=index))
            for index in range(3)
        ]
        await store.add_jobs(jobs)
        taken = await store.acquire_jobs("me", LEASE, 10)
        assert len(taken) == 2
        recorder.clear()

        proxy.drop_reply_to(lambda text: "task_slot = false" in text)
        with caplog.at_level(logging.WARNING):
            await store.return_jobs("me", taken)

        assert proxy.dropped == 1
        assert any("transient error" in record.getMessage() for record in caplog.records)
        # the retry returned nothing more: the slots were given back once, and no event
        # names a job that was not returned
        assert await slot_counts(schema) == {("task", "task"): 0}
        assert [job.acquired_by for job in await store.get_jobs()] == [None, None, None]
        added = [event.job_id for event in recorder.of_type(JobAdded)]
        assert len(set(added)) == len(added)
        assert set(added) <= {job.id for job in taken}
        again = await store.acquire_jobs("other", LEASE, 10)
        assert [job.id for job in again] == [job.id for job in jobs[:2]]
        assert await slot_counts(schema) == {("task", "task"): 2}


async def test_counters_come_back_to_zero_after_concurrent_workers(
    schema: str, clock: FakeClock
) -> None:
    """Workers race to acquire and release or return; some leases lapse, cleanup abandons them."""
    chooser = random.Random(4)
    async with AsyncExitStack() as stack:
        store = await limited_store(stack, schema, clock)
        stores = [store] + [await started_store(stack, tagged_url(schema), clock) for _ in "ab"]
        await store.add_jobs(
            [
                Job(
                    task_id="task",
                    schedule_id="s1" if chooser.random() < 0.5 else None,
                    created_at=clock.now() + timedelta(microseconds=index),
                    result_expiration_time=timedelta(minutes=1),
                )
                for index in range(120)
            ]
        )
        ended: set[object] = set()
        peak = 0

        async def work(index: int) -> None:
            nonlocal peak
            worker = f"worker-{index}"
            while len(ended) < 120:
                lease = timedelta(0) if chooser.random() < 0.05 else timedelta(minutes=1)
                batch = await stores[index].acquire_jobs(worker, lease, 3)
                running = [job for job in await store.get_jobs() if job.acquired_by]
                peak = max(peak, len(running))
                if chooser.random() < 0.2:
                    await stores[index].cleanup()  # releases the lapsed leases as abandoned
                if batch and chooser.random() < 0.1:
                    await stores[index].return_jobs(worker, batch)  # stopping without waiting
                    continue
                if batch:
                    results = [
                        JobResult.for_job(job, JobOutcome.success, finished_at=clock.now())
                        for job in batch
                    ]
                    await stores[index].release_jobs(worker, results)
                else:
                    await anyio.sleep(0.002)
                for job in batch:
                    if await store.get_job_result(job.id) is not None:
                        ended.add(job.id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as task_group:
                for index in range(len(stores)):
                    task_group.start_soon(work, index)

        assert await store.get_jobs() == []
    assert peak <= 5
    assert await slot_counts(schema) == {("task", "task"): 0, ("schedule", "s1"): 0}


async def test_schedulers_on_different_schemas_do_not_hear_each_others_events(
    namespace: str,
) -> None:
    """Stores built by hand, no brokers: each scheduler's broker listens on its schema."""
    first, second = f"{namespace}_a", f"{namespace}_b"
    heard: dict[str, EventRecorder] = {}
    try:
        async with AsyncExitStack() as stack:
            schedulers: dict[str, AsyncScheduler] = {}
            for name, schema in [("a", first), ("a2", first), ("b", second), ("b2", second)]:
                store = PostgreSQLDataStore(POSTGRESQL_URL, schema=schema)
                schedulers[name] = await stack.enter_async_context(AsyncScheduler(store))
                heard[name] = EventRecorder()
                schedulers[name].subscribe(heard[name], {ScheduleAdded})
            assert schedulers["a"].event_broker.channel == first  # type: ignore[attr-defined]

            later = IntervalTrigger(hours=1, start_time=datetime.now(timezone.utc) + timedelta(1))
            await schedulers["a"].add_schedule(print, later, id="on-a")
            await heard["a2"].wait_for(ScheduleAdded)  # another scheduler on the schema hears it
            await schedulers["b"].add_schedule(print, later, id="on-b")
            # NOTIFYs reach a listener in commit order: "b2" got past "on-a" before "on-b"
            await heard["b2"].wait_for(ScheduleAdded)

        assert [event.schedule_id for event in heard["a2"].of_type(ScheduleAdded)] == ["on-a"]
        assert [event.schedule_id for event in heard["b2"].of_type(ScheduleAdded)] == ["on-b"]
    finally:
        await drop_schema(first)
        await drop_schema(second)
