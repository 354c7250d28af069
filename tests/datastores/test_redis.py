"""Redis specifics: key prefixes, real connection kills, broker resubscription."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import anyio
import pytest
import redis.asyncio as aioredis

from asched import AsyncScheduler
from asched._enums import ConflictPolicy
from asched._structures import Job, Schedule, ScheduleUpdate, Task
from asched.datastores.redis import RedisDataStore
from asched.eventbrokers import LocalEventBroker
from tests.backends.redis import delete_keys, kill_connections, url_for
from tests.clock import FakeClock
from tests.datastores import due_schedule
from tests.services import REDIS_URL, require_redis

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


async def started_store(stack: AsyncExitStack, url: str, clock: FakeClock) -> RedisDataStore:
    store = RedisDataStore(url)
    broker = LocalEventBroker()
    await broker.start(stack, logging.getLogger("test"))
    await store.start(stack, broker, logging.getLogger("test"), clock)
    return store


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


async def test_scripts_are_sent_again_after_the_server_forgets_them(
    namespace: str, clock: FakeClock
) -> None:
    # a restarted server (or SCRIPT FLUSH) has no cached scripts: the store must send them
    # again, not fail (other clients' scripts are reloaded on demand the same way)
    async with AsyncExitStack() as stack:
        store = await started_store(stack, url_for(namespace), clock)
        await store.add_task(Task(id="task", job_executor="async"))
        for _ in range(2):  # forgotten, then sent again; the second round starts cached
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                await client.script_flush()
            finally:
                await client.aclose()
            job = Job(task_id="task", created_at=clock.now())
            await store.add_jobs([job])
            acquired = await store.acquire_jobs("worker", timedelta(minutes=1), 5)
            assert [acquired_job.id for acquired_job in acquired] == [job.id]


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
