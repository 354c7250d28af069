"""PostgreSQLDataStore: schedules, jobs and results in PostgreSQL, through asyncpg.

Every operation that hands out or takes back work is one statement, sent in autocommit mode
(one round trip): acquiring k schedules or jobs, adding k jobs, releasing k results or k
schedule updates, returning k unstarted jobs. Leases (``acquired_by``/``acquired_until``)
make a vanished scheduler's work acquirable again.

``max_running_jobs`` is kept in counters, one row of ``job_slots`` per limited task or
schedule. An acquisition locks the counters its candidates need (in one order, at their
latest committed values: READ COMMITTED's ``FOR UPDATE``), grants what is free and adds what
it granted, all in the same statement; each job records which counters it holds
(``task_slot``, ``schedule_slot``) and the statement that deletes it (release, cleanup) or
queues it again (return) gives them back. Every transaction runs at READ COMMITTED,
whatever the server's default: these statements rely on its re-reading of locked rows.

Each schedule row has a ``revision``: ``update_schedule_definition`` is one conditional
``UPDATE`` on the revision its caller read (re-checked on the locked row, so of two
concurrent updates from one read only the first writes), and moves it on by one. The same
statement records the operation's token in ``schedule_writes`` when it writes, so that a
retry after a lost reply knows its own committed write, whatever was written since.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from logging import Logger
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
import asyncpg
import attrs

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._event_loops import require_asyncio
from .._exceptions import (
    ConflictingIdError,
    DeserializationError,
    StaleScheduleError,
    TaskLookupError,
)
from .._structures import Job, JobResult, Schedule, ScheduleUpdate, Task
from .._urls import check_url, split_own_options
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

if TYPE_CHECKING:
    from ..eventbrokers.postgresql import PostgreSQLEventBroker

#: bumped whenever the tables change; a store migrates older schemas and refuses newer ones
SCHEMA_VERSION = 3

_MICROSECOND = timedelta(microseconds=1)

#: how long cleanup keeps the token of a schedule write: far longer than all the attempts of
#: one update take (with the default retry settings and timeout, 8 attempts of at most 60 s
#: for a connection and 60 s for the reply, and 6.4 s of waits between them: under 17 minutes)
_WRITE_TOKEN_LIFETIME = timedelta(hours=1)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_SCHEDULE_COLUMNS = (
    "id, task_id, trigger, args, kwargs, name, paused, coalesce, misfire_grace_time, "
    "max_jitter, max_running_jobs, job_executor, job_result_expiration_time, metadata, "
    "next_fire_time, next_run_time, last_fire_time, acquired_by, acquired_until, revision"
)
#: where a schedule is in time and its lease: what update_schedule_definition keeps
_SCHEDULE_PROGRESS = frozenset(
    {"next_fire_time", "next_run_time", "last_fire_time", "acquired_by", "acquired_until"}
)
#: a schedule's columns apart from its progress and revision (the store's own), and their
#: places in _SCHEDULE_COLUMNS
_DEFINITION_COLUMNS = [
    column
    for column in _SCHEDULE_COLUMNS.split(", ")
    if column not in _SCHEDULE_PROGRESS and column != "revision"
]
_DEFINITION = [_SCHEDULE_COLUMNS.split(", ").index(column) for column in _DEFINITION_COLUMNS]
#: the stored schedule has the definition $1.. (the id by its index, the rest null-safe)
_SAME_DEFINITION = " AND ".join(
    f"{column} = $1"
    if column == "id"
    else f"{column} IS NOT DISTINCT FROM ${number}"
    + ("::jsonb" if column in ("trigger", "metadata") else "")
    for number, column in enumerate(_DEFINITION_COLUMNS, start=1)
)
_JOB_COLUMNS = (
    "id, task_id, args, kwargs, schedule_id, scheduled_fire_time, jitter, start_deadline, "
    "job_executor, result_expiration_time, created_at, acquired_by, acquired_until"
)
_JOB_TYPES = (
    "uuid, text, bytea, bytea, text, timestamptz, float8, timestamptz, text, float8, "
    "timestamptz, text, timestamptz"
)
_RESULT_COLUMNS = "job_id, outcome, return_value, exception, started_at, finished_at, expires_at"
_RESULT_TYPES = "uuid, text, bytea, bytea, timestamptz, timestamptz, timestamptz"


def _unnest(first: int, types: str, names: str) -> str:
    """``unnest($first::type[], ...) AS r(names)``: one array parameter per column."""
    arrays = ", ".join(
        f"${first + index}::{name.strip()}[]" for index, name in enumerate(types.split(","))
    )
    return f"unnest({arrays}) AS r({names})"


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns.split(", "))


# The indexes of version 2. Each "next" lookup reads one partial index in its own order:
# due unleased schedules by (next_run_time, id), leased ones by lease expiry, queued jobs by
# (created_at, id), so acquiring k items reads k index entries and k rows.
_INDEXES = """
CREATE INDEX schedules_due ON {schema}.schedules (next_run_time, id)
    WHERE NOT paused AND acquired_by IS NULL AND next_run_time IS NOT NULL;
CREATE INDEX schedules_leased ON {schema}.schedules (acquired_until)
    WHERE acquired_by IS NOT NULL AND NOT paused;
CREATE INDEX jobs_queued ON {schema}.jobs (created_at, id) WHERE acquired_by IS NULL;
"""

# The tokens of update_schedule_definition's writes (one per operation, see there), by the
# store's clock; cleanup forgets them after _WRITE_TOKEN_LIFETIME, through the index
_SCHEDULE_WRITES = """
CREATE TABLE {schema}.schedule_writes (
    token uuid PRIMARY KEY,
    written_at timestamptz NOT NULL
);
CREATE INDEX schedule_writes_age ON {schema}.schedule_writes (written_at);
"""

_JOB_SLOTS = """
CREATE TABLE {schema}.job_slots (
    kind text NOT NULL CHECK (kind IN ('task', 'schedule')),
    id text NOT NULL,
    taken integer NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX job_slots_taken ON {schema}.job_slots (kind, id) WHERE taken > 0;
"""

_DDL = (
    """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE {schema}.metadata (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {schema}.tasks (
    id text PRIMARY KEY,
    func_ref text,
    job_executor text NOT NULL,
    max_running_jobs integer,
    misfire_grace_time double precision,
    metadata jsonb NOT NULL
);
CREATE TABLE {schema}.schedules (
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
    acquired_until timestamptz,
    revision bigint NOT NULL DEFAULT 0
);
CREATE TABLE {schema}.jobs (
    id uuid PRIMARY KEY,
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
    acquired_until timestamptz,
    task_slot boolean NOT NULL DEFAULT false,
    schedule_slot boolean NOT NULL DEFAULT false
);
CREATE INDEX jobs_running
    ON {schema}.jobs (task_id, schedule_id) WHERE acquired_by IS NOT NULL;
CREATE INDEX jobs_deadline
    ON {schema}.jobs (start_deadline) WHERE acquired_by IS NULL AND start_deadline IS NOT NULL;
CREATE TABLE {schema}.job_results (
    job_id uuid PRIMARY KEY,
    outcome text NOT NULL,
    return_value bytea,
    exception bytea,
    started_at timestamptz,
    finished_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX job_results_expiry ON {schema}.job_results (expires_at);
"""
    + _JOB_SLOTS
    + _SCHEDULE_WRITES
    + _INDEXES
)

# Version 1 -> 2: running-job counters (jobs running now keep the slots they hold), and the
# indexes that keep "next" lookups on one index each.
_MIGRATE_FROM_1 = (
    """
ALTER TABLE {schema}.jobs
    ADD COLUMN task_slot boolean NOT NULL DEFAULT false,
    ADD COLUMN schedule_slot boolean NOT NULL DEFAULT false;
"""
    + _JOB_SLOTS
    + """
UPDATE {schema}.jobs j SET task_slot = true FROM {schema}.tasks t
    WHERE t.id = j.task_id AND t.max_running_jobs IS NOT NULL AND j.acquired_by IS NOT NULL;
UPDATE {schema}.jobs j SET schedule_slot = true FROM {schema}.schedules s
    WHERE s.id = j.schedule_id AND s.max_running_jobs IS NOT NULL AND j.acquired_by IS NOT NULL;
INSERT INTO {schema}.job_slots (kind, id, taken)
    SELECT 'task', t.id,
           (SELECT count(*) FROM {schema}.jobs j WHERE j.task_id = t.id AND j.task_slot)
    FROM {schema}.tasks t WHERE t.max_running_jobs IS NOT NULL;
INSERT INTO {schema}.job_slots (kind, id, taken)
    SELECT 'schedule', s.id,
           (SELECT count(*) FROM {schema}.jobs j WHERE j.schedule_id = s.id AND j.schedule_slot)
    FROM {schema}.schedules s WHERE s.max_running_jobs IS NOT NULL;
DROP INDEX {schema}.schedules_due;
DROP INDEX {schema}.schedules_leased;
DROP INDEX {schema}.jobs_queued;
ALTER TABLE {schema}.jobs DROP COLUMN sequence;
"""
    + _INDEXES
    + """
UPDATE {schema}.metadata SET value = '2' WHERE key = 'schema_version';
"""
)

# Version 2 -> 3: schedule revisions, for update_schedule_definition's optimistic concurrency
# (a column with a constant default is added without rewriting the table), and the tokens of
# its writes
_MIGRATE_FROM_2 = (
    """
ALTER TABLE {schema}.schedules ADD COLUMN revision bigint NOT NULL DEFAULT 0;
"""
    + _SCHEDULE_WRITES
    + """
UPDATE {schema}.metadata SET value = '3' WHERE key = 'schema_version';
"""
)

#: the tables of a store, to tell an asched schema from someone else's
_TABLES = (
    "metadata",
    "tasks",
    "schedules",
    "jobs",
    "job_results",
    "job_slots",
    "schedule_writes",
)


def _give_back_slots(schema: str, deleted: str) -> str:
    """CTEs that return the slots held by the job rows in CTE ``deleted`` to their counters.

    The counters are locked in (kind, id) order, the order acquisitions lock them in, so
    releases and acquisitions never deadlock. A locking query here joins only MATERIALIZED
    CTEs: joined to the inlined subquery instead, a counter row that a concurrent transaction
    had updated was dropped when re-read (PostgreSQL 15), and its slots never came back.
    """
    return f"""
    freed AS MATERIALIZED (
        SELECT 'task' AS kind, task_id AS id, count(*) AS jobs
        FROM {deleted} WHERE task_slot GROUP BY task_id
        UNION ALL
        SELECT 'schedule', schedule_id, count(*)
        FROM {deleted} WHERE schedule_slot GROUP BY schedule_id
    ), freed_locked AS (
        SELECT x.kind, x.id, f.jobs FROM {schema}.job_slots x
        JOIN freed f ON f.kind = x.kind AND f.id = x.id
        ORDER BY x.kind, x.id
        FOR UPDATE OF x
    ), given_back AS (
        UPDATE {schema}.job_slots x SET taken = x.taken - l.jobs
        FROM freed_locked l WHERE x.kind = l.kind AND x.id = l.id
    )
    """


def _statements(schema: str) -> dict[str, str]:
    """Build the store's hot statements, once per store (``schema`` is a quoted identifier)."""
    job_columns = _prefixed("j", _JOB_COLUMNS)
    return {
        # $1 scheduler, $2 now, $3 lease end, $4 limit (as acquire_jobs)
        "acquire_schedules": f"""
            WITH unleased AS (
                SELECT id, next_run_time FROM {schema}.schedules
                WHERE NOT paused AND acquired_by IS NULL AND next_run_time <= $2
                  AND id <> ALL($5::text[])
                ORDER BY next_run_time, id
                LIMIT $4
                FOR UPDATE SKIP LOCKED
            ), expired AS (
                SELECT id, next_run_time FROM {schema}.schedules
                WHERE NOT paused AND acquired_by IS NOT NULL AND acquired_until <= $2
                  AND next_run_time <= $2 AND id <> ALL($5::text[])
                ORDER BY acquired_until
                LIMIT $4
                FOR UPDATE SKIP LOCKED
            ), chosen AS (
                SELECT id FROM (SELECT * FROM unleased UNION ALL SELECT * FROM expired) c
                ORDER BY next_run_time, id
                LIMIT $4
            )
            UPDATE {schema}.schedules s SET acquired_by = $1, acquired_until = $3
            WHERE s.id = ANY(ARRAY(SELECT id FROM chosen))
            RETURNING {_prefixed("s", _SCHEDULE_COLUMNS)}
            """,
        # the definition columns in _DEFINITION order: whether the stored schedule is that
        "same_schedule": f"""
            SELECT true FROM {schema}.schedules WHERE {_SAME_DEFINITION}
            """,
        # $1 scheduler, $2 new lease end, $3 lease ends of attempts whose reply was lost
        "reclaim_schedules": f"""
            UPDATE {schema}.schedules s SET acquired_until = $2
            WHERE s.acquired_by = $1 AND s.acquired_until = ANY($3::timestamptz[])
            RETURNING {_prefixed("s", _SCHEDULE_COLUMNS)}
            """,
        "reclaim_jobs": f"""
            UPDATE {schema}.jobs j SET acquired_until = $2
            WHERE j.acquired_by = $1 AND j.acquired_until = ANY($3::timestamptz[])
            RETURNING 'acquired' AS fate, {job_columns}
            """,
        "next_schedule_run_time": f"""
            SELECT least(
                (SELECT min(next_run_time) FROM {schema}.schedules
                 WHERE NOT paused AND acquired_by IS NULL AND next_run_time IS NOT NULL),
                (SELECT min(acquired_until) FROM {schema}.schedules
                 WHERE acquired_by IS NOT NULL AND NOT paused)
            )
            """,
        # $1 the ids of schedules this process leaves alone (see _schedules_left_alone): a
        # statement of its own, as the filter costs the usual one its index-only scans
        "next_schedule_run_time_skipping": f"""
            SELECT least(
                (SELECT min(next_run_time) FROM {schema}.schedules
                 WHERE NOT paused AND acquired_by IS NULL AND next_run_time IS NOT NULL
                   AND id <> ALL($1::text[])),
                (SELECT min(acquired_until) FROM {schema}.schedules
                 WHERE acquired_by IS NOT NULL AND NOT paused AND id <> ALL($1::text[]))
            )
            """,
        # $1 scheduler, $2 ids
        "unlease_schedules": f"""
            UPDATE {schema}.schedules SET acquired_by = NULL, acquired_until = NULL
            WHERE id = ANY($2::text[]) AND acquired_by = $1
            """,
        # $1 scheduler, $2..$5 updates (id, next fire, next run, last fire), $6..$19 jobs
        # (13 columns and the schedule of the update), $20..$27 missed results likewise
        "release_schedules": f"""
            WITH updates AS MATERIALIZED (
                SELECT * FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[],
                                     $5::timestamptz[])
                    AS u(id, next_fire_time, next_run_time, last_fire_time)
            ), moved AS (
                UPDATE {schema}.schedules s SET
                    next_fire_time = u.next_fire_time, next_run_time = u.next_run_time,
                    last_fire_time = u.last_fire_time, acquired_by = NULL, acquired_until = NULL
                FROM updates u
                WHERE s.id = ANY($2::text[]) AND s.id = u.id AND s.acquired_by = $1
                  AND u.next_fire_time IS NOT NULL
                RETURNING s.id, s.task_id
            ), finished AS (
                DELETE FROM {schema}.schedules s USING updates u
                WHERE s.id = ANY($2::text[]) AND s.id = u.id AND s.acquired_by = $1
                  AND u.next_fire_time IS NULL
                RETURNING s.id, s.task_id
            ), owned AS (
                SELECT id, task_id FROM moved UNION ALL SELECT id, task_id FROM finished
            ), new_jobs AS (
                INSERT INTO {schema}.jobs ({_JOB_COLUMNS})
                SELECT {_prefixed("r", _JOB_COLUMNS)}
                FROM {_unnest(6, _JOB_TYPES + ", text", _JOB_COLUMNS + ", owner")}
                WHERE r.owner IN (SELECT id FROM owned)
                ON CONFLICT (id) DO NOTHING
            ), kept AS (
                INSERT INTO {schema}.job_results ({_RESULT_COLUMNS})
                SELECT {_prefixed("r", _RESULT_COLUMNS)}
                FROM {_unnest(20, _RESULT_TYPES + ", text", _RESULT_COLUMNS + ", owner")}
                WHERE r.owner IN (SELECT id FROM owned)
                ON CONFLICT (job_id) DO NOTHING
            )
            SELECT id, task_id FROM owned
            """,
        "insert_jobs": f"""
            INSERT INTO {schema}.jobs ({_JOB_COLUMNS})
            SELECT * FROM {_unnest(1, _JOB_TYPES, _JOB_COLUMNS)}
            ON CONFLICT (id) DO NOTHING
            """,
        # $1 scheduler, $2 now, $3 lease end, $4 limit. Candidates: the oldest queued jobs,
        # leaving out those of tasks and schedules already at their limit (a saturated lane
        # must not starve the ones behind it) unless they are past their start deadline.
        # Then the counters of the candidates' limited lanes are locked at their latest
        # values, each lane gets what is free (schedule first, then task, so that a job
        # holds both or neither), and the counters grow by what was granted.
        "acquire_jobs": f"""
            WITH saturated AS (
                -- lanes at their limit, found through the counters above zero (few)
                SELECT x.kind, x.id FROM {schema}.job_slots x
                WHERE x.taken > 0 AND x.taken >= CASE x.kind
                    WHEN 'task' THEN
                        (SELECT t.max_running_jobs FROM {schema}.tasks t WHERE t.id = x.id)
                    ELSE
                        (SELECT s.max_running_jobs FROM {schema}.schedules s WHERE s.id = x.id)
                    END
            ), queued AS (
                SELECT j.id, j.task_id, j.schedule_id, j.created_at,
                       j.start_deadline < $2 AS missed
                FROM {schema}.jobs j
                WHERE j.acquired_by IS NULL
                  AND (j.start_deadline < $2 OR (
                      j.task_id NOT IN (SELECT id FROM saturated WHERE kind = 'task')
                      AND (j.schedule_id IS NULL
                           OR j.schedule_id NOT IN (
                               SELECT id FROM saturated WHERE kind = 'schedule'))))
                ORDER BY j.created_at, j.id
                LIMIT $4
                FOR UPDATE OF j SKIP LOCKED
            ), candidates AS (
                SELECT q.*,
                       (SELECT max_running_jobs FROM {schema}.tasks WHERE id = q.task_id)
                           AS task_limit,
                       (SELECT max_running_jobs FROM {schema}.schedules WHERE id = q.schedule_id)
                           AS schedule_limit
                FROM queued q
            ), wanted AS MATERIALIZED (
                SELECT 'task' AS kind, task_id AS id FROM candidates
                WHERE task_limit IS NOT NULL AND missed IS NOT TRUE
                UNION
                SELECT 'schedule', schedule_id FROM candidates
                WHERE schedule_limit IS NOT NULL AND missed IS NOT TRUE
            ), lanes AS (
                SELECT x.kind, x.id, x.taken FROM {schema}.job_slots x
                WHERE (x.kind, x.id) IN (SELECT kind, id FROM wanted)
                ORDER BY x.kind, x.id
                FOR UPDATE OF x
            ), schedule_granted AS (
                SELECT c.*, row_number() OVER (PARTITION BY c.task_id ORDER BY c.created_at, c.id)
                    AS task_rank
                FROM (
                    SELECT c.*,
                           row_number() OVER (PARTITION BY c.schedule_id
                                              ORDER BY c.created_at, c.id) AS schedule_rank
                    FROM candidates c WHERE c.missed IS NOT TRUE
                ) c
                LEFT JOIN lanes l ON l.kind = 'schedule' AND l.id = c.schedule_id
                WHERE c.schedule_limit IS NULL
                   OR c.schedule_rank <= c.schedule_limit - coalesce(l.taken, c.schedule_limit)
            ), chosen AS (
                SELECT c.id, c.task_id, c.schedule_id,
                       c.task_limit IS NOT NULL AS task_slot,
                       c.schedule_limit IS NOT NULL AS schedule_slot
                FROM schedule_granted c
                LEFT JOIN lanes l ON l.kind = 'task' AND l.id = c.task_id
                WHERE c.task_limit IS NULL
                   OR c.task_rank <= c.task_limit - coalesce(l.taken, c.task_limit)
            ), granted AS (
                SELECT 'task' AS kind, task_id AS id, count(*) AS jobs
                FROM chosen WHERE task_slot GROUP BY task_id
                UNION ALL
                SELECT 'schedule', schedule_id, count(*)
                FROM chosen WHERE schedule_slot GROUP BY schedule_id
            ), taken AS (
                UPDATE {schema}.job_slots x SET taken = x.taken + g.jobs
                FROM granted g WHERE x.kind = g.kind AND x.id = g.id
            ), acquired AS (
                -- rows by primary key (= ANY of an array): a join could scan the whole table
                UPDATE {schema}.jobs j SET acquired_by = $1, acquired_until = $3,
                    task_slot = j.id = ANY(ARRAY(SELECT id FROM chosen WHERE task_slot)),
                    schedule_slot = j.id = ANY(ARRAY(SELECT id FROM chosen WHERE schedule_slot))
                WHERE j.id = ANY(ARRAY(SELECT id FROM chosen))
                RETURNING {job_columns}
            ), missed AS (
                DELETE FROM {schema}.jobs j
                WHERE j.id = ANY(ARRAY(SELECT id FROM candidates WHERE missed))
                RETURNING {job_columns}
            ), kept AS (
                INSERT INTO {schema}.job_results (job_id, outcome, finished_at, expires_at)
                SELECT id, 'missed_start_deadline', $2,
                       $2 + make_interval(secs => result_expiration_time)
                FROM missed WHERE result_expiration_time > 0
                ON CONFLICT (job_id) DO NOTHING
            ), more_behind AS (
                -- the LIMIT was reached by candidates not all handed out (refused for a limit
                -- or past their deadline): jobs queued behind them may be free to run
                SELECT (SELECT count(*) FROM candidates) = $4 AND EXISTS (
                    SELECT FROM candidates c WHERE c.id NOT IN (SELECT id FROM chosen)
                ) AS value
            ), held_back AS (
                -- a lane that was full already, a candidate refused for a limit, or a lane
                -- this acquisition filled
                SELECT EXISTS (SELECT FROM saturated) OR EXISTS (
                    SELECT FROM candidates c
                    WHERE c.missed IS NOT TRUE AND c.id NOT IN (SELECT id FROM chosen)
                ) OR EXISTS (
                    SELECT FROM granted g JOIN lanes l ON l.kind = g.kind AND l.id = g.id
                    JOIN candidates c ON (g.kind = 'task' AND c.task_id = g.id
                                          AND l.taken + g.jobs >= c.task_limit)
                                      OR (g.kind = 'schedule' AND c.schedule_id = g.id
                                          AND l.taken + g.jobs >= c.schedule_limit)
                ) AS value
            )
            SELECT 'acquired' AS fate, * FROM acquired
            UNION ALL SELECT 'missed', * FROM missed
            UNION ALL
            SELECT 'held_back', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   NULL, NULL, NULL
            FROM held_back WHERE value
            UNION ALL
            SELECT 'more_behind', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   NULL, NULL, NULL
            FROM more_behind WHERE value
            """,
        # $1 scheduler, $2 job ids, $3..$9 the kept results
        "release_jobs": f"""
            WITH released AS (
                DELETE FROM {schema}.jobs
                WHERE id = ANY($2::uuid[]) AND acquired_by = $1
                RETURNING id, task_id, schedule_id, scheduled_fire_time, task_slot,
                          schedule_slot
            ), kept AS (
                INSERT INTO {schema}.job_results ({_RESULT_COLUMNS})
                SELECT {_prefixed("r", _RESULT_COLUMNS)}
                FROM {_unnest(3, _RESULT_TYPES, _RESULT_COLUMNS)}
                JOIN released ON released.id = r.job_id
                ON CONFLICT (job_id) DO NOTHING
            ), {_give_back_slots(schema, "released")}
            SELECT id, task_id, schedule_id, scheduled_fire_time FROM released
            """,
        # $1 scheduler, $2 job ids. The rows are locked first (in id order, re-read at their
        # latest values): UPDATE ... RETURNING gives the new slot flags, and the counters
        # need the ones the jobs held. A returned row keeps its created_at, so it is back in
        # its place in the queue, and holds no slot until it is acquired again.
        "return_jobs": f"""
            WITH returned AS MATERIALIZED (
                SELECT id, task_id, schedule_id, created_at, task_slot, schedule_slot
                FROM {schema}.jobs
                WHERE id = ANY($2::uuid[]) AND acquired_by = $1
                ORDER BY id
                FOR UPDATE
            ), requeued AS (
                UPDATE {schema}.jobs j SET acquired_by = NULL, acquired_until = NULL,
                    task_slot = false, schedule_slot = false
                WHERE j.id = ANY(ARRAY(SELECT id FROM returned))
            ), {_give_back_slots(schema, "returned")}
            SELECT id, task_id, schedule_id FROM returned ORDER BY created_at, id
            """,
        # $1 now, $2 when the schedule write tokens to forget were written
        "cleanup": f"""
            WITH expired AS (
                DELETE FROM {schema}.job_results WHERE expires_at <= $1
            ), forgotten AS (
                DELETE FROM {schema}.schedule_writes WHERE written_at < $2
            ), abandoned AS (
                DELETE FROM {schema}.jobs
                WHERE acquired_by IS NOT NULL AND acquired_until <= $1
                RETURNING {_JOB_COLUMNS}, task_slot, schedule_slot
            ), overdue AS (
                DELETE FROM {schema}.jobs
                WHERE acquired_by IS NULL AND start_deadline < $1
                RETURNING {_JOB_COLUMNS}
            ), kept AS (
                INSERT INTO {schema}.job_results (job_id, outcome, finished_at, expires_at)
                SELECT id, 'abandoned', $1, $1 + make_interval(secs => result_expiration_time)
                FROM abandoned WHERE result_expiration_time > 0
                UNION ALL
                SELECT id, 'missed_start_deadline', $1,
                       $1 + make_interval(secs => result_expiration_time)
                FROM overdue WHERE result_expiration_time > 0
                ON CONFLICT (job_id) DO NOTHING
            ), {_give_back_slots(schema, "abandoned")}
            SELECT 'abandoned' AS fate, {_JOB_COLUMNS} FROM abandoned
            UNION ALL SELECT 'overdue', {_JOB_COLUMNS} FROM overdue
            """,
    }


def _quoted_identifier(name: str, field: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"PostgreSQLDataStore: {field} must be a plain identifier (letters, digits, "
            f"underscores, at most 63 characters, not starting with a digit), got {name!r}"
        )
    return f'"{name}"'


class PostgreSQLDataStore(BaseExternalDataStore):
    """Keeps tasks, schedules, jobs and results in PostgreSQL (asyncpg).

    :param dsn_or_pool: a ``postgresql://`` URL (``?schema=name`` picks the schema) or an
        asyncpg pool the application already has (it is not closed by the store)
    :param schema: the schema holding the tables (created when missing)
    :param serializer: turns job arguments, return values and exceptions into bytes
    :param retry_settings: how to retry after transient connection errors
    :param pool_size: the most connections of a pool the store creates itself
    :param timeout: seconds one attempt of an operation may wait for a pooled connection,
        and on a pool the store creates, for a statement's reply (the pool's
        ``command_timeout``; an application's pool keeps its own); a slower attempt counts as
        a transient error, so an exhausted pool or a connection that died silently is retried
        and logged instead of waited on forever
    :raises ValueError: on a schema name that is not a plain identifier, or a timeout that
        is not positive
    """

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool,
        *,
        schema: str | None = None,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
        pool_size: int = 10,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(serializer=serializer, retry_settings=retry_settings)
        if not timeout > 0:
            raise ValueError(f"PostgreSQLDataStore: timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._dsn: str | None = None
        if isinstance(dsn_or_pool, str):
            check_url(dsn_or_pool, "PostgreSQLDataStore")
            self._dsn, options = split_own_options(dsn_or_pool, "postgresql")
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
        self._sql = _statements(self._schema)
        self._pool_size = pool_size
        self._clock = Clock()
        self._last_lease_end = datetime.min.replace(tzinfo=timezone.utc)
        # lease ends of failed acquisitions, by (kind, scheduler): see _LeaseAttempts
        self._unanswered: dict[tuple[str, str], list[datetime]] = {}
        self._event_broker: EventBroker | None = None
        self._job_writer = WriteBatcher(self._write_jobs)
        # True when single statements may go in autocommit: the connections' default
        # isolation is READ COMMITTED (always on a pool the store opens itself)
        self._autocommit = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schema={self.schema!r})"

    def default_event_broker(self) -> PostgreSQLEventBroker | None:
        """Return a LISTEN/NOTIFY broker on this store's database, on the schema's channel.

        ``None`` for a store on an application's pool (there is no URL to connect with): give
        the scheduler a :class:`~asched.eventbrokers.postgresql.PostgreSQLEventBroker` with
        ``channel=`` this store's schema.
        """
        from ..eventbrokers.postgresql import PostgreSQLEventBroker

        if self._dsn is None:
            return None
        return PostgreSQLEventBroker(self._dsn, channel=self.schema)

    #
    # Lifecycle
    #

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(
            exc,
            (
                OSError,
                TimeoutError,
                asyncio.TimeoutError,  # not TimeoutError before Python 3.11
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
        """Open the pool, create or migrate the schema; see :meth:`DataStore.start`.

        :raises RuntimeError: if the schema holds tables of a newer asched version, or tables
            that are not asched's, or if the event loop is not asyncio's
        """
        require_asyncio("PostgreSQLDataStore", "asyncpg")
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
                        command_timeout=self.timeout,
                        # pg_terminate_backend and restarts close connections: check them
                        max_inactive_connection_lifetime=60,
                        reset=_keep_session,
                        # a startup setting: outranks the server's, database's and role's
                        # defaults and the URL's, at no cost per statement
                        server_settings={
                            "default_transaction_isolation": "read committed",
                            # planning or compiling a statement of this store costs more than
                            # running it: asyncpg prepares each once per connection, and the
                            # server keeps one plan for it
                            "plan_cache_mode": "force_generic_plan",
                            "jit": "off",
                        },
                    )
            exit_stack.push_async_callback(self._close_pool)
        else:
            async for attempt in self._retrying():
                with attempt:
                    async with self._connection() as connection:
                        isolation, plan_cache_mode, jit = await connection.fetchrow(
                            "SELECT current_setting('default_transaction_isolation'), "
                            "current_setting('plan_cache_mode'), current_setting('jit')"
                        )
            self._autocommit = isolation == "read committed"
            if not self._autocommit:
                self._logger.warning(
                    "PostgreSQLDataStore: the application's pool defaults to %s; each operation "
                    "runs in an explicit READ COMMITTED transaction (two more round trips)",
                    isolation,
                )
            if (plan_cache_mode, jit) != ("force_generic_plan", "off"):
                self._logger.info(
                    "PostgreSQLDataStore: the store's statements run faster on connections with "
                    "server_settings={'plan_cache_mode': 'force_generic_plan', 'jit': 'off'}, "
                    "as in the pool the store opens itself"
                )

        async for attempt in self._retrying():
            with attempt:
                await self._create_or_migrate_schema()

    async def _create_or_migrate_schema(self) -> None:
        """Create the tables, or migrate older ones, before anything else touches them."""
        async with self._transaction() as connection:
            # concurrent starts take turns; each statement after the lock sees what the
            # previous holder committed (READ COMMITTED)
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"asched:{self.schema}"
            )
            tables = set(
                await connection.fetchval(
                    "SELECT coalesce(array_agg(tablename::text), '{}') FROM pg_tables "
                    "WHERE schemaname = $1 AND tablename = ANY($2::text[])",
                    self.schema,
                    list(_TABLES),
                )
            )
            if "metadata" not in tables:
                if tables:
                    raise RuntimeError(
                        f"PostgreSQLDataStore: schema {self.schema!r} has tables "
                        f"{sorted(tables)} but no asched metadata table; it is not an asched "
                        "schema: use another schema"
                    )
                await connection.execute(_DDL.format(schema=self._schema))
                await connection.execute(
                    f"INSERT INTO {self._schema}.metadata (key, value) "
                    "VALUES ('schema_version', $1)",
                    str(SCHEMA_VERSION),
                )
                return

            version = await connection.fetchval(
                f"SELECT value FROM {self._schema}.metadata WHERE key = 'schema_version'"
            )
            migrations = {"1": _MIGRATE_FROM_1, "2": _MIGRATE_FROM_2}
            if version in migrations:
                self._logger.info(
                    "PostgreSQLDataStore: migrating schema %r from version %s to %d",
                    self.schema,
                    version,
                    SCHEMA_VERSION,
                )
                # each step leaves the next version: 1 goes through 2, all in this transaction
                for step in range(int(version), SCHEMA_VERSION):
                    await connection.execute(migrations[str(step)].format(schema=self._schema))
            elif version != str(SCHEMA_VERSION):
                raise RuntimeError(
                    f"PostgreSQLDataStore: schema {self.schema!r} has version {version}, this "
                    f"asched uses version {SCHEMA_VERSION} (and migrates versions 1 and 2); use "
                    "the asched that wrote it, or another schema"
                )

    async def _close_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection for one statement: autocommit, one round trip.

        On an application's pool that defaults to another isolation level the statement runs
        in a READ COMMITTED transaction instead.
        """
        async with self._pooled() as connection:
            if self._autocommit:
                yield connection
            else:
                async with connection.transaction(isolation="read_committed"):
                    yield connection

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with (
            self._pooled() as connection,
            connection.transaction(isolation="read_committed"),
        ):
            yield connection

    @asynccontextmanager
    async def _pooled(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection, waiting at most ``timeout`` seconds for one.

        asyncpg's own acquire timeout runs the acquisition in a task of its own
        (``asyncio.wait_for``), and its release then does the same: a few event loop turns
        per operation. An idle connection is taken at once, so only a wait is bounded, and
        with a cancel scope.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("PostgreSQLDataStore: the store has not been started")
        if pool.get_idle_size():
            connection = await pool.acquire()
        else:
            with anyio.fail_after(self.timeout):
                connection = await pool.acquire()
        try:
            yield connection
        finally:
            await pool.release(connection)

    async def _publish(self, events: Iterable[Event]) -> None:
        if self._event_broker is not None:
            for event in events:
                await self._event_broker.publish(event)

    def _now(self) -> datetime:
        return self._clock.now()

    def _unique_lease_end(self, wanted: datetime) -> datetime:
        """Return ``wanted``, or a microsecond after the last lease end handed out if later.

        Lease ends tell one acquisition attempt's rows from another's (see _LeaseAttempts).
        """
        lease_end = max(wanted, self._last_lease_end + _MICROSECOND)
        self._last_lease_end = lease_end
        return lease_end

    #
    # Tasks
    #

    async def add_task(self, task: Task) -> None:
        """Add or replace a task; see :meth:`DataStore.add_task`.

        Setting a limit makes the task's running jobs hold its slots (a job handed out by an
        acquisition that is under way at that moment may still run beside the new limit).
        """
        record = task.marshal()
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    inserted = await connection.fetchval(
                        f"""
                        WITH written AS (
                            INSERT INTO {self._schema}.tasks
                                (id, func_ref, job_executor, max_running_jobs,
                                 misfire_grace_time, metadata)
                            VALUES ($1, $2, $3, $4, $5, $6)
                            ON CONFLICT (id) DO UPDATE SET
                                func_ref = excluded.func_ref,
                                job_executor = excluded.job_executor,
                                max_running_jobs = excluded.max_running_jobs,
                                misfire_grace_time = excluded.misfire_grace_time,
                                metadata = excluded.metadata
                            RETURNING xmax = 0 AS inserted
                        ), {self._slot_counting("task", "task_id", "$4")}
                        SELECT inserted FROM written
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

    def _slot_counting(self, kind: str, column: str, limit: str) -> str:
        """CTEs run when a task or schedule ($1) gets a limit: its counter, holding its jobs.

        Running jobs that hold no slot of the lane yet take one, and the counter (created if
        missing) grows by their number, so a limit set while jobs run counts them.
        """
        return f"""
        counted AS (
            UPDATE {self._schema}.jobs SET {kind}_slot = true
            WHERE {column} = $1 AND acquired_by IS NOT NULL AND NOT {kind}_slot
              AND {limit}::integer IS NOT NULL AND EXISTS (SELECT FROM written)
            RETURNING 1
        ), counter AS (
            INSERT INTO {self._schema}.job_slots (kind, id, taken)
            SELECT '{kind}', $1, (SELECT count(*) FROM counted)
            WHERE {limit}::integer IS NOT NULL AND EXISTS (SELECT FROM written)
            ON CONFLICT (kind, id) DO UPDATE SET taken = job_slots.taken + excluded.taken
                WHERE excluded.taken > 0
        )
        """

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    removed = await connection.fetchval(
                        f"""
                        WITH removed AS (
                            DELETE FROM {self._schema}.tasks WHERE id = $1 RETURNING id
                        ), unused AS (
                            DELETE FROM {self._schema}.job_slots
                            WHERE kind = 'task' AND id IN (SELECT id FROM removed) AND taken = 0
                        )
                        SELECT id FROM removed
                        """,
                        task_id,
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
        self._schedule_written(schedule.id)
        # a new schedule starts at revision 0; a replaced one moves on from the stored one
        values = self._schedule_values(
            attrs.evolve(schedule, acquired_by=None, acquired_until=None, revision=0)
        )
        placeholders = ", ".join(f"${index}" for index in range(1, len(values) + 1))
        insert = (
            f"INSERT INTO {self._schema}.schedules ({_SCHEDULE_COLUMNS}) VALUES ({placeholders})"
        )
        if conflict_policy is ConflictPolicy.replace:
            updates = ", ".join(
                "revision = schedules.revision + 1"
                if column == "revision"
                else f"{column} = excluded.{column}"
                for column in _SCHEDULE_COLUMNS.split(", ")[1:]
            )
            statement = f"{insert} ON CONFLICT (id) DO UPDATE SET {updates} RETURNING xmax = 0"
        else:
            statement = f"{insert} ON CONFLICT (id) DO NOTHING RETURNING true"
        if schedule.max_running_jobs is not None:
            limit = f"${_SCHEDULE_COLUMNS.split(', ').index('max_running_jobs') + 1}"
            statement = f"""
                WITH written AS ({statement} AS inserted),
                {self._slot_counting("schedule", "schedule_id", limit)}
                SELECT inserted FROM written
                """

        sent = False  # whether an attempt went out (and may have committed, its reply lost)

        async def write() -> bool | None:
            nonlocal sent
            async with self._connection() as connection:
                retrying, sent = sent, True
                written: bool | None = await connection.fetchval(statement, *values)
                if written is None and retrying:
                    # the row an earlier attempt wrote is ours: no conflict
                    written = await connection.fetchval(
                        self._sql["same_schedule"], *(values[index] for index in _DEFINITION)
                    )
                return written

        inserted = await self._with_retries(write)

        if inserted is None:  # the id exists and was kept
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
            return
        await self._publish([schedule_written_event(schedule, added=inserted)])

    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        """Rewrite a schedule read at ``schedule.revision``, in one statement; see the base.

        Each call has a token, random, the same for all its attempts, that the statement
        records in ``schedule_writes`` when (and only when) it writes. An attempt whose reply
        was lost may have committed, and other writers may have changed the schedule since:
        its retry finds the token and takes the write for done (the stored schedule is
        returned, and ``ScheduleUpdated`` published, by the retry) instead of reporting it
        stale, which would make the caller write its change again over theirs. (A retry that
        overtakes an attempt still running on the server, after a timeout, cannot see that
        attempt's token yet: if that attempt commits, the retry reports it stale, as before.)
        """
        self._schedule_written(schedule.id)
        # the id first (as in add_schedule: _slot_counting's $1 is the schedule's id), then
        # every column but those of its progress, lease and revision; then the revision read,
        # the token and the time of writing; then (rescheduling) the stored fire times
        # required and the progress to write
        record = dict(
            zip(_SCHEDULE_COLUMNS.split(", "), self._schedule_values(schedule), strict=True)
        )
        values = [record[column] for column in _DEFINITION_COLUMNS]
        assignments = [
            f"{column} = ${index}"
            for index, column in enumerate(_DEFINITION_COLUMNS, start=1)
            if index > 1
        ]
        revision, token, now = (f"${len(values) + offset}" for offset in (1, 2, 3))
        values += [schedule.revision, uuid4(), self._now()]
        conditions = [f"id = $1 AND revision = {revision}"]
        if rescheduled_from is not None:
            first = len(values) + 1
            conditions += [
                f"next_fire_time IS NOT DISTINCT FROM ${first}::timestamptz",
                f"last_fire_time IS NOT DISTINCT FROM ${first + 1}::timestamptz",
            ]
            values += [rescheduled_from.next_fire_time, rescheduled_from.last_fire_time]
            for column in ("next_fire_time", "next_run_time", "last_fire_time"):
                values.append(record[column])
                assignments.append(f"{column} = ${len(values)}")
        limit = f"${_DEFINITION_COLUMNS.index('max_running_jobs') + 1}"
        # 'done': an earlier attempt of this call committed (its reply was lost); nothing is
        # written again. A first attempt's new token is never found. Nothing written and not
        # done: 'stale' if the id exists (in the statement's snapshot), no row if not (a
        # schedule removed after an earlier attempt wrote it is gone too: None).
        statement = f"""
            WITH done AS (
                SELECT FROM {self._schema}.schedule_writes WHERE token = {token}::uuid
            ), written AS (
                UPDATE {self._schema}.schedules
                SET {", ".join(assignments)}, revision = revision + 1,
                    acquired_by = NULL, acquired_until = NULL
                WHERE {" AND ".join(conditions)} AND NOT EXISTS (SELECT FROM done)
                RETURNING {_SCHEDULE_COLUMNS}
            ), recorded AS (
                INSERT INTO {self._schema}.schedule_writes (token, written_at)
                SELECT {token}::uuid, {now}::timestamptz FROM written
            ), {self._slot_counting("schedule", "schedule_id", limit)}
            SELECT 'written' AS fate, {_SCHEDULE_COLUMNS} FROM written
            UNION ALL
            SELECT CASE WHEN EXISTS (SELECT FROM done) THEN 'done' ELSE 'stale' END,
                   {_SCHEDULE_COLUMNS}
            FROM {self._schema}.schedules
            WHERE id = $1 AND NOT EXISTS (SELECT FROM written)
            """

        async def write() -> asyncpg.Record | None:
            async with self._connection() as connection:
                return await connection.fetchrow(statement, *values)

        row = await self._with_retries(write)
        if row is None:
            return None
        if row["fate"] == "stale":
            raise StaleScheduleError(schedule.id)
        [updated] = await self._schedules_from_rows([row])
        await self._publish([schedule_written_event(updated)])
        return updated

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        id_list = list(ids)
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    rows = await connection.fetch(
                        f"""
                        WITH removed AS (
                            DELETE FROM {self._schema}.schedules WHERE id = ANY($1::text[])
                            RETURNING id, task_id
                        ), unused AS (
                            DELETE FROM {self._schema}.job_slots
                            WHERE kind = 'schedule' AND id IN (SELECT id FROM removed)
                              AND taken = 0
                        )
                        SELECT id, task_id FROM removed
                        """,
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

    async def _acquire_rows(
        self, kind: str, scheduler_id: str, lease_duration: timedelta, limit: int, *extra: Any
    ) -> tuple[datetime, list[asyncpg.Record]]:
        """Run ``acquire_{kind}`` (after ``reclaim_{kind}`` when needed: see _LeaseAttempts).

        :return: the successful attempt's "now", and the rows it returned
        """
        attempts = _LeaseAttempts(self, kind, scheduler_id)

        async def acquire() -> tuple[datetime, list[asyncpg.Record]]:
            async with self._connection() as connection:
                now = self._now()  # each attempt's own: a retry must not shorten the lease
                lease_end, lost = attempts.next_lease_end(now + lease_duration)
                reclaimed: list[asyncpg.Record] = []
                if lost:
                    reclaimed = await connection.fetch(
                        self._sql[f"reclaim_{kind}"], scheduler_id, lease_end, lost
                    )
                if len(reclaimed) >= limit:
                    return now, reclaimed
                rows: list[asyncpg.Record] = await connection.fetch(
                    self._sql[f"acquire_{kind}"],
                    scheduler_id,
                    now,
                    lease_end,
                    limit - len(reclaimed),
                    *extra,
                )
                return now, reclaimed + rows

        try:
            return await self._with_retries(acquire)
        except BaseException:
            attempts.not_answered()
            raise

    async def _lease_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int, skip: Sequence[str]
    ) -> tuple[list[Schedule], list[str]]:
        """Lease due schedules in one statement; see :meth:`acquire_schedules`."""
        _, rows = await self._acquire_rows(
            "schedules", scheduler_id, lease_duration, limit, list(skip)
        )
        schedules = await self._schedules_from_rows(rows)
        schedules.sort(key=lambda schedule: (schedule.next_run_time, schedule.id))
        restored = {schedule.id for schedule in schedules}
        return schedules, [row["id"] for row in rows if row["id"] not in restored]

    async def _unlease_schedules(self, scheduler_id: str, ids: Sequence[str]) -> None:
        async def unlease() -> None:
            async with self._connection() as connection:
                await connection.execute(self._sql["unlease_schedules"], scheduler_id, list(ids))

        await self._with_retries(unlease)

    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply scheduler decisions in one statement; see :meth:`DataStore.release_schedules`."""
        if not updates:
            return
        by_id = {update.schedule_id: update for update in updates}
        now = self._now()
        # Serialized before the statement: it is the slow part, and it may raise
        job_rows = [
            [*self._job_values(job), update.schedule_id]
            for update in by_id.values()
            for job in update.jobs
        ]
        missed: list[tuple[str, Job, JobResult]] = []
        for update in by_id.values():
            for job in update.missed_jobs:
                result = JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now)
                missed.append((update.schedule_id, job, result))
        kept = [
            [*(record[name] for name in _RESULT_COLUMNS.split(", ")), schedule_id]
            for schedule_id, job, result in missed
            if job.result_expiration_time > timedelta(0)
            for record in [result.marshal(self.serializer)]
        ]
        moved = list(by_id.values())

        async def release() -> list[asyncpg.Record]:
            async with self._connection() as connection:
                return await connection.fetch(  # type: ignore[no-any-return]
                    self._sql["release_schedules"],
                    scheduler_id,
                    [update.schedule_id for update in moved],
                    [update.next_fire_time for update in moved],
                    [update.next_run_time for update in moved],
                    [update.last_fire_time for update in moved],
                    *_columns(job_rows, 14),
                    *_columns(kept, 8),
                )

        owned = {row["id"]: row["task_id"] for row in await self._with_retries(release)}
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
        skip = self._schedules_left_alone()

        async def read() -> datetime | None:
            async with self._connection() as connection:
                value: datetime | None
                if skip:
                    value = await connection.fetchval(
                        self._sql["next_schedule_run_time_skipping"], skip
                    )
                else:
                    value = await connection.fetchval(self._sql["next_schedule_run_time"])
                return value

        return await self._with_retries(read)

    #
    # Jobs
    #

    def _job_values(self, job: Job) -> list[Any]:
        record = job.marshal(self.serializer)
        return [record[column] for column in _JOB_COLUMNS.split(", ")]

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
                await connection.execute(self._sql["insert_jobs"], *_columns(rows, 13))

        await self._with_retries(insert)

    async def _jobs_from_rows(
        self, rows: Iterable[asyncpg.Record], unreadable: list[UnreadableJob] | None = None
    ) -> list[Job]:
        """Restore jobs; those that cannot be are left out (and added to ``unreadable``)."""
        jobs: list[Job] = []
        events: list[Event] = []
        for row in rows:
            try:
                jobs.append(Job.unmarshal(self.serializer, dict(row)))
            except DeserializationError as exc:
                self._logger.error("Cannot restore job %s: %s", row["id"], exc)
                events.append(JobDeserializationFailed(job_id=row["id"], error=str(exc)))
                if unreadable is not None:
                    expiration = timedelta(seconds=row["result_expiration_time"] or 0)
                    unreadable.append(UnreadableJob(row["id"], expiration, exc))
        await self._publish(events)
        return jobs

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class."""
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    if ids is None:
                        rows = await connection.fetch(
                            f"SELECT {_JOB_COLUMNS} FROM {self._schema}.jobs "
                            "ORDER BY created_at, id"
                        )
                    else:
                        rows = await connection.fetch(
                            f"SELECT {_JOB_COLUMNS} FROM {self._schema}.jobs "
                            "WHERE id = ANY($1::uuid[]) ORDER BY created_at, id",
                            list(ids),
                        )
        return await self._jobs_from_rows(rows)

    async def _lease_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> tuple[list[Job], bool]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`.

        One statement, repeated only while the jobs it looked at filled the limit without all
        being handed out (refused for a full lane, or past their start deadline): a backlog
        of those must not keep a worker waiting, nor the jobs queued behind them.
        """
        now, rows = await self._acquire_rows("jobs", scheduler_id, lease_duration, limit)
        latest, left = rows, limit
        while True:
            fates = Counter(row["fate"] for row in latest)
            left -= fates["acquired"]
            # each repetition ends jobs past their deadline or fills a lane (which the next
            # leaves out), so this ends; a round that did neither stops it
            progressed = fates["acquired"] or fates["missed"]
            if left <= 0 or not fates["more_behind"] or not progressed:
                break
            try:
                _, latest = await self._acquire_rows("jobs", scheduler_id, lease_duration, left)
            except Exception:
                # what was acquired so far must still reach the worker
                self._logger.warning("Could not acquire more jobs", exc_info=True)
                break
            rows += latest
        acquired_rows = sorted(
            (row for row in rows if row["fate"] == "acquired"),
            key=lambda row: (row["created_at"], row["id"]),
        )
        self._jobs_held_back = any(row["fate"] == "held_back" for row in rows)
        unreadable: list[UnreadableJob] = []
        jobs = await self._jobs_from_rows(acquired_rows, unreadable)
        missed = await self._jobs_from_rows(row for row in rows if row["fate"] == "missed")
        await self._publish(job_acquisition_events(scheduler_id, now, jobs, missed))
        await self._release_unreadable_jobs(scheduler_id, now, unreadable)
        jobs = [attrs.evolve(job, acquired_by=None, acquired_until=None) for job in jobs]
        return jobs, bool(unreadable)

    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish acquired jobs in one statement; see :meth:`DataStore.release_jobs`."""
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
                return await connection.fetch(  # type: ignore[no-any-return]
                    self._sql["release_jobs"], scheduler_id, list(marshalled), *result_columns
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

    async def return_jobs(self, scheduler_id: str, jobs: Sequence[Job]) -> None:
        """Queue unstarted jobs again in one statement; see :meth:`DataStore.return_jobs`.

        A retry after a lost reply finds the jobs its first attempt returned no longer
        leased by ``scheduler_id``: it returns nothing more, and their ``JobAdded`` events
        are not published (workers still find them on their next poll).
        """
        if not jobs:
            return
        job_ids = list(dict.fromkeys(job.id for job in jobs))

        async def give_back() -> list[asyncpg.Record]:
            async with self._connection() as connection:
                return await connection.fetch(  # type: ignore[no-any-return]
                    self._sql["return_jobs"], scheduler_id, job_ids
                )

        rows = await self._with_retries(give_back)
        ignored = len(job_ids) - len(rows)
        if ignored:
            self._logger.debug("Ignored %d jobs not acquired by %s", ignored, scheduler_id)
        await self._publish(
            JobAdded(job_id=row["id"], task_id=row["task_id"], schedule_id=row["schedule_id"])
            for row in rows
        )

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""

        async def read() -> asyncpg.Record | None:
            async with self._connection() as connection:
                return await connection.fetchrow(
                    f"SELECT {_RESULT_COLUMNS} FROM {self._schema}.job_results "
                    "WHERE job_id = $1 AND expires_at > $2",
                    job_id,
                    self._now(),
                )

        row = await self._with_retries(read)
        return None if row is None else JobResult.unmarshal(self.serializer, dict(row))

    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Extend job leases; see :meth:`DataStore.extend_acquired_leases`."""
        id_list = list(job_ids)
        if not id_list:
            return
        async for attempt in self._retrying():
            with attempt:
                async with self._connection() as connection:
                    await connection.execute(
                        f"UPDATE {self._schema}.jobs SET acquired_until = $1 "
                        "WHERE id = ANY($2::uuid[]) AND acquired_by = $3",
                        self._now() + lease_duration,  # each attempt's own "now"
                        id_list,
                        scheduler_id,
                    )

    async def cleanup(self) -> None:
        """Expire results, release abandoned and overdue jobs, in one statement; see the base.

        Forgets the tokens of schedule writes older than an hour too (see
        :meth:`update_schedule_definition`).
        """

        async def clean() -> tuple[datetime, list[asyncpg.Record]]:
            async with self._connection() as connection:
                now = self._now()
                return now, await connection.fetch(
                    self._sql["cleanup"], now, now - _WRITE_TOKEN_LIFETIME
                )

        now, rows = await self._with_retries(clean)
        events = cleanup_events(
            now,
            await self._jobs_from_rows(row for row in rows if row["fate"] == "abandoned"),
            await self._jobs_from_rows(row for row in rows if row["fate"] == "overdue"),
            self._logger,
        )
        await self._publish(events)


class _LeaseAttempts:
    """The lease ends of one acquisition's attempts: each attempt's token.

    An attempt whose reply was lost (a connection dropped, a timeout) may have committed:
    what it leased is held by this scheduler until that lease ends, and no one would run it.
    Its lease end is unique to it (the store never hands out the same one twice), so the next
    attempt takes back, under its own lease, everything leased with the earlier attempts'
    ends before it acquires more. An acquisition that fails altogether (its retries run out,
    or it is cancelled) leaves its ends to the same scheduler's next acquisition of the kind.
    """

    __slots__ = ("_ends", "_key", "_store")

    def __init__(self, store: PostgreSQLDataStore, kind: str, scheduler_id: str) -> None:
        self._store = store
        self._key = (kind, scheduler_id)
        now = store._now()
        self._ends = [end for end in store._unanswered.pop(self._key, ()) if end > now]

    def next_lease_end(self, wanted: datetime) -> tuple[datetime, list[datetime]]:
        """Return this attempt's lease end and those of the attempts before it."""
        lease_end = self._store._unique_lease_end(wanted)
        earlier = list(self._ends)
        self._ends.append(lease_end)
        return lease_end, earlier

    def not_answered(self) -> None:
        """Leave this acquisition's lease ends to the next one (it failed)."""
        self._store._unanswered.setdefault(self._key, []).extend(self._ends)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Turn rows into one list per column, for ``unnest`` (``width`` lists when empty)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's session reset query when a connection goes back to the pool.

    The store never changes session state (no SET, no LISTEN; its advisory locks end with
    their transactions), and asyncpg still rolls back a transaction left open: the default
    reset would only cost one more round trip per operation.
    """
