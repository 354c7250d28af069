"""Raw floors for the persistent stores: the store's own statements in a bare client loop.

``python -m benchmarks.floors '<json spec>'`` prints one JSON object. Cases:

- ``redis``: ``jobs`` jobs through the Redis store's three Lua scripts (add, acquire, release)
  sent as the store sends them (EVALSHA on the store's pipelined connection) and nothing
  else: no scheduler, no events, no serialization. ``batch`` jobs per call (1: a job at a time, as
  jobs trickle in).
- ``postgresql``: the same with asyncpg on the PostgreSQL store's tables: an INSERT, an
  acquiring transaction (``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE``) and a ``DELETE``
  per batch, without the store's ``max_running_jobs`` bookkeeping.

What a scheduler adds on top of these loops (events, serialization, the worker's tasks) is
its own cost; a scheduler cannot beat the floor of its round trips.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from logging import getLogger
from typing import Any
from uuid import uuid4

import anyio

from asched._clock import Clock
from asched.datastores.postgresql import PostgreSQLDataStore
from asched.eventbrokers import LocalEventBroker

#: a job record as the Redis scripts hand it out (they look at none of its fields)
_REDIS_RECORD = json.dumps({"result_expiration_time": 0})


async def redis_floor(spec: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from asched.datastores import redis as redis_store
    from asched.datastores._redis_connection import PipelinedConnection

    count, batch = spec["jobs"], spec.get("batch", 1)
    prefix = "{asched_floor}"
    client = aioredis.Redis.from_url(spec.get("url", "redis://127.0.0.1:6379/0"))
    connection = PipelinedConnection.of_client(client)
    assert connection is not None
    scripts = {
        name: redis_store.LuaScript(source, repeat=repeat, helpers=helpers)
        for name in ("add_jobs", "acquire_jobs", "release_jobs")
        for source, repeat, helpers in [redis_store._SCRIPTS[name]]
    }
    tokens = iter(range(sys.maxsize))

    async def call(name: str, *args: Any) -> Any:
        # as the store calls it: a token per call if the script takes one, with a TTL
        script = scripts[name]
        if script.takes_token:
            args = (f"floor:{next(tokens)}", 60, *args)
        return await script(connection.execute, prefix, *args)

    await _delete_keys(client, prefix)
    try:
        start = time.perf_counter()
        for _ in range(count // batch):
            args: list[Any] = []
            for _ in range(batch):
                args += [str(uuid4()), "task", "", "", "", 0, _REDIS_RECORD]
            await call("add_jobs", *args)
            now = int(time.time() * 1e6)
            acquired, _missed, _held = await call(
                "acquire_jobs", now, now + 30_000_000, batch, "floor"
            )
            assert len(acquired) == batch, acquired
            release_args: list[Any] = ["floor"]
            for job_id in args[::7]:
                release_args += [job_id, "", 1]
            await call("release_jobs", *release_args)
        elapsed = time.perf_counter() - start
    finally:
        await _delete_keys(client, prefix)
        await connection.aclose()
        await client.aclose()
    return {"jobs_per_second": count / elapsed}


async def _delete_keys(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)


async def postgresql_floor(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncpg

    count, batch = spec["jobs"], spec.get("batch", 1)
    url = spec.get("url", "postgresql://postgres@127.0.0.1:5432/test")
    schema = "asched_floor"
    # let the store create its schema, then use its tables with a bare connection
    async with AsyncExitStack() as stack:
        broker = LocalEventBroker()
        await broker.start(stack, getLogger("floor"))
        await PostgreSQLDataStore(url, schema=schema).start(
            stack, broker, getLogger("floor"), Clock()
        )
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"TRUNCATE {schema}.jobs")
        insert = await connection.prepare(
            f"""
            INSERT INTO {schema}.jobs (id, task_id, args, kwargs, jitter,
                                       result_expiration_time, created_at)
            SELECT id, 'task', '\\x'::bytea, '\\x'::bytea, 0, 0, $2
            FROM unnest($1::uuid[]) AS id
            """
        )
        select = await connection.prepare(
            f"""
            SELECT id FROM {schema}.jobs WHERE acquired_by IS NULL
            ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
            """
        )
        update = await connection.prepare(
            f"""
            UPDATE {schema}.jobs SET acquired_by = 'floor', acquired_until = $2
            WHERE id = ANY($1::uuid[]) RETURNING *
            """
        )
        delete = await connection.prepare(
            f"DELETE FROM {schema}.jobs WHERE id = ANY($1::uuid[]) AND acquired_by = 'floor' "
            "RETURNING *"
        )
        start = time.perf_counter()
        for _ in range(count // batch):
            now = datetime.now(timezone.utc)
            await insert.fetch([uuid4() for _ in range(batch)], now)
            async with connection.transaction():
                ids = [row["id"] for row in await select.fetch(batch)]
                acquired = await update.fetch(ids, now + timedelta(seconds=30))
            assert len(acquired) == batch
            await delete.fetch(ids)
        elapsed = time.perf_counter() - start
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await connection.close()
    return {"jobs_per_second": count / elapsed}


CASES = {"redis": redis_floor, "postgresql": postgresql_floor}


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(anyio.run(CASES[spec["case"]], spec)))


if __name__ == "__main__":
    main()
