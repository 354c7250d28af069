"""Redis specifics: key prefixes, lost replies, real connection kills, Redis Cluster."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import attrs
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from asched import (
    AsyncScheduler,
    DeserializationError,
    JobOutcome,
    JobResult,
    SchedulerRole,
    SerializationError,
    StaleScheduleError,
)
from asched._enums import ConflictPolicy
from asched._redis_client import RedisClient
from asched._structures import Job, Schedule, ScheduleUpdate, Task
from asched.datastores.base import RetrySettings
from asched.datastores.redis import LuaScript, RedisDataStore
from asched.eventbrokers import LocalEventBroker
from asched.eventbrokers.redis import RedisEventBroker
from asched.events import (
    JobAcquired,
    JobAdded,
    JobDeserializationFailed,
    JobReleased,
    ScheduleAdded,
    ScheduleRemoved,
    ScheduleUpdated,
    TaskAdded,
    TaskRemoved,
    TaskUpdated,
)
from asched.triggers import DateTrigger
from tests import unrestorable
from tests.backends.redis import delete_keys, kill_connections, url_for
from tests.clock import FakeClock
from tests.conftest import EventRecorder, ids_of
from tests.datastores import due_schedule
from tests.services import REDIS_URL, require_redis
from tests.unrestorable import Unrestorable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client runs on asyncio only


@pytest.fixture(autouse=True)
async def _redis(namespace: str) -> object:
    require_redis()
    yield
    await delete_keys(namespace)
    await delete_keys(f"{namespace}_other")


LEASE = timedelta(seconds=30)
#: retries quick enough for tests that lose replies on purpose
QUICK_RETRIES = RetrySettings(wait_min=0.001, wait_max=0.01)


async def started_store(
    stack: AsyncExitStack,
    url_or_client: str | RedisClient,
    clock: FakeClock,
    recorder: EventRecorder | None = None,
    **options: Any,
) -> RedisDataStore:
    store = RedisDataStore(url_or_client, **options)
    broker = LocalEventBroker()
    await broker.start(stack, logging.getLogger("test"))
    if recorder is not None:
        broker.subscribe(recorder)
    await store.start(stack, broker, logging.getLogger("test"), clock)
    return store


class ReplyLosingClient(aioredis.Redis):
    """A real client that throws away chosen replies to script calls after the server ran them.

    As a timeout or a dropped connection at the worst moment does: the server acted, and the
    caller sees a connection error (and retries). ``lose(args)`` chooses the replies to lose;
    ``hold(args)`` those to wait for forever instead (until the caller is cancelled).
    ``before(args)``, if set, is awaited before each command is sent (and may raise).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[tuple[Any, ...]] = []
        self.lost = 0
        self.lose: Callable[[tuple[Any, ...]], bool] = lambda args: False
        self.hold: Callable[[tuple[Any, ...]], bool] = lambda args: False
        self.before: Callable[[tuple[Any, ...]], Awaitable[None]] | None = None
        self.held = anyio.Event()
        self.lost_one = anyio.Event()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(args)
        if self.before is not None:
            await self.before(args)
        reply = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call, unused-ignore]
        if args[0] in ("EVALSHA", "EVAL"):
            if self.hold(args):
                self.held.set()
                await anyio.sleep_forever()
            if self.lose(args):
                self.lost += 1
                self.lost_one.set()
                raise RedisConnectionError("test: the reply was lost on its way")
        return reply

    def lose_first_reply_of_each_call(self) -> None:
        seen: set[tuple[Any, ...]] = set()

        def lose(args: tuple[Any, ...]) -> bool:
            call = args[3:]  # EVALSHA or EVAL, sha or source, 1, then the key and arguments
            if call in seen:
                return False
            seen.add(call)
            return True

        self.lose = lose

    def lose_every_reply_of(self, script: LuaScript) -> None:
        self.lose = lambda args: is_call_of(script, args)


def is_call_of(script: LuaScript, args: tuple[Any, ...]) -> bool:
    """Whether a command (``execute_command`` arguments) runs ``script``."""
    return args[0] in ("EVALSHA", "EVAL") and args[1] in (script.sha, script.source)


def losing_client() -> ReplyLosingClient:
    client = ReplyLosingClient.from_url(REDIS_URL)
    assert isinstance(client, ReplyLosingClient)
    return client


def script_of(store: RedisDataStore, name: str) -> LuaScript:
    return store._scripts[name]


async def prefix_keys(namespace: str) -> set[str]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return {key.decode() async for key in client.scan_iter(match=f"{{{namespace}}}:*")}
    finally:
        await client.aclose()


async def move_on(
    store: RedisDataStore, acquired: Schedule, next_fire_time: datetime | None
) -> None:
    """Release an acquired schedule to ``next_fire_time`` (``None``: it has finished)."""
    update = ScheduleUpdate(
        schedule_id=acquired.id,
        next_fire_time=next_fire_time,
        next_run_time=next_fire_time,
        last_fire_time=acquired.next_fire_time,
    )
    await store.release_schedules("me", [update])


async def test_prefixes_are_isolated(namespace: str, clock: FakeClock) -> None:
    async with AsyncExitStack() as stack:
        first = await started_store(stack, url_for(namespace), clock)
        second = await started_store(stack, url_for(f"{namespace}_other"), clock)
        await first.add_schedule(
            due_schedule("mine", clock),
            ConflictPolicy.exception,
        )
        assert [schedule.id for schedule in await first.get_schedules()] == ["mine"]
        assert await second.get_schedules() == []
        assert await second.acquire_schedules("other", timedelta(seconds=5), 10) == []

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = {key.decode() async for key in client.scan_iter(match=f"{{{namespace}}}:*")}
    finally:
        await client.aclose()
    assert keys
    assert all(key.startswith(f"{{{namespace}}}:") for key in keys)


@pytest.mark.parametrize("prefix", ["", "has space", "{tag}"])
async def test_prefix_must_be_usable(prefix: str) -> None:
    with pytest.raises(ValueError, match="without spaces or braces"):
        RedisDataStore(REDIS_URL, prefix=prefix)


async def test_a_client_decoding_replies_is_refused_when_given() -> None:
    with pytest.raises(ValueError, match="remove decode_responses from the URL"):
        RedisDataStore(f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}decode_responses=true")
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="made with decode_responses=False"):
            RedisDataStore(client)
    finally:
        await client.aclose()


async def test_operations_survive_killed_connections_without_duplicates(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        added: list[Job] = []
        for _ in range(20):
            # kill the store's connections, for real, while it works
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(kill_connections, namespace)
                batch = [Job(task_id="task", created_at=clock.now()) for _ in range(5)]
                await store.add_jobs(batch)
                added.extend(batch)

        jobs = await store.get_jobs()
        assert sorted(job.id for job in jobs) == sorted(job.id for job in added)
        assert await kill_connections(namespace) >= 1
        acquired = await store.acquire_jobs("worker", timedelta(minutes=1), 1000)
        assert len({job.id for job in acquired}) == len(added)
        assert await store.acquire_jobs("worker", timedelta(minutes=1), 1000) == []


async def test_scheduler_on_a_redis_url_runs_a_job(namespace: str) -> None:
    async def double(value: int) -> int:
        return value * 2

    async with AsyncScheduler(url_for(namespace)) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(20):
            assert await scheduler.run_job(double, args=[21]) == 42


async def test_a_script_the_server_does_not_have_is_sent_in_full() -> None:
    # A restarted server has no cached scripts: EVALSHA fails with NOSCRIPT and the script is
    # sent in full (and cached). A script no server has seen stands for it, without flushing
    # the shared server's cache
    script = LuaScript(f"return ARGV[1] .. ' {uuid4()}'", repeat="harmless")
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await client.script_exists(script.sha) == [False]
        first = await script(client.execute_command, "{unused}", "hello")
        assert await client.script_exists(script.sha) == [True]
        assert await script(client.execute_command, "{unused}", "hello") == first
        assert first.startswith(b"hello ")
    finally:
        await client.aclose()


async def test_schedules_stay_compact_and_leave_no_keys_behind(
    namespace: str, clock: FakeClock
) -> None:
    # The record lives apart from the schedule's hash so that the hash keeps Redis's compact
    # listpack encoding (about a third less memory per schedule); both go when it goes
    client = aioredis.Redis.from_url(REDIS_URL)

    async def schedule_keys() -> set[str]:
        pattern = f"{{{namespace}}}:schedule*"
        return {key.decode() async for key in client.scan_iter(match=pattern)}

    try:
        async with AsyncExitStack() as stack:
            store = await started_store(stack, url_for(namespace), clock)
            await store.add_schedule(due_schedule("removed", clock), ConflictPolicy.exception)
            await store.add_schedule(due_schedule("finished", clock), ConflictPolicy.exception)
            encoding = await client.object("ENCODING", f"{{{namespace}}}:schedule:removed")
            assert encoding == b"listpack"
            assert len(await schedule_keys()) == 5  # two hashes, two records, the id set

            await store.remove_schedules(["removed"])
            [acquired] = await store.acquire_schedules("me", timedelta(seconds=5), 10)
            await move_on(store, acquired, None)
            assert await store.get_schedules() == []
            assert await schedule_keys() == set()
    finally:
        await client.aclose()


async def test_schedules_stored_with_the_record_inside_their_hash_still_load(
    namespace: str, clock: FakeClock
) -> None:
    # Earlier versions kept the record as a field of the schedule's hash: such a schedule
    # must still be listed, acquired and moved on
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_schedule(
            due_schedule("old", clock),
            ConflictPolicy.exception,
        )
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            record_key = f"{{{namespace}}}:schedule_record:old"
            await client.hset(
                f"{{{namespace}}}:schedule:old", "record", await client.get(record_key)
            )
            await client.delete(record_key)
        finally:
            await client.aclose()

        assert [schedule.id for schedule in await store.get_schedules()] == ["old"]
        [acquired] = await store.acquire_schedules("me", timedelta(seconds=5), 10)
        assert acquired.id == "old"
        later = clock.now() + timedelta(seconds=1)
        await move_on(store, acquired, later)
        [moved_on] = await store.get_schedules()
        assert moved_on.next_fire_time == later


async def test_schedules_stored_without_a_revision_are_at_revision_zero(
    namespace: str, clock: FakeClock
) -> None:
    # Earlier versions kept no revision in the schedule's hash: such a schedule reads as
    # revision 0, and updates and replacements count on from there
    client = aioredis.Redis.from_url(REDIS_URL)

    def hash_of(schedule_id: str) -> str:
        return f"{{{namespace}}}:schedule:{schedule_id}"

    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, url_for(namespace), clock)
        for schedule_id in ("replaced", "rescheduled", "updated"):
            await store.add_schedule(due_schedule(schedule_id, clock), ConflictPolicy.exception)
            assert await client.hget(hash_of(schedule_id), "revision") == b"0"
            await client.hdel(hash_of(schedule_id), "revision")

        replaced, rescheduled, updated = await store.get_schedules()
        assert [schedule.revision for schedule in (replaced, rescheduled, updated)] == [0, 0, 0]
        assert await store.update_schedule_definition(attrs.evolve(updated, name="new"))
        later = clock.now() + timedelta(hours=1)
        assert await store.update_schedule_definition(
            attrs.evolve(rescheduled, name="new", next_fire_time=later, next_run_time=later),
            rescheduled_from=rescheduled,
        )
        await store.add_schedule(attrs.evolve(replaced, name="new"), ConflictPolicy.replace)

        stored = await store.get_schedules()
        assert [(schedule.name, schedule.revision) for schedule in stored] == [("new", 1)] * 3
        assert stored[1].next_fire_time == later
        for schedule_id in ("replaced", "rescheduled", "updated"):
            assert await client.hget(hash_of(schedule_id), "revision") == b"1"


#
# Lost replies: a script the server ran, whose reply never reached the caller
#


def counts(recorder: EventRecorder, event_type: type[Any]) -> dict[Any, int]:
    """How many events of the type each job, schedule or task got."""
    found: dict[Any, int] = {}
    for event in recorder.of_type(event_type):
        key = getattr(event, "job_id", None) or getattr(event, "schedule_id", None)
        key = key or event.task_id
        found[key] = found.get(key, 0) + 1
    return found


async def test_tasks_and_schedules_change_once_when_each_first_reply_is_lost(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    client = losing_client()
    client.lose_first_reply_of_each_call()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, recorder, prefix=namespace, retry_settings=QUICK_RETRIES
        )
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_task(Task(id="task", job_executor="async", max_running_jobs=2))
        for schedule_id in ("a", "b"):
            await store.add_schedule(due_schedule(schedule_id, clock), ConflictPolicy.exception)
        await store.add_schedule(due_schedule("a", clock), ConflictPolicy.replace)

        acquired = await store.acquire_schedules("me", LEASE, 10)
        assert ids_of(acquired) == ["a", "b"]
        later = clock.now() + timedelta(seconds=1)
        job = Job(task_id="task", schedule_id="a", created_at=clock.now())
        await store.release_schedules(
            "me",
            [
                ScheduleUpdate(
                    schedule_id="a",
                    next_fire_time=later,
                    next_run_time=later,
                    last_fire_time=clock.now(),
                    jobs=(job,),
                ),
                ScheduleUpdate(
                    schedule_id="b",
                    next_fire_time=None,
                    next_run_time=None,
                    last_fire_time=clock.now(),
                ),
            ],
        )
        assert ids_of(await store.get_jobs()) == [job.id]
        await store.remove_schedules(["a"])
        await store.remove_task("task")

        assert ids_of(await store.get_schedules()) == []
        assert await store.get_tasks() == []
    assert client.lost >= 9  # every script call above lost its first reply
    assert counts(recorder, TaskAdded) == {"task": 1}
    assert counts(recorder, TaskUpdated) == {"task": 1}
    assert counts(recorder, TaskRemoved) == {"task": 1}
    assert counts(recorder, ScheduleAdded) == {"a": 1, "b": 1}
    assert counts(recorder, ScheduleUpdated) == {"a": 2}  # replaced, then moved on
    assert counts(recorder, ScheduleRemoved) == {"a": 1, "b": 1}
    assert counts(recorder, JobAdded) == {job.id: 1}


async def test_definition_updates_apply_once_when_each_first_reply_is_lost(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    # The retry of an update whose first attempt wrote finds the schedule at the revision that
    # attempt wrote: it must get that attempt's reply, not StaleScheduleError (its caller
    # would read again and apply its change twice)
    client = losing_client()
    client.lose_first_reply_of_each_call()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, recorder, prefix=namespace, retry_settings=QUICK_RETRIES
        )
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_schedule(due_schedule("s", clock), ConflictPolicy.exception)
        [read] = await store.get_schedules()

        paused = await store.update_schedule_definition(attrs.evolve(read, paused=True))
        assert paused is not None
        assert (paused.paused, paused.revision) == (True, 1)
        later = clock.now() + timedelta(hours=1)
        rescheduled = await store.update_schedule_definition(
            attrs.evolve(paused, paused=False, next_fire_time=later, next_run_time=later),
            rescheduled_from=paused,
        )
        assert rescheduled is not None
        assert (rescheduled.paused, rescheduled.revision, rescheduled.next_fire_time) == (
            False,
            2,
            later,
        )
        # a stale update stays stale when its reply is lost (and writes nothing)
        with pytest.raises(StaleScheduleError):
            await store.update_schedule_definition(attrs.evolve(read, name="stale"))
        [stored] = await store.get_schedules()
        assert stored == rescheduled
        assert stored.revision == 2
        assert await store.get_next_schedule_run_time() == later

        await store.remove_schedules(["s"])
        assert await store.update_schedule_definition(stored) is None
        assert await store.get_schedules() == []
    assert client.lost >= 7  # every script call above lost its first reply
    assert counts(recorder, ScheduleUpdated) == {"s": 2}


async def test_jobs_run_once_when_each_first_reply_is_lost(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    client = losing_client()
    client.lose_first_reply_of_each_call()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, recorder, prefix=namespace, retry_settings=QUICK_RETRIES
        )
        await store.add_task(Task(id="task", job_executor="async"))
        kept = timedelta(minutes=5)
        jobs = [Job(task_id="task", created_at=clock.now(), result_expiration_time=kept)]
        late = Job(
            task_id="task",
            created_at=clock.now(),
            start_deadline=clock.now() + timedelta(seconds=1),
            result_expiration_time=kept,
        )
        jobs += [Job(task_id="task", created_at=clock.now()) for _ in range(3)]
        abandoned = Job(task_id="task", created_at=clock.now(), result_expiration_time=kept)
        await store.add_jobs([*jobs[:1], late, *jobs[1:], abandoned])
        clock.advance(2)

        acquired = await store.acquire_jobs("me", LEASE, 4)
        assert ids_of(acquired) == ids_of(jobs)
        await store.release_jobs(
            "me",
            [JobResult.for_job(job, JobOutcome.success, finished_at=clock.now()) for job in jobs],
        )
        assert ids_of(await store.acquire_jobs("gone", LEASE, 10)) == [abandoned.id]
        clock.advance(LEASE.total_seconds() + 1)
        await store.cleanup()

        assert await store.get_jobs() == []
        outcomes = {}
        for job in (jobs[0], late, abandoned):
            result = await store.get_job_result(job.id)
            assert result is not None
            outcomes[job.id] = result.outcome
    assert client.lost >= 5
    assert outcomes == {
        jobs[0].id: JobOutcome.success,
        late.id: JobOutcome.missed_start_deadline,
        abandoned.id: JobOutcome.abandoned,
    }
    assert counts(recorder, JobAcquired) == {job.id: 1 for job in [*jobs, abandoned]}
    # A release keeps nothing for a repeat (which finds the jobs gone and does nothing): the
    # events of a release whose reply was lost are lost with it, its results are kept
    assert counts(recorder, JobReleased) == {job.id: 1 for job in [late, abandoned]}


async def test_replies_lost_to_real_timeouts_lose_and_repeat_nothing(
    namespace: str, clock: FakeClock, recorder: EventRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that waits 20 ms for a reply against scripts given batches that take the
    # server longer (tens of milliseconds here): the server runs each script, the client gives up,
    # drops the connection and retries; the repeats answer in a few milliseconds
    count = 3000
    # (redis-py's own retries off: each timeout reaches the store, which logs its retry)
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.02, retry=Retry(NoBackoff(), 0))
    retries = RetrySettings(attempts=30, wait_min=0.01, wait_max=0.05)

    def lost_replies() -> int:
        return sum("transient error" in record.getMessage() for record in caplog.records)

    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        helper = await started_store(stack, url_for(namespace), clock)
        store = await started_store(
            stack, client, clock, recorder, prefix=namespace, retry_settings=retries
        )
        await helper.add_task(Task(id="task", job_executor="async"))
        kept = timedelta(minutes=5)
        late = [
            Job(
                task_id="task",
                created_at=clock.now(),
                start_deadline=clock.now() + timedelta(seconds=1),
                result_expiration_time=kept,
            )
            for _ in range(count)
        ]
        await helper.add_jobs(late)
        # twice as many: adding 3,000 takes the server about the 20 ms the client waits, too
        # close to time out every time
        on_time = [
            Job(task_id="task", created_at=clock.now(), result_expiration_time=kept)
            for _ in range(2 * count)
        ]
        with caplog.at_level(logging.WARNING):
            await store.add_jobs(on_time)
            assert lost_replies() >= 1
            clock.advance(2)

            caplog.clear()
            acquired = await store.acquire_jobs("me", LEASE, 10)  # the late ones go first
            assert lost_replies() >= 1
            while batch := await store.acquire_jobs("me", LEASE, 500):
                acquired += batch
            assert sorted(ids_of(acquired)) == sorted(ids_of(on_time))

            caplog.clear()
            await store.release_jobs(
                "me",
                [
                    JobResult.for_job(job, JobOutcome.success, finished_at=clock.now())
                    for job in acquired
                ],
            )
            assert lost_replies() >= 1

            abandoned = [
                Job(task_id="task", created_at=clock.now(), result_expiration_time=kept)
                for _ in range(count)
            ]
            await helper.add_jobs(abandoned)
            assert len(await helper.acquire_jobs("gone", LEASE, count)) == count
            clock.advance(LEASE.total_seconds() + 1)
            caplog.clear()
            await store.cleanup()
            assert lost_replies() >= 1

        assert await helper.get_jobs() == []
        for job in (late[0], on_time[-1], abandoned[0]):
            assert await helper.get_job_result(job.id) is not None
    released = counts(recorder, JobReleased)
    # (the release's reply was lost, and with it its events: a release keeps nothing)
    assert released == {job.id: 1 for job in [*late, *abandoned]}
    assert counts(recorder, JobAcquired) == {job.id: 1 for job in on_time}
    outcomes = {event.job_id: event.outcome for event in recorder.of_type(JobReleased)}
    assert {outcomes[job.id] for job in late} == {JobOutcome.missed_start_deadline}
    assert {outcomes[job.id] for job in abandoned} == {JobOutcome.abandoned}


@pytest.mark.parametrize("how", ["retries run out", "cancelled"])
async def test_jobs_an_unanswered_acquisition_took_are_handed_out_by_the_next(
    namespace: str, clock: FakeClock, recorder: EventRecorder, how: str
) -> None:
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack,
            client,
            clock,
            recorder,
            prefix=namespace,
            retry_settings=RetrySettings(attempts=2, wait_min=0.001),
        )
        await store.add_task(Task(id="task", job_executor="async"))
        late = Job(
            task_id="task", created_at=clock.now(), start_deadline=clock.now() + timedelta(1)
        )
        jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(3)]
        await store.add_jobs([late, *jobs])
        clock.advance(timedelta(days=2).total_seconds())
        acquisition = script_of(store, "acquire_jobs")
        if how == "retries run out":
            client.lose_every_reply_of(acquisition)
            with pytest.raises(RedisConnectionError):
                await store.acquire_jobs("me", LEASE, 10)
            client.lose = lambda args: False
        else:
            client.hold = lambda args: args[1] in (acquisition.sha, acquisition.source)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(store.acquire_jobs, "me", LEASE, 10)
                    await client.held.wait()  # the server ran it; the reply waits
                    task_group.cancel_scope.cancel()
            client.hold = lambda args: False
        assert not recorder.of_type(JobAcquired)

        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == ids_of(jobs)
    assert counts(recorder, JobAcquired) == {job.id: 1 for job in jobs}
    assert counts(recorder, JobReleased) == {late.id: 1}  # the missed job, reported once


async def test_schedules_an_unanswered_acquisition_took_are_handed_out_by_the_next(
    namespace: str, clock: FakeClock
) -> None:
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack,
            client,
            clock,
            prefix=namespace,
            retry_settings=RetrySettings(attempts=2, wait_min=0.001),
        )
        for schedule_id in ("a", "b"):
            await store.add_schedule(due_schedule(schedule_id, clock), ConflictPolicy.exception)
        client.lose_every_reply_of(script_of(store, "acquire_schedules"))
        with pytest.raises(RedisConnectionError):
            await store.acquire_schedules("me", LEASE, 10)
        client.lose = lambda args: False

        # due again at once, not when the lease runs out
        assert ids_of(await store.acquire_schedules("me", LEASE, 10)) == ["a", "b"]
        assert await store.acquire_schedules("me", LEASE, 10) == []


@pytest.mark.parametrize("kind", ["jobs", "schedules"])
async def test_a_split_acquisition_cancelled_midway_puts_back_what_it_took(
    namespace: str, clock: FakeClock, kind: str
) -> None:
    # More than 1,000 items take several script calls; cancelled while waiting for the
    # second reply, the caller gets none of them, those of the first call included
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, client, clock, prefix=namespace)
        await store.add_task(Task(id="task", job_executor="async"))
        if kind == "jobs":
            jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(1500)]
            await store.add_jobs(jobs)
            expected = ids_of(jobs)
            acquire: Callable[[], Coroutine[Any, Any, list[Any]]] = partial(
                store.acquire_jobs, "me", LEASE, 1500
            )
        else:
            expected = [f"s{index:04}" for index in range(1500)]
            for schedule_id in expected:
                schedule = due_schedule(schedule_id, clock)
                await store.add_schedule(schedule, ConflictPolicy.exception)
            acquire = partial(store.acquire_schedules, "me", LEASE, 1500)
        script = script_of(store, f"acquire_{kind}")
        calls = 0

        def second_call(args: tuple[Any, ...]) -> bool:
            nonlocal calls
            calls += is_call_of(script, args)
            return is_call_of(script, args) and calls == 2

        client.hold = second_call
        with anyio.fail_after(10):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(acquire)
                await client.held.wait()  # the first call was answered, the second ran
                task_group.cancel_scope.cancel()
        client.hold = lambda args: False

        again = await acquire()
    assert sorted(item.id for item in again) == sorted(expected)


@pytest.mark.parametrize("first_attempt", ["ran", "never ran"])
async def test_an_attempt_of_a_put_back_acquisition_that_comes_later_takes_nothing(
    namespace: str, clock: FakeClock, first_attempt: str
) -> None:
    # An attempt of an unanswered acquisition still on its way (on another connection, or in
    # the client's own retry) can reach the server after the next acquisition put back what
    # the first attempt took, or before the first attempt ever got there
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, prefix=namespace, retry_settings=RetrySettings(attempts=1)
        )
        await store.add_task(Task(id="task", job_executor="async"))
        jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(4)]
        await store.add_jobs(jobs)
        script = script_of(store, "acquire_jobs")
        sent: list[tuple[Any, ...]] = []

        async def fail_before_sending(args: tuple[Any, ...]) -> None:
            if is_call_of(script, args):
                sent.append(args)
                raise RedisConnectionError("test: the connection dropped before the command")

        if first_attempt == "ran":
            client.lose_every_reply_of(script)
        else:
            client.before = fail_before_sending
        with pytest.raises(RedisConnectionError):
            await store.acquire_jobs("me", LEASE, 2)
        client.lose, client.before = (lambda args: False), None
        late_attempt = sent[0] if sent else client.commands[-1]

        assert ids_of(await store.acquire_jobs("me", LEASE, 2)) == ids_of(jobs[:2])
        late_reply = await client.execute_command(*late_attempt)
        assert late_reply[0] == []
        assert ids_of(await store.acquire_jobs("other", LEASE, 10)) == ids_of(jobs[2:])


async def test_an_attempt_of_a_put_back_schedule_acquisition_that_comes_later_takes_nothing(
    namespace: str, clock: FakeClock
) -> None:
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, prefix=namespace, retry_settings=RetrySettings(attempts=1)
        )
        for schedule_id in ("a", "b"):
            await store.add_schedule(due_schedule(schedule_id, clock), ConflictPolicy.exception)
        client.lose_every_reply_of(script_of(store, "acquire_schedules"))
        with pytest.raises(RedisConnectionError):
            await store.acquire_schedules("me", LEASE, 1)
        client.lose = lambda args: False
        late_attempt = client.commands[-1]

        assert ids_of(await store.acquire_schedules("me", LEASE, 1)) == ["a"]
        assert (await client.execute_command(*late_attempt))[0] == []
        assert ids_of(await store.acquire_schedules("other", LEASE, 10)) == ["b"]


async def test_processes_forked_from_one_store_never_share_a_token(
    namespace: str, clock: FakeClock
) -> None:
    # A store made before fork() (a module-level scheduler under gunicorn --preload, say):
    # each child's operations must act, not replay the reply of another child's
    store = RedisDataStore(url_for(namespace))
    jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(2)]

    async def add(job: Job) -> None:
        async with AsyncExitStack() as stack:
            broker = LocalEventBroker()
            await broker.start(stack, logging.getLogger("test"))
            await store.start(stack, broker, logging.getLogger("test"), clock)
            await store.add_task(Task(id="task", job_executor="async"))
            await store.add_jobs([job])

    def add_in_a_forked_child(job: Job) -> int:
        # (forked from a worker thread: no event loop runs in the child's only thread)
        pid = os.fork()
        if pid == 0:  # the child: add the job and leave at once, whatever happens
            status = 1
            try:
                anyio.run(add, job)
                status = 0
            finally:
                os._exit(status)
        return os.waitpid(pid, 0)[1]

    for job in jobs:
        assert await anyio.to_thread.run_sync(add_in_a_forked_child, job) == 0

    async with AsyncExitStack() as stack:
        reader = await started_store(stack, url_for(namespace), clock)
        assert sorted(ids_of(await reader.get_jobs())) == sorted(ids_of(jobs))


async def test_no_retry_starts_so_late_that_it_could_act_again(
    namespace: str, clock: FakeClock
) -> None:
    # The first attempt of a call runs and its reply is lost; each later attempt takes a
    # second and fails (as against a server that cannot be reached: each waits out a connect
    # timeout), until the call's reply has expired on the server. An attempt that reached it
    # then would act again: add a job that ran meanwhile a second time, or lease a second set
    # of jobs while nobody puts the first set back. The store refuses to start attempts that
    # late (its retry window), and its replies outlive the window
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        # (attempts enough to last past the reply's expiry, if each were allowed to start)
        retries = RetrySettings(attempts=20, wait_min=0.01, wait_max=0.05)
        store = await started_store(stack, client, clock, prefix=namespace, retry_settings=retries)
        worker = await started_store(stack, url_for(namespace), clock)
        await worker.add_task(Task(id="task", job_executor="async"))
        first_attempt = 0.0

        def losing_first_attempt(script: LuaScript) -> None:
            def lose(args: tuple[Any, ...]) -> bool:
                nonlocal first_attempt
                if not is_call_of(script, args) or first_attempt:
                    return False
                first_attempt = time.monotonic()
                return True

            client.lose = lose

        async def slow_failing_attempts(args: tuple[Any, ...]) -> None:
            elapsed = time.monotonic() - first_attempt
            if first_attempt and elapsed < store._reply_ttl + 0.5:
                await anyio.sleep(1)
                raise RedisConnectionError("test: the connection timed out")

        client.before = slow_failing_attempts
        job = Job(task_id="task", created_at=clock.now())
        losing_first_attempt(script_of(store, "add_jobs"))
        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:

                async def add() -> None:
                    with pytest.raises(RedisConnectionError):
                        await store.add_jobs([job])

                task_group.start_soon(add)
                await client.lost_one.wait()  # the job was added; it runs meanwhile
                [ran] = await worker.acquire_jobs("w1", LEASE, 10)
                result = JobResult.for_job(ran, JobOutcome.success, finished_at=clock.now())
                await worker.release_jobs("w1", [result])
        assert ran.id == job.id
        assert await worker.acquire_jobs("w2", LEASE, 10) == []  # it was not added again

        jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(4)]
        await worker.add_jobs(jobs)
        first_attempt = 0.0
        losing_first_attempt(script_of(store, "acquire_jobs"))
        with anyio.fail_after(30), pytest.raises(RedisConnectionError):
            await store.acquire_jobs("me", LEASE, 2)
        client.lose, client.before = (lambda args: False), None
        # the two jobs the first attempt took are put back, none is left to nobody
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == ids_of(jobs)


async def test_an_acquisitions_reply_is_kept_while_what_it_took_is_leased(
    namespace: str, clock: FakeClock
) -> None:
    # while it is kept, an acquisition whose caller never saw its reply can be put back
    lease = timedelta(minutes=10)
    client = aioredis.Redis.from_url(REDIS_URL)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        await store.add_jobs([Job(task_id="task", created_at=clock.now())])
        replies_before = {key for key in await prefix_keys(namespace) if ":reply:" in key}
        await store.acquire_jobs("me", lease, 10)
        [reply] = {key for key in await prefix_keys(namespace) if ":reply:" in key} - (
            replies_before
        )
        assert await client.ttl(reply) >= lease.total_seconds() - 5


async def test_only_calls_a_repeat_would_redo_keep_a_reply(
    namespace: str, clock: FakeClock
) -> None:
    # A release repeated finds its jobs gone and does nothing; an acquisition that took
    # nothing has nothing to keep; an addition needs only a mark that it was done
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))

        async def new_replies(operation: Awaitable[Any]) -> int:
            before = {key for key in await prefix_keys(namespace) if ":reply:" in key}
            await operation
            return len({key for key in await prefix_keys(namespace) if ":reply:" in key} - before)

        assert await new_replies(store.acquire_jobs("me", LEASE, 10)) == 0
        assert await new_replies(store.acquire_schedules("me", LEASE, 10)) == 0
        job = Job(task_id="task", created_at=clock.now())
        assert await new_replies(store.add_jobs([job])) == 1
        assert await new_replies(store.acquire_jobs("me", LEASE, 10)) == 1
        result = JobResult.for_job(job, JobOutcome.success, finished_at=clock.now())
        assert await new_replies(store.release_jobs("me", [result])) == 0


async def test_an_acquisition_frees_no_more_expired_leases_than_it_may_take(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        ids = [f"s{index}" for index in range(5)]
        for schedule_id in ids:
            await store.add_schedule(due_schedule(schedule_id, clock), ConflictPolicy.exception)
        assert len(await store.acquire_schedules("gone", LEASE, 10)) == 5
        clock.advance(LEASE.total_seconds() + 1)

        assert len(await store.acquire_schedules("me", LEASE, 2)) == 2
        leases = [schedule.acquired_by for schedule in await store.get_schedules()]
        assert sorted(leases, key=str) == ["gone", "gone", "gone", "me", "me"]
        assert len(await store.acquire_schedules("me", LEASE, 10)) == 3


#
# Results of jobs that end without running, and running-job counters
#


async def test_results_of_jobs_ended_outside_a_release_are_kept_by_the_script_itself(
    namespace: str, clock: FakeClock
) -> None:
    # Even when no reply ever arrives (the client gives up at once), the results are kept:
    # they are written by the same script, not by calls made after its reply
    client = losing_client()
    kept = timedelta(minutes=5)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        helper = await started_store(stack, url_for(namespace), clock)
        store = await started_store(
            stack,
            client,
            clock,
            prefix=namespace,
            retry_settings=RetrySettings(attempts=1),
        )
        await helper.add_task(Task(id="task", job_executor="async"))
        deadline = clock.now() + timedelta(seconds=1)
        missed = Job(
            task_id="unlimited",
            created_at=clock.now(),
            start_deadline=deadline,
            result_expiration_time=kept,
        )
        abandoned = Job(task_id="task", created_at=clock.now(), result_expiration_time=kept)
        await helper.add_jobs([abandoned, missed])
        assert ids_of(await helper.acquire_jobs("gone", LEASE, 1)) == [abandoned.id]
        overdue = Job(
            task_id="task",
            created_at=clock.now(),
            start_deadline=deadline,
            result_expiration_time=kept,
        )
        await helper.add_task(Task(id="task", job_executor="async", max_running_jobs=1))
        await helper.add_jobs([overdue])  # waits for the slot the abandoned job holds
        await helper.add_schedule(due_schedule("s", clock), ConflictPolicy.exception)
        await helper.acquire_schedules("me", LEASE, 1)
        skipped = Job(
            task_id="task", schedule_id="s", created_at=clock.now(), result_expiration_time=kept
        )
        clock.advance(2)

        client.lose_every_reply_of(script_of(store, "acquire_jobs"))
        with pytest.raises(RedisConnectionError):
            await store.acquire_jobs("me", LEASE, 10)
        client.lose_every_reply_of(script_of(store, "release_schedules"))
        update = ScheduleUpdate(
            schedule_id="s",
            next_fire_time=None,
            next_run_time=None,
            last_fire_time=clock.now(),
            missed_jobs=(skipped,),
        )
        with pytest.raises(RedisConnectionError):
            await store.release_schedules("me", [update])
        clock.advance(LEASE.total_seconds())
        client.lose_every_reply_of(script_of(store, "cleanup"))
        with pytest.raises(RedisConnectionError):
            await store.cleanup()

        outcomes = {}
        for job in (missed, skipped, abandoned, overdue):
            result = await helper.get_job_result(job.id)
            assert result is not None, job
            outcomes[job.id] = (result.outcome, result.expires_at)
    assert outcomes == {
        missed.id: (JobOutcome.missed_start_deadline, clock.now() - LEASE + kept),
        skipped.id: (JobOutcome.missed_start_deadline, clock.now() - LEASE + kept),
        abandoned.id: (JobOutcome.abandoned, clock.now() + kept),
        overdue.id: (JobOutcome.missed_start_deadline, clock.now() + kept),
    }


async def test_cleanup_is_one_script_call_whatever_it_releases(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, client, clock, recorder, prefix=namespace)
        await store.add_task(Task(id="task", job_executor="async"))
        jobs = [
            Job(task_id="task", created_at=clock.now(), result_expiration_time=timedelta(1))
            for _ in range(50)
        ]
        await store.add_jobs(jobs)
        await store.acquire_jobs("gone", LEASE, 50)
        clock.advance(LEASE.total_seconds() + 1)
        client.commands.clear()
        await store.cleanup()
        assert [command[0] for command in client.commands] == ["EVALSHA"]
        results = [await store.get_job_result(job.id) for job in jobs]
    assert {result.outcome for result in results if result} == {JobOutcome.abandoned}
    assert None not in results
    assert len(recorder.of_type(JobReleased)) == 50


async def test_no_running_job_counters_remain_once_the_jobs_of_one_off_schedules_finish(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        for index in range(200):
            schedule = Schedule(
                id=f"once-{index}",
                task_id="task",
                trigger=DateTrigger(clock.now()),
                next_fire_time=clock.now(),
                next_run_time=clock.now(),
                max_running_jobs=1 if index % 2 else None,
            )
            await store.add_schedule(schedule, ConflictPolicy.exception)
        schedules = await store.acquire_schedules("me", LEASE, 200)
        await store.release_schedules(
            "me",
            [
                ScheduleUpdate(
                    schedule_id=schedule.id,
                    next_fire_time=None,
                    next_run_time=None,
                    last_fire_time=clock.now(),
                    jobs=(Job(task_id="task", schedule_id=schedule.id, created_at=clock.now()),),
                )
                for schedule in schedules
            ],
        )
        jobs = await store.acquire_jobs("me", LEASE, 200)
        assert len(jobs) == 200
        await store.release_jobs(
            "me",
            [JobResult.for_job(job, JobOutcome.success, finished_at=clock.now()) for job in jobs],
        )

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            # a counter left at zero by an earlier version goes when its schedule goes
            await store.add_schedule(due_schedule("old", clock), ConflictPolicy.exception)
            await client.hset(f"{{{namespace}}}:running_schedules", "old", 0)
            await store.remove_schedules(["old"])
            for name in ("running_schedules", "running_tasks"):
                assert await client.hgetall(f"{{{namespace}}}:{name}") == {}
        finally:
            await client.aclose()
    # nothing per schedule or per job is left behind either
    kinds = {key.split(":")[1] for key in await prefix_keys(namespace)}
    assert kinds <= {"tasks", "sequence", "reply"}


async def test_running_jobs_are_counted_only_for_tasks_with_a_limit(
    namespace: str, clock: FakeClock
) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    counters = f"{{{namespace}}}:running_tasks"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(4)]
        await store.add_jobs(jobs)
        running = await store.acquire_jobs("me", LEASE, 2)
        assert await client.hgetall(counters) == {}

        # a limit set while jobs run counts them
        await store.add_task(Task(id="task", job_executor="async", max_running_jobs=3))
        assert await client.hgetall(counters) == {b"task": b"2"}
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [jobs[2].id]
        assert await store.acquire_jobs("me", LEASE, 10) == []
        result = JobResult.for_job(running[0], JobOutcome.success, finished_at=clock.now())
        await store.release_jobs("me", [result])
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [jobs[3].id]

        await store.add_task(Task(id="task", job_executor="async"))
        assert await client.hgetall(counters) == {}
        # a counter an earlier version kept for a task without a limit goes at the cleanup
        await client.hset(counters, "unlimited", 2)
        await store.cleanup()
        assert await client.hgetall(counters) == {}


async def test_jobs_of_several_lanes_are_acquired_oldest_first(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        jobs = []
        for task_id in ("a", "b", "a", "a", "b", "c", "a"):
            jobs.append(Job(task_id=task_id, created_at=clock.now()))
            clock.advance(0.001)
        await store.add_jobs(jobs)

        acquired = ids_of(await store.acquire_jobs("me", LEASE, 3))
        acquired += ids_of(await store.acquire_jobs("me", LEASE, 10))
    assert acquired == ids_of(jobs)


async def test_every_job_is_listed_in_creation_order_without_an_index_of_all(
    namespace: str, clock: FakeClock
) -> None:
    # queued jobs are in lanes (those held back by a limit too) and running ones in
    # {prefix}:running: no third index of all jobs is kept
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="limited", job_executor="async", max_running_jobs=1))
        jobs = []
        for task_id in ("limited", "free", "limited", "free", "limited"):
            jobs.append(Job(task_id=task_id, created_at=clock.now()))
            clock.advance(0.001)
        await store.add_jobs(jobs)
        running = await store.acquire_jobs("me", LEASE, 10)
        assert ids_of(running) == [jobs[0].id, jobs[1].id, jobs[3].id]

        listed = await store.get_jobs()
        assert ids_of(listed) == ids_of(jobs)
        assert {job.id for job in listed if job.acquired_by == "me"} == set(ids_of(running))
        assert f"{{{namespace}}}:jobs" not in await prefix_keys(namespace)


async def test_a_definition_update_changing_the_limit_lets_held_back_jobs_start(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        limited = attrs.evolve(due_schedule("limited", clock), max_running_jobs=1)
        await store.add_schedule(limited, ConflictPolicy.exception)
        [acquired] = await store.acquire_schedules("me", LEASE, 10)
        jobs = [Job(task_id="task", schedule_id="limited", created_at=clock.now())]
        jobs += [Job(task_id="task", schedule_id="limited", created_at=clock.now())]
        jobs += [Job(task_id="task", schedule_id="limited", created_at=clock.now())]
        await store.add_jobs(jobs)
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [jobs[0].id]
        assert store.jobs_held_back

        updated = await store.update_schedule_definition(
            attrs.evolve(limited, max_running_jobs=2, name="raised")
        )
        assert updated is not None
        assert (updated.name, updated.max_running_jobs, updated.acquired_by) == ("raised", 2, None)
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [jobs[1].id]
        await store.update_schedule_definition(attrs.evolve(updated, max_running_jobs=None))
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [jobs[2].id]
        # the lease was cleared: the schedule is due again, at its stored fire time
        [again] = await store.acquire_schedules("other", LEASE, 10)
        assert again.next_fire_time == acquired.next_fire_time


#
# Jobs returned unstarted (a worker stopping without waiting)
#


async def test_returned_jobs_of_several_lanes_are_acquired_again_in_their_places(
    namespace: str, clock: FakeClock
) -> None:
    client = losing_client()
    root = f"{{{namespace}}}"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, client, clock, prefix=namespace)
        jobs = []
        for task_id, schedule_id in [
            ("a", None),
            ("b", None),
            ("a", "s"),
            ("a", None),
            ("c", None),
        ]:
            jobs.append(Job(task_id=task_id, schedule_id=schedule_id, created_at=clock.now()))
            clock.advance(0.001)
        await store.add_jobs(jobs)
        taken = await store.acquire_jobs("me", LEASE, 4)
        assert ids_of(taken) == ids_of(jobs[:4])
        meanwhile = []
        for task_id in ("b", "a", "d"):
            meanwhile.append(Job(task_id=task_id, created_at=clock.now()))
            clock.advance(0.001)
        await store.add_jobs(meanwhile)

        client.commands.clear()
        await store.return_jobs("me", taken[::-1])  # in any order
        assert [command[0] for command in client.commands] == ["EVALSHA"]
        # nothing of their leases is left, nor the count of schedule s's running job
        assert not await client.exists(f"{root}:running", f"{root}:running_schedules")
        assert [job.acquired_by for job in await store.get_jobs()] == [None] * 8

        again = ids_of(await store.acquire_jobs("other", LEASE, 2))
        again += ids_of(await store.acquire_jobs("other", LEASE, 10))
    assert again == ids_of([*jobs, *meanwhile])


async def test_a_returned_job_of_a_limited_task_frees_its_slot_for_a_held_back_lane(
    namespace: str, clock: FakeClock
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="free", job_executor="async"))
        await store.add_task(Task(id="limited", job_executor="async", max_running_jobs=1))
        schedule = attrs.evolve(due_schedule("s", clock), max_running_jobs=1)
        await store.add_schedule(schedule, ConflictPolicy.exception)
        blocker = Job(task_id="free", schedule_id="s", created_at=clock.now())
        held = Job(task_id="limited", schedule_id="s", created_at=clock.now())
        returned = Job(task_id="limited", created_at=clock.now())
        await store.add_jobs([blocker, held, returned])
        # held waits for schedule s's slot, so the newer job takes the limited task's slot
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [blocker.id, returned.id]
        await store.release_jobs(
            "me", [JobResult.for_job(blocker, JobOutcome.success, finished_at=clock.now())]
        )
        # now held waits for the limited task's slot
        assert await store.acquire_jobs("other", LEASE, 10) == []
        assert store.jobs_held_back

        await store.return_jobs("me", [returned])

        # the slot freed goes to the oldest job that may run: held, whose lane was held back
        [running] = await store.acquire_jobs("other", LEASE, 10)
        assert running.id == held.id
        await store.release_jobs(
            "other", [JobResult.for_job(running, JobOutcome.success, finished_at=clock.now())]
        )
        assert ids_of(await store.acquire_jobs("other", LEASE, 10)) == [returned.id]


async def test_a_returned_job_keeps_its_start_deadline(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock, recorder)
        await store.add_task(Task(id="task", job_executor="async"))
        job = Job(
            task_id="task",
            created_at=clock.now(),
            start_deadline=clock.now() + timedelta(seconds=10),
            result_expiration_time=timedelta(minutes=1),
        )
        await store.add_jobs([job])
        await store.return_jobs("me", await store.acquire_jobs("me", LEASE, 10))
        clock.advance(11)

        await store.cleanup()  # (which finds overdue jobs by their deadlines only)
        result = await store.get_job_result(job.id)
        assert await store.get_jobs() == []
    assert result is not None
    assert result.outcome is JobOutcome.missed_start_deadline
    assert [event.job_id for event in recorder.of_type(JobReleased)] == [job.id]


@pytest.mark.parametrize("meanwhile", ["nothing", "acquired again"])
async def test_jobs_are_returned_once_when_the_first_reply_is_lost(
    namespace: str, clock: FakeClock, recorder: EventRecorder, meanwhile: str
) -> None:
    # The retry gets the first attempt's reply: the returned jobs' JobAdded are published
    # (once), and a job the scheduler acquired again between the attempts stays acquired
    client = losing_client()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(
            stack, client, clock, recorder, prefix=namespace, retry_settings=QUICK_RETRIES
        )
        other = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async", max_running_jobs=2))
        jobs = [Job(task_id="task", created_at=clock.now()) for _ in range(3)]
        await store.add_jobs(jobs)
        taken = await store.acquire_jobs("me", LEASE, 10)
        assert ids_of(taken) == ids_of(jobs[:2])
        recorder.clear()
        script = script_of(store, "return_jobs")
        ran = 0
        reacquired: list[Job] = []

        def lose(args: tuple[Any, ...]) -> bool:
            nonlocal ran
            ran += is_call_of(script, args)
            return is_call_of(script, args) and ran == 1

        async def before(args: tuple[Any, ...]) -> None:
            # between the first attempt and the retry
            if meanwhile == "acquired again" and is_call_of(script, args) and ran == 1:
                reacquired.extend(await other.acquire_jobs("me", LEASE, 10))

        client.lose, client.before = lose, before
        await store.return_jobs("me", taken)
        client.lose, client.before = (lambda args: False), None
        assert client.lost == 1

        leases = {job.id: job.acquired_by for job in await store.get_jobs()}
        if meanwhile == "nothing":
            assert leases == dict.fromkeys(ids_of(jobs))
            assert ids_of(await store.acquire_jobs("other", LEASE, 10)) == ids_of(taken)
        else:
            assert ids_of(reacquired) == ids_of(taken)
            assert leases == {taken[0].id: "me", taken[1].id: "me", jobs[2].id: None}
            assert await store.acquire_jobs("other", LEASE, 10) == []  # both slots taken
    assert counts(recorder, JobAdded) == {job.id: 1 for job in taken}


async def test_a_client_that_retries_commands_itself_is_warned_about(
    namespace: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    retrying = aioredis.Redis.from_url(REDIS_URL, retry=Retry(NoBackoff(), 3))
    bounded = aioredis.Redis.from_url(
        REDIS_URL, socket_connect_timeout=5, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    async with AsyncExitStack() as stack:
        for client in (retrying, bounded):
            stack.push_async_callback(client.aclose)
        with caplog.at_level(logging.WARNING):
            await started_store(stack, retrying, clock, prefix=namespace)
            assert "it retries each command 3 times itself" in caplog.text
            caplog.clear()
            await started_store(stack, bounded, clock, prefix=namespace)
            await started_store(stack, url_for(namespace), clock)
            assert "RedisDataStore" not in caplog.text


async def test_a_job_that_cannot_be_restored_is_left_out_and_reported(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock, recorder)
        await store.add_task(Task(id="task", job_executor="async"))
        kept = timedelta(minutes=5)
        first, broken, last = (
            Job(task_id="task", args=args, created_at=clock.now(), result_expiration_time=kept)
            for args in [(), (Unrestorable(),), ()]
        )
        await store.add_jobs([first, broken, last])

        assert ids_of(await store.get_jobs()) == [first.id, last.id]
        assert await store.get_jobs([broken.id]) == []
        failed = recorder.of_type(JobDeserializationFailed)
        assert [event.job_id for event in failed] == [broken.id, broken.id]
        assert unrestorable.MESSAGE in failed[0].error
        assert await store.get_job_result(broken.id) is None  # it has not ended

        # no worker can run it: its acquisition ends it as an error, with the reason
        assert ids_of(await store.acquire_jobs("me", LEASE, 10)) == [first.id, last.id]
        result = await store.get_job_result(broken.id)
        assert result is not None
        assert result.outcome is JobOutcome.error
        assert isinstance(result.exception, DeserializationError)
        await store.release_jobs(
            "me",
            [
                JobResult.for_job(
                    first, JobOutcome.success, finished_at=clock.now(), return_value=Unrestorable()
                ),
                JobResult.for_job(last, JobOutcome.success, finished_at=clock.now()),
            ],
        )
        assert await store.get_jobs() == []
        # a return value that would not come back is kept as an error saying so (as on
        # every persistent store), not as a result nobody can read
        unreadable = await store.get_job_result(first.id)
        assert unreadable is not None
        assert unreadable.outcome is JobOutcome.error
        assert isinstance(unreadable.exception, SerializationError)
        assert "would not come back" in str(unreadable.exception)
        result = await store.get_job_result(last.id)
        assert result is not None
        assert result.outcome is JobOutcome.success


async def test_reading_some_jobs_reads_only_those_jobs(namespace: str, clock: FakeClock) -> None:
    sent: list[tuple[Any, ...]] = []

    class RecordingConnection(aioredis.Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            sent.append(args)  # pipelines pack each of their commands with this too
            return super().pack_command(*args)

    pool = aioredis.ConnectionPool.from_url(REDIS_URL, connection_class=RecordingConnection)
    client = aioredis.Redis.from_pool(pool)  # closes the pool when closed
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        store = await started_store(stack, client, clock, prefix=namespace)
        await store.add_task(Task(id="task", job_executor="async"))
        jobs = []
        for _ in range(300):
            jobs.append(Job(task_id="task", created_at=clock.now()))
            clock.advance(0.001)
        await store.add_jobs(jobs)
        sent.clear()

        assert await store.get_jobs([jobs[200].id, uuid4(), jobs[7].id]) == [jobs[7], jobs[200]]
    keys = {str(command[1]) for command in sent if len(command) > 1}
    assert f"{{{namespace}}}:jobs" not in keys
    assert len([command for command in sent if command[0] == "HMGET"]) == 3


async def test_jobs_queued_by_an_earlier_version_are_still_run(
    namespace: str, clock: FakeClock, recorder: EventRecorder
) -> None:
    # Earlier versions kept one queue ({prefix}:queue) and no fire time or result expiration
    # beside the record: such jobs are moved into lanes when a store starts, and released
    # (run or abandoned) with what their records say
    client = aioredis.Redis.from_url(REDIS_URL)
    root = f"{{{namespace}}}"
    fire_time = clock.now() - timedelta(seconds=5)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        writer = await started_store(stack, url_for(namespace), clock)
        await writer.add_task(Task(id="task", job_executor="async"))
        old_jobs = [
            Job(
                task_id="task",
                schedule_id="s",
                scheduled_fire_time=fire_time,
                created_at=clock.now(),
                result_expiration_time=timedelta(minutes=1),
            )
            for _ in range(2)
        ]
        await writer.add_jobs(old_jobs)
        lanes = [key for key in await prefix_keys(namespace) if ":lane" in key]
        for key in lanes:
            await client.delete(key)
        for sequence, job in enumerate(old_jobs, 1):
            await client.hdel(f"{root}:job:{job.id}", "fire_time", "result_ttl")
            await client.zadd(f"{root}:queue", {str(job.id): sequence})
            await client.zadd(f"{root}:jobs", {str(job.id): sequence})

        store = await started_store(stack, url_for(namespace), clock, recorder)
        assert not await client.exists(f"{root}:queue")
        assert not await client.exists(f"{root}:jobs")  # the index of all jobs they kept
        run, gone = await store.acquire_jobs("me", LEASE, 10)
        await store.release_jobs(
            "me", [JobResult.for_job(run, JobOutcome.success, finished_at=clock.now())]
        )
        clock.advance(LEASE.total_seconds() + 1)
        await store.cleanup()
        result = await store.get_job_result(gone.id)
    assert ids_of([run, gone]) == ids_of(old_jobs)
    assert result is not None
    assert (result.outcome, result.expires_at) == (
        JobOutcome.abandoned,
        clock.now() + timedelta(minutes=1),
    )
    released = {event.job_id: event for event in recorder.of_type(JobReleased)}
    assert {event.scheduled_fire_time for event in released.values()} == {fire_time}
    assert {event.schedule_id for event in released.values()} == {"s"}


#
# Clients given by the application; the default event broker
#


async def task_for_wakeups() -> str:
    return "done"


async def test_schedulers_built_from_clients_wake_each_other_at_once(
    namespace: str, clock: FakeClock
) -> None:
    # The clock never moves: the worker's idle poll never comes, only a wake-up does
    worker_client = aioredis.Redis.from_url(REDIS_URL)
    producer_client = aioredis.Redis.from_url(REDIS_URL)
    async with (
        AsyncScheduler(
            RedisDataStore(worker_client, prefix=namespace),
            role=SchedulerRole.worker,
            clock=clock,
        ) as worker,
        AsyncScheduler(
            RedisDataStore(producer_client, prefix=namespace),
            role=SchedulerRole.scheduler,
            clock=clock,
        ) as producer,
    ):
        assert isinstance(worker.event_broker, RedisEventBroker)
        assert worker.event_broker.channel == namespace
        await producer.configure_task("wakeups", func=task_for_wakeups)
        await worker.configure_task("wakeups", func=task_for_wakeups)
        await worker.start_in_background()
        await producer.start_in_background()
        with anyio.fail_after(5):
            for _ in range(2):  # the worker is asleep when the second job comes
                job_id = await producer.add_job("wakeups")
                assert (await producer.get_job_result(job_id)).return_value == "done"
    # the store and broker leave the application's clients open
    for client in (worker_client, producer_client):
        assert await client.ping()
        await client.aclose()


async def test_a_broker_built_from_a_client_relays_events(namespace: str) -> None:
    clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(2)]
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        brokers = [RedisEventBroker(client, channel=namespace) for client in clients]
        for broker in brokers:
            await broker.start(stack, logging.getLogger("test"))
        brokers[1].subscribe(recorder)
        await brokers[0].publish(TaskAdded(task_id="relayed"))
        [event] = await recorder.wait_for(TaskAdded)
        assert event.task_id == "relayed"
    for client in clients:
        assert await client.ping()
        await client.aclose()


@pytest.mark.parametrize("cls", [RedisDataStore, RedisEventBroker])
async def test_what_is_neither_a_url_nor_a_client_is_refused(cls: type[Any]) -> None:
    with pytest.raises(
        TypeError, match=r"redis:// URL or a redis\.asyncio\.Redis or RedisCluster"
    ):
        cls(6379)


#
# Redis Cluster: a real three-node cluster on loopback ports, started for these tests
#


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test Redis Cluster did not come up: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Start three cluster-enabled redis-server processes, join them, and stop them after."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server and redis-cli are not on PATH: no local Redis Cluster to test")
    folder: Path = tmp_path_factory.mktemp("redis-cluster")
    ports: list[int] = []
    candidates = iter(range(21000 + os.getpid() % 4000, 40000, 7))
    while len(ports) < 3:  # a node also listens on its port + 10000 (the cluster bus)
        port = next(candidates)
        if _port_is_free(port) and _port_is_free(port + 10000):
            ports.append(port)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
                        *("--cluster-enabled", "yes", "--cluster-config-file", f"{port}.conf"),
                        *("--save", "", "--appendonly", "no"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        def answers(port: int) -> bool:
            reply = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True)
            return reply.stdout.strip() == b"PONG"

        for port in ports:
            _wait_until(partial(answers, port), f"port {port} does not answer")
        subprocess.run(
            [
                *(cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def cluster_ok(port: int) -> bool:
            info = subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True)
            return b"cluster_state:ok" in info.stdout

        for port in ports:
            _wait_until(partial(cluster_ok, port), f"node {port} is not ready")
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cluster_client(ports: list[int]) -> aioredis.RedisCluster:
    return aioredis.RedisCluster(host="127.0.0.1", port=ports[0])


async def double(value: int) -> int:
    return value * 2


async def test_a_store_on_a_redis_cluster_works_wherever_its_slot_lives(
    redis_cluster: list[int], clock: FakeClock, recorder: EventRecorder
) -> None:
    client = cluster_client(redis_cluster)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        await client.initialize()
        # one prefix per node: each store's keys all live in its prefix's slot
        prefixes: dict[str, str] = {}
        for index in range(1000):
            prefix = f"cluster{index}"
            node = client.get_node_from_key(f"{{{prefix}}}")
            assert node is not None
            prefixes.setdefault(node.name, prefix)
            if len(prefixes) == len(redis_cluster):
                break
        assert len(prefixes) == 3
        for prefix in prefixes.values():
            recorder.clear()
            store = await started_store(stack, client, clock, recorder, prefix=prefix)
            await store.add_task(Task(id="task", job_executor="async", max_running_jobs=5))
            await store.add_schedule(due_schedule("s", clock), ConflictPolicy.exception)
            assert await store.get_next_schedule_run_time() == clock.now()
            [schedule] = await store.acquire_schedules("me", LEASE, 10)
            job = Job(task_id="task", schedule_id="s", created_at=clock.now())
            await move_on(store, schedule, None)
            await store.add_jobs([job])
            assert await store.get_jobs([job.id]) == [job]
            [acquired] = await store.acquire_jobs("me", LEASE, 10)
            await store.extend_acquired_leases("me", [acquired.id], LEASE)
            result = JobResult.for_job(
                acquired, JobOutcome.success, finished_at=clock.now(), return_value=42
            )
            await store.release_jobs("me", [result])
            await store.cleanup()
            await store.remove_schedules(["s"])
            await store.remove_task("task")
            assert await store.get_jobs() == []
            assert await store.get_schedules() == []
            assert len(recorder.of_type(JobReleased)) == 1
            keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*")]
            if keys:
                await client.delete(*keys)


async def test_schedulers_on_a_redis_cluster_client_run_jobs_and_wake_each_other(
    redis_cluster: list[int], clock: FakeClock
) -> None:
    prefix = f"c{uuid4().hex[:12]}"
    worker_client, producer_client = cluster_client(redis_cluster), cluster_client(redis_cluster)
    try:
        async with (
            AsyncScheduler(
                RedisDataStore(worker_client, prefix=prefix),
                role=SchedulerRole.worker,
                clock=clock,
            ) as worker,
            AsyncScheduler(
                RedisDataStore(producer_client, prefix=prefix),
                role=SchedulerRole.scheduler,
                clock=clock,
            ) as producer,
        ):
            assert isinstance(worker.event_broker, RedisEventBroker)
            await worker.configure_task("double", func=double)
            await producer.configure_task("double", func=double)
            await worker.start_in_background()
            await producer.start_in_background()
            with anyio.fail_after(10):
                for value in (1, 2):
                    job_id = await producer.add_job("double", args=[value])
                    result = await producer.get_job_result(job_id)
                    assert result.return_value == value * 2
    finally:
        keys = [key async for key in producer_client.scan_iter(match=f"{{{prefix}}}:*")]
        if keys:
            await producer_client.delete(*keys)
        await worker_client.aclose()
        await producer_client.aclose()
