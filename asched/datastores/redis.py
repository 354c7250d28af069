"""RedisDataStore: schedules, jobs and results in Redis (redis-py's asyncio client).

Every operation that hands out or takes back work is one Lua script, so it is atomic and one
round trip whatever the batch size: acquiring k schedules or jobs (with their leases and the
``max_running_jobs`` counters), releasing k results, adding k jobs. Keys live under a prefix:

- ``{prefix}:schedule:{id}`` hash (times, lease and the fields the scripts look at) and
  ``{prefix}:schedule_record:{id}`` string (the record): apart, the hash stays small enough
  for Redis's compact listpack encoding; ``{prefix}:schedules`` set of ids, ``{prefix}:due``
  sorted set (unleased, unpaused schedules by next run time), ``{prefix}:leased`` sorted
  set (leased ones by lease expiry);
- ``{prefix}:job:{id}`` hash, ``{prefix}:jobs`` (all, by creation), ``{prefix}:queue``
  (waiting, by creation), ``{prefix}:running`` (by lease expiry), ``{prefix}:deadlines``
  (waiting jobs with a start deadline); ``{prefix}:running_tasks`` and
  ``{prefix}:running_schedules`` hashes count running jobs;
- ``{prefix}:tasks`` and ``{prefix}:task_limits`` hashes; ``{prefix}:result:{id}`` strings
  that expire on their own.

Every key starts with ``{prefix}`` in braces, a Redis Cluster hash tag: all keys of a store
share one slot, as the multi-key scripts require. Times are integers of microseconds since
the epoch, from the store's clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from logging import Logger
from typing import Any
from uuid import UUID

import attrs
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_SCHEDULE_TIMES = ("next_fire_time", "next_run_time", "last_fire_time")


def _to_db(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _from_db(value: bytes | str | int | None) -> datetime | None:
    if value is None or value in (b"", ""):
        return None
    return _EPOCH + timedelta(microseconds=int(value))


def _to_json(value: Any) -> Any:
    """Return the JSON form of a record value that JSON has no type for."""
    if isinstance(value, datetime):
        return {"$t": _to_db(value)}
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"a record cannot hold a {type(value).__name__}: {value!r:.100}")


def _from_json(value: dict[str, Any]) -> Any:
    """Reverse :func:`_to_json` for one JSON object (any other object stays as it is)."""
    if len(value) == 1:
        if "$t" in value:
            return _from_db(value["$t"])
        if "$b" in value:
            return base64.b64decode(value["$b"])
    return value


# json's C encoder and decoder walk the record and call back only for the values JSON has no
# type for: several times cheaper than walking the record in Python first
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, default=_to_json)
_RECORD_DECODER = json.JSONDecoder(object_hook=_from_json)


def encode_record(record: dict[str, Any]) -> str:
    """Return a marshalled record as JSON text (bytes in base64, datetimes as integers)."""
    return _RECORD_ENCODER.encode(record)


def decode_record(text: bytes | str) -> dict[str, Any]:
    """Reverse :func:`encode_record`."""
    decoded: dict[str, Any] = _RECORD_DECODER.decode(
        text.decode() if isinstance(text, bytes) else text
    )
    return decoded


# KEYS: prefix. ARGV: now, lease expiry, limit, scheduler id
_ACQUIRE_SCHEDULES = """
local p = KEYS[1]
local now, untl, limit, sid = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':leased', '-inf', now)) do
  redis.call('ZREM', p..':leased', id)
  local key = p..':schedule:'..id
  redis.call('HDEL', key, 'acquired_by', 'acquired_until')
  local nrt = redis.call('HGET', key, 'next_run_time')
  if nrt and nrt ~= '' and redis.call('HGET', key, 'paused') == '0' then
    redis.call('ZADD', p..':due', nrt, id)
  end
end
local result = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':due', '-inf', now, 'LIMIT', 0, limit)) do
  local key = p..':schedule:'..id
  redis.call('ZREM', p..':due', id)
  redis.call('ZADD', p..':leased', untl, id)
  redis.call('HSET', key, 'acquired_by', sid, 'acquired_until', untl)
  local record = redis.call('GET', p..':schedule_record:'..id)
  table.insert(result, {record, redis.call('HGETALL', key)})
end
return result
"""

# KEYS: prefix. ARGV: id, policy (replace/other), task_id, paused, next_run_time or '',
# max_running_jobs or '', record, then field/value pairs of the hash
_ADD_SCHEDULE = """
local p, id, policy = KEYS[1], ARGV[1], ARGV[2]
local key = p..':schedule:'..id
local exists = redis.call('EXISTS', key)
if exists == 1 and policy ~= 'replace' then return 0 end
redis.call('DEL', key)
local fields = {}
for i = 8, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', key, 'task_id', ARGV[3], 'paused', ARGV[4], 'next_run_time', ARGV[5],
           'max_running_jobs', ARGV[6], unpack(fields))
redis.call('SET', p..':schedule_record:'..id, ARGV[7])
redis.call('SADD', p..':schedules', id)
redis.call('ZREM', p..':leased', id)
redis.call('ZREM', p..':due', id)
if ARGV[4] == '0' and ARGV[5] ~= '' then redis.call('ZADD', p..':due', ARGV[5], id) end
if exists == 1 then return 2 end
return 1
"""

# KEYS: prefix. ARGV: triples of job id, task id, schedule id or '', start deadline or '',
# record (5 per job)
_ADD_JOBS = """
local p = KEYS[1]
local added = {}
for i = 1, #ARGV, 5 do
  local id = ARGV[i]
  local key = p..':job:'..id
  if redis.call('EXISTS', key) == 0 then
    local seq = redis.call('INCR', p..':sequence')
    redis.call('HSET', key, 'task_id', ARGV[i+1], 'schedule_id', ARGV[i+2],
               'start_deadline', ARGV[i+3], 'record', ARGV[i+4], 'sequence', seq)
    redis.call('ZADD', p..':jobs', seq, id)
    redis.call('ZADD', p..':queue', seq, id)
    if ARGV[i+3] ~= '' then redis.call('ZADD', p..':deadlines', ARGV[i+3], id) end
    table.insert(added, id)
  end
end
return added
"""

# KEYS: prefix. ARGV: now, lease expiry, limit, worker id. Returns the acquired records, the
# records of jobs that missed their start deadline, and 1 if a limit held a job back
_ACQUIRE_JOBS = """
local p = KEYS[1]
local now, untl, limit, sid = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local acquired, missed = {}, {}
local offset, scanned, held = 0, 0, 0
local budget = limit * 4 + 100
while #acquired < limit and scanned < budget do
  local ids = redis.call('ZRANGE', p..':queue', offset, offset + limit - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    local key = p..':job:'..id
    local job = redis.call('HMGET', key, 'task_id', 'schedule_id', 'start_deadline', 'record')
    local task_id, schedule_id, deadline = job[1], job[2], job[3]
    if deadline and deadline ~= '' and tonumber(deadline) < now then
      redis.call('ZREM', p..':queue', id)
      redis.call('ZREM', p..':deadlines', id)
      redis.call('ZREM', p..':jobs', id)
      redis.call('DEL', key)
      table.insert(missed, job[4])
    else
      local allowed = true
      local task_limit = redis.call('HGET', p..':task_limits', task_id)
      if task_limit then
        local running = tonumber(redis.call('HGET', p..':running_tasks', task_id) or '0')
        if running >= tonumber(task_limit) then allowed = false end
      end
      if allowed and schedule_id ~= '' then
        local schedule_limit = redis.call('HGET', p..':schedule:'..schedule_id,
                                          'max_running_jobs')
        if schedule_limit and schedule_limit ~= '' then
          local running = tonumber(
            redis.call('HGET', p..':running_schedules', schedule_id) or '0')
          if running >= tonumber(schedule_limit) then allowed = false end
        end
      end
      if allowed then
        redis.call('ZREM', p..':queue', id)
        redis.call('ZREM', p..':deadlines', id)
        redis.call('ZADD', p..':running', untl, id)
        redis.call('HSET', key, 'acquired_by', sid, 'acquired_until', untl)
        redis.call('HINCRBY', p..':running_tasks', task_id, 1)
        if schedule_id ~= '' then
          redis.call('HINCRBY', p..':running_schedules', schedule_id, 1)
        end
        table.insert(acquired, job[4])
        if #acquired >= limit then break end
      else
        offset = offset + 1
        held = 1
      end
    end
  end
end
if scanned >= budget then held = 1 end
return {acquired, missed, held}
"""

# Frees a job's running slot and deletes it; shared by release and cleanup
_FINISH_JOB = """
local function finish_job(p, id, key)
  local job = redis.call('HMGET', key, 'task_id', 'schedule_id', 'record')
  redis.call('ZREM', p..':running', id)
  redis.call('ZREM', p..':jobs', id)
  redis.call('HINCRBY', p..':running_tasks', job[1], -1)
  if job[2] ~= '' then redis.call('HINCRBY', p..':running_schedules', job[2], -1) end
  redis.call('DEL', key)
  return job[3]
end
"""

# KEYS: prefix. ARGV: worker id, then triples of job id, result record, TTL in ms (an empty
# record: the job keeps no result)
_RELEASE_JOBS = (
    _FINISH_JOB
    + """
local p, sid = KEYS[1], ARGV[1]
local released = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local key = p..':job:'..id
  if redis.call('HGET', key, 'acquired_by') == sid then
    table.insert(released, finish_job(p, id, key))
    if ARGV[i+1] ~= '' then  -- a kept result
      redis.call('SET', p..':result:'..id, ARGV[i+1], 'PX', ARGV[i+2])
    end
  end
end
return released
"""
)

# KEYS: prefix. ARGV: now
_CLEANUP = (
    _FINISH_JOB
    + """
local p, now = KEYS[1], tonumber(ARGV[1])
local abandoned, overdue = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':running', '-inf', now)) do
  local key = p..':job:'..id
  local owner = redis.call('HGET', key, 'acquired_by')
  local record = finish_job(p, id, key)
  if record then table.insert(abandoned, {owner or '', record}) end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':deadlines', '-inf', '(' .. now)) do
  local key = p..':job:'..id
  local record = redis.call('HGET', key, 'record')
  redis.call('ZREM', p..':deadlines', id)
  redis.call('ZREM', p..':queue', id)
  redis.call('ZREM', p..':jobs', id)
  redis.call('DEL', key)
  if record then table.insert(overdue, record) end
end
return {abandoned, overdue}
"""
)

# KEYS: prefix. ARGV: worker id, lease expiry, job ids...
_EXTEND_LEASES = """
local p, sid, untl = KEYS[1], ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local key = p..':job:'..ARGV[i]
  if redis.call('HGET', key, 'acquired_by') == sid then
    redis.call('HSET', key, 'acquired_until', untl)
    redis.call('ZADD', p..':running', untl, ARGV[i])
  end
end
return 0
"""

# KEYS: prefix. ARGV: scheduler id, then per update: id, next_fire_time, next_run_time,
# last_fire_time ('' = None), job count, then per job the 5 _ADD_JOBS values
_RELEASE_SCHEDULES = """
local p, sid = KEYS[1], ARGV[1]
local owned = {}
local i = 2
while i <= #ARGV do
  local id, nft, nrt, lft, njobs = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], tonumber(ARGV[i+4])
  local key = p..':schedule:'..id
  i = i + 5
  if redis.call('HGET', key, 'acquired_by') == sid then
    table.insert(owned, {id, redis.call('HGET', key, 'task_id')})
    for j = i, i + (njobs - 1) * 5, 5 do
      local jkey = p..':job:'..ARGV[j]
      if redis.call('EXISTS', jkey) == 0 then
        local seq = redis.call('INCR', p..':sequence')
        redis.call('HSET', jkey, 'task_id', ARGV[j+1], 'schedule_id', ARGV[j+2],
                   'start_deadline', ARGV[j+3], 'record', ARGV[j+4], 'sequence', seq)
        redis.call('ZADD', p..':jobs', seq, ARGV[j])
        redis.call('ZADD', p..':queue', seq, ARGV[j])
        if ARGV[j+3] ~= '' then redis.call('ZADD', p..':deadlines', ARGV[j+3], ARGV[j]) end
      end
    end
    redis.call('ZREM', p..':leased', id)
    if nft == '' then
      redis.call('DEL', key, p..':schedule_record:'..id)
      redis.call('SREM', p..':schedules', id)
      redis.call('ZREM', p..':due', id)
    else
      redis.call('HDEL', key, 'acquired_by', 'acquired_until')
      redis.call('HSET', key, 'next_fire_time', nft, 'next_run_time', nrt, 'last_fire_time', lft)
      if redis.call('HGET', key, 'paused') == '0' and nrt ~= '' then
        redis.call('ZADD', p..':due', nrt, id)
      end
    end
  end
  i = i + njobs * 5
end
return owned
"""


class LuaScript:
    """A Lua script run with EVALSHA on one key, sent in full only if the server lacks it.

    redis-py's ``Script`` objects cost about a third more client CPU per call than a plain
    ``execute_command("EVALSHA", ...)``, and every job passes through three scripts.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: aioredis.Redis, key: str, *args: Any) -> Any:
        """Run the script on ``key`` with ``args``; return its reply."""
        execute: Callable[..., Awaitable[Any]] = client.execute_command
        try:
            return await execute("EVALSHA", self.sha, 1, key, *args)
        except NoScriptError:
            # a restarted or flushed server: EVAL runs the script and caches it again
            return await execute("EVAL", self.source, 1, key, *args)


class RedisDataStore(BaseExternalDataStore):
    """Keeps tasks, schedules, jobs and results in Redis.

    :param url_or_client: a ``redis://`` URL (``?prefix=name`` picks the key prefix) or a
        ``redis.asyncio.Redis`` client the application already has (not closed by the store)
    :param prefix: the prefix of every key of this store
    :param serializer: turns job arguments, return values and exceptions into bytes
    :param retry_settings: how to retry after transient connection errors
    """

    def __init__(
        self,
        url_or_client: str | aioredis.Redis,
        *,
        prefix: str | None = None,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
    ) -> None:
        super().__init__(serializer=serializer, retry_settings=retry_settings)
        self._url: str | None = None
        self._client: aioredis.Redis | None = None
        if isinstance(url_or_client, str):
            self._url, options = split_url(url_or_client)
            if prefix is None:
                prefix = options.get("prefix")
        elif isinstance(url_or_client, aioredis.Redis):
            self._client = url_or_client
        else:
            raise TypeError(
                f"RedisDataStore: expected a redis:// URL or a redis.asyncio.Redis client, got "
                f"{url_or_client!r}"
            )
        self.prefix = "asched" if prefix is None else prefix
        if not self.prefix or any(c.isspace() or c in "{}" for c in self.prefix):
            raise ValueError(
                f"RedisDataStore: prefix must be a non-empty string without spaces or braces, "
                f"got {self.prefix!r}"
            )
        # A hash tag: every key of the store hashes to one Redis Cluster slot, which the
        # multi-key Lua scripts need
        self._root = "{" + self.prefix + "}"
        self._clock = Clock()
        self._event_broker: EventBroker | None = None
        self._scripts: dict[str, LuaScript] = {}
        self._job_writer = WriteBatcher(self._write_jobs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(
            exc, (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError)
        )

    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Connect and register the scripts; see :meth:`DataStore.start`."""
        self._event_broker = event_broker
        self._logger = logger
        self._clock = clock
        if self._client is None:
            assert self._url is not None
            self._client = aioredis.Redis.from_url(
                self._url, health_check_interval=10, client_name=f"asched-{self.prefix}"
            )
            exit_stack.push_async_callback(self._close_client)
        client = self._client
        self._scripts = {
            name: LuaScript(source)
            for name, source in {
                "acquire_schedules": _ACQUIRE_SCHEDULES,
                "add_schedule": _ADD_SCHEDULE,
                "release_schedules": _RELEASE_SCHEDULES,
                "add_jobs": _ADD_JOBS,
                "acquire_jobs": _ACQUIRE_JOBS,
                "release_jobs": _RELEASE_JOBS,
                "cleanup": _CLEANUP,
                "extend_leases": _EXTEND_LEASES,
            }.items()
        }
        async for attempt in self._retrying():
            with attempt:
                await client.ping()

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisDataStore: the store has not been started")
        return self._client

    async def _call(self, script: str, *args: Any) -> Any:
        run_script, client, root = self._scripts[script], self._redis, self._root
        return await self._with_retries(lambda: run_script(client, root, *args))

    async def _publish(self, events: Iterable[Event]) -> None:
        if self._event_broker is not None:
            for event in events:
                await self._event_broker.publish(event)

    def _key(self, *parts: str) -> str:
        return ":".join((self._root, *parts))

    #
    # Tasks
    #

    async def add_task(self, task: Task) -> None:
        """Add or replace a task; see :meth:`DataStore.add_task`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._redis.pipeline(transaction=True) as pipeline:
                    pipeline.hset(self._key("tasks"), task.id, json.dumps(task.marshal()))
                    if task.max_running_jobs is None:
                        pipeline.hdel(self._key("task_limits"), task.id)
                    else:
                        pipeline.hset(self._key("task_limits"), task.id, task.max_running_jobs)
                    created, _ = await pipeline.execute()
        event_class = TaskAdded if created else TaskUpdated
        await self._publish([event_class(task_id=task.id)])

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""
        async for attempt in self._retrying():
            with attempt:
                async with self._redis.pipeline(transaction=True) as pipeline:
                    pipeline.hdel(self._key("tasks"), task_id)
                    pipeline.hdel(self._key("task_limits"), task_id)
                    removed, _ = await pipeline.execute()
        if not removed:
            raise TaskLookupError(task_id)
        await self._publish([TaskRemoved(task_id=task_id)])

    async def get_task(self, task_id: str) -> Task:
        """Return a task; see :meth:`DataStore.get_task`."""
        async for attempt in self._retrying():
            with attempt:
                data = await self._redis.hget(self._key("tasks"), task_id)
        if data is None:
            raise TaskLookupError(task_id)
        return Task.unmarshal(json.loads(data))

    async def get_tasks(self) -> list[Task]:
        """Return all tasks sorted by id."""
        async for attempt in self._retrying():
            with attempt:
                values = await self._redis.hvals(self._key("tasks"))
        return sorted((Task.unmarshal(json.loads(value)) for value in values), key=lambda t: t.id)

    #
    # Schedules
    #

    def _schedule_fields(self, schedule: Schedule) -> list[Any]:
        record = schedule.marshal(self.serializer)
        times = {name: record.pop(name) for name in _SCHEDULE_TIMES}
        for name in ("acquired_by", "acquired_until"):
            record.pop(name)
        fields: list[Any] = [encode_record(record)]
        for name, value in times.items():
            fields += [name, "" if value is None else _to_db(value)]
        return fields

    async def _schedules_from_replies(self, replies: Iterable[Any]) -> list[Schedule]:
        """Restore schedules from (record, hash fields) pairs; missing ones are skipped."""
        schedules: list[Schedule] = []
        events: list[Event] = []
        for raw_record, raw_fields in replies:
            if not raw_fields:
                continue  # removed between the reads
            fields = _hash_dict(raw_fields)
            # schedules written before records moved out of the hash keep theirs inside it
            raw_record = raw_record or fields.get("record")
            if not raw_record:
                continue
            record = decode_record(raw_record)
            for name in _SCHEDULE_TIMES:
                record[name] = _from_db(fields.get(name))
            acquired_by = fields.get("acquired_by")
            record["acquired_by"] = acquired_by.decode() if acquired_by else None
            record["acquired_until"] = _from_db(fields.get("acquired_until"))
            try:
                schedules.append(Schedule.unmarshal(self.serializer, record))
            except DeserializationError as exc:
                self._logger.error("Cannot restore schedule %r: %s", record["id"], exc)
                events.append(
                    ScheduleDeserializationFailed(schedule_id=record["id"], error=str(exc))
                )
        await self._publish(events)
        return schedules

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; see :meth:`DataStore.add_schedule`."""
        schedule = attrs.evolve(schedule, acquired_by=None, acquired_until=None)
        fields = self._schedule_fields(schedule)
        next_run_time = _to_db(schedule.next_run_time)
        outcome = await self._call(
            "add_schedule",
            schedule.id,
            conflict_policy.value,
            schedule.task_id,
            "1" if schedule.paused else "0",
            "" if next_run_time is None else next_run_time,
            "" if schedule.max_running_jobs is None else schedule.max_running_jobs,
            *fields,
        )
        if outcome == 0:
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
            return
        event_class = ScheduleAdded if outcome == 1 else ScheduleUpdated
        await self._publish(
            [
                event_class(
                    schedule_id=schedule.id,
                    task_id=schedule.task_id,
                    next_fire_time=schedule.next_fire_time,
                )
            ]
        )

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        id_list = list(ids)
        if not id_list:
            return
        async for attempt in self._retrying():
            with attempt:
                async with self._redis.pipeline(transaction=True) as pipeline:
                    for schedule_id in id_list:
                        pipeline.hget(self._key("schedule", schedule_id), "task_id")
                        pipeline.delete(
                            self._key("schedule", schedule_id),
                            self._key("schedule_record", schedule_id),
                        )
                        pipeline.srem(self._key("schedules"), schedule_id)
                        pipeline.zrem(self._key("due"), schedule_id)
                        pipeline.zrem(self._key("leased"), schedule_id)
                    replies = await pipeline.execute()
        events: list[Event] = []
        for index, schedule_id in enumerate(id_list):
            task_id, deleted = replies[index * 5], replies[index * 5 + 1]
            if deleted:
                events.append(
                    ScheduleRemoved(
                        schedule_id=schedule_id, task_id=task_id.decode(), finished=finished
                    )
                )
        await self._publish(events)

    async def get_schedules(self, ids: Iterable[str] | None = None) -> list[Schedule]:
        """Return schedules sorted by id; see :meth:`DataStore.get_schedules`."""
        async for attempt in self._retrying():
            with attempt:
                if ids is None:
                    members = await self._redis.smembers(self._key("schedules"))
                    id_list = sorted(_text(member) for member in members)
                else:
                    id_list = sorted(set(ids))
                async with self._redis.pipeline(transaction=False) as pipeline:
                    for schedule_id in id_list:
                        pipeline.get(self._key("schedule_record", schedule_id))
                        pipeline.hgetall(self._key("schedule", schedule_id))
                    replies = await pipeline.execute()
        return await self._schedules_from_replies(zip(replies[::2], replies[1::2], strict=True))

    async def acquire_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Schedule]:
        """Lease due schedules; see :meth:`DataStore.acquire_schedules`."""
        now = self._clock.now()
        replies = await self._call(
            "acquire_schedules",
            _to_db(now),
            _to_db(now + lease_duration),
            limit,
            scheduler_id,
        )
        return await self._schedules_from_replies(replies)

    def _job_args(self, job: Job) -> list[Any]:
        deadline = _to_db(job.start_deadline)
        record = job.marshal(self.serializer)
        record["id"] = job_id = str(job.id)  # one str() for the key and the record
        return [
            job_id,
            job.task_id,
            job.schedule_id or "",
            "" if deadline is None else deadline,
            encode_record(record),
        ]

    async def release_schedules(
        self, scheduler_id: str, updates: Sequence[ScheduleUpdate]
    ) -> None:
        """Apply scheduler decisions; see :meth:`DataStore.release_schedules`."""
        if not updates:
            return
        now = self._clock.now()
        args: list[Any] = [scheduler_id]
        for update in updates:
            times = (update.next_fire_time, update.next_run_time, update.last_fire_time)
            args.append(update.schedule_id)
            args.extend("" if value is None else _to_db(value) for value in times)
            args.append(len(update.jobs))
            for job in update.jobs:
                args.extend(self._job_args(job))
        owned = {
            schedule_id.decode(): task_id.decode()
            for schedule_id, task_id in await self._call("release_schedules", *args)
        }

        events: list[Event] = []
        for update in updates:
            if update.schedule_id not in owned:
                self._logger.debug(
                    "Dropped the update of schedule %r: its lease was lost", update.schedule_id
                )
                continue
            missed = [
                (job, JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now))
                for job in update.missed_jobs
            ]
            for job, result in missed:
                await self._keep_result(result, job)
            events += schedule_release_events(
                scheduler_id, update, owned[update.schedule_id], missed
            )
        await self._publish(events)

    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time a schedule may be acquired; see the base class."""
        async for attempt in self._retrying():
            with attempt:
                async with self._redis.pipeline(transaction=False) as pipeline:
                    pipeline.zrange(self._key("due"), 0, 0, withscores=True)
                    pipeline.zrange(self._key("leased"), 0, 0, withscores=True)
                    due, leased = await pipeline.execute()
        scores = [int(entries[0][1]) for entries in (due, leased) if entries]
        return _from_db(min(scores)) if scores else None

    #
    # Jobs
    #

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Queue jobs; see :meth:`DataStore.add_jobs`."""
        if not jobs:
            return
        # marshalled here, so that a job that cannot be serialized fails its own caller only
        await self._job_writer.submit([self._job_args(job) for job in jobs])
        await self._publish(
            JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            for job in jobs
        )

    async def _write_jobs(self, job_args: list[list[Any]]) -> None:
        """Add the jobs of concurrent :meth:`add_jobs` calls with one script call."""
        await self._call("add_jobs", *[value for args in job_args for value in args])

    async def _jobs_from_records(self, records: Iterable[Any]) -> list[Job]:
        jobs: list[Job] = []
        events: list[Event] = []
        for raw in records:
            record = decode_record(raw)
            record["id"] = UUID(record["id"])
            try:
                jobs.append(Job.unmarshal(self.serializer, record))
            except DeserializationError as exc:
                self._logger.error("Cannot restore job %s: %s", record["id"], exc)
                events.append(JobDeserializationFailed(job_id=record["id"], error=str(exc)))
        await self._publish(events)
        return jobs

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class."""
        async for attempt in self._retrying():
            with attempt:
                ordered = [
                    _text(member) for member in await self._redis.zrange(self._key("jobs"), 0, -1)
                ]
                if ids is not None:
                    wanted = {str(job_id) for job_id in ids}
                    ordered = [job_id for job_id in ordered if job_id in wanted]
                async with self._redis.pipeline(transaction=False) as pipeline:
                    for job_id in ordered:
                        pipeline.hmget(
                            self._key("job", job_id), "record", "acquired_by", "acquired_until"
                        )
                    replies = await pipeline.execute()
        jobs: list[Job] = []
        for record, acquired_by, acquired_until in replies:
            if record is None:
                continue
            (job,) = await self._jobs_from_records([record])
            jobs.append(
                attrs.evolve(
                    job,
                    acquired_by=acquired_by.decode() if acquired_by else None,
                    acquired_until=_from_db(acquired_until),
                )
            )
        return jobs

    async def acquire_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> list[Job]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""
        now = self._clock.now()
        acquired_records, missed_records, held_back = await self._call(
            "acquire_jobs", _to_db(now), _to_db(now + lease_duration), limit, scheduler_id
        )
        self._jobs_held_back = bool(held_back)
        jobs = await self._jobs_from_records(acquired_records)
        missed = await self._jobs_from_records(missed_records)
        for job in missed:
            await self._keep_result(
                JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now), job
            )
        events = job_acquisition_events(scheduler_id, now, jobs, missed)
        await self._publish(events)
        return jobs

    def _ttl_ms(self, result: JobResult) -> int:
        return max(1, (result.expires_at - self._clock.now()) // timedelta(milliseconds=1))

    async def _keep_result(self, result: JobResult, job: Job) -> None:
        """Store the result of a job ended outside release_jobs (missed, abandoned)."""
        if job.result_expiration_time > timedelta(0):
            record = encode_record(result.marshal(self.serializer))
            async for attempt in self._retrying():
                with attempt:
                    await self._redis.set(
                        self._key("result", str(job.id)), record, px=self._ttl_ms(result)
                    )

    async def release_jobs(self, scheduler_id: str, results: Sequence[JobResult]) -> None:
        """Finish acquired jobs; see :meth:`DataStore.release_jobs`."""
        if not results:
            return
        kept_results: dict[UUID, JobResult] = {}
        args: list[Any] = [scheduler_id]
        for result in results:
            kept, record = marshal_job_result(self.serializer, result)
            kept_results[result.job_id] = kept
            job_id = str(result.job_id)
            if record is None:  # not kept: the job goes, nothing is stored
                args += [job_id, "", 0]
            else:
                record["job_id"] = job_id  # one str() for both uses
                args += [job_id, encode_record(record), self._ttl_ms(kept)]
        records = await self._call("release_jobs", *args)
        released = [ReleasedJob.from_record(decode_record(record)) for record in records]
        await self._publish(
            job_released_event(scheduler_id, job, kept_results[job.id]) for job in released
        )

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""
        async for attempt in self._retrying():
            with attempt:
                data = await self._redis.get(self._key("result", str(job_id)))
        if data is None:
            return None
        record = decode_record(data)
        record["job_id"] = UUID(record["job_id"])
        result = JobResult.unmarshal(self.serializer, record)
        return result if result.expires_at > self._clock.now() else None

    async def extend_acquired_leases(
        self, scheduler_id: str, job_ids: Iterable[UUID], lease_duration: timedelta
    ) -> None:
        """Extend job leases; see :meth:`DataStore.extend_acquired_leases`."""
        id_list = [str(job_id) for job_id in job_ids]
        if id_list:
            until = _to_db(self._clock.now() + lease_duration)
            await self._call("extend_leases", scheduler_id, until, *id_list)

    async def cleanup(self) -> None:
        """Release abandoned and overdue jobs; see the base class (results expire by TTL)."""
        now = self._clock.now()
        abandoned, overdue = await self._call("cleanup", _to_db(now))
        abandoned_jobs = [
            attrs.evolve(job, acquired_by=_text(owner) or None)
            for owner, record in abandoned
            for job in await self._jobs_from_records([record])
        ]
        overdue_jobs = await self._jobs_from_records(overdue)
        for job in abandoned_jobs:
            await self._keep_result(
                JobResult.for_job(job, JobOutcome.abandoned, finished_at=now), job
            )
        for job in overdue_jobs:
            await self._keep_result(
                JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now), job
            )
        events = cleanup_events(now, abandoned_jobs, overdue_jobs, self._logger)
        await self._publish(events)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash_dict(raw: Any) -> dict[str, bytes]:
    """HGETALL replies: a dict from the client, a flat list from a Lua script."""
    if isinstance(raw, dict):
        return {key.decode(): value for key, value in raw.items()}
    return {raw[index].decode(): raw[index + 1] for index in range(0, len(raw), 2)}


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Split asched's own query parameters (``prefix``, ``channel``) off a Redis URL."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    ours: dict[str, str] = {key: query.pop(key) for key in ("prefix", "channel") if key in query}
    return urlunsplit(parts._replace(query=urlencode(query))), ours
