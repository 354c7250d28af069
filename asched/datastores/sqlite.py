"""SQLiteDataStore: schedules, jobs and results in one SQLite file (the embedded persistent store).

The standard library's sqlite3 runs in a worker thread: each store instance owns one
connection, and every operation is one function run in that thread as one transaction (one
thread hop per batch). Writing transactions start with ``BEGIN IMMEDIATE``, which takes the
database's write lock at once, so schedulers in several processes on one file acquire each
schedule and job exactly once. The file is in WAL mode: a reader outside asched (a backup,
``python -m asched list``) reads a consistent snapshot without waiting for writers; asched's
own operations, reads included, each run as one ``BEGIN IMMEDIATE`` transaction.
A locked database (another process holds the write lock past ``busy_timeout``) is retried.

SQLite has no way to notify other processes: they notice new schedules and jobs when they
next poll the store, every ``polling_interval`` seconds while idle.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from logging import Logger
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import anyio
import attrs

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._exceptions import (
    ConflictingIdError,
    DeserializationError,
    StaleScheduleError,
    TaskLookupError,
)
from .._structures import Job, JobResult, Schedule, ScheduleUpdate, Task
from .._urls import check_url
from ..eventbrokers.base import EventBroker
from ..events import (
    Event,
    JobAdded,
    JobDeserializationFailed,
    ScheduleDeserializationFailed,
    ScheduleRemoved,
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
    UnreadableJob,
    cleanup_events,
    job_acquisition_events,
    job_released_event,
    marshal_job_result,
    schedule_release_events,
    schedule_written_event,
)

#: bumped whenever the tables change; a store migrates older files and refuses newer ones
SCHEMA_VERSION = 2
#: the oldest SQLite library the store works with: UPDATE/DELETE ... RETURNING came in 3.35
MINIMUM_SQLITE_VERSION = (3, 35, 0)

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

_SCHEDULE_COLUMNS = (
    "id",
    "task_id",
    "trigger",
    "args",
    "kwargs",
    "name",
    "paused",
    "coalesce",
    "misfire_grace_time",
    "max_jitter",
    "max_running_jobs",
    "job_executor",
    "job_result_expiration_time",
    "metadata",
    "next_fire_time",
    "next_run_time",
    "last_fire_time",
    "acquired_by",
    "acquired_until",
    "revision",
)
#: where a schedule is in time: kept by update_schedule_definition unless it reschedules
_SCHEDULE_PROGRESS = ("next_fire_time", "next_run_time", "last_fire_time")
#: what update_schedule_definition never takes from the schedule it is given
_SCHEDULE_KEPT = frozenset({"id", "acquired_by", "acquired_until", "revision"})
_JOB_COLUMNS = (
    "id",
    "task_id",
    "args",
    "kwargs",
    "schedule_id",
    "scheduled_fire_time",
    "jitter",
    "start_deadline",
    "job_executor",
    "result_expiration_time",
    "created_at",
    "acquired_by",
    "acquired_until",
)
_RESULT_COLUMNS = (
    "job_id",
    "outcome",
    "return_value",
    "exception",
    "started_at",
    "finished_at",
    "expires_at",
)
_SCHEDULE_TIMES = ("next_fire_time", "next_run_time", "last_fire_time", "acquired_until")
_JOB_TIMES = ("scheduled_fire_time", "start_deadline", "created_at", "acquired_until")
_RESULT_TIMES = ("started_at", "finished_at", "expires_at")

_DDL = """
CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, func_ref TEXT, job_executor TEXT NOT NULL, max_running_jobs INTEGER,
    misfire_grace_time REAL, metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL, trigger TEXT NOT NULL, args BLOB NOT NULL,
    kwargs BLOB NOT NULL, name TEXT, paused INTEGER NOT NULL, coalesce TEXT NOT NULL,
    misfire_grace_time REAL, max_jitter REAL, max_running_jobs INTEGER, job_executor TEXT,
    job_result_expiration_time REAL NOT NULL, metadata TEXT NOT NULL,
    next_fire_time INTEGER, next_run_time INTEGER, last_fire_time INTEGER,
    acquired_by TEXT, acquired_until INTEGER, revision INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS schedules_due
    ON schedules (next_run_time) WHERE NOT paused AND next_run_time IS NOT NULL;
CREATE INDEX IF NOT EXISTS schedules_leased
    ON schedules (acquired_until) WHERE acquired_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS jobs (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, task_id TEXT NOT NULL,
    args BLOB NOT NULL, kwargs BLOB NOT NULL, schedule_id TEXT, scheduled_fire_time INTEGER,
    jitter REAL NOT NULL, start_deadline INTEGER, job_executor TEXT,
    result_expiration_time REAL NOT NULL, created_at INTEGER NOT NULL, acquired_by TEXT,
    acquired_until INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (sequence) WHERE acquired_by IS NULL;
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (task_id, schedule_id)
    WHERE acquired_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_results (
    job_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, return_value BLOB, exception BLOB,
    started_at INTEGER, finished_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_results_expiry ON job_results (expires_at);
"""

#: Version 1 -> 2: schedules get a revision (optimistic concurrency for definition updates)
_MIGRATE_FROM_1 = """
ALTER TABLE schedules ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
UPDATE metadata SET value = '2' WHERE key = 'schema_version';
"""


def _statements(script: str) -> list[str]:
    """Split a script of ours (no ``;`` inside a statement) into its statements.

    They run one by one with ``execute``: ``executescript`` would commit the transaction
    that the schema check and the migration must share.
    """
    return [statement for statement in script.split(";") if statement.strip()]


def _to_db(value: datetime | None) -> int | None:
    """Aware datetime -> microseconds since the epoch (sortable, exact)."""
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _from_db(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _check_sqlite_library() -> None:
    """Refuse an SQLite library without the RETURNING clause or the JSON functions."""
    found = tuple(sqlite3.sqlite_version_info)
    if found < MINIMUM_SQLITE_VERSION:
        required = ".".join(map(str, MINIMUM_SQLITE_VERSION))
        raise RuntimeError(
            f"SQLiteDataStore: needs SQLite {required} or newer (for RETURNING), but Python's "
            f"sqlite3 module uses SQLite {'.'.join(map(str, found))}; use a Python built "
            "with a newer SQLite"
        )
    # Built in from 3.38; before that a compile-time option (JSON1) that most builds enable.
    # Asked of a private in-memory database: it is the library's feature, not the file's
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("SELECT value FROM json_each('[]')")
    except sqlite3.OperationalError as exc:
        raise RuntimeError(
            f"SQLiteDataStore: Python's SQLite {sqlite3.sqlite_version} was built without "
            f"the JSON functions the store needs ({exc}); use a Python whose SQLite has "
            "them (every SQLite 3.38 or newer does)"
        ) from None
    finally:
        connection.close()


class SQLiteDataStore(BaseExternalDataStore):
    """Keeps tasks, schedules, jobs and results in an SQLite file.

    :param path: the database file (created with its tables when missing), or a
        ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` URL
    :param serializer: turns job arguments, return values and exceptions into bytes
    :param retry_settings: how to retry when the database stays locked
    :param busy_timeout: how long one attempt waits for another process's write lock
    :param polling_interval: seconds between polls of idle schedulers and workers, which is
        how soon other processes notice new schedules and jobs
    :param synchronous: ``"normal"`` (default): every commit survives any crash of the
        processes using the file, but those since the last checkpoint may be lost if the
        machine itself loses power; ``"full"``: commits survive that too, at the cost of
        an fsync per transaction (SQLite's ``PRAGMA synchronous``)
    :raises ValueError: on a bad ``path`` URL, ``polling_interval`` or ``synchronous``
    """

    def __init__(
        self,
        path: str | Path,
        *,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
        busy_timeout: timedelta = timedelta(seconds=5),
        polling_interval: float = 1.0,
        synchronous: str = "normal",
    ) -> None:
        super().__init__(serializer=serializer, retry_settings=retry_settings)
        if not isinstance(synchronous, str) or synchronous.lower() not in ("normal", "full"):
            raise ValueError(
                f"SQLiteDataStore: synchronous must be 'normal' or 'full', got {synchronous!r}"
            )
        self.synchronous = synchronous.lower()
        if isinstance(path, str) and path.startswith("sqlite://"):
            check_url(path, "SQLiteDataStore")
            path = path[len("sqlite:///") :] if path.startswith("sqlite:///") else ""
            if not path:
                raise ValueError(
                    "SQLiteDataStore: expected 'sqlite:///relative/path' or "
                    "'sqlite:////absolute/path'"
                )
        if not isinstance(path, (str, Path)) or not str(path):
            raise TypeError(f"SQLiteDataStore: expected a file path, got {path!r}")
        self.path = Path(path)
        if polling_interval <= 0:
            raise ValueError(
                f"SQLiteDataStore: polling_interval must be positive, got {polling_interval!r}"
            )
        self.polling_interval = polling_interval
        self._job_writer = WriteBatcher(self._write_jobs)
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._clock = Clock()
        self._event_broker: EventBroker | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _is_transient(self, exc: BaseException) -> bool:
        # "database is locked" / "database is busy": another process held the write lock
        return isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        )

    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Open the file, create or migrate the tables; see :meth:`DataStore.start`.

        A file of schema version 1 is migrated in place.

        :raises RuntimeError: if Python's SQLite library is older than 3.35 or lacks the JSON
            functions, if the file is not an SQLite database, or if it holds tables of a
            newer (or unknown) asched schema version
        """
        _check_sqlite_library()
        self._event_broker = event_broker
        self._logger = logger
        self._clock = clock
        # One attempt, no retries: a file that stays locked for a whole busy timeout at
        # start-up, or that is damaged, is an error to report, not a hiccup to wait out
        try:
            self._connection = await anyio.to_thread.run_sync(self._connect, limiter=self._limiter)
            exit_stack.push_async_callback(self._close)
            version = await anyio.to_thread.run_sync(
                self._in_transaction, self._create_or_migrate_schema, (), limiter=self._limiter
            )
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc
        if version != str(SCHEMA_VERSION):
            raise RuntimeError(
                f"SQLiteDataStore: {self.path} has schema version {version}, this asched uses "
                f"version {SCHEMA_VERSION} (and migrates version 1); use the asched that "
                "wrote it, or another file"
            )

    def _unusable(self, exc: sqlite3.DatabaseError) -> RuntimeError:
        if self._is_transient(exc):
            seconds = self._busy_timeout.total_seconds()
            return RuntimeError(
                f"SQLiteDataStore: {self.path} is locked: another process or connection held "
                f"its write lock for all of the {seconds:g} s busy timeout ({exc}); stop "
                "that process, or raise busy_timeout if it is only slow"
            )
        return RuntimeError(
            f"SQLiteDataStore: {self.path} is not a usable SQLite database ({exc})"
        )

    def _connect(self) -> sqlite3.Connection:
        # as sqlite3 itself: no folder is made up, so a typo or a volume that was not mounted
        # is an error rather than a new, empty database somewhere else
        if not self.path.parent.is_dir():
            hint = ""
            if not self.path.is_absolute():
                # sqlite:///tmp/x.sqlite is tmp/x.sqlite: the URL for /tmp/x.sqlite has four
                # slashes, an easy one to miss
                hint = f"; {self.path.parent} is relative to the working directory"
                if ".." not in self.path.parts and (Path("/") / self.path.parent).is_dir():
                    hint += (
                        f": for /{self.path.as_posix()}, write "
                        f"sqlite:////{self.path.as_posix()}, with four slashes"
                    )
            raise RuntimeError(
                f"SQLiteDataStore: the folder {self.path.parent} of {self.path.name} does not "
                f"exist (create it first{hint})"
            )
        connection = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout.total_seconds(),
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # used from worker threads, one at a time (the limiter)
        )
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        return connection

    async def _close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await anyio.to_thread.run_sync(connection.close, limiter=self._limiter)

    def _create_or_migrate_schema(self, connection: sqlite3.Connection) -> str:
        """Create the tables, or migrate version 1 ones; return the file's schema version.

        Runs in one ``BEGIN IMMEDIATE`` transaction (:meth:`_in_transaction`): stores
        starting on one file at once take turns, and each reads the version only once it
        holds the write lock, so a file is migrated once, by one of them. A file of another
        version is left untouched.
        """
        connection.execute(
            "CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        row = connection.execute(
            "SELECT value FROM metadata WHERE key = 'schema_version'"
        ).fetchone()
        if row is None:
            for statement in _statements(_DDL):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO metadata (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            return str(SCHEMA_VERSION)
        if row[0] == "1":
            self._logger.info(
                "SQLiteDataStore: migrating %s from schema version 1 to %d",
                self.path,
                SCHEMA_VERSION,
            )
            for statement in _statements(_MIGRATE_FROM_1):
                connection.execute(statement)
            return str(SCHEMA_VERSION)
        return str(row[0])

    async def _run(self, operation: Callable[..., _T], *args: Any) -> _T:
        """Run ``operation(connection, *args)`` in the store's thread as one transaction."""
        return await self._with_retries(
            lambda: anyio.to_thread.run_sync(
                self._in_transaction, operation, args, limiter=self._limiter
            )
        )

    def _in_transaction(self, operation: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        # BEGIN IMMEDIATE may wait up to busy_timeout for another process's write lock, and
        # _run may retry after that: operations that grant leases read the clock inside,
        # once they hold the lock, so that waiting never eats into a lease. (Clock.now is
        # called from this worker thread: the system clock and a test's clock, which only
        # reads an attribute, are both safe to call from any thread.)
        connection = self._connection
        if connection is None:
            raise RuntimeError("SQLiteDataStore: the store has not been started")
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = operation(connection, *args)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    async def _publish(self, events: Iterable[Event]) -> None:
        if self._event_broker is not None:
            for event in events:
                await self._event_broker.publish(event)

    #
    # Records
    #

    def _schedule_record(self, schedule: Schedule) -> dict[str, Any]:
        """Return the column values of ``schedule`` as stored."""
        record = schedule.marshal(self.serializer)
        record["trigger"] = json.dumps(record["trigger"])
        record["metadata"] = json.dumps(record["metadata"])
        for name in _SCHEDULE_TIMES:
            record[name] = _to_db(record[name])
        return {name: record[name] for name in _SCHEDULE_COLUMNS}

    async def _schedules_from_rows(self, rows: Iterable[sqlite3.Row]) -> list[Schedule]:
        schedules: list[Schedule] = []
        events: list[Event] = []
        for row in rows:
            record = dict(zip(_SCHEDULE_COLUMNS, row, strict=False))
            try:
                record["trigger"] = json.loads(record["trigger"])
                record["metadata"] = json.loads(record["metadata"])
                for name in _SCHEDULE_TIMES:
                    record[name] = _from_db(record[name])
                schedules.append(Schedule.unmarshal(self.serializer, record))
            except (DeserializationError, ValueError) as exc:
                self._logger.error("Cannot restore schedule %r: %s", record["id"], exc)
                events.append(
                    ScheduleDeserializationFailed(schedule_id=record["id"], error=str(exc))
                )
        await self._publish(events)
        return schedules

    def _job_row(self, job: Job) -> tuple[Any, ...]:
        record = job.marshal(self.serializer)
        record["id"] = str(record["id"])
        for name in _JOB_TIMES:
            record[name] = _to_db(record[name])
        return tuple(record[name] for name in _JOB_COLUMNS)

    async def _jobs_from_rows(
        self, rows: Iterable[sqlite3.Row], unreadable: list[UnreadableJob] | None = None
    ) -> list[Job]:
        """Restore jobs; those that cannot be are left out (and added to ``unreadable``)."""
        jobs: list[Job] = []
        events: list[Event] = []
        for row in rows:
            record = dict(zip(_JOB_COLUMNS, row, strict=False))
            record["id"] = UUID(record["id"])
            for name in _JOB_TIMES:
                record[name] = _from_db(record[name])
            try:
                jobs.append(Job.unmarshal(self.serializer, record))
            except DeserializationError as exc:
                self._logger.error("Cannot restore job %s: %s", record["id"], exc)
                events.append(JobDeserializationFailed(job_id=record["id"], error=str(exc)))
                if unreadable is not None:
                    expiration = timedelta(seconds=record["result_expiration_time"] or 0)
                    unreadable.append(UnreadableJob(record["id"], expiration, exc))
        await self._publish(events)
        return jobs

    @staticmethod
    def _result_row(record: dict[str, Any]) -> tuple[Any, ...]:
        record = {**record, "job_id": str(record["job_id"])}
        for name in _RESULT_TIMES:
            record[name] = _to_db(record[name])
        return tuple(record[name] for name in _RESULT_COLUMNS)

    def _insert_results(
        self, connection: sqlite3.Connection, records: list[dict[str, Any]]
    ) -> None:
        connection.executemany(
            f"INSERT OR IGNORE INTO job_results ({', '.join(_RESULT_COLUMNS)}) "
            f"VALUES ({_placeholders(len(_RESULT_COLUMNS))})",
            [self._result_row(record) for record in records],
        )

    def _insert_jobs(self, connection: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        connection.executemany(
            f"INSERT OR IGNORE INTO jobs ({', '.join(_JOB_COLUMNS)}) "
            f"VALUES ({_placeholders(len(_JOB_COLUMNS))})",
            rows,
        )

    #
    # Tasks
    #

    async def add_task(self, task: Task) -> None:
        """Add or replace a task; see :meth:`DataStore.add_task`."""
        record = task.marshal()

        def operation(connection: sqlite3.Connection) -> bool:
            exists = connection.execute("SELECT 1 FROM tasks WHERE id = ?", (task.id,)).fetchone()
            connection.execute(
                "INSERT OR REPLACE INTO tasks (id, func_ref, job_executor, max_running_jobs, "
                "misfire_grace_time, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record["id"],
                    record["func_ref"],
                    record["job_executor"],
                    record["max_running_jobs"],
                    record["misfire_grace_time"],
                    json.dumps(record["metadata"]),
                ),
            )
            return exists is None

        inserted = await self._run(operation)
        event_class = TaskAdded if inserted else TaskUpdated
        await self._publish([event_class(task_id=task.id)])

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""

        def operation(connection: sqlite3.Connection) -> int:
            return connection.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount

        if not await self._run(operation):
            raise TaskLookupError(task_id)
        await self._publish([TaskRemoved(task_id=task_id)])

    @staticmethod
    def _task_from_row(row: sqlite3.Row) -> Task:
        return Task.unmarshal({**dict(row), "metadata": json.loads(row["metadata"])})

    async def get_task(self, task_id: str) -> Task:
        """Return a task; see :meth:`DataStore.get_task`."""

        def operation(connection: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = connection.execute(
                "SELECT * FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            return row

        row = await self._run(operation)
        if row is None:
            raise TaskLookupError(task_id)
        return self._task_from_row(row)

    async def get_tasks(self) -> list[Task]:
        """Return all tasks sorted by id."""

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            return connection.execute("SELECT * FROM tasks ORDER BY id").fetchall()

        return [self._task_from_row(row) for row in await self._run(operation)]

    #
    # Schedules
    #

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; see :meth:`DataStore.add_schedule`."""
        self._schedule_written(schedule.id)
        record = self._schedule_record(
            attrs.evolve(schedule, acquired_by=None, acquired_until=None)
        )

        def operation(connection: sqlite3.Connection) -> bool | None:
            stored = connection.execute(
                "SELECT revision FROM schedules WHERE id = ?", (schedule.id,)
            ).fetchone()
            if stored is not None and conflict_policy is not ConflictPolicy.replace:
                return None
            # a new schedule starts at 0; a replacement makes every earlier read stale
            revision = 0 if stored is None else stored["revision"] + 1
            connection.execute(
                f"INSERT OR REPLACE INTO schedules ({', '.join(_SCHEDULE_COLUMNS)}) "
                f"VALUES ({_placeholders(len(_SCHEDULE_COLUMNS))})",
                [*(record[name] for name in _SCHEDULE_COLUMNS if name != "revision"), revision],
            )
            return stored is None

        inserted = await self._run(operation)
        if inserted is None:
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
            return
        await self._publish([schedule_written_event(schedule, added=inserted)])

    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        """Rewrite a schedule unless it changed since it was read; see the base class."""
        self._schedule_written(schedule.id)
        record = self._schedule_record(schedule)  # serialized before the write lock is taken
        written = [
            name
            for name in _SCHEDULE_COLUMNS
            if name not in _SCHEDULE_KEPT
            and (rescheduled_from is not None or name not in _SCHEDULE_PROGRESS)
        ]
        assignments = ", ".join(f"{name} = ?" for name in written)
        conditions = "id = ? AND revision = ?"
        parameters = [*(record[name] for name in written), schedule.id, schedule.revision]
        if rescheduled_from is not None:
            # the fire times read must still be the stored ones (in the stored form,
            # microseconds; NULL "IS" NULL): else a scheduler processed them meanwhile
            conditions += " AND next_fire_time IS ? AND last_fire_time IS ?"
            parameters += [
                _to_db(rescheduled_from.next_fire_time),
                _to_db(rescheduled_from.last_fire_time),
            ]

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = connection.execute(
                f"UPDATE schedules SET {assignments}, revision = revision + 1, "
                f"acquired_by = NULL, acquired_until = NULL WHERE {conditions} "
                f"RETURNING {', '.join(_SCHEDULE_COLUMNS)}",
                parameters,
            ).fetchall()
            if (
                not rows
                and connection.execute(
                    "SELECT 1 FROM schedules WHERE id = ?", (schedule.id,)
                ).fetchone()
            ):
                # still within the write lock: the schedule exists but changed since read
                raise StaleScheduleError(schedule.id)
            return rows

        rows = await self._run(operation)
        [updated] = await self._schedules_from_rows(rows) if rows else [None]
        if updated is not None:
            await self._publish([schedule_written_event(updated)])
        return updated

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        id_list = list(ids)

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            removed: list[sqlite3.Row] = []
            for schedule_id in id_list:
                removed.extend(
                    connection.execute(
                        "DELETE FROM schedules WHERE id = ? RETURNING id, task_id", (schedule_id,)
                    ).fetchall()
                )
            return removed

        rows = await self._run(operation)
        await self._publish(
            ScheduleRemoved(schedule_id=row["id"], task_id=row["task_id"], finished=finished)
            for row in rows
        )

    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        """Return schedules sorted by id; see :meth:`DataStore.get_schedules`."""
        id_list = None if ids is None else list(set(ids))
        columns = ", ".join(_SCHEDULE_COLUMNS)

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            if id_list is None:
                return connection.execute(
                    f"SELECT {columns} FROM schedules ORDER BY id"
                ).fetchall()
            return connection.execute(
                f"SELECT {columns} FROM schedules WHERE id IN (SELECT value FROM json_each(?)) "
                "ORDER BY id",
                (json.dumps(id_list),),
            ).fetchall()

        return await self._schedules_from_rows(await self._run(operation))

    async def _lease_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int, skip: Sequence[str]
    ) -> tuple[list[Schedule], list[str]]:
        """Lease due schedules, except ``skip``; see :meth:`acquire_schedules`."""
        columns = ", ".join(_SCHEDULE_COLUMNS)
        skipped = json.dumps(list(skip))

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            # "now" once this attempt holds the write lock: a wait for the lock must not
            # shorten the lease (see _in_transaction)
            now = self._clock.now()
            until = _to_db(now + lease_duration)
            return connection.execute(
                f"""
                UPDATE schedules SET acquired_by = ?, acquired_until = ?
                WHERE id IN (
                    SELECT id FROM schedules
                    WHERE NOT paused AND next_run_time <= ?
                      AND (acquired_until IS NULL OR acquired_until <= ?)
                      AND id NOT IN (SELECT value FROM json_each(?))
                    ORDER BY next_run_time, id LIMIT ?
                )
                RETURNING {columns}
                """,
                (scheduler_id, until, _to_db(now), _to_db(now), skipped, limit),
            ).fetchall()

        rows = await self._run(operation)
        schedules = await self._schedules_from_rows(rows)
        schedules.sort(key=lambda schedule: (schedule.next_run_time, schedule.id))
        restored = {schedule.id for schedule in schedules}
        return schedules, [row["id"] for row in rows if row["id"] not in restored]

    async def _unlease_schedules(self, scheduler_id: str, ids: Sequence[str]) -> None:
        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE schedules SET acquired_by = NULL, acquired_until = NULL "
                "WHERE id IN (SELECT value FROM json_each(?)) AND acquired_by = ?",
                (json.dumps(list(ids)), scheduler_id),
            )

        await self._run(operation)

    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply scheduler decisions; see :meth:`DataStore.release_schedules`."""
        if not updates:
            return
        by_id = {update.schedule_id: update for update in updates}
        now = self._clock.now()
        job_rows = {
            update.schedule_id: [self._job_row(job) for job in update.jobs] for update in updates
        }
        missed = {
            update.schedule_id: [
                (job, JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now))
                for job in update.missed_jobs
            ]
            for update in updates
        }

        def operation(connection: sqlite3.Connection) -> dict[str, str]:
            owned: dict[str, str] = {}
            for schedule_id, update in by_id.items():
                row = connection.execute(
                    "SELECT task_id FROM schedules WHERE id = ? AND acquired_by = ?",
                    (schedule_id, scheduler_id),
                ).fetchone()
                if row is None:
                    continue
                owned[schedule_id] = row["task_id"]
                self._insert_jobs(connection, job_rows[schedule_id])
                kept = [
                    result.marshal(self.serializer)
                    for job, result in missed[schedule_id]
                    if job.result_expiration_time > timedelta(0)
                ]
                self._insert_results(connection, kept)
                if update.next_fire_time is None:
                    connection.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
                else:
                    connection.execute(
                        "UPDATE schedules SET next_fire_time = ?, next_run_time = ?, "
                        "last_fire_time = ?, acquired_by = NULL, acquired_until = NULL "
                        "WHERE id = ?",
                        (
                            _to_db(update.next_fire_time),
                            _to_db(update.next_run_time),
                            _to_db(update.last_fire_time),
                            schedule_id,
                        ),
                    )
            return owned

        owned = await self._run(operation)
        events: list[Event] = []
        for schedule_id, task_id in owned.items():
            events += schedule_release_events(
                scheduler_id, by_id[schedule_id], task_id, missed[schedule_id]
            )
        await self._publish(events)

    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time a schedule may be acquired; see the base class."""
        skipped = json.dumps(self._schedules_left_alone())

        def operation(connection: sqlite3.Connection) -> int | None:
            row = connection.execute(
                """
                SELECT
                    (SELECT min(next_run_time) FROM schedules
                     WHERE NOT paused AND next_run_time IS NOT NULL AND acquired_by IS NULL
                       AND id NOT IN (SELECT value FROM json_each(?1))),
                    (SELECT min(acquired_until) FROM schedules
                     WHERE acquired_by IS NOT NULL AND NOT paused
                       AND id NOT IN (SELECT value FROM json_each(?1)))
                """,
                (skipped,),
            ).fetchone()
            values = [value for value in row if value is not None]
            return min(values) if values else None

        return _from_db(await self._run(operation))

    #
    # Jobs
    #

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; see :meth:`DataStore.add_jobs`."""
        if not jobs:
            return
        # marshalled here, so that a job that cannot be serialized fails its own caller only
        await self._job_writer.submit([self._job_row(job) for job in jobs])
        await self._publish(
            JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            for job in jobs
        )

    async def _write_jobs(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert the jobs of concurrent :meth:`add_jobs` calls in one transaction."""
        await self._run(self._insert_jobs, rows)

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class."""
        id_list = None if ids is None else [str(job_id) for job_id in ids]
        columns = ", ".join(_JOB_COLUMNS)

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            if id_list is None:
                return connection.execute(
                    f"SELECT {columns} FROM jobs ORDER BY sequence"
                ).fetchall()
            return connection.execute(
                f"SELECT {columns} FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                "ORDER BY sequence",
                (json.dumps(id_list),),
            ).fetchall()

        return await self._jobs_from_rows(await self._run(operation))

    async def _lease_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> tuple[list[Job], bool]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""

        def operation(
            connection: sqlite3.Connection,
        ) -> tuple[datetime, list[sqlite3.Row], list[sqlite3.Row]]:
            now = self._clock.now()  # once this attempt holds the write lock
            acquired, missed = self._acquire_jobs(
                connection, scheduler_id, _to_db(now), _to_db(now + lease_duration), limit
            )
            return now, acquired, missed

        now, acquired_rows, missed_rows = await self._run(operation)
        unreadable: list[UnreadableJob] = []
        jobs = await self._jobs_from_rows(acquired_rows, unreadable)
        missed = await self._jobs_from_rows(missed_rows)
        events = job_acquisition_events(scheduler_id, now, jobs, missed)
        await self._publish(events)
        await self._release_unreadable_jobs(scheduler_id, now, unreadable)
        jobs = [attrs.evolve(job, acquired_by=None, acquired_until=None) for job in jobs]
        return jobs, bool(unreadable)

    def _acquire_jobs(
        self,
        connection: sqlite3.Connection,
        scheduler_id: str,
        now: int | None,
        until: int | None,
        limit: int,
    ) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
        # The write lock (BEGIN IMMEDIATE) makes this whole function atomic across processes
        running_by_task: dict[str, int] = {}
        running_by_schedule: dict[str, int] = {}
        for row in connection.execute(
            "SELECT task_id, schedule_id, count(*) FROM jobs WHERE acquired_by IS NOT NULL "
            "GROUP BY task_id, schedule_id"
        ):
            running_by_task[row[0]] = running_by_task.get(row[0], 0) + row[2]
            if row[1] is not None:
                running_by_schedule[row[1]] = running_by_schedule.get(row[1], 0) + row[2]
        task_limits = {
            row[0]: row[1]
            for row in connection.execute(
                "SELECT id, max_running_jobs FROM tasks WHERE max_running_jobs IS NOT NULL"
            )
        }
        saturated_tasks = {
            task_id
            for task_id, task_limit in task_limits.items()
            if running_by_task.get(task_id, 0) >= task_limit
        }
        saturated_schedules = {
            row[0]
            for row in connection.execute(
                "SELECT id, max_running_jobs FROM schedules WHERE max_running_jobs IS NOT NULL "
                "AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(running_by_schedule)),),
            )
            if running_by_schedule[row[0]] >= row[1]
        }

        chosen: list[str] = []
        missed: list[str] = []
        # saturated lanes may hold queued jobs back: a release must make workers look again
        held_back = bool(saturated_tasks or saturated_schedules)
        # Pages of the queue, oldest first, leaving out the lanes known to be full (those
        # this acquisition fills included): a backlog that cannot run now, or that missed
        # its deadline, must not keep the jobs behind it waiting
        page_size = limit * 4
        after = -1
        while len(chosen) < limit:
            page = connection.execute(
                """
                SELECT j.id, j.task_id, j.schedule_id, j.start_deadline, j.sequence,
                       s.max_running_jobs AS schedule_limit
                FROM jobs j LEFT JOIN schedules s ON s.id = j.schedule_id
                WHERE j.acquired_by IS NULL AND j.sequence > ?
                  AND j.task_id NOT IN (SELECT value FROM json_each(?))
                  AND (j.schedule_id IS NULL
                       OR j.schedule_id NOT IN (SELECT value FROM json_each(?)))
                ORDER BY j.sequence
                LIMIT ?
                """,
                (
                    after,
                    json.dumps(list(saturated_tasks)),
                    json.dumps(list(saturated_schedules)),
                    page_size,
                ),
            ).fetchall()
            for row in page:
                if len(chosen) >= limit:
                    break
                after = row["sequence"]
                if row["start_deadline"] is not None and row["start_deadline"] < now:
                    missed.append(row["id"])
                    continue
                task_id, schedule_id = row["task_id"], row["schedule_id"]
                if task_id in saturated_tasks or schedule_id in saturated_schedules:
                    continue  # filled on this page
                task_limit = task_limits.get(task_id)
                schedule_limit = row["schedule_limit"]
                running_by_task[task_id] = running_by_task.get(task_id, 0) + 1
                if task_limit is not None and running_by_task[task_id] >= task_limit:
                    saturated_tasks.add(task_id)
                    held_back = True
                if schedule_id is not None:
                    running_by_schedule[schedule_id] = running_by_schedule.get(schedule_id, 0) + 1
                    if (
                        schedule_limit is not None
                        and running_by_schedule[schedule_id] >= schedule_limit
                    ):
                        saturated_schedules.add(schedule_id)
                        held_back = True
                chosen.append(row["id"])
            if len(page) < page_size:
                break

        columns = ", ".join(_JOB_COLUMNS)
        acquired = connection.execute(
            f"UPDATE jobs SET acquired_by = ?, acquired_until = ? "
            f"WHERE id IN (SELECT value FROM json_each(?)) RETURNING {columns}, sequence",
            (scheduler_id, until, json.dumps(chosen)),
        ).fetchall()
        acquired.sort(key=lambda row: row["sequence"])
        missed_rows = self._delete_jobs(connection, missed)
        self._keep_results(connection, missed_rows, JobOutcome.missed_start_deadline, now)
        self._jobs_held_back = held_back
        return acquired, missed_rows

    @staticmethod
    def _delete_jobs(connection: sqlite3.Connection, ids: list[str]) -> list[sqlite3.Row]:
        if not ids:
            return []
        return connection.execute(
            f"DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
            f"RETURNING {', '.join(_JOB_COLUMNS)}",
            (json.dumps(ids),),
        ).fetchall()

    def _keep_results(
        self,
        connection: sqlite3.Connection,
        job_rows: Sequence[sqlite3.Row],
        outcome: JobOutcome,
        now: int | None,
    ) -> None:
        finished_at = _from_db(now)
        assert finished_at is not None
        records = [
            JobResult(
                job_id=UUID(row["id"]),
                outcome=outcome,
                finished_at=finished_at,
                expires_at=finished_at + timedelta(seconds=row["result_expiration_time"]),
            ).marshal(self.serializer)
            for row in job_rows
            if row["result_expiration_time"] > 0
        ]
        self._insert_results(connection, records)

    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish acquired jobs; see :meth:`DataStore.release_jobs`."""
        if not results:
            return
        marshalled = {
            str(result.job_id): marshal_job_result(self.serializer, result) for result in results
        }

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = connection.execute(
                "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                "AND acquired_by = ? "
                "RETURNING id, task_id, schedule_id, scheduled_fire_time",
                (json.dumps(list(marshalled)), scheduler_id),
            ).fetchall()
            kept = [record for row in rows if (record := marshalled[row["id"]][1]) is not None]
            self._insert_results(connection, kept)
            return rows

        rows = await self._run(operation)
        await self._publish(
            job_released_event(
                scheduler_id,
                ReleasedJob(
                    UUID(row["id"]),
                    row["task_id"],
                    row["schedule_id"],
                    _from_db(row["scheduled_fire_time"]),
                ),
                marshalled[row["id"]][0],
            )
            for row in rows
        )

    async def return_jobs(self, scheduler_id: str, jobs: Sequence[Job]) -> None:
        """Queue unstarted jobs again in one transaction; see :meth:`DataStore.return_jobs`.

        A returned row keeps its ``sequence``, so it is back in its place in the queue. There
        is no running-job count to undo: acquisitions count leased rows as they go.
        """
        if not jobs:
            return
        id_list = list(dict.fromkeys(str(job.id) for job in jobs))

        def operation(connection: sqlite3.Connection) -> list[sqlite3.Row]:
            return connection.execute(
                "UPDATE jobs SET acquired_by = NULL, acquired_until = NULL "
                "WHERE id IN (SELECT value FROM json_each(?)) AND acquired_by = ? "
                "RETURNING id, task_id, schedule_id, sequence",
                (json.dumps(id_list), scheduler_id),
            ).fetchall()

        rows = sorted(await self._run(operation), key=lambda row: row["sequence"])
        ignored = len(id_list) - len(rows)
        if ignored:
            self._logger.debug("Ignored %d jobs not acquired by %s", ignored, scheduler_id)
        await self._publish(
            JobAdded(
                job_id=UUID(row["id"]), task_id=row["task_id"], schedule_id=row["schedule_id"]
            )
            for row in rows
        )

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""
        now = _to_db(self._clock.now())

        def operation(connection: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = connection.execute(
                f"SELECT {', '.join(_RESULT_COLUMNS)} FROM job_results "
                "WHERE job_id = ? AND expires_at > ?",
                (str(job_id), now),
            ).fetchone()
            return row

        row = await self._run(operation)
        if row is None:
            return None
        record = dict(zip(_RESULT_COLUMNS, row, strict=True))
        record["job_id"] = UUID(record["job_id"])
        for name in _RESULT_TIMES:
            record[name] = _from_db(record[name])
        return JobResult.unmarshal(self.serializer, record)

    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Extend job leases; see :meth:`DataStore.extend_acquired_leases`."""
        id_list = [str(job_id) for job_id in job_ids]
        if not id_list:
            return

        def operation(connection: sqlite3.Connection) -> None:
            until = _to_db(self._clock.now() + lease_duration)  # once this holds the lock
            connection.execute(
                "UPDATE jobs SET acquired_until = ? "
                "WHERE id IN (SELECT value FROM json_each(?)) AND acquired_by = ?",
                (until, json.dumps(id_list), scheduler_id),
            )

        await self._run(operation)

    async def cleanup(self) -> None:
        """Expire results, release abandoned and overdue jobs; see the base class."""
        now = self._clock.now()
        now_db = _to_db(now)
        columns = ", ".join(_JOB_COLUMNS)

        def operation(
            connection: sqlite3.Connection,
        ) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
            connection.execute("DELETE FROM job_results WHERE expires_at <= ?", (now_db,))
            abandoned = connection.execute(
                f"DELETE FROM jobs WHERE acquired_by IS NOT NULL AND acquired_until <= ? "
                f"RETURNING {columns}",
                (now_db,),
            ).fetchall()
            self._keep_results(connection, abandoned, JobOutcome.abandoned, now_db)
            overdue = connection.execute(
                f"DELETE FROM jobs WHERE acquired_by IS NULL AND start_deadline < ? "
                f"RETURNING {columns}",
                (now_db,),
            ).fetchall()
            self._keep_results(connection, overdue, JobOutcome.missed_start_deadline, now_db)
            return abandoned, overdue

        abandoned, overdue = await self._run(operation)
        events = cleanup_events(
            now,
            await self._jobs_from_rows(abandoned),
            await self._jobs_from_rows(overdue),
            self._logger,
        )
        await self._publish(events)
