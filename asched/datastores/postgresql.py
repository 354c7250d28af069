"""PostgreSQLDataStore: schedules, jobs and results in PostgreSQL, through asyncpg.

Every operation is one transaction and one batch: acquiring k schedules or jobs is one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, adding k jobs one
``INSERT ... SELECT FROM unnest(...)``, releasing k results one ``DELETE ... RETURNING``
plus one insert of the kept results. Leases (``acquired_by``/``acquired_until``) make a
vanished scheduler's work acquirable again. ``max_running_jobs`` limits are checked under a
transaction-level advisory lock per task, so concurrent workers never exceed them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from logging import Logger
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import attrs

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._exceptions import ConflictingIdError, DeserializationError, TaskLookupError
from .._structures import Job, JobResult, Schedule, ScheduleUpdate, Task
from ..eventbrokers.base import EventBroker
from ..events import (
    Event,
    JobAdded,
    JobDeserializationFailed,
    ScheduleAdded,
    ScheduleDeserializationFailed,
    ScheduleRemoved,
    ScheduleUpdated,
    TaskAdded,
    TaskRemoved,
    TaskUpdated,
)
from ..serializers.base import Serializer
from ._write_batcher import WriteBatcher
from .base import (
    BaseExternalDataStore,
    ReleasedJob,
    RetrySettings,
    cleanup_events,
    job_acquisition_events,
    job_released_event,
    marshal_job_result,
    schedule_release_events,
)

#: bumped whenever the tables change; a store refuses a schema of another version
SCHEMA_VERSION = 1

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_SCHEDULE_COLUMNS = (
    "id, task_id, trigger, args, kwargs, name, paused, coalesce, misfire_grace_time, "
    "max_jitter, max_running_jobs, job_executor, job_result_expiration_time, metadata, "
    "next_fire_time, next_run_time, last_fire_time, acquired_by, acquired_until"
)
_JOB_COLUMNS = (
    "id, task_id, args, kwargs, schedule_id, scheduled_fire_time, jitter, start_deadline, "
    "job_executor, result_expiration_time, created_at, acquired_by, acquired_until"
)
_RESULT_COLUMNS = "job_id, outcome, return_value, exception, started_at, finished_at, expires_at"


def _saturated_lanes(schema: str) -> str:
    """Return CTEs: tasks and schedules at their running-jobs limit, and whether any are."""
    return f"""
    WITH running AS (
        SELECT task_id, schedule_id, count(*) AS jobs
        FROM {schema}.jobs WHERE acquired_by IS NOT NULL
        GROUP BY task_id, schedule_id
    ), saturated_tasks AS (
        SELECT t.id FROM {schema}.tasks t
        JOIN running r ON r.task_id = t.id
        WHERE t.max_running_jobs IS NOT NULL
        GROUP BY t.id, t.max_running_jobs
        HAVING sum(r.jobs) >= t.max_running_jobs
    ), saturated_schedules AS (
        SELECT s.id FROM {schema}.schedules s
        JOIN running r ON r.schedule_id = s.id
        WHERE s.max_running_jobs IS NOT NULL
        GROUP BY s.id, s.max_running_jobs
        HAVING sum(r.jobs) >= s.max_running_jobs
    ), held_back AS (
        SELECT EXISTS (SELECT FROM saturated_tasks)
               OR EXISTS (SELECT FROM saturated_schedules) AS held_back
    )
    """


_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.metadata (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.tasks (
    id text PRIMARY KEY,
    func_ref text,
    job_executor text NOT NULL,
    max_running_jobs integer,
    misfire_grace_time double precision,
    metadata jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.schedules (
    id text PRIMARY KEY,
    task_id text NOT NULL,
    trigger jsonb NOT NULL,
    args bytea NOT NULL,
    kwargs bytea NOT NULL,
    name text,
    paused boolean NOT NULL,
    coalesce text NOT NULL,
    misfire_grace_time double precision,
    max_jitter double precision,
    max_running_jobs integer,
    job_executor text,
    job_result_expiration_time double precision NOT NULL,
    metadata jsonb NOT NULL,
    next_fire_time timestamptz,
    next_run_time timestamptz,
    last_fire_time timestamptz,
    acquired_by text,
    acquired_until timestamptz
);
CREATE INDEX IF NOT EXISTS schedules_due
    ON {schema}.schedules (next_run_time) WHERE NOT paused AND next_run_time IS NOT NULL;
CREATE INDEX IF NOT EXISTS schedules_leased
    ON {schema}.schedules (acquired_until) WHERE acquired_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.jobs (
    id uuid PRIMARY KEY,
    sequence bigserial NOT NULL,
    task_id text NOT NULL,
    args bytea NOT NULL,
    kwargs bytea NOT NULL,
    schedule_id text,
    scheduled_fire_time timestamptz,
    jitter double precision NOT NULL,
    start_deadline timestamptz,
    job_executor text,
    result_expiration_time double precision NOT NULL,
    created_at timestamptz NOT NULL,
    acquired_by text,
    acquired_until timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_queued ON {schema}.jobs (sequence) WHERE acquired_by IS NULL;
CREATE INDEX IF NOT EXISTS jobs_running
    ON {schema}.jobs (task_id, schedule_id) WHERE acquired_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_deadline
    ON {schema}.jobs (start_deadline) WHERE acquired_by IS NULL AND start_deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.job_results (
    job_id uuid PRIMARY KEY,
    outcome text NOT NULL,
    return_value bytea,
    exception bytea,
    started_at timestamptz,
    finished_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS job_results_expiry ON {schema}.job_results (expires_at);
"""


def _quoted_identifier(name: str, field: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"PostgreSQLDataStore: {field} must be a plain identifier (letters, digits, "
            f"underscores, at most 63 characters, not starting with a digit), got {name!r}"
        )
    return f'"{name}"'


def split_dsn(url: str) -> tuple[str, dict[str, str]]:
    """Split asched's own query parameters (``schema``, ``channel``) off a PostgreSQL URL.

    asyncpg would otherwise send unknown parameters to the server as settings.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    query = dict(parse_qsl(parts.query))
    ours: dict[str, str] = {key: query.pop(key) for key in ("schema", "channel") if key in query}
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query))), ours


class PostgreSQLDataStore(BaseExternalDataStore):
    """Keeps tasks, schedules, jobs and results in PostgreSQL (asyncpg).

    :param dsn_or_pool: a ``postgresql://`` URL (``?schema=name`` picks the schema) or an
        asyncpg pool the application already has (it is not closed by the store)
    :param schema: the schema holding the tables (created when missing)
    :param serializer: turns job arguments, return values and exceptions into bytes
    :param retry_settings: how to retry after transient connection errors
    :param pool_size: the most connections of a pool the store creates itself
    :raises ValueError: on a schema name that is not a plain identifier
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        schema: str | None = None,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
        pool_size: int = 10,
    ) -> None:
        super().__init__(serializer=serializer, retry_settings=retry_settings)
        self._pool: asyncpg.Pool | None = None
        self._dsn: str | None = None
        if isinstance(dsn_or_pool, str):
            self._dsn, options = split_dsn(dsn_or_pool)
            if schema is None:
                schema = options.get("schema")
        elif isinstance(dsn_or_pool, asyncpg.Pool):
            self._pool = dsn_or_pool
        else:
            raise TypeError(
                f"PostgreSQLDataStore: expected a postgresql:// URL or an asyncpg pool, got "
                f"{dsn_or_pool!r}"
            )
        self.schema = "asched" if schema is None else schema
        self._schema = _quoted_identifier(self.schema, "schema")
        self._pool_size = pool_size
        self._clock = Clock()
        self._event_broker: EventBroker | None = None
        self._job_writer = WriteBatcher(self._write_jobs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schema={self.schema!r})"

    #
    # Lifecycle
    #

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(
            exc,
            (
                OSError,
                TimeoutError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                # a connection broken mid-operation can be left in an unusable state
                asyncpg.InternalClientError,
                asyncpg.CannotConnectNowError,
                asyncpg.AdminShutdownError,
                asyncpg.CrashShutdownError,
                asyncpg.SerializationError,
                asyncpg.DeadlockDetectedError,
                asyncpg.TooManyConnectionsError,
            ),
        ) or (isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in ("57P01", "57P02"))

    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Open the pool and create the schema if needed; see :meth:`DataStore.start`.

        :raises RuntimeError: if the schema holds tables of another asched version
        """
        self._event_broker = event_broker
        self._logger = logger
        self._clock = clock
        if self._pool is None:
            async for attempt in self._retrying():
                with attempt:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        # pg_terminate_backend and restarts close connections: check them
                        max_inactive_connection_lifetime=60,
                        reset=_keep_session,
                    )
            exit_stack.push_async_callback(self._close_pool)

        async for attempt in self._retrying():
            with attempt:
                async with self._transaction() as connection:
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))", f"asched:{self.schema}"
                    )
                    await connection.execute(_DDL.format(schema=self._schema))
                    await connection.execute(
                        f"INSERT INTO {self._schema}.metadata (key, value) "
                        "VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
                        str(SCHEMA_VERSION),
                    )
                    version = await connection.fetchval(
                        f"SELECT value FROM {self._schema}.metadata WHERE key = 'schema_version'"
                    )
        if version != str(SCHEMA_VERSION):
            raise RuntimeError(
                f"PostgreSQLDataStore: schema {self.schema!r} has version {version}, this "
                f"asched uses version {SCHEMA_VERSION}; migrate it or use another schema"
            )

    async def _close_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection in autocommit mode: one statement, one round trip."""
        if self._pool is None:
            raise RuntimeError("PostgreSQLDataStore: the store has not been started")
        async with self._pool.acquire() as connection:
            yield connection

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise RuntimeError("PostgreSQLDataStore: the store has not been started")
        async with self._pool.acquire() as connection, connection.transaction():
            yield connection

    async def _publish(self, events: Iterable[Event]) -> None:
        if self._event_broker is not None:
            for event in events:
                await self._event_broker.publish(event)

    def _now(self) -> datetime:
        return self._clock.now()

    #
    # Tasks
    #

    async def add_task(self, task: Task) -> None:
        """Add or replace a task; see :meth:`DataStore.add_task`."""
        record = task.marshal()
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    inserted = await connection.fetchval(
                        f"""
                        INSERT INTO {self._schema}.tasks
                            (id, func_ref, job_executor, max_running_jobs, misfire_grace_time,
                             metadata)
                        VALUES ($1, $2, $3, $4, $5, $6)
                        ON CONFLICT (id) DO UPDATE SET
                            func_ref = excluded.func_ref, job_executor = excluded.job_executor,
                            max_running_jobs = excluded.max_running_jobs,
                            misfire_grace_time = excluded.misfire_grace_time,
                            metadata = excluded.metadata
                        RETURNING xmax = 0
                        """,
                        record["id"],
                        record["func_ref"],
                        record["job_executor"],
                        record["max_running_jobs"],
                        record["misfire_grace_time"],
                        json.dumps(record["metadata"]),
                    )
        event_class = TaskAdded if inserted else TaskUpdated
        await self._publish([event_class(task_id=task.id)])

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    removed = await connection.fetchval(
                        f"DELETE FROM {self._schema}.tasks WHERE id = $1 RETURNING id", task_id
                    )
        if removed is None:
            raise TaskLookupError(task_id)
        await self._publish([TaskRemoved(task_id=task_id)])

    @staticmethod
    def _task_from_row(row: asyncpg.Record) -> Task:
        return Task.unmarshal({**row, "metadata": json.loads(row["metadata"])})

    async def get_task(self, task_id: str) -> Task:
        """Return a task; see :meth:`DataStore.get_task`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    row = await connection.fetchrow(
                        f"SELECT * FROM {self._schema}.tasks WHERE id = $1", task_id
                    )
        if row is None:
            raise TaskLookupError(task_id)
        return self._task_from_row(row)

    async def get_tasks(self) -> list[Task]:
        """Return all tasks sorted by id."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    rows = await connection.fetch(
                        f"SELECT * FROM {self._schema}.tasks ORDER BY id"
                    )
        return [self._task_from_row(row) for row in rows]

    #
    # Schedules
    #

    def _schedule_values(self, schedule: Schedule) -> list[Any]:
        record = schedule.marshal(self.serializer)
        # jsonb travels as text: no codec to install on pools the application hands in
        record["trigger"] = json.dumps(record["trigger"])
        record["metadata"] = json.dumps(record["metadata"])
        return [record[column] for column in _SCHEDULE_COLUMNS.split(", ")]

    async def _schedules_from_rows(self, rows: Iterable[asyncpg.Record]) -> list[Schedule]:
        schedules: list[Schedule] = []
        events: list[Event] = []
        for row in rows:
            try:
                record = {
                    **row,
                    "trigger": json.loads(row["trigger"]),
                    "metadata": json.loads(row["metadata"]),
                }
                schedules.append(Schedule.unmarshal(self.serializer, record))
            except DeserializationError as exc:
                self._logger.error("Cannot restore schedule %r: %s", row["id"], exc)
                events.append(ScheduleDeserializationFailed(schedule_id=row["id"], error=str(exc)))
        await self._publish(events)
        return schedules

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; see :meth:`DataStore.add_schedule`."""
        values = self._schedule_values(
            attrs.evolve(schedule, acquired_by=None, acquired_until=None)
        )
        placeholders = ", ".join(f"${index}" for index in range(1, len(values) + 1))
        insert = (
            f"INSERT INTO {self._schema}.schedules ({_SCHEDULE_COLUMNS}) VALUES ({placeholders})"
        )
        if conflict_policy is ConflictPolicy.replace:
            updates = ", ".join(
                f"{column} = excluded.{column}" for column in _SCHEDULE_COLUMNS.split(", ")[1:]
            )
            statement = f"{insert} ON CONFLICT (id) DO UPDATE SET {updates} RETURNING xmax = 0"
        else:
            statement = f"{insert} ON CONFLICT (id) DO NOTHING RETURNING true"

        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    inserted = await connection.fetchval(statement, *values)

        event: Event
        if inserted is None:  # the id exists and was kept
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
            return
        if inserted:
            event = ScheduleAdded(
                schedule_id=schedule.id,
                task_id=schedule.task_id,
                next_fire_time=schedule.next_fire_time,
            )
        else:
            event = ScheduleUpdated(
                schedule_id=schedule.id,
                task_id=schedule.task_id,
                next_fire_time=schedule.next_fire_time,
            )
        await self._publish([event])

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        id_list = list(ids)
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    rows = await connection.fetch(
                        f"DELETE FROM {self._schema}.schedules WHERE id = ANY($1::text[]) "
                        "RETURNING id, task_id",
                        id_list,
                    )
        await self._publish(
            ScheduleRemoved(schedule_id=row["id"], task_id=row["task_id"], finished=finished)
            for row in rows
        )

    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        """Return schedules sorted by id; see :meth:`DataStore.get_schedules`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    if ids is None:
                        rows = await connection.fetch(
                            f"SELECT {_SCHEDULE_COLUMNS} FROM {self._schema}.schedules ORDER BY id"
                        )
                    else:
                        rows = await connection.fetch(
                            f"SELECT {_SCHEDULE_COLUMNS} FROM {self._schema}.schedules "
                            "WHERE id = ANY($1::text[]) ORDER BY id",
                            list(ids),
                        )
        return await self._schedules_from_rows(rows)

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """Lease due schedules; see :meth:`DataStore.acquire_schedules`."""
        now = self._now()
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    rows = await connection.fetch(
                        f"""
                        UPDATE {self._schema}.schedules SET acquired_by = $1, acquired_until = $2
                        WHERE id IN (
                            SELECT id FROM {self._schema}.schedules
                            WHERE NOT paused AND next_run_time <= $3
                              AND (acquired_until IS NULL OR acquired_until <= $3)
                            ORDER BY next_run_time, id
                            LIMIT $4
                            FOR UPDATE SKIP LOCKED
                        )
                        RETURNING {_SCHEDULE_COLUMNS}
                        """,
                        scheduler_id,
                        now + lease_duration,
                        now,
                        limit,
                    )
        schedules = await self._schedules_from_rows(rows)
        schedules.sort(key=lambda schedule: (schedule.next_run_time, schedule.id))
        return schedules

    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply scheduler decisions; see :meth:`DataStore.release_schedules`."""
        if not updates:
            return
        by_id = {update.schedule_id: update for update in updates}
        now = self._now()
        # Serialize outside the transaction: it is the slow part, and it may raise
        job_rows = [self._job_values(job) for update in updates for job in update.jobs]
        missed: list[tuple[str, Job, JobResult]] = []
        for update in updates:
            for job in update.missed_jobs:
                result = JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now)
                missed.append((update.schedule_id, job, result))

        async for attempt in self._retrying():
            with attempt:
                async with self._transaction() as connection:
                    owned = {
                        row["id"]: row["task_id"]
                        for row in await connection.fetch(
                            f"SELECT id, task_id FROM {self._schema}.schedules "
                            "WHERE id = ANY($1::text[]) AND acquired_by = $2 FOR UPDATE",
                            list(by_id),
                            scheduler_id,
                        )
                    }
                    jobs = [row for row in job_rows if row[4] in owned]
                    if jobs:
                        await self._insert_jobs(connection, jobs)
                    kept = [
                        result.marshal(self.serializer)
                        for schedule_id, job, result in missed
                        if schedule_id in owned and job.result_expiration_time > timedelta(0)
                    ]
                    if kept:
                        await self._insert_results(connection, kept)
                    finished = [
                        schedule_id
                        for schedule_id in owned
                        if by_id[schedule_id].next_fire_time is None
                    ]
                    if finished:
                        await connection.execute(
                            f"DELETE FROM {self._schema}.schedules WHERE id = ANY($1::text[])",
                            finished,
                        )
                    moved = [
                        by_id[schedule_id] for schedule_id in owned if schedule_id not in finished
                    ]
                    if moved:
                        await connection.execute(
                            f"""
                            UPDATE {self._schema}.schedules AS s SET
                                next_fire_time = u.next_fire_time,
                                next_run_time = u.next_run_time,
                                last_fire_time = u.last_fire_time,
                                acquired_by = NULL, acquired_until = NULL
                            FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[],
                                        $4::timestamptz[])
                                AS u(id, next_fire_time, next_run_time, last_fire_time)
                            WHERE s.id = u.id
                            """,
                            [update.schedule_id for update in moved],
                            [update.next_fire_time for update in moved],
                            [update.next_run_time for update in moved],
                            [update.last_fire_time for update in moved],
                        )

        dropped = set(by_id) - set(owned)
        if dropped:
            self._logger.debug("Dropped the updates of schedules %s: leases lost", sorted(dropped))
        events: list[Event] = []
        for schedule_id, task_id in owned.items():
            events += schedule_release_events(
                scheduler_id,
                by_id[schedule_id],
                task_id,
                ((job, result) for owner, job, result in missed if owner == schedule_id),
            )
        await self._publish(events)

    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time a schedule may be acquired; see the base class."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    value: datetime | None = await connection.fetchval(
                        f"""
                        SELECT least(
                            (SELECT min(next_run_time) FROM {self._schema}.schedules
                             WHERE NOT paused AND next_run_time IS NOT NULL
                               AND acquired_by IS NULL),
                            (SELECT min(acquired_until) FROM {self._schema}.schedules
                             WHERE acquired_by IS NOT NULL AND NOT paused)
                        )
                        """
                    )
        return value

    #
    # Jobs
    #

    def _job_values(self, job: Job) -> list[Any]:
        record = job.marshal(self.serializer)
        return [record[column] for column in _JOB_COLUMNS.split(", ")]

    async def _insert_jobs(self, connection: asyncpg.Connection, rows: list[list[Any]]) -> None:
        columns = list(zip(*rows, strict=True))
        await connection.execute(
            f"""
            INSERT INTO {self._schema}.jobs ({_JOB_COLUMNS})
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::text[],
                                 $6::timestamptz[], $7::float8[], $8::timestamptz[], $9::text[],
                                 $10::float8[], $11::timestamptz[], $12::text[],
                                 $13::timestamptz[])
            ORDER BY 11
            ON CONFLICT (id) DO NOTHING
            """,
            *[list(column) for column in columns],
        )

    async def _insert_results(
        self, connection: asyncpg.Connection, records: list[dict[str, Any]]
    ) -> None:
        names = _RESULT_COLUMNS.split(", ")
        await connection.execute(
            f"""
            INSERT INTO {self._schema}.job_results ({_RESULT_COLUMNS})
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[],
                                 $5::timestamptz[], $6::timestamptz[], $7::timestamptz[])
            ON CONFLICT (job_id) DO NOTHING
            """,
            *[[record[name] for record in records] for name in names],
        )

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; see :meth:`DataStore.add_jobs`."""
        if not jobs:
            return
        # marshalled here, so that a job that cannot be serialized fails its own caller only
        await self._job_writer.submit([self._job_values(job) for job in jobs])
        await self._publish(
            JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            for job in jobs
        )

    async def _write_jobs(self, rows: list[list[Any]]) -> None:
        """Insert the jobs of concurrent :meth:`add_jobs` calls with one statement."""

        async def insert() -> None:
            async with self._connection() as connection:
                await self._insert_jobs(connection, rows)

        await self._with_retries(insert)

    async def _jobs_from_rows(self, rows: Iterable[asyncpg.Record]) -> list[Job]:
        jobs: list[Job] = []
        events: list[Event] = []
        for row in rows:
            try:
                jobs.append(Job.unmarshal(self.serializer, dict(row)))
            except DeserializationError as exc:
                self._logger.error("Cannot restore job %s: %s", row["id"], exc)
                events.append(JobDeserializationFailed(job_id=row["id"], error=str(exc)))
        await self._publish(events)
        return jobs

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    if ids is None:
                        rows = await connection.fetch(
                            f"SELECT {_JOB_COLUMNS} FROM {self._schema}.jobs ORDER BY sequence"
                        )
                    else:
                        rows = await connection.fetch(
                            f"SELECT {_JOB_COLUMNS} FROM {self._schema}.jobs "
                            "WHERE id = ANY($1::uuid[]) ORDER BY sequence",
                            list(ids),
                        )
        return await self._jobs_from_rows(rows)

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Job]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""
        now = self._now()

        async def acquire() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            async with self._transaction() as connection:
                return await self._acquire_jobs(
                    connection, scheduler_id, now, now + lease_duration, limit
                )

        acquired_rows, missed_rows = await self._with_retries(acquire)

        jobs = await self._jobs_from_rows(acquired_rows)
        missed = await self._jobs_from_rows(missed_rows)
        events = job_acquisition_events(scheduler_id, now, jobs, missed)
        await self._publish(events)
        return [attrs.evolve(job, acquired_by=None, acquired_until=None) for job in jobs]

    async def _acquire_jobs(
        self,
        connection: asyncpg.Connection,
        scheduler_id: str,
        now: datetime,
        acquired_until: datetime,
        limit: int,
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        schema = self._schema
        # Candidates: the oldest queued jobs, leaving out tasks and schedules whose limit is
        # already reached (a saturated lane must not starve the ones behind it)
        candidates = await connection.fetch(
            f"""
            {_saturated_lanes(schema)}
            SELECT j.id, j.task_id, j.schedule_id, j.start_deadline,
                   t.max_running_jobs AS task_limit, s.max_running_jobs AS schedule_limit,
                   (SELECT held_back FROM held_back) AS held_back
            FROM {schema}.jobs j
            LEFT JOIN {schema}.tasks t ON t.id = j.task_id
            LEFT JOIN {schema}.schedules s ON s.id = j.schedule_id
            WHERE j.acquired_by IS NULL
              AND j.task_id NOT IN (SELECT id FROM saturated_tasks)
              AND (j.schedule_id IS NULL
                   OR j.schedule_id NOT IN (SELECT id FROM saturated_schedules))
            ORDER BY j.sequence
            LIMIT $1
            FOR UPDATE OF j SKIP LOCKED
            """,
            limit,
        )
        if not candidates:
            # no row to carry the answer: ask apart (an idle worker's poll, or a blocked lane)
            self._jobs_held_back = await connection.fetchval(
                f"{_saturated_lanes(schema)} SELECT held_back FROM held_back"
            )
            return [], []
        self._jobs_held_back = candidates[0]["held_back"]

        missed_ids = [
            row["id"]
            for row in candidates
            if row["start_deadline"] is not None and row["start_deadline"] < now
        ]
        chosen = [row for row in candidates if row["id"] not in set(missed_ids)]
        limited = [
            row
            for row in chosen
            if row["task_limit"] is not None or row["schedule_limit"] is not None
        ]
        if limited:
            allowed = await self._within_limits(connection, chosen, limited)
            if len(allowed) < len(chosen):
                self._jobs_held_back = True
            chosen = allowed

        acquired_rows: list[asyncpg.Record] = []
        if chosen:
            acquired_rows = await connection.fetch(
                f"""
                UPDATE {schema}.jobs SET acquired_by = $1, acquired_until = $2
                WHERE id = ANY($3::uuid[])
                RETURNING {_JOB_COLUMNS}, sequence
                """,
                scheduler_id,
                acquired_until,
                [row["id"] for row in chosen],
            )
            acquired_rows.sort(key=lambda row: row["sequence"])

        missed_rows: list[asyncpg.Record] = []
        if missed_ids:
            missed_rows = await connection.fetch(
                f"DELETE FROM {schema}.jobs WHERE id = ANY($1::uuid[]) RETURNING {_JOB_COLUMNS}",
                missed_ids,
            )
            await self._keep_results(
                connection, missed_rows, JobOutcome.missed_start_deadline, now
            )
        return acquired_rows, missed_rows

    async def _within_limits(
        self,
        connection: asyncpg.Connection,
        chosen: list[asyncpg.Record],
        limited: list[asyncpg.Record],
    ) -> list[asyncpg.Record]:
        """Drop the candidates that would exceed a task's or schedule's max_running_jobs.

        Acquirers of the same task serialize on an advisory lock, then count what is running
        now (read committed: this statement sees what they committed before).
        """
        task_ids = sorted({row["task_id"] for row in limited})
        for task_id in task_ids:
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"asched:{self.schema}:{task_id}"
            )
        rows = await connection.fetch(
            f"""
            SELECT task_id, schedule_id, count(*) AS jobs FROM {self._schema}.jobs
            WHERE acquired_by IS NOT NULL AND task_id = ANY($1::text[])
            GROUP BY task_id, schedule_id
            """,
            task_ids,
        )
        running_by_task: dict[str, int] = {}
        running_by_schedule: dict[str, int] = {}
        for row in rows:
            running_by_task[row["task_id"]] = running_by_task.get(row["task_id"], 0) + row["jobs"]
            if row["schedule_id"] is not None:
                running_by_schedule[row["schedule_id"]] = (
                    running_by_schedule.get(row["schedule_id"], 0) + row["jobs"]
                )

        allowed: list[asyncpg.Record] = []
        for row in chosen:
            task_id, schedule_id = row["task_id"], row["schedule_id"]
            task_limit, schedule_limit = row["task_limit"], row["schedule_limit"]
            if task_limit is not None and running_by_task.get(task_id, 0) >= task_limit:
                continue
            if (
                schedule_id is not None
                and schedule_limit is not None
                and running_by_schedule.get(schedule_id, 0) >= schedule_limit
            ):
                continue
            running_by_task[task_id] = running_by_task.get(task_id, 0) + 1
            if schedule_id is not None:
                running_by_schedule[schedule_id] = running_by_schedule.get(schedule_id, 0) + 1
            allowed.append(row)
        return allowed

    async def _keep_results(
        self,
        connection: asyncpg.Connection,
        job_rows: Sequence[asyncpg.Record],
        outcome: JobOutcome,
        now: datetime,
    ) -> None:
        """Store the results of jobs ended here (missed, abandoned) where they are kept."""
        records = [
            JobResult(
                job_id=row["id"],
                outcome=outcome,
                finished_at=now,
                expires_at=now + timedelta(seconds=row["result_expiration_time"]),
            ).marshal(self.serializer)
            for row in job_rows
            if row["result_expiration_time"] > 0
        ]
        if records:
            await self._insert_results(connection, records)

    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish acquired jobs; see :meth:`DataStore.release_jobs`."""
        if not results:
            return
        marshalled = {
            result.job_id: marshal_job_result(self.serializer, result) for result in results
        }
        kept_records = [record for _, record in marshalled.values() if record is not None]
        result_columns = [
            [record[name] for record in kept_records] for name in _RESULT_COLUMNS.split(", ")
        ]

        async def release() -> list[asyncpg.Record]:
            async with self._connection() as connection:
                # one statement: delete what this worker holds, keep the results of
                # those among them that keep one
                return await connection.fetch(  # type: ignore[no-any-return]
                    f"""
                    WITH released AS (
                        DELETE FROM {self._schema}.jobs
                        WHERE id = ANY($1::uuid[]) AND acquired_by = $2
                        RETURNING id, task_id, schedule_id, scheduled_fire_time
                    ), kept AS (
                        INSERT INTO {self._schema}.job_results ({_RESULT_COLUMNS})
                        SELECT r.* FROM unnest(
                            $3::uuid[], $4::text[], $5::bytea[], $6::bytea[],
                            $7::timestamptz[], $8::timestamptz[], $9::timestamptz[]
                        ) AS r({_RESULT_COLUMNS})
                        JOIN released ON released.id = r.job_id
                        ON CONFLICT (job_id) DO NOTHING
                    )
                    SELECT id, task_id, schedule_id, scheduled_fire_time FROM released
                    """,
                    list(marshalled),
                    scheduler_id,
                    *result_columns,
                )

        rows = await self._with_retries(release)
        ignored = len(results) - len(rows)
        if ignored:
            self._logger.debug(
                "Ignored %d results of jobs not acquired by %s", ignored, scheduler_id
            )
        await self._publish(
            job_released_event(scheduler_id, ReleasedJob(*row), marshalled[row["id"]][0])
            for row in rows
        )

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    row = await connection.fetchrow(
                        f"SELECT {_RESULT_COLUMNS} FROM {self._schema}.job_results "
                        "WHERE job_id = $1 AND expires_at > $2",
                        job_id,
                        self._now(),
                    )
        return None if row is None else JobResult.unmarshal(self.serializer, dict(row))

    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Extend job leases; see :meth:`DataStore.extend_acquired_leases`."""
        id_list = list(job_ids)
        if not id_list:
            return
        until = self._now() + lease_duration
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    await connection.execute(
                        f"UPDATE {self._schema}.jobs SET acquired_until = $1 "
                        "WHERE id = ANY($2::uuid[]) AND acquired_by = $3",
                        until,
                        id_list,
                        scheduler_id,
                    )

    async def cleanup(self) -> None:
        """Expire results, release abandoned and overdue jobs; see the base class."""
        now = self._now()
        async for attempt in self._retrying():
            with attempt:
                async with self._transaction() as connection:
                    await connection.execute(
                        f"DELETE FROM {self._schema}.job_results WHERE expires_at <= $1", now
                    )
                    abandoned = await connection.fetch(
                        f"""
                        DELETE FROM {self._schema}.jobs
                        WHERE acquired_by IS NOT NULL AND acquired_until <= $1
                        RETURNING {_JOB_COLUMNS}
                        """,
                        now,
                    )
                    await self._keep_results(connection, abandoned, JobOutcome.abandoned, now)
                    overdue = await connection.fetch(
                        f"""
                        DELETE FROM {self._schema}.jobs
                        WHERE acquired_by IS NULL AND start_deadline < $1
                        RETURNING {_JOB_COLUMNS}
                        """,
                        now,
                    )
                    await self._keep_results(
                        connection, overdue, JobOutcome.missed_start_deadline, now
                    )

        events = cleanup_events(
            now,
            await self._jobs_from_rows(abandoned),
            await self._jobs_from_rows(overdue),
            self._logger,
        )
        await self._publish(events)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's session reset query when a connection goes back to the pool.

    The store never changes session state (no SET, no LISTEN; its advisory locks end with
    their transactions), and asyncpg still rolls back a transaction left open: the default
    reset would only cost one more round trip per operation.
    """
