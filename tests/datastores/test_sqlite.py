"""SQLite specifics: persistence across restarts, versioning, URLs, a locked database."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import sys
import threading
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import attrs
import pytest

from asched import AsyncScheduler, CoalescePolicy, SchedulerRole, StaleScheduleError
from asched._enums import ConflictPolicy, JobOutcome
from asched._structures import Job, JobResult, Schedule, Task
from asched.datastores.sqlite import SCHEMA_VERSION, SQLiteDataStore
from asched.eventbrokers import LocalEventBroker
from asched.events import JobReleased
from asched.serializers import PickleSerializer
from asched.triggers import CronTrigger, IntervalTrigger
from tests.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:  # not the contract suite's cases
    return str(request.param)


REPOSITORY = Path(__file__).resolve().parents[2]


def hold_write_lock(path: Path, locked: threading.Event, release: threading.Event) -> None:
    """Hold the file's write lock, as another process would, from ``locked`` to ``release``."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    locked.set()
    release.wait(10)
    connection.execute("COMMIT")
    connection.close()


async def started_store(
    stack: AsyncExitStack, path: Path | str, clock: FakeClock
) -> SQLiteDataStore:
    store = SQLiteDataStore(path)
    broker = LocalEventBroker()
    await broker.start(stack, logging.getLogger("test"))
    await store.start(stack, broker, logging.getLogger("test"), clock)
    return store


async def test_everything_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.sqlite"
    trigger = CronTrigger(hour=17, minute="*/5", timezone="Europe/Berlin", start_time=clock.now())
    queued = Job(task_id="task", args=(1, "two"), kwargs={"three": 3.0}, created_at=clock.now())
    finished = Job(
        task_id="task", result_expiration_time=timedelta(hours=1), created_at=clock.now()
    )
    async with AsyncExitStack() as stack:
        store = await started_store(stack, path, clock)
        await store.add_task(Task(id="task", job_executor="async", max_running_jobs=3))
        await store.add_schedule(
            Schedule(
                id="report",
                task_id="task",
                trigger=trigger,
                args=("a",),
                next_fire_time=clock.now(),
                next_run_time=clock.now(),
            ),
            ConflictPolicy.exception,
        )
        await store.add_jobs([finished, queued])
        [acquired] = await store.acquire_jobs("worker", timedelta(minutes=1), 1)
        assert acquired.id == finished.id
        await store.release_jobs(
            "worker",
            [
                JobResult.for_job(
                    acquired, JobOutcome.success, finished_at=clock.now(), return_value=42
                )
            ],
        )

    async with AsyncExitStack() as stack:
        reopened = await started_store(stack, f"sqlite:///{path}", clock)
        [task] = await reopened.get_tasks()
        assert task.max_running_jobs == 3
        [schedule] = await reopened.get_schedules()
        assert schedule.trigger == trigger
        assert schedule.args == ("a",)
        assert await reopened.get_jobs() == [queued]
        result = await reopened.get_job_result(finished.id)
        assert result is not None
        assert result.return_value == 42


async def double(value: int) -> int:
    return value * 2


async def test_a_result_from_another_process_is_seen_at_the_next_poll(tmp_path: Path) -> None:
    # two schedulers on one file, each with its own local broker: no event crosses between
    # them, so the one waiting for the result must look again at the store's 1 s poll, not
    # only after the 10 s it waits where a broker should have told it
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    async with (
        AsyncScheduler(url, role=SchedulerRole.scheduler) as producer,
        AsyncScheduler(url, role=SchedulerRole.worker) as worker,
    ):
        await worker.start_in_background()
        job_id = await producer.add_job(double, args=[21])
        with anyio.fail_after(5):
            result = await producer.get_job_result(job_id)
    assert result.return_value == 42


async def test_a_job_returned_through_one_connection_is_taken_by_another_in_its_place(
    tmp_path: Path, clock: FakeClock
) -> None:
    """No running-job count to undo: acquisitions count the leased rows they find."""
    path = tmp_path / "jobs.sqlite"
    async with AsyncExitStack() as stack:
        stopping = await started_store(stack, path, clock)
        other = await started_store(stack, path, clock)
        await stopping.add_task(Task(id="task", job_executor="async", max_running_jobs=1))
        jobs = [
            Job(task_id="task", created_at=clock.now() + timedelta(microseconds=index))
            for index in range(2)
        ]
        await stopping.add_jobs(jobs)
        taken = await stopping.acquire_jobs("stopping", timedelta(minutes=1), 10)
        assert [job.id for job in taken] == [jobs[0].id]
        assert await other.acquire_jobs("other", timedelta(minutes=1), 10) == []

        await stopping.return_jobs("stopping", taken)

        again = await other.acquire_jobs("other", timedelta(minutes=1), 10)
        assert [job.id for job in again] == [jobs[0].id]
        assert await other.acquire_jobs("other", timedelta(minutes=1), 10) == []


async def test_a_file_of_a_newer_version_is_refused_untouched(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with AsyncExitStack() as stack:
        await started_store(stack, path, clock)
    newer = str(SCHEMA_VERSION + 1)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM metadata").fetchone() == (
            str(SCHEMA_VERSION),
        )
        connection.execute("UPDATE metadata SET value = ?", (newer,))
        connection.execute("ALTER TABLE schedules DROP COLUMN revision")  # a newer layout
    connection.close()

    await start_raises(
        path,
        clock,
        rf"has schema version {newer}, this asched uses version {SCHEMA_VERSION} "
        r"\(and migrates version 1\)",
    )
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM metadata").fetchone() == (newer,)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(schedules)")]
    connection.close()
    assert "revision" not in columns


#: the tables of schema version 1, as asched wrote them before schedules had a revision
V1_DDL = """
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, func_ref TEXT, job_executor TEXT NOT NULL, max_running_jobs INTEGER,
    misfire_grace_time REAL, metadata TEXT NOT NULL
);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL, trigger TEXT NOT NULL, args BLOB NOT NULL,
    kwargs BLOB NOT NULL, name TEXT, paused INTEGER NOT NULL, coalesce TEXT NOT NULL,
    misfire_grace_time REAL, max_jitter REAL, max_running_jobs INTEGER, job_executor TEXT,
    job_result_expiration_time REAL NOT NULL, metadata TEXT NOT NULL,
    next_fire_time INTEGER, next_run_time INTEGER, last_fire_time INTEGER,
    acquired_by TEXT, acquired_until INTEGER
);
CREATE INDEX schedules_due
    ON schedules (next_run_time) WHERE NOT paused AND next_run_time IS NOT NULL;
CREATE INDEX schedules_leased ON schedules (acquired_until) WHERE acquired_by IS NOT NULL;
CREATE TABLE jobs (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, task_id TEXT NOT NULL,
    args BLOB NOT NULL, kwargs BLOB NOT NULL, schedule_id TEXT, scheduled_fire_time INTEGER,
    jitter REAL NOT NULL, start_deadline INTEGER, job_executor TEXT,
    result_expiration_time REAL NOT NULL, created_at INTEGER NOT NULL, acquired_by TEXT,
    acquired_until INTEGER
);
CREATE INDEX jobs_queued ON jobs (sequence) WHERE acquired_by IS NULL;
CREATE INDEX jobs_running ON jobs (task_id, schedule_id) WHERE acquired_by IS NOT NULL;
CREATE TABLE job_results (
    job_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, return_value BLOB, exception BLOB,
    started_at INTEGER, finished_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
);
CREATE INDEX job_results_expiry ON job_results (expires_at);
INSERT INTO metadata (key, value) VALUES ('schema_version', '1');
"""


def write_version_1_file(path: Path, schedules: list[Schedule]) -> None:
    """Write a store file of schema version 1 holding ``schedules``, as asched 1 did."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(V1_DDL)
        for schedule in schedules:
            record = schedule.marshal(PickleSerializer())
            del record["revision"]  # no such column in version 1
            record["trigger"] = json.dumps(record["trigger"])
            record["metadata"] = json.dumps(record["metadata"])
            for name in ("next_fire_time", "next_run_time", "last_fire_time", "acquired_until"):
                if record[name] is not None:  # microseconds since the epoch
                    record[name] = (record[name] - epoch) // timedelta(microseconds=1)
            connection.execute(
                f"INSERT INTO schedules ({', '.join(record)}) "
                f"VALUES ({', '.join('?' * len(record))})",
                list(record.values()),
            )
    finally:
        connection.close()


def schema_of(path: Path) -> tuple[str, list[str]]:
    """Return the file's schema version and the columns of its schedules table."""
    connection = sqlite3.connect(path)
    try:
        [version] = connection.execute(
            "SELECT value FROM metadata WHERE key = 'schema_version'"
        ).fetchone()
        columns = [row[1] for row in connection.execute("PRAGMA table_info(schedules)")]
    finally:
        connection.close()
    return version, columns


def migration_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "migrating" in record.getMessage()]


async def test_a_version_1_file_is_migrated_in_place(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.sqlite"
    fired = clock.now() - timedelta(minutes=1)
    schedule = Schedule(
        id="report",
        task_id="task",
        trigger=IntervalTrigger(minutes=1, start_time=fired),
        args=("a",),
        metadata={"owner": "ops"},
        last_fire_time=fired,
        next_fire_time=clock.now(),
        next_run_time=clock.now(),
    )
    write_version_1_file(path, [schedule])

    with caplog.at_level(logging.INFO, logger="test"):
        async with AsyncExitStack() as stack:
            store = await started_store(stack, path, clock)
            # the same tables as a file created by this asched
            async with AsyncExitStack() as fresh_stack:
                await started_store(fresh_stack, tmp_path / "fresh.sqlite", clock)
            assert schema_of(path) == schema_of(tmp_path / "fresh.sqlite")
            [loaded] = await store.get_schedules()
            assert loaded == schedule  # progress included
            assert loaded.revision == 0

            updated = await store.update_schedule_definition(attrs.evolve(loaded, name="new"))
            assert updated is not None
            assert (updated.name, updated.revision) == ("new", 1)
            assert updated.next_fire_time == schedule.next_fire_time
            with pytest.raises(StaleScheduleError):  # the read from before the update
                await store.update_schedule_definition(attrs.evolve(loaded, name="stale"))
            [acquired] = await store.acquire_schedules("me", timedelta(minutes=1), 10)
            assert (acquired.id, acquired.revision) == ("report", 1)
    assert migration_messages(caplog) == [
        f"SQLiteDataStore: migrating {path} from schema version 1 to 2"
    ]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test"):
        async with AsyncExitStack() as stack:  # reopened: already version 2
            reopened = await started_store(stack, path, clock)
            [stored] = await reopened.get_schedules()
            assert (stored.name, stored.revision) == ("new", 1)
    assert migration_messages(caplog) == []


async def test_stores_starting_on_one_version_1_file_at_once_migrate_it_once(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.sqlite"
    write_version_1_file(path, [])
    # Another connection holds the write lock while the stores start, so that they all
    # find a version 1 file and then queue up for the lock
    locked = threading.Event()
    release = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, locked, release))
    holder.start()
    try:
        assert await anyio.to_thread.run_sync(locked.wait, 10)
        with caplog.at_level(logging.INFO, logger="test"):
            async with AsyncExitStack() as stack:
                broker = LocalEventBroker()  # started here, not inside the task group
                await broker.start(stack, logging.getLogger("test"))
                stores: list[SQLiteDataStore] = []

                async def start() -> None:
                    store = SQLiteDataStore(path)
                    await store.start(stack, broker, logging.getLogger("test"), clock)
                    stores.append(store)

                with anyio.fail_after(20):
                    async with anyio.create_task_group() as task_group:
                        for _ in range(4):
                            task_group.start_soon(start)
                        await anyio.sleep(0.2)
                        release.set()
                assert len(stores) == 4
    finally:
        release.set()
        holder.join()
    assert len(migration_messages(caplog)) == 1
    version, columns = schema_of(path)
    assert (version, columns.count("revision")) == ("2", 1)


async def test_a_write_lock_held_by_another_process_is_waited_out(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with AsyncExitStack() as stack:
        store = await started_store(stack, path, clock)
        store._busy_timeout = timedelta(milliseconds=50)  # so that attempts fail and retry
        store._connection.execute("PRAGMA busy_timeout = 50")  # type: ignore[union-attr]

        locked = threading.Event()
        release = threading.Event()

        retried = threading.Event()

        class RetryWatcher(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "transient error" in record.getMessage():
                    retried.set()

        watcher = RetryWatcher()
        logging.getLogger("test").addHandler(watcher)
        holder = threading.Thread(target=hold_write_lock, args=(path, locked, release))
        holder.start()
        assert locked.wait(10)
        try:
            async with anyio.create_task_group() as task_group:

                async def add() -> None:
                    await store.add_task(Task(id="task", job_executor="async"))

                task_group.start_soon(add)
                # an attempt fails on the lock and is retried; then the lock goes away
                assert await anyio.to_thread.run_sync(retried.wait, 10)
                release.set()
        finally:
            release.set()
            holder.join()
            logging.getLogger("test").removeHandler(watcher)
        assert [task.id for task in await store.get_tasks()] == ["task"]


@pytest.mark.parametrize("operation", ["acquire_schedules", "acquire_jobs", "extend_leases"])
async def test_a_lease_runs_from_when_the_write_lock_was_got_not_from_the_call(
    tmp_path: Path, clock: FakeClock, operation: str
) -> None:
    """Another connection holds the write lock for longer than the lease while a lease is
    being granted: the lease still lasts its full duration from when the store got the lock,
    so another process's cleanup does not take the job back as abandoned."""
    path = tmp_path / "jobs.sqlite"
    lease = timedelta(seconds=2)
    async with AsyncExitStack() as stack:
        store = await started_store(stack, path, clock)
        other = await started_store(stack, path, clock)  # another scheduler's cleanup
        await store.add_schedule(
            Schedule(
                id="schedule",
                task_id="task",
                trigger=IntervalTrigger(seconds=1, start_time=clock.now()),
                next_fire_time=clock.now(),
                next_run_time=clock.now(),
            ),
            ConflictPolicy.exception,
        )
        job = Job(task_id="task", created_at=clock.now())
        await store.add_jobs([job])
        if operation == "extend_leases":
            await store.acquire_jobs("worker", lease, 1)

        # The store's own statements, traced in its worker thread: BEGIN IMMEDIATE starts
        # (and waits for the lock) before the operation reads the clock
        begun = threading.Event()
        assert store._connection is not None
        store._connection.set_trace_callback(
            lambda statement: begun.set() if statement == "BEGIN IMMEDIATE" else None
        )
        locked = threading.Event()
        release = threading.Event()

        holder = threading.Thread(target=hold_write_lock, args=(path, locked, release))
        holder.start()
        try:
            assert await anyio.to_thread.run_sync(locked.wait, 10)
            leases: list[datetime | None] = []
            async with anyio.create_task_group() as task_group:

                async def lease_while_locked() -> None:
                    if operation == "acquire_schedules":
                        [schedule] = await store.acquire_schedules("worker", lease, 10)
                        leases.append(schedule.acquired_until)
                    elif operation == "acquire_jobs":
                        assert len(await store.acquire_jobs("worker", lease, 10)) == 1
                    else:
                        await store.extend_acquired_leases("worker", [job.id], lease)

                with anyio.fail_after(10):
                    task_group.start_soon(lease_while_locked)
                    assert await anyio.to_thread.run_sync(begun.wait, 10)
                    clock.advance(3)  # the lock is held for longer than the lease
                    got_lock_at = clock.now()
                    release.set()
        finally:
            release.set()
            holder.join()
            store._connection.set_trace_callback(None)

        if operation != "acquire_schedules":
            [leased] = await store.get_jobs()
            leases.append(leased.acquired_until)
        assert leases == [got_lock_at + lease]
        # Within the lease, another process takes nothing back
        clock.advance(1.5)
        if operation == "acquire_schedules":
            assert await other.acquire_schedules("other", lease, 10) == []
        else:
            await other.cleanup()
            assert [leased.acquired_by for leased in await store.get_jobs()] == ["worker"]


async def test_an_sqlite_library_older_than_3_35_is_a_clear_error(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the version number the check reads, not the database: RETURNING came in 3.35.0
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    await start_raises(
        tmp_path / "jobs.sqlite",
        clock,
        r"needs SQLite 3\.35\.0 or newer .* uses SQLite 3\.34\.1",
    )
    assert not (tmp_path / "jobs.sqlite").exists()  # refused before touching the file
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 0))
    async with AsyncExitStack() as stack:
        await started_store(stack, tmp_path / "jobs.sqlite", clock)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative/jobs.sqlite", "relative/jobs.sqlite"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
    ],
)
async def test_urls(url: str, expected: str) -> None:
    assert SQLiteDataStore(url).path == Path(expected)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected 'sqlite:///relative/path'"):
        SQLiteDataStore("sqlite://")
    with pytest.raises(ValueError, match="polling_interval must be positive, got 0"):
        SQLiteDataStore("x.sqlite", polling_interval=0)
    with pytest.raises(ValueError, match="synchronous must be 'normal' or 'full', got 'off'"):
        SQLiteDataStore("x.sqlite", synchronous="off")


@pytest.mark.parametrize(("synchronous", "pragma_value"), [("normal", 1), ("FULL", 2)])
async def test_synchronous_sets_how_durable_commits_are(
    tmp_path: Path, clock: FakeClock, synchronous: str, pragma_value: int
) -> None:
    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        store = SQLiteDataStore(tmp_path / "jobs.sqlite", synchronous=synchronous)
        await store.start(stack, broker, logging.getLogger("test"), clock)
        assert store._connection is not None
        assert tuple(store._connection.execute("PRAGMA synchronous").fetchone()) == (pragma_value,)


async def test_scheduler_on_a_sqlite_url_runs_a_job(tmp_path: Path) -> None:
    async def double(value: int) -> int:
        return value * 2

    async with AsyncScheduler(f"sqlite:///{tmp_path / 'jobs.sqlite'}") as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(20):
            assert await scheduler.run_job(double, args=[21]) == 42


async def start_raises(path: Path, clock: FakeClock, match: str, **options: Any) -> None:
    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        with anyio.fail_after(10), pytest.raises(RuntimeError, match=match):
            await SQLiteDataStore(path, **options).start(
                stack, broker, logging.getLogger("test"), clock
            )


async def test_a_damaged_database_is_a_clear_error_naming_the_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.sqlite"
    async with AsyncExitStack() as stack:
        store = await started_store(stack, path, clock)
        for index in range(300):
            await store.add_task(Task(id=f"task-{index:04}" * 20, job_executor="async"))
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[4096:] = b"A" * (len(data) - 4096)  # the header page survives, the rest is garbage
    path.write_bytes(bytes(data))

    await start_raises(path, clock, rf"{path} is not a usable SQLite database \(.*malformed")


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
async def test_a_database_that_stays_locked_is_a_clear_error_not_a_hang(
    tmp_path: Path, clock: FakeClock, journal_mode: str
) -> None:
    path = tmp_path / "jobs.sqlite"
    if journal_mode == "wal":  # a store's file, write-locked by another connection
        async with AsyncExitStack() as stack:
            await started_store(stack, path, clock)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        if journal_mode == "wal":
            holder.execute("BEGIN IMMEDIATE")
        else:  # some other program's file, held exclusively: not even WAL can be set
            holder.execute("CREATE TABLE other (value)")
            holder.execute("BEGIN EXCLUSIVE")
        await start_raises(
            path,
            clock,
            rf"{path} is locked: .* 0.2 s busy timeout",
            busy_timeout=timedelta(seconds=0.2),
        )
    finally:
        holder.close()


async def test_a_corrupt_file_is_a_clear_error(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, logging.getLogger("test"))
        with pytest.raises(RuntimeError, match="is not a usable SQLite database"):
            await SQLiteDataStore(path).start(stack, broker, logging.getLogger("test"), clock)


async def test_a_killed_process_leaves_a_consistent_file(tmp_path: Path) -> None:
    """SIGKILL a scheduler process mid-run. The file is intact; a scheduler started later
    finds every schedule, reports each job the dead one held as abandoned exactly once, and
    the misfire rules (here: coalesce to the latest fire time) decide what runs."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    start = datetime.now(timezone.utc) + timedelta(seconds=1)
    async with AsyncScheduler(url) as setup:
        for index in range(50):
            await setup.add_schedule(
                "tests.cluster.node:record_fire",
                IntervalTrigger(seconds=1, start_time=start),
                id=f"s{index:02}",
                kwargs={"hold_seconds": 5},
                coalesce=CoalescePolicy.latest,
                misfire_grace_time=None,
            )

    until = (datetime.now(timezone.utc) + timedelta(minutes=2)).isoformat()
    command = [
        sys.executable, "-m", "tests.cluster.node", "--store", url, "--identity", "doomed",
        "--output", str(tmp_path), "--until", until,
    ]  # fmt: skip
    runs = anyio.Path(tmp_path / "runs-doomed.jsonl")
    process = await anyio.open_process(command, cwd=REPOSITORY)
    try:
        with anyio.fail_after(60):
            # the jobs hold for 5 s: wait until the process is running some, then kill it
            # (another process's file: no event crosses the process boundary)
            while not await runs.exists() or len((await runs.read_text()).splitlines()) < 10:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    started_before_kill = {
        json.loads(line)["job_id"] for line in (await runs.read_text()).splitlines()
    }

    with sqlite3.connect(tmp_path / "jobs.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        held = {
            str(UUID(row[0]))
            for row in connection.execute("SELECT id FROM jobs WHERE acquired_by = 'doomed'")
        }
    # every job that started is among those still leased to the dead process
    assert started_before_kill <= held

    abandoned: list[JobReleased] = []
    all_reported = anyio.Event()

    def on_release(event: JobReleased) -> None:
        if event.outcome is JobOutcome.abandoned:
            abandoned.append(event)
            if len(abandoned) >= len(held):
                all_reported.set()

    # An hour later, by the restarted scheduler's clock: every schedule has 3,600 fire
    # times due, every lease of the dead process has expired
    later = FakeClock(datetime.now(timezone.utc) + timedelta(hours=1))
    async with AsyncScheduler(
        url, role=SchedulerRole.scheduler, clock=later, cleanup_interval=0.5
    ) as restarted:
        assert len(await restarted.get_schedules()) == 50
        restarted.subscribe(on_release, JobReleased)
        await restarted.start_in_background()
        with anyio.fail_after(30):
            await all_reported.wait()
            while len(await restarted.get_jobs()) < 50:  # noqa: ASYNC110 - another thread's writes
                await anyio.sleep(0.05)
        await restarted.data_store.cleanup()  # a second cleanup finds nothing more
        jobs_after_restart = await restarted.get_jobs()
        schedules = await restarted.get_schedules()
        await restarted.stop()

    assert sorted(str(event.job_id) for event in abandoned) == sorted(held)
    assert all(event.scheduler_id == "doomed" for event in abandoned)
    # coalesce=latest: one job per schedule, for the newest of its 3,600 due fire times
    assert sorted(str(job.schedule_id) for job in jobs_after_restart) == [
        schedule.id for schedule in schedules
    ]
    newest = {job.scheduled_fire_time for job in jobs_after_restart}
    assert len(newest) == 1
    [fire_time] = newest
    assert fire_time is not None
    assert later.now() - timedelta(seconds=1) < fire_time <= later.now()


async def test_a_file_in_a_folder_that_does_not_exist_is_refused_and_nothing_made(
    tmp_path: Path,
) -> None:
    # a typo, or a volume that was not mounted: not a new, empty database somewhere else
    missing = tmp_path / "not-mounted" / "jobs.sqlite"
    with pytest.raises(RuntimeError, match=r"the folder .*not-mounted of jobs\.sqlite does not"):
        async with AsyncScheduler(f"sqlite:///{missing}"):
            pass
    assert not missing.parent.exists()


async def test_a_function_other_processes_cannot_import_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a lambda on a store other processes share: their workers would fail its jobs
    async with AsyncScheduler(f"sqlite:///{tmp_path / 'jobs.sqlite'}") as scheduler:
        with caplog.at_level(logging.WARNING, logger="asched"):
            await scheduler.add_job(lambda: None)
            await scheduler.configure_task(double)  # importable: no warning
    [record] = [record for record in caplog.records if "cannot be imported" in record.message]
    assert "<lambda>" in record.message
    assert "only this process can run its jobs" in record.message


def script_job() -> None:
    """Stands for a function of the script being run."""


async def test_a_function_of_the_script_being_run_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "__main__:script_job" names another function, or none, in another script's processes
    monkeypatch.setattr(script_job, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "script_job", script_job, raising=False)
    async with AsyncScheduler(f"sqlite:///{tmp_path / 'jobs.sqlite'}") as scheduler:
        with caplog.at_level(logging.WARNING, logger="asched"):
            await scheduler.configure_task(script_job)
    [record] = [record for record in caplog.records if "(__main__)" in record.message]
    assert "only processes running this same script can run its jobs" in record.message
    assert "__main__:script_job" in record.message
