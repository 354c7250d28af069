"""RedisDataStore: schedules, jobs and results in Redis (redis-py's asyncio client).

Every operation that changes the store is one Lua script, so it is atomic and one round trip
whatever the batch size (acquisitions take one per 1,000 items): acquiring k schedules or jobs
(with their leases and the ``max_running_jobs`` counters), releasing k results, adding k jobs,
returning k unstarted jobs to their places. A script that a repeat would make act twice takes a
token, random per operation and the same for all its attempts, and keeps what a repeat needs: a
retry after a lost reply gets that instead of acting again. Keys live under a prefix:

- ``{prefix}:schedule:{id}`` hash (times, lease, ``revision`` and the fields the scripts
  look at) and ``{prefix}:schedule_record:{id}`` string (the record): apart, the hash stays
  small enough for Redis's compact listpack encoding; a hash without ``revision`` (stored by
  an earlier version) is at revision 0; ``{prefix}:schedules`` set of ids, ``{prefix}:due``
  sorted set (unleased, unpaused schedules by next run time), ``{prefix}:leased`` sorted
  set (leased ones by lease expiry);
- ``{prefix}:job:{id}`` hash, ``{prefix}:sequence`` (numbers jobs as they come),
  ``{prefix}:running`` (by lease expiry), ``{prefix}:deadlines`` (waiting jobs with a start
  deadline);
- waiting jobs in lanes, one per (task, schedule): ``{prefix}:lane:{lane}`` sorted sets,
  ``{prefix}:lanes`` (the lanes that may run, by their first job), and the sets of lanes
  held back by a limit, ``{prefix}:blocked_task:{id}``, ``{prefix}:blocked_schedule:{id}``
  and ``{prefix}:blocked``; ``{prefix}:running_tasks`` (tasks with a limit only) and
  ``{prefix}:running_schedules`` hashes count running jobs;
- ``{prefix}:tasks`` and ``{prefix}:task_limits`` hashes; ``{prefix}:result:{id}`` and
  ``{prefix}:reply:{token}`` strings that expire on their own.

Every key starts with ``{prefix}`` in braces, a Redis Cluster hash tag: all keys of a store
share one slot, as the multi-key scripts require. Times are integers of microseconds since
the epoch, from the store's clock.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from logging import Logger
from typing import Any, Literal, TypeAlias, TypeVar
from uuid import UUID

import attrs
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, stop_after_attempt, stop_before_delay

from .._clock import Clock
from .._enums import ConflictPolicy, JobOutcome
from .._event_loops import require_asyncio
from .._exceptions import (
    ConflictingIdError,
    DeserializationError,
    StaleScheduleError,
    TaskLookupError,
)
from .._ids import random_uuid
from .._redis_client import RedisClient
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
from ._redis_connection import PipelinedConnection
from ._write_batcher import WriteBatcher
from .base import (
    BaseExternalDataStore,
    ReleasedJob,
    RetrySettings,
    UnreadableJob,
    job_acquisition_events,
    job_released_event,
    marshal_job_result,
    schedule_release_events,
    schedule_written_event,
)

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_SCHEDULE_TIMES = ("next_fire_time", "next_run_time", "last_fire_time")


def _to_db(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _to_arg(value: datetime | None) -> int | str:
    """Return a time as the scripts take it ('' for none)."""
    microseconds = _to_db(value)
    return "" if microseconds is None else microseconds


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


# Lua functions shared by the scripts (each script defines those it calls, after
# "local p = KEYS[1]"). KEYS[1] is always the braced prefix; every other key is built from it,
# so all of them share its Redis Cluster slot.
#
# Queued jobs wait in lanes, one sorted set per (task, schedule) by sequence number, because
# max_running_jobs limits apply per task and per schedule: {prefix}:lanes holds the lanes that
# may run, by the sequence number of their first job, and a lane whose limit is reached is set
# aside whole (in {prefix}:blocked_task:{id} or {prefix}:blocked_schedule:{id}, and in
# {prefix}:blocked) until a job of that task or schedule ends or the limit changes. An
# acquisition so never walks past the backlog of a saturated task.
_LUA_HELPERS = {
    # a leased schedule back among the due ones (unless paused), as it was
    "unlease": """
local function unlease(id)
  local key = p..':schedule:'..id
  redis.call('ZREM', p..':leased', id)
  redis.call('HDEL', key, 'acquired_by', 'acquired_until')
  local nrt = redis.call('HGET', key, 'next_run_time')
  if nrt and nrt ~= '' and redis.call('HGET', key, 'paused') == '0' then
    redis.call('ZADD', p..':due', nrt, id)
  end
end
""",
    "lane_of": """
local function lane_of(task_id, schedule_id)
  return #task_id .. ':' .. task_id .. ':' .. schedule_id
end
""",
    "split_lane": """
local function split_lane(lane)
  local colon = string.find(lane, ':', 1, true)
  local length = tonumber(string.sub(lane, 1, colon - 1))
  return string.sub(lane, colon + 1, colon + length), string.sub(lane, colon + length + 2)
end
""",
    "integer": """
local function integer(value)
  return string.format('%d', value)
end
""",
    "unblock": """
-- Lanes set aside by a limit that may have changed, or whose slots freed: they may run again
local function unblock(set_key)
  local lanes = redis.call('SMEMBERS', set_key)
  if #lanes == 0 then return end
  for _, lane in ipairs(lanes) do
    local head = redis.call('ZRANGE', p..':lane:'..lane, 0, 0, 'WITHSCORES')
    if head[1] then redis.call('ZADD', p..':lanes', head[2], lane) end
    redis.call('SREM', p..':blocked', lane)
  end
  redis.call('DEL', set_key)
end
""",
    "job_info": """
-- task id, schedule id, fire time and result expiration (microseconds, '' for none) of a job,
-- and who has it; jobs stored by earlier versions have the fire time and result expiration in
-- their record only
local function job_info(key)
  local info = redis.call('HMGET', key, 'task_id', 'schedule_id', 'fire_time', 'result_ttl',
                          'acquired_by')
  if info[1] and not info[3] then
    local record = cjson.decode(redis.call('HGET', key, 'record'))
    local fire_time = record['scheduled_fire_time']
    info[3] = type(fire_time) == 'table' and integer(fire_time['$t']) or ''
    info[4] = integer(math.floor((tonumber(record['result_expiration_time']) or 0) * 1e6 + 0.5))
  end
  return info
end
""",
    "keep_result": """
-- Keeps the result of a job that ended without running (the same JSON as a released result)
local function keep_result(id, outcome, now, ttl)
  local microseconds = tonumber(ttl)
  if not microseconds or microseconds <= 0 then return end
  local record = '{"job_id":"' .. id .. '","outcome":"' .. outcome ..
    '","return_value":null,"exception":null,"started_at":null,"finished_at":{"$t":' .. now ..
    '},"expires_at":{"$t":' .. integer(tonumber(now) + microseconds) .. '}}'
  redis.call('SET', p..':result:'..id, record, 'PX',
             integer(math.max(1, math.floor(microseconds / 1000))))
end
""",
    "add_job": """
-- Queues a job unless its id exists: id, task id, schedule id or '', start deadline or '',
-- fire time or '', result expiration or '', record
local function add_job(id, task_id, schedule_id, deadline, fire_time, result_ttl, record)
  local key = p..':job:'..id
  if redis.call('EXISTS', key) == 1 then return end
  local seq = redis.call('INCR', p..':sequence')
  redis.call('HSET', key, 'task_id', task_id, 'schedule_id', schedule_id,
             'start_deadline', deadline, 'fire_time', fire_time, 'result_ttl', result_ttl,
             'record', record, 'sequence', seq)
  local lane = lane_of(task_id, schedule_id)
  local lane_key = p..':lane:'..lane
  redis.call('ZADD', lane_key, seq, id)
  if redis.call('ZCARD', lane_key) == 1 then redis.call('ZADD', p..':lanes', seq, lane) end
  if deadline ~= '' then redis.call('ZADD', p..':deadlines', deadline, id) end
end
""",
    "finish_job": """
-- Deletes a running job (info: its job_info), counting the slot it frees (see free_slots)
local function finish_job(id, key, tasks, schedules, info)
  redis.call('ZREM', p..':running', id)
  redis.call('DEL', key)
  tasks[info[1]] = (tasks[info[1]] or 0) + 1
  if info[2] ~= '' then schedules[info[2]] = (schedules[info[2]] or 0) + 1 end
  return info
end
""",
    "requeue": """
-- Puts a job back in its lane, in its place (its sequence number), if sid leases it: its lease
-- and running entry go, its start deadline counts again, and the slot it frees is counted (see
-- free_slots). A lane set aside by a limit stays aside (free_slots lets it run if it may).
-- Returns whether the job was put back
local function requeue(id, sid, tasks, schedules)
  local key = p..':job:'..id
  local job = redis.call('HMGET', key, 'acquired_by', 'task_id', 'schedule_id',
                         'start_deadline', 'sequence')
  if job[1] ~= sid then return false end
  redis.call('HDEL', key, 'acquired_by', 'acquired_until')
  redis.call('ZREM', p..':running', id)
  if job[4] and job[4] ~= '' then redis.call('ZADD', p..':deadlines', job[4], id) end
  local lane = lane_of(job[2], job[3])
  local lane_key = p..':lane:'..lane
  redis.call('ZADD', lane_key, job[5], id)
  if redis.call('SISMEMBER', p..':blocked', lane) == 0 then
    redis.call('ZADD', p..':lanes', redis.call('ZRANGE', lane_key, 0, 0, 'WITHSCORES')[2], lane)
  end
  tasks[job[2]] = (tasks[job[2]] or 0) + 1
  if job[3] ~= '' then schedules[job[3]] = (schedules[job[3]] or 0) + 1 end
  return true
end
""",
    "free_slots": """
-- Gives back the running slots finish_job counted; a counter that reaches 0 goes. Jobs are
-- counted per task only while the task has a limit (see recount_task)
local function free_slots(tasks, schedules)
  for task_id, count in pairs(tasks) do
    if redis.call('HEXISTS', p..':task_limits', task_id) == 1 then
      if redis.call('HINCRBY', p..':running_tasks', task_id, -count) <= 0 then
        redis.call('HDEL', p..':running_tasks', task_id)
      end
      unblock(p..':blocked_task:'..task_id)
    end
  end
  for schedule_id, count in pairs(schedules) do
    if redis.call('HINCRBY', p..':running_schedules', schedule_id, -count) <= 0 then
      redis.call('HDEL', p..':running_schedules', schedule_id)
    end
    unblock(p..':blocked_schedule:'..schedule_id)
  end
end
""",
    "recount_task": """
-- A task given a limit: its running jobs, uncounted until now, are counted
local function recount_task(task_id)
  local running = 0
  for _, id in ipairs(redis.call('ZRANGE', p..':running', 0, -1)) do
    local job = redis.call('HMGET', p..':job:'..id, 'task_id', 'acquired_by')
    if job[1] == task_id and job[2] then running = running + 1 end
  end
  if running > 0 then
    redis.call('HSET', p..':running_tasks', task_id, running)
  else
    redis.call('HDEL', p..':running_tasks', task_id)
  end
end
""",
    "stored_revision": """
-- The revision of a stored schedule; schedules stored by earlier versions have none: 0
local function stored_revision(key)
  return tonumber(redis.call('HGET', key, 'revision')) or 0
end
""",
    "forget_schedule": """
-- A removed schedule: its limit no longer holds its jobs back, and an idle counter goes
local function forget_schedule(id)
  local running = redis.call('HGET', p..':running_schedules', id)
  if running and tonumber(running) <= 0 then redis.call('HDEL', p..':running_schedules', id) end
  unblock(p..':blocked_schedule:'..id)
end
""",
}
#: the helpers each helper calls
_HELPER_NEEDS = {
    "job_info": ("integer",),
    "keep_result": ("integer",),
    "add_job": ("lane_of",),
    "requeue": ("lane_of",),
    "free_slots": ("unblock",),
    "forget_schedule": ("unblock",),
}

#: how a script takes a repeat of its call (the same call again after its reply was lost):
#: "harmless" ones take no token (a repeat does no harm); "once" ones act on the first call
#: of a token only; "replay" ones act on the first and return what they kept to a repeat
Repeat: TypeAlias = Literal["harmless", "once", "replay"]

# Make a script safe to run again after its reply was lost (a timeout or a dropped connection
# after the server ran it, then a retry). ARGV[1] is a token made once per operation (every
# attempt sends the same one) and ARGV[2] a TTL in seconds, longer than the attempts of one
# operation can take (see RedisDataStore._reply_ttl).
#
# "replay": run() does the work and returns the reply and what a repeat needs (kept, small,
# under {prefix}:reply:{token}; nil: nothing to keep, a repeat may do the work again); a repeat
# returns replay(what was kept) instead of doing the work again.
_LUA_REPLAY = """
local reply_key = p..':reply:'..ARGV[1]
local kept = redis.call('GET', reply_key)
if kept then return replay(cmsgpack.unpack(kept)) end
local reply, to_keep = run()
if to_keep ~= nil then redis.call('SET', reply_key, cmsgpack.pack(to_keep), 'EX', ARGV[2]) end
return reply
"""

# "once": the first call with a token marks it and does the work; a repeat does nothing
_LUA_ONCE = """
if not redis.call('SET', p..':reply:'..ARGV[1], 1, 'NX', 'EX', ARGV[2]) then return 0 end
return run()
"""

_LUA_SAME_REPLY = """
local function replay(kept) return kept end
"""

# ARGV: token, TTL, now, lease expiry, limit, the JSON list of the ids this process leaves
# alone, scheduler id, then the tokens of this scheduler's acquisitions that got no answer.
# Returns (record, hash fields) of each schedule acquired
_ACQUIRE_SCHEDULES = """
local now, untl, limit, sid = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[7]
local skip, skipped = {}, 0
for _, id in ipairs(cjson.decode(ARGV[6])) do skip[id] = true; skipped = skipped + 1 end

local function schedule_reply(id)
  local record = redis.call('GET', p..':schedule_record:'..id)
  return {record, redis.call('HGETALL', p..':schedule:'..id)}
end

-- An acquisition whose caller never saw the reply: its schedules are due again at once. Its
-- reply key is left empty (made so if the acquisition has not run yet): an attempt of it that
-- comes later takes nothing
local function give_back(token)
  local reply_key = p..':reply:'..token
  local kept = redis.call('GET', reply_key)
  local empty = cmsgpack.pack({{}})
  if not kept then
    redis.call('SET', reply_key, empty, 'EX', ARGV[2])
    return
  end
  for _, id in ipairs(cmsgpack.unpack(kept)[1]) do
    if redis.call('HGET', p..':schedule:'..id, 'acquired_by') == sid then unlease(id) end
  end
  redis.call('SET', reply_key, empty, 'KEEPTTL')
end

local function run()
  for i = 8, #ARGV do give_back(ARGV[i]) end
  -- expired leases: as many as this call may take (the rest wait for the next call)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':leased', '-inf', now, 'LIMIT', 0, limit)) do
    unlease(id)
  end
  local result, ids = {}, {}
  local due = redis.call('ZRANGEBYSCORE', p..':due', '-inf', now, 'LIMIT', 0, limit + skipped)
  for _, id in ipairs(due) do
    if #ids == limit then break end
    if not skip[id] then
      redis.call('ZREM', p..':due', id)
      redis.call('ZADD', p..':leased', untl, id)
      redis.call('HSET', p..':schedule:'..id, 'acquired_by', sid, 'acquired_until', untl)
      table.insert(result, schedule_reply(id))
      table.insert(ids, id)
    end
  end
  if #ids == 0 then return {result}, nil end
  return {result}, {ids}
end

local function replay(kept)
  local result = {}
  for _, id in ipairs(kept[1]) do
    if redis.call('HGET', p..':schedule:'..id, 'acquired_by') == sid then
      table.insert(result, schedule_reply(id))
    end
  end
  return {result}
end
"""

# ARGV: token, TTL, id, policy (replace/other), task_id, paused, next_run_time or '',
# max_running_jobs or '', record, then field/value pairs of the hash. A new schedule starts at
# revision 0, a replaced one goes on from the stored revision. Returns 0 (kept the stored
# one), 1 (added) or 2 (replaced)
_ADD_SCHEDULE = (
    _LUA_SAME_REPLY
    + """
local function run()
  local id, policy = ARGV[3], ARGV[4]
  local key = p..':schedule:'..id
  local exists = redis.call('EXISTS', key)
  if exists == 1 and policy ~= 'replace' then return 0, 0 end
  local revision = 0
  if exists == 1 then revision = stored_revision(key) + 1 end
  redis.call('DEL', key)
  local fields = {}
  for i = 10, #ARGV do table.insert(fields, ARGV[i]) end
  redis.call('HSET', key, 'task_id', ARGV[5], 'paused', ARGV[6], 'next_run_time', ARGV[7],
             'max_running_jobs', ARGV[8], 'revision', integer(revision), unpack(fields))
  redis.call('SET', p..':schedule_record:'..id, ARGV[9])
  redis.call('SADD', p..':schedules', id)
  redis.call('ZREM', p..':leased', id)
  redis.call('ZREM', p..':due', id)
  if ARGV[6] == '0' and ARGV[7] ~= '' then redis.call('ZADD', p..':due', ARGV[7], id) end
  if exists == 1 then
    unblock(p..':blocked_schedule:'..id)  -- its limit may have changed
    return 2, 2
  end
  return 1, 1
end
"""
)

# ARGV: token, TTL, id, revision read, task_id, paused, max_running_jobs or '', record, then,
# for a rescheduling only, the next_fire_time and last_fire_time read and the new
# next_fire_time, next_run_time and last_fire_time ('' = None). Writes only if the schedule is
# still at the revision read (and, rescheduling, still at the fire times read); keeps its
# progress unless rescheduling; clears its lease. Returns {0} if there is no such schedule,
# {1} if it changed since it was read, else {2, its hash fields}. The reply is kept whatever
# it is: a repeat must not find the revision its own first attempt wrote and call that stale
_UPDATE_SCHEDULE_DEFINITION = (
    _LUA_SAME_REPLY
    + """
local function run()
  local id, paused, limit = ARGV[3], ARGV[6], ARGV[7]
  local key = p..':schedule:'..id
  if redis.call('EXISTS', key) == 0 then return {0}, {0} end
  local rescheduling = #ARGV > 8
  local stored = redis.call('HMGET', key, 'max_running_jobs', 'next_fire_time', 'last_fire_time')
  if stored_revision(key) ~= tonumber(ARGV[4]) or (rescheduling and
      ((stored[2] or '') ~= ARGV[9] or (stored[3] or '') ~= ARGV[10])) then
    return {1}, {1}
  end
  -- 'record': where earlier versions kept the record
  redis.call('HDEL', key, 'acquired_by', 'acquired_until', 'record')
  redis.call('HSET', key, 'task_id', ARGV[5], 'paused', paused, 'max_running_jobs', limit)
  if rescheduling then
    redis.call('HSET', key, 'next_fire_time', ARGV[11], 'next_run_time', ARGV[12],
               'last_fire_time', ARGV[13])
  end
  redis.call('HINCRBY', key, 'revision', 1)  -- an absent field (earlier versions) counts as 0
  redis.call('SET', p..':schedule_record:'..id, ARGV[8])
  redis.call('ZREM', p..':leased', id)
  local nrt = redis.call('HGET', key, 'next_run_time')
  if paused == '0' and nrt and nrt ~= '' then
    redis.call('ZADD', p..':due', nrt, id)
  else
    redis.call('ZREM', p..':due', id)
  end
  if stored[1] ~= limit then unblock(p..':blocked_schedule:'..id) end
  local reply = {2, redis.call('HGETALL', key)}
  return reply, reply
end
"""
)

# ARGV: token, TTL, then schedule ids. Returns (id, task id) of each schedule removed
_REMOVE_SCHEDULES = (
    _LUA_SAME_REPLY
    + """
local function run()
  local removed = {}
  for i = 3, #ARGV do
    local id = ARGV[i]
    local key = p..':schedule:'..id
    local task_id = redis.call('HGET', key, 'task_id')
    if redis.call('DEL', key, p..':schedule_record:'..id) > 0 then
      table.insert(removed, {id, task_id or ''})
    end
    redis.call('SREM', p..':schedules', id)
    redis.call('ZREM', p..':due', id)
    redis.call('ZREM', p..':leased', id)
    forget_schedule(id)
  end
  return removed, removed
end
"""
)

# ARGV: token, TTL, then 7 values per job (see add_job). A repeat must not add a job that ran
# meanwhile again: it does nothing ("once")
_ADD_JOBS = """
local function run()
  for i = 3, #ARGV, 7 do
    add_job(ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6])
  end
  return 0
end
"""

# ARGV: token, TTL, now, lease expiry, limit, worker id, then the tokens of this worker's
# acquisitions that got no answer. Returns the acquired records, (id, task id, schedule id,
# fire time) of each job found past its start deadline, and 1 if some lane is held back by a
# limit
_ACQUIRE_JOBS = """
local now, untl, limit, sid = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]

-- An acquisition whose caller never saw the reply: its jobs go back to their lanes, and the
-- jobs it found past their start deadline are reported now. Its reply key is left empty
-- (made so if the acquisition has not run yet): an attempt of it that comes later takes nothing
local function give_back(token, missed)
  local reply_key = p..':reply:'..token
  local kept = redis.call('GET', reply_key)
  local empty = cmsgpack.pack({{}, {}, 0})
  if not kept then
    redis.call('SET', reply_key, empty, 'EX', ARGV[2])
    return
  end
  kept = cmsgpack.unpack(kept)
  local tasks, schedules = {}, {}
  for _, id in ipairs(kept[1]) do requeue(id, sid, tasks, schedules) end
  free_slots(tasks, schedules)
  for _, job in ipairs(kept[2]) do table.insert(missed, job) end
  redis.call('SET', reply_key, empty, 'KEEPTTL')
end

-- How many jobs of the lane may start now (room at most), the set to put the lane in if none,
-- and whether its task has a limit (only then are its running jobs counted)
local function room_in(task_id, schedule_id, room)
  local task_limit = redis.call('HGET', p..':task_limits', task_id)
  if task_limit then
    local free = tonumber(task_limit) -
      tonumber(redis.call('HGET', p..':running_tasks', task_id) or '0')
    if free <= 0 then return 0, p..':blocked_task:'..task_id, true end
    if free < room then room = free end
  end
  if schedule_id ~= '' then
    local schedule_limit = redis.call('HGET', p..':schedule:'..schedule_id, 'max_running_jobs')
    if schedule_limit and schedule_limit ~= '' then
      local free = tonumber(schedule_limit) -
        tonumber(redis.call('HGET', p..':running_schedules', schedule_id) or '0')
      if free <= 0 then return 0, p..':blocked_schedule:'..schedule_id, task_limit end
      if free < room then room = free end
    end
  end
  return room, nil, task_limit
end

local function run()
  local acquired, ids, missed = {}, {}, {}
  for i = 7, #ARGV do give_back(ARGV[i], missed) end
  while #ids < limit do
    local head = redis.call('ZPOPMIN', p..':lanes')
    if #head == 0 then break end
    local lane = head[1]
    local task_id, schedule_id = split_lane(lane)
    local room, blocker, task_limited = room_in(task_id, schedule_id, limit - #ids)
    local lane_key = p..':lane:'..lane
    if blocker then
      redis.call('SADD', blocker, lane)
      redis.call('SADD', p..':blocked', lane)
    else
      -- Take this lane's jobs while they are older than every other lane's first job (the
      -- bound). Its first job is (the lane came first in {prefix}:lanes, by that job's
      -- number), so the bound is read only once a second job is looked at
      local bound = nil
      -- head: the score of the lane's first job left; false once it is empty, nil if unknown.
      -- One entry more than there is room for is read, to learn the head without another call
      local taken, seen, stop, head = 0, 0, false, nil
      while not stop do
        local wanted = room + 1
        local entries = redis.call('ZRANGE', lane_key, 0, wanted - 1, 'WITHSCORES')
        local processed = 0
        head = nil
        for i = 1, #entries, 2 do
          if room > 0 and seen > 0 and not bound then
            local next_lane = redis.call('ZRANGE', p..':lanes', 0, 0, 'WITHSCORES')
            bound = next_lane[2] and tonumber(next_lane[2]) or math.huge
          end
          if room == 0 or (seen > 0 and tonumber(entries[i + 1]) > bound) then
            stop, head = true, entries[i + 1]
            break
          end
          processed, seen = processed + 1, seen + 1
          local id = entries[i]
          local key = p..':job:'..id
          local job = redis.call('HMGET', key, 'start_deadline', 'record')
          local deadline = job[1]
          if deadline and deadline ~= '' and tonumber(deadline) < now then
            local info = job_info(key)
            redis.call('ZREM', p..':deadlines', id)
            redis.call('DEL', key)
            keep_result(id, 'missed_start_deadline', ARGV[3], info[4])
            table.insert(missed, {id, info[1], info[2], info[3]})
          elseif job[2] then
            if deadline ~= '' then redis.call('ZREM', p..':deadlines', id) end
            redis.call('ZADD', p..':running', untl, id)
            redis.call('HSET', key, 'acquired_by', sid, 'acquired_until', untl)
            table.insert(acquired, job[2])
            table.insert(ids, id)
            taken = taken + 1
            room = room - 1
          end
        end
        if processed > 0 then redis.call('ZREMRANGEBYRANK', lane_key, 0, processed - 1) end
        if not stop and #entries < wanted * 2 then stop, head = true, false end
      end
      if taken > 0 then
        if task_limited then redis.call('HINCRBY', p..':running_tasks', task_id, taken) end
        if schedule_id ~= '' then
          redis.call('HINCRBY', p..':running_schedules', schedule_id, taken)
        end
      end
      if head == nil then head = redis.call('ZRANGE', lane_key, 0, 0, 'WITHSCORES')[2] or false end
      if head then redis.call('ZADD', p..':lanes', head, lane) end
    end
  end
  local held = redis.call('EXISTS', p..':blocked')
  if #ids == 0 and #missed == 0 then return {acquired, missed, held}, nil end
  return {acquired, missed, held}, {ids, missed, held}
end

local function replay(kept)
  local acquired = {}
  for _, id in ipairs(kept[1]) do
    local job = redis.call('HMGET', p..':job:'..id, 'acquired_by', 'record')
    if job[1] == sid then table.insert(acquired, job[2]) end
  end
  return {acquired, kept[2], kept[3]}
end
"""

# ARGV: worker id, then triples of job id, result record, TTL in ms (an empty record: the job
# keeps no result). Returns (id, task id, schedule id, fire time) of each job released. No
# token: a repeat finds the jobs gone and does nothing (only the events of a lost reply are
# lost; the results are kept)
_RELEASE_JOBS = """
local sid, released, tasks, schedules = ARGV[1], {}, {}, {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local key = p..':job:'..id
  local info = job_info(key)
  if info[5] == sid then
    finish_job(id, key, tasks, schedules, info)
    table.insert(released, {id, info[1], info[2], info[3]})
    if ARGV[i+1] ~= '' then  -- a kept result
      redis.call('SET', p..':result:'..id, ARGV[i+1], 'PX', ARGV[i+2])
    end
  end
end
free_slots(tasks, schedules)
return released
"""

# ARGV: token, TTL, scheduler id, then job ids. Puts back in their places those the scheduler
# still leases (acquired, never started) and frees their slots. Returns the ids of those put
# back. A repeat gets that reply ("replay"): it publishes their JobAdded events, and must not
# put back a job that the scheduler acquired again meanwhile
_RETURN_JOBS = (
    _LUA_SAME_REPLY
    + """
local function run()
  local sid, returned, tasks, schedules = ARGV[3], {}, {}, {}
  for i = 4, #ARGV do
    if requeue(ARGV[i], sid, tasks, schedules) then table.insert(returned, ARGV[i]) end
  end
  free_slots(tasks, schedules)
  return returned, returned
end
"""
)

# ARGV: token, TTL, now. Returns (owner, id, task id, schedule id, fire time) of each abandoned
# job and (id, task id, schedule id, fire time) of each queued job past its start deadline;
# their results are kept here
_CLEANUP = (
    _LUA_SAME_REPLY
    + """
local function run()
  local now = ARGV[3]
  local abandoned, overdue, tasks, schedules = {}, {}, {}, {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':running', '-inf', now)) do
    local key = p..':job:'..id
    local info = job_info(key)
    local owner = info[5]
    if owner then
      finish_job(id, key, tasks, schedules, info)
      keep_result(id, 'abandoned', now, info[4])
      table.insert(abandoned, {owner, id, info[1], info[2], info[3]})
    else
      redis.call('ZREM', p..':running', id)
    end
  end
  free_slots(tasks, schedules)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p..':deadlines', '-inf', '(' .. now)) do
    local key = p..':job:'..id
    redis.call('ZREM', p..':deadlines', id)
    if redis.call('EXISTS', key) == 1 then
      local info = job_info(key)
      local lane = lane_of(info[1], info[2])
      local lane_key = p..':lane:'..lane
      redis.call('ZREM', lane_key, id)
      local head = redis.call('ZRANGE', lane_key, 0, 0, 'WITHSCORES')
      if head[1] then
        redis.call('ZADD', p..':lanes', 'XX', head[2], lane)
      else
        redis.call('ZREM', p..':lanes', lane)
        redis.call('SREM', p..':blocked', lane)
      end
      redis.call('DEL', key)
      keep_result(id, 'missed_start_deadline', now, info[4])
      table.insert(overdue, {id, info[1], info[2], info[3]})
    end
  end
  -- counters of tasks without a limit, left by earlier versions (which counted every task)
  local counters = redis.call('HKEYS', p..':running_tasks')
  for _, task_id in ipairs(counters) do
    if redis.call('HEXISTS', p..':task_limits', task_id) == 0 then
      redis.call('HDEL', p..':running_tasks', task_id)
    end
  end
  local reply = {abandoned, overdue}
  return reply, reply
end
"""
)

# ARGV: worker id, lease expiry, job ids... (repeating it does no harm: no token)
_EXTEND_LEASES = """
local sid, untl = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local key = p..':job:'..ARGV[i]
  if redis.call('HGET', key, 'acquired_by') == sid then
    redis.call('HSET', key, 'acquired_until', untl)
    redis.call('ZADD', p..':running', untl, ARGV[i])
  end
end
return 0
"""

# ARGV: token, TTL, scheduler id, then per update: id, next_fire_time, next_run_time,
# last_fire_time ('' = None), job count, kept result count, then per job the 7 add_job values,
# then per kept result of a missed job its id, record and TTL in ms. Returns (id, task id)
# of each schedule still leased by the scheduler (the others' updates are dropped)
_RELEASE_SCHEDULES = (
    _LUA_SAME_REPLY
    + """
local function run()
  local sid, owned, i = ARGV[3], {}, 4
  while i <= #ARGV do
    local id, nft, nrt, lft = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
    local first_job = i + 6
    local first_result = first_job + tonumber(ARGV[i+4]) * 7
    i = first_result + tonumber(ARGV[i+5]) * 3
    local key = p..':schedule:'..id
    if redis.call('HGET', key, 'acquired_by') == sid then
      table.insert(owned, {id, redis.call('HGET', key, 'task_id')})
      for j = first_job, first_result - 1, 7 do
        add_job(ARGV[j], ARGV[j+1], ARGV[j+2], ARGV[j+3], ARGV[j+4], ARGV[j+5], ARGV[j+6])
      end
      for j = first_result, i - 1, 3 do
        redis.call('SET', p..':result:'..ARGV[j], ARGV[j+1], 'PX', ARGV[j+2])
      end
      redis.call('ZREM', p..':leased', id)
      if nft == '' then
        redis.call('DEL', key, p..':schedule_record:'..id)
        redis.call('SREM', p..':schedules', id)
        redis.call('ZREM', p..':due', id)
        forget_schedule(id)
      else
        redis.call('HDEL', key, 'acquired_by', 'acquired_until')
        redis.call('HSET', key, 'next_fire_time', nft, 'next_run_time', nrt,
                   'last_fire_time', lft)
        if redis.call('HGET', key, 'paused') == '0' and nrt ~= '' then
          redis.call('ZADD', p..':due', nrt, id)
        end
      end
    end
  end
  return owned, owned
end
"""
)

# ARGV: token, TTL, task id, task JSON, max_running_jobs or ''. Returns 1 if the task is new
_ADD_TASK = (
    _LUA_SAME_REPLY
    + """
local function run()
  local id = ARGV[3]
  local created = redis.call('HSET', p..':tasks', id, ARGV[4])
  if ARGV[5] == '' then
    redis.call('HDEL', p..':task_limits', id)
    redis.call('HDEL', p..':running_tasks', id)  -- counted only while there is a limit
  elseif redis.call('HSET', p..':task_limits', id, ARGV[5]) == 1 then
    recount_task(id)  -- a limit where there was none
  end
  unblock(p..':blocked_task:'..id)  -- its limit may have changed
  return created, created
end
"""
)

# ARGV: token, TTL, task id. Returns 1 if there was such a task
_REMOVE_TASK = (
    _LUA_SAME_REPLY
    + """
local function run()
  local id = ARGV[3]
  local removed = redis.call('HDEL', p..':tasks', id)
  redis.call('HDEL', p..':task_limits', id)
  redis.call('HDEL', p..':running_tasks', id)
  unblock(p..':blocked_task:'..id)
  return removed, removed
end
"""
)

# ARGV: batch size. Moves that many jobs from the single queue of earlier versions
# ({prefix}:queue) into lanes; returns how many are left (repeating it does no harm). Once none
# are, drops the index of all jobs that earlier versions kept ({prefix}:jobs)
_MOVE_QUEUE_TO_LANES = """
local ids = redis.call('ZRANGE', p..':queue', 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local id, seq = ids[i], ids[i + 1]
  local job = redis.call('HMGET', p..':job:'..id, 'task_id', 'schedule_id')
  if job[1] then
    local lane = lane_of(job[1], job[2] or '')
    local lane_key = p..':lane:'..lane
    redis.call('ZADD', lane_key, seq, id)
    redis.call('ZADD', p..':lanes', redis.call('ZRANGE', lane_key, 0, 0, 'WITHSCORES')[2], lane)
  end
  redis.call('ZREM', p..':queue', id)
end
local left = redis.call('ZCARD', p..':queue')
if left == 0 then redis.call('UNLINK', p..':jobs') end
return left
"""

# The ids of all queued and running jobs: those in lanes (that may run or are held back by a
# limit) and those running. Changes nothing
_LIST_JOBS = """
local ids, lanes = {}, {}
for _, lane in ipairs(redis.call('ZRANGE', p..':lanes', 0, -1)) do lanes[lane] = true end
for _, lane in ipairs(redis.call('SMEMBERS', p..':blocked')) do lanes[lane] = true end
for lane in pairs(lanes) do
  for _, id in ipairs(redis.call('ZRANGE', p..':lane:'..lane, 0, -1)) do
    table.insert(ids, id)
  end
end
for _, id in ipairs(redis.call('ZRANGE', p..':running', 0, -1)) do table.insert(ids, id) end
return ids
"""

# ARGV: scheduler id, then schedule ids: the leases it holds on them are given back
_UNLEASE_SCHEDULES = """
for i = 2, #ARGV do
  if redis.call('HGET', p..':schedule:'..ARGV[i], 'acquired_by') == ARGV[1] then
    unlease(ARGV[i])
  end
end
return 0
"""

_SCRIPTS: dict[str, tuple[str, Repeat, tuple[str, ...]]] = {
    # name: (source, how it takes a repeat, the helpers it calls)
    "acquire_schedules": (_ACQUIRE_SCHEDULES, "replay", ("unlease",)),
    "unlease_schedules": (_UNLEASE_SCHEDULES, "harmless", ("unlease",)),
    "add_schedule": (_ADD_SCHEDULE, "replay", ("unblock", "integer", "stored_revision")),
    "update_schedule_definition": (
        _UPDATE_SCHEDULE_DEFINITION,
        "replay",
        ("unblock", "stored_revision"),
    ),
    "remove_schedules": (_REMOVE_SCHEDULES, "replay", ("forget_schedule",)),
    "release_schedules": (_RELEASE_SCHEDULES, "replay", ("add_job", "forget_schedule")),
    "add_jobs": (_ADD_JOBS, "once", ("add_job",)),
    "acquire_jobs": (
        _ACQUIRE_JOBS,
        "replay",
        ("lane_of", "split_lane", "job_info", "keep_result", "requeue", "free_slots"),
    ),
    "release_jobs": (_RELEASE_JOBS, "harmless", ("job_info", "finish_job", "free_slots")),
    "return_jobs": (_RETURN_JOBS, "replay", ("requeue", "free_slots")),
    "list_jobs": (_LIST_JOBS, "harmless", ()),
    "cleanup": (
        _CLEANUP,
        "replay",
        ("lane_of", "job_info", "keep_result", "finish_job", "free_slots"),
    ),
    "extend_leases": (_EXTEND_LEASES, "harmless", ()),
    "add_task": (_ADD_TASK, "replay", ("unblock", "recount_task")),
    "remove_task": (_REMOVE_TASK, "replay", ("unblock",)),
    "move_queue_to_lanes": (_MOVE_QUEUE_TO_LANES, "harmless", ("lane_of",)),
}


class LuaScript:
    """A Lua script run with EVALSHA on one key, sent in full only if the server lacks it.

    redis-py's ``Script`` objects cost about a third more client CPU per call than a plain
    ``execute_command("EVALSHA", ...)``, and every job passes through three scripts.

    :param body: the script
    :param repeat: how it takes a repeat of its call: ``"harmless"`` (no token), ``"once"``
        (a token and a TTL first; a repeat does nothing) or ``"replay"`` (a token and a TTL
        first; a repeat gets what the first call kept, see ``_LUA_REPLAY``)
    :param helpers: the functions of ``_LUA_HELPERS`` it calls (only those are defined: a
        Lua function costs its closure on every call)
    """

    def __init__(self, body: str, *, repeat: Repeat, helpers: Iterable[str] = ()) -> None:
        #: whether its calls take a token (and a TTL) first
        self.takes_token = repeat != "harmless"
        needed = set(helpers)
        for name in list(needed):
            needed.update(_HELPER_NEEDS.get(name, ()))
        defined = [_LUA_HELPERS[name] for name in _LUA_HELPERS if name in needed]
        wrapper = {"harmless": "", "once": _LUA_ONCE, "replay": _LUA_REPLAY}[repeat]
        self.source = "\n".join(["local p = KEYS[1]", *defined, body, wrapper])
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, execute: Callable[..., Awaitable[Any]], key: str, *args: Any) -> Any:
        """Run the script on ``key`` with ``args`` through ``execute``; return its reply.

        :param execute: sends one command and returns its reply (a client's
            ``execute_command``, or the store's :class:`PipelinedConnection`'s ``execute``)
        """
        try:
            return await execute("EVALSHA", self.sha, 1, key, *args)
        except NoScriptError:
            # a restarted or flushed server: EVAL runs the script and caches it again
            return await execute("EVAL", self.source, 1, key, *args)


#: jobs moved per script call when moving the queue of an earlier version into lanes
_QUEUE_MOVE_BATCH = 1000
#: the most schedules or jobs one script call acquires (larger limits take several calls)
_ACQUIRE_BATCH = 1000
#: the client the store makes from a URL waits this long (seconds) to connect, and this long
#: for each read or write of its socket; its own retries of a command are off (the store
#: retries), so that one attempt of an operation is bounded
_CONNECT_TIMEOUT = 5.0
_SOCKET_TIMEOUT = 5.0
#: how late after its start an attempt can reach the server: connecting, a health check
#: (a PING, when the connection was idle) and sending
_ATTEMPT_REACH = _CONNECT_TIMEOUT + 2 * _SOCKET_TIMEOUT


async def _not_started(*args: Any) -> Any:
    raise RuntimeError("RedisDataStore: the store has not been started")


def _new_token() -> str:
    """Return a token for one operation: random, so that no two processes share one.

    (A counter after a per-store random part would repeat in the processes forked from a
    process that made the store, each replaying the others' replies.)
    """
    return random_uuid().hex


class RedisDataStore(BaseExternalDataStore):
    """Keeps tasks, schedules, jobs and results in Redis.

    :param url_or_client: a ``redis://`` URL (``?prefix=name`` picks the key prefix) or a
        ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client the application
        already has (not closed by the store)
    :param prefix: the prefix of every key of this store
    :param serializer: turns job arguments, return values and exceptions into bytes
    :param retry_settings: how to retry after transient connection errors
    :raises TypeError: if ``url_or_client`` is neither a URL nor a client
    :raises ValueError: if the prefix is empty or holds spaces or braces, or if the client
        (or the URL) decodes replies into strings (``decode_responses``)
    """

    def __init__(
        self,
        url_or_client: str | RedisClient,
        *,
        prefix: str | None = None,
        serializer: Serializer | None = None,
        retry_settings: RetrySettings | None = None,
    ) -> None:
        super().__init__(serializer=serializer, retry_settings=retry_settings)
        self._url: str | None = None
        self._client: RedisClient | None = None
        self._own_client = False
        #: sends one command and returns its reply (set when the store starts)
        self._execute: Callable[..., Awaitable[Any]] = _not_started
        channel: str | None = None
        if isinstance(url_or_client, str):
            check_url(url_or_client, "RedisDataStore")
            self._url, options = split_own_options(url_or_client, "redis")
            if prefix is None:
                prefix = options.get("prefix")
            channel = options.get("channel")
            checked: RedisClient = aioredis.Redis.from_url(self._url)  # (connects to nothing)
        elif isinstance(url_or_client, (aioredis.Redis, aioredis.RedisCluster)):
            self._client = checked = url_or_client
        else:
            raise TypeError(
                f"RedisDataStore: expected a redis:// URL or a redis.asyncio.Redis or "
                f"RedisCluster client, got {url_or_client!r}"
            )
        if checked.get_encoder().decode_responses:
            fix = (
                "remove decode_responses from the URL"
                if self._url
                else "give it a client made with decode_responses=False (the default)"
            )
            raise ValueError(f"RedisDataStore: the store reads raw bytes from Redis; {fix}")
        self.prefix = "asched" if prefix is None else prefix
        if not self.prefix or any(c.isspace() or c in "{}" for c in self.prefix):
            raise ValueError(
                f"RedisDataStore: prefix must be a non-empty string without spaces or braces, "
                f"got {self.prefix!r}"
            )
        #: the pub/sub channel of the event broker a scheduler makes for this store (see
        #: :meth:`default_event_broker`): the URL's ``channel``, else the prefix
        self.channel = channel or self.prefix
        # A hash tag: every key of the store hashes to one Redis Cluster slot, which the
        # multi-key Lua scripts need
        self._root = "{" + self.prefix + "}"
        self._clock = Clock()
        self._event_broker: EventBroker | None = None
        self._scripts = {
            name: LuaScript(source, repeat=repeat, helpers=helpers)
            for name, (source, repeat, helpers) in _SCRIPTS.items()
        }
        self._job_writer = WriteBatcher(self._write_jobs)
        settings = self.retry_settings
        retry_waits = sum(settings.wait_after(failed) for failed in range(1, settings.attempts))
        # No attempt of an operation starts later than this (seconds) after its first: the
        # waits between attempts, and as much again for the attempts themselves
        self._retry_window = 2 * retry_waits
        # How long (seconds) a reply is kept for a repeat of its call: twice the latest an
        # attempt of the call can reach the server
        self._reply_ttl = math.ceil(2 * (self._retry_window + _ATTEMPT_REACH))
        # (script, scheduler id) -> (token, when to forget it) of acquisitions whose caller
        # did not get what they acquired
        self._unanswered: dict[tuple[str, str], list[tuple[str, float]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

    def default_event_broker(self) -> EventBroker:
        """Return a :class:`~asched.eventbrokers.redis.RedisEventBroker` on this store's Redis.

        It uses the store's URL, or the client the store was given (with a pub/sub connection
        of its own), and the channel :attr:`channel`.
        """
        from ..eventbrokers.redis import RedisEventBroker

        target = self._url if self._url is not None else self._client
        assert target is not None
        return RedisEventBroker(target, channel=self.channel)

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(
            exc, (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError)
        )

    def _retrying(self, started: float | None = None) -> AsyncRetrying:
        """Return the retrier of one operation, which starts no attempt after its window.

        :param started: when (``time.monotonic()``) the operation's first attempt started, if
            before now
        """
        window = self._retry_window
        if started is not None:
            window -= time.monotonic() - started
        stop = stop_after_attempt(self.retry_settings.attempts) | stop_before_delay(max(window, 0))
        return super()._retrying().copy(stop=stop)

    async def _with_retries(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` as the base class does, with no attempt after the retry window."""
        started = time.monotonic()
        try:
            return await operation()
        except Exception as exc:
            if not self._is_transient(exc) or self.retry_settings.attempts < 2:
                raise
            first_failure = exc
        async for attempt in self._retrying(started):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_failure  # counted (and logged) as the first attempt
                return await operation()
        raise AssertionError("unreachable")  # pragma: no cover

    async def start(
        self,
        exit_stack: AsyncExitStack,
        event_broker: EventBroker,
        logger: Logger,
        clock: Clock,
    ) -> None:
        """Connect, and move jobs queued by an earlier version into lanes; see the base class.

        :raises RuntimeError: if the event loop is not asyncio's (redis-py runs on nothing else)
        """
        require_asyncio("RedisDataStore", "redis-py's asyncio client")
        self._event_broker = event_broker
        self._logger = logger
        self._clock = clock
        if self._client is None:
            assert self._url is not None
            # (options the URL gives win over these)
            self._client = aioredis.Redis.from_url(
                self._url,
                health_check_interval=10,
                client_name=f"asched-{self.prefix}",
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            self._own_client = True
            exit_stack.push_async_callback(self._close_client)
        self._execute = self._client.execute_command
        # the scripts (every hot path) go through a connection of the store's own that
        # concurrent calls share; other commands, and a client given, through redis-py
        own = self._client if self._own_client else None
        pipelined = PipelinedConnection.of_client(own) if isinstance(own, aioredis.Redis) else None
        if pipelined is not None:
            exit_stack.push_async_callback(pipelined.aclose)
            self._execute = pipelined.execute
        self._check_attempts_are_bounded(self._client)
        while await self._call("move_queue_to_lanes", _QUEUE_MOVE_BATCH):
            pass

    def _check_attempts_are_bounded(self, client: RedisClient) -> None:
        """Warn if one attempt of an operation on ``client`` can reach Redis too late.

        A retry that reaches the server after the reply of an earlier attempt expired acts
        again. Replies are kept long enough if one attempt (a command, with the client's own
        retries of it) reaches the server within ``_ATTEMPT_REACH`` seconds.
        """
        if not isinstance(client, aioredis.Redis):
            return  # a RedisCluster client: see the documentation
        retry = _connection_setting(client, "retry")
        retries = 0 if retry is None else retry.get_retries()
        socket = _connection_setting(client, "socket_timeout")
        connect = _connection_setting(client, "socket_connect_timeout") or socket
        if socket is None or connect is None:
            reach = math.inf
        else:
            reach = (retries + 1) * (connect + 2 * socket)
        if reach > _ATTEMPT_REACH:
            self._logger.warning(
                "RedisDataStore: one command of the client given may take longer than %g s to "
                "reach Redis (it retries each command %d times itself, waits %s s to connect "
                "and %s s for its socket): a retry could then reach Redis after the store "
                "stopped keeping the first attempt's reply (%d s) and act again (run a job "
                "twice). Give it socket_connect_timeout=%g, socket_timeout=%g and "
                "retry=Retry(NoBackoff(), 0)",
                _ATTEMPT_REACH,
                retries,
                connect,
                socket,
                self._reply_ttl,
                _CONNECT_TIMEOUT,
                _SOCKET_TIMEOUT,
            )

    async def _close_client(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None
            self._own_client = False
        self._execute = _not_started

    @property
    def _redis(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisDataStore: the store has not been started")
        return self._client

    async def _call(
        self, script: str, *args: Any, token: str | None = None, ttl: int | None = None
    ) -> Any:
        run_script, execute, root = self._scripts[script], self._execute, self._root
        if run_script.takes_token:
            # one token for every attempt: a retry after a lost reply gets the kept reply
            args = (token or _new_token(), ttl or self._reply_ttl, *args)
        return await self._with_retries(lambda: run_script(execute, root, *args))

    def _acquisition_ttl(self, lease_duration: timedelta) -> int:
        """How long (seconds) an acquisition keeps its reply: while it can be put back."""
        return max(self._reply_ttl, math.ceil(lease_duration.total_seconds()))

    def _not_answered(self, script: str, scheduler_id: str, tokens: list[str], ttl: int) -> None:
        """Note acquisitions whose items their caller never got, for the next to put back."""
        until = time.monotonic() + ttl
        self._unanswered.setdefault((script, scheduler_id), []).extend(
            (token, until) for token in tokens
        )

    async def _acquire(
        self, script: str, scheduler_id: str, token: str, ttl: int, *args: Any
    ) -> Any:
        """Run one call of an acquiring script (whose last arguments are the unanswered ones).

        A call that raised (retries exhausted, or refused after the retry window) or was
        cancelled may have leased items that its caller never saw. Its token is passed to this
        scheduler's next acquisition, whose script hands such items back and leaves the call's
        reply empty, so that an attempt of it that reaches the server later takes nothing.
        """
        unanswered = self._unanswered.setdefault((script, scheduler_id), [])
        now = time.monotonic()
        unanswered[:] = [(old, until) for old, until in unanswered if until > now]
        passed = {old for old, _ in unanswered}
        try:
            reply = await self._call(script, *args, scheduler_id, *passed, token=token, ttl=ttl)
        except BaseException:
            self._not_answered(script, scheduler_id, [token], ttl)
            raise
        if passed:
            unanswered[:] = [(old, until) for old, until in unanswered if old not in passed]
        return reply

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
        limit = "" if task.max_running_jobs is None else task.max_running_jobs
        created = await self._call("add_task", task.id, json.dumps(task.marshal()), limit)
        event_class = TaskAdded if created else TaskUpdated
        await self._publish([event_class(task_id=task.id)])

    async def remove_task(self, task_id: str) -> None:
        """Remove a task; see :meth:`DataStore.remove_task`."""
        if not await self._call("remove_task", task_id):
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
        # kept in the hash only (the scripts own it and the lease)
        for name in ("acquired_by", "acquired_until", "revision"):
            record.pop(name)
        fields: list[Any] = [encode_record(record)]
        for name, value in times.items():
            fields += [name, _to_arg(value)]
        return fields

    async def _schedules_from_replies(
        self, replies: Iterable[Any], unreadable: list[str] | None = None
    ) -> list[Schedule]:
        """Restore schedules from (record, hash fields) pairs; missing ones are skipped.

        :param unreadable: where to add the ids of those that cannot be restored
        """
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
            record["revision"] = int(fields.get("revision") or 0)
            try:
                schedules.append(Schedule.unmarshal(self.serializer, record))
            except DeserializationError as exc:
                self._logger.error("Cannot restore schedule %r: %s", record["id"], exc)
                events.append(
                    ScheduleDeserializationFailed(schedule_id=record["id"], error=str(exc))
                )
                if unreadable is not None:
                    unreadable.append(record["id"])
        await self._publish(events)
        return schedules

    async def add_schedule(self, schedule: Schedule, conflict_policy: ConflictPolicy) -> None:
        """Add a schedule; see :meth:`DataStore.add_schedule`."""
        self._schedule_written(schedule.id)
        schedule = attrs.evolve(schedule, acquired_by=None, acquired_until=None)
        fields = self._schedule_fields(schedule)
        outcome = await self._call(
            "add_schedule",
            schedule.id,
            conflict_policy.value,
            schedule.task_id,
            "1" if schedule.paused else "0",
            _to_arg(schedule.next_run_time),
            "" if schedule.max_running_jobs is None else schedule.max_running_jobs,
            *fields,
        )
        if outcome == 0:
            if conflict_policy is ConflictPolicy.exception:
                raise ConflictingIdError(schedule.id)
            return
        await self._publish([schedule_written_event(schedule, added=outcome == 1)])

    async def update_schedule_definition(
        self, schedule: Schedule, *, rescheduled_from: Schedule | None = None
    ) -> Schedule | None:
        """Rewrite a schedule unless it changed since it was read, in one script call.

        See :meth:`DataStore.update_schedule_definition`.
        """
        self._schedule_written(schedule.id)
        record = self._schedule_fields(schedule)[0]
        args: list[Any] = [
            schedule.id,
            schedule.revision,
            schedule.task_id,
            "1" if schedule.paused else "0",
            "" if schedule.max_running_jobs is None else schedule.max_running_jobs,
            record,
        ]
        if rescheduled_from is not None:
            args += [
                _to_arg(rescheduled_from.next_fire_time),
                _to_arg(rescheduled_from.last_fire_time),
                _to_arg(schedule.next_fire_time),
                _to_arg(schedule.next_run_time),
                _to_arg(schedule.last_fire_time),
            ]
        reply = await self._call("update_schedule_definition", *args)
        if reply[0] == 0:
            return None
        if reply[0] == 1:
            raise StaleScheduleError(schedule.id)
        # the schedule written: the caller's, with the progress and revision stored (the
        # record is not read back, so a schedule whose args cannot be restored is no error)
        fields = _hash_dict(reply[1])
        stored = attrs.evolve(
            schedule,
            next_fire_time=_from_db(fields.get("next_fire_time")),
            next_run_time=_from_db(fields.get("next_run_time")),
            last_fire_time=_from_db(fields.get("last_fire_time")),
            acquired_by=None,
            acquired_until=None,
            revision=int(fields["revision"]),
        )
        await self._publish([schedule_written_event(stored)])
        return stored

    async def remove_schedules(self, ids: Iterable[str], *, finished: bool = False) -> None:
        """Remove schedules; see :meth:`DataStore.remove_schedules`."""
        id_list = list(ids)
        if not id_list:
            return
        removed = await self._call("remove_schedules", *id_list)
        await self._publish(
            ScheduleRemoved(
                schedule_id=_text(schedule_id), task_id=_text(task_id), finished=finished
            )
            for schedule_id, task_id in removed
        )

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

    async def _lease_schedules(
        self, scheduler_id: str, lease_duration: timedelta, limit: int, skip: Sequence[str]
    ) -> tuple[list[Schedule], list[str]]:
        """Lease due schedules, except ``skip``; see :meth:`acquire_schedules`."""
        now = self._clock.now()
        args = (_to_db(now), _to_db(now + lease_duration))
        skipped = json.dumps(list(skip))
        ttl = self._acquisition_ttl(lease_duration)
        replies: list[Any] = []
        answered: list[str] = []
        try:
            while len(replies) < limit:  # calls of _ACQUIRE_BATCH at most: none holds Redis long
                batch = min(limit - len(replies), _ACQUIRE_BATCH)
                token = _new_token()
                try:
                    (acquired,) = await self._acquire(
                        "acquire_schedules", scheduler_id, token, ttl, *args, batch, skipped
                    )
                except Exception:
                    if not replies:
                        raise
                    self._logger.warning("Could not acquire more schedules", exc_info=True)
                    break
                answered.append(token)
                replies += acquired
                if len(acquired) < batch:
                    break
            unreadable: list[str] = []
            schedules = await self._schedules_from_replies(replies, unreadable)
            return schedules, unreadable
        except BaseException:
            # the caller gets none of the schedules acquired: the next acquisition puts them back
            self._not_answered("acquire_schedules", scheduler_id, answered, ttl)
            raise

    def _job_args(self, job: Job) -> list[Any]:
        """Return the 7 values that the scripts' add_job takes for ``job``."""
        deadline = _to_db(job.start_deadline)
        fire_time = _to_db(job.scheduled_fire_time)
        record = job.marshal(self.serializer)
        record["id"] = job_id = str(job.id)  # one str() for the key and the record
        return [
            job_id,
            job.task_id,
            job.schedule_id or "",
            "" if deadline is None else deadline,
            "" if fire_time is None else fire_time,
            job.result_expiration_time // _MICROSECOND,
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
        missed: dict[str, list[tuple[Job, JobResult]]] = {}
        for update in updates:
            times = (update.next_fire_time, update.next_run_time, update.last_fire_time)
            results = missed[update.schedule_id] = [
                (job, JobResult.for_job(job, JobOutcome.missed_start_deadline, finished_at=now))
                for job in update.missed_jobs
            ]
            kept = [(job, result) for job, result in results if job.result_expiration_time]
            args.append(update.schedule_id)
            args.extend(_to_arg(value) for value in times)
            args += [len(update.jobs), len(kept)]
            for job in update.jobs:
                args.extend(self._job_args(job))
            for job, result in kept:
                record = encode_record(result.marshal(self.serializer))
                args += [str(job.id), record, self._ttl_ms(result)]
        owned = {
            _text(schedule_id): _text(task_id)
            for schedule_id, task_id in await self._call("release_schedules", *args)
        }

        events: list[Event] = []
        for update in updates:
            if update.schedule_id not in owned:
                self._logger.debug(
                    "Dropped the update of schedule %r: its lease was lost", update.schedule_id
                )
                continue
            events += schedule_release_events(
                scheduler_id, update, owned[update.schedule_id], missed[update.schedule_id]
            )
        await self._publish(events)

    async def _unlease_schedules(self, scheduler_id: str, ids: Sequence[str]) -> None:
        await self._call("unlease_schedules", scheduler_id, *ids)

    async def get_next_schedule_run_time(self) -> datetime | None:
        """Return the earliest time a schedule may be acquired; see the base class."""
        skip = set(self._schedules_left_alone())
        last = len(skip)  # the first entry not left alone is among the first len(skip) + 1

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipeline:
                pipeline.zrange(self._key("due"), 0, last, withscores=True)
                pipeline.zrange(self._key("leased"), 0, last, withscores=True)
                replies: list[Any] = await pipeline.execute()
                return replies

        scores: list[int] = []
        for entries in await self._with_retries(read):
            for member, score in entries:
                if not skip or member.decode() not in skip:
                    scores.append(int(score))
                    break
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

    async def _jobs_from_records(
        self, records: Iterable[Any], unreadable: list[UnreadableJob] | None = None
    ) -> list[Job]:
        """Restore jobs from records (JSON text, or decoded).

        Those that cannot be are left out, reported (and added to ``unreadable``).
        """
        jobs: list[Job] = []
        events: list[Event] = []
        for raw in records:
            record = raw if isinstance(raw, dict) else decode_record(raw)
            record["id"] = UUID(record["id"])
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

    async def get_jobs(self, ids: Iterable[UUID] | None = None) -> list[Job]:
        """Return queued and running jobs in creation order; see the base class.

        With ``ids``, only those jobs are read (one hash each), however many jobs there are.
        """
        async for attempt in self._retrying():
            with attempt:
                if ids is None:
                    members = await self._scripts["list_jobs"](self._execute, self._root)
                    id_list = list(dict.fromkeys(_text(member) for member in members))
                else:
                    id_list = list(dict.fromkeys(str(job_id) for job_id in ids))
                async with self._redis.pipeline(transaction=False) as pipeline:
                    for job_id in id_list:
                        pipeline.hmget(
                            self._key("job", job_id),
                            "record",
                            "acquired_by",
                            "acquired_until",
                            "sequence",
                        )
                    replies = await pipeline.execute()
        found = [reply for reply in replies if reply[0] is not None]
        found.sort(key=lambda reply: int(reply[3] or 0))
        # a job that cannot be restored is left out (and reported), the others are listed
        return await self._jobs_from_records(
            _with_lease(record, acquired_by, acquired_until)
            for record, acquired_by, acquired_until, _ in found
        )

    async def _lease_jobs(
        self, scheduler_id: str, lease_duration: timedelta, limit: int
    ) -> tuple[list[Job], bool]:
        """Lease queued jobs, oldest first; see :meth:`DataStore.acquire_jobs`."""
        now = self._clock.now()
        args = (_to_db(now), _to_db(now + lease_duration))
        ttl = self._acquisition_ttl(lease_duration)
        records: list[Any] = []
        missed: list[Any] = []
        answered: list[str] = []
        try:
            while len(records) < limit:  # calls of _ACQUIRE_BATCH at most: none holds Redis long
                batch = min(limit - len(records), _ACQUIRE_BATCH)
                token = _new_token()
                try:
                    acquired, newly_missed, held_back = await self._acquire(
                        "acquire_jobs", scheduler_id, token, ttl, *args, batch
                    )
                except Exception:
                    if not records and not missed:
                        raise
                    self._logger.warning("Could not acquire more jobs", exc_info=True)
                    break
                answered.append(token)
                records += acquired
                missed += newly_missed
                self._jobs_held_back = bool(held_back)
                if len(acquired) < batch:
                    break
            unreadable: list[UnreadableJob] = []
            jobs = await self._jobs_from_records(records, unreadable)
            events = job_acquisition_events(scheduler_id, now, jobs, ())
            events.extend(
                job_released_event(
                    scheduler_id, job, _ended(job, JobOutcome.missed_start_deadline, now)
                )
                for job in map(_released_job, missed)
            )
            await self._publish(events)
            # jobs that cannot run here end now, as errors (never raises: the others must
            # reach the worker)
            await self._release_unreadable_jobs(scheduler_id, now, unreadable)
        except BaseException:
            # the caller gets none of the jobs acquired: the next acquisition puts them back
            self._not_answered("acquire_jobs", scheduler_id, answered, ttl)
            raise
        return jobs, bool(unreadable)

    def _ttl_ms(self, result: JobResult) -> int:
        return max(1, (result.expires_at - self._clock.now()) // timedelta(milliseconds=1))

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
        released = map(_released_job, await self._call("release_jobs", *args))
        await self._publish(
            job_released_event(scheduler_id, job, kept_results[job.id]) for job in released
        )

    async def return_jobs(self, scheduler_id: str, jobs: Sequence[Job]) -> None:
        """Queue acquired, unstarted jobs again in one script call.

        See :meth:`DataStore.return_jobs`.
        """
        if not jobs:
            return
        by_id = {str(job.id): job for job in jobs}
        returned = await self._call("return_jobs", scheduler_id, *by_id)
        await self._publish(
            JobAdded(job_id=job.id, task_id=job.task_id, schedule_id=job.schedule_id)
            for job in (by_id[_text(job_id)] for job_id in returned)
        )

    async def get_job_result(self, job_id: UUID) -> JobResult | None:
        """Return a kept, unexpired result; see :meth:`DataStore.get_job_result`."""
        key = self._key("result", str(job_id))
        execute = self._execute
        data = await self._with_retries(lambda: execute("GET", key))
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
        """Release abandoned and overdue jobs, keeping their results, in one script call.

        See :meth:`DataStore.cleanup`; kept results expire on their own (a Redis TTL).
        """
        now = self._clock.now()
        abandoned, overdue = await self._call("cleanup", _to_db(now))
        events: list[Event] = []
        for owner, *fields in abandoned:
            job, scheduler_id = _released_job(fields), _text(owner) or "cleanup"
            self._logger.warning(
                "Job %s (task %r) was abandoned: the lease of %s on it expired",
                job.id,
                job.task_id,
                scheduler_id,
            )
            events.append(
                job_released_event(scheduler_id, job, _ended(job, JobOutcome.abandoned, now))
            )
        events.extend(
            job_released_event("cleanup", job, _ended(job, JobOutcome.missed_start_deadline, now))
            for job in map(_released_job, overdue)
        )
        await self._publish(events)


def _connection_setting(client: aioredis.Redis, name: str) -> Any:
    """Return a setting of the connections of ``client``'s pool (given, or the default)."""
    pool = client.connection_pool
    if name in pool.connection_kwargs:
        return pool.connection_kwargs[name]
    for cls in pool.connection_class.__mro__:  # (subclasses pass most settings on as **kwargs)
        init = vars(cls).get("__init__")
        parameter = None if init is None else inspect.signature(init).parameters.get(name)
        if parameter is not None:
            return parameter.default
    return None


def _released_job(fields: Sequence[bytes]) -> ReleasedJob:
    """Read a job as the scripts report one they ended: id, task id, schedule id, fire time."""
    job_id, task_id, schedule_id, fire_time = fields
    return ReleasedJob(
        UUID(job_id.decode()), task_id.decode(), _text(schedule_id) or None, _from_db(fire_time)
    )


def _ended(job: ReleasedJob, outcome: JobOutcome, now: datetime) -> JobResult:
    """Return the result of a job ended without running, for its event (the script kept it)."""
    return JobResult(job_id=job.id, outcome=outcome, finished_at=now, expires_at=now)


def _with_lease(
    raw: bytes, acquired_by: bytes | None, acquired_until: bytes | None
) -> dict[str, Any]:
    """Return a job's record with the lease its hash holds (the record has none)."""
    record = decode_record(raw)
    record["acquired_by"] = acquired_by.decode() if acquired_by else None
    record["acquired_until"] = _from_db(acquired_until)
    return record


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash_dict(raw: Any) -> dict[str, bytes]:
    """HGETALL replies: a dict from the client, a flat list from a Lua script."""
    if isinstance(raw, dict):
        return {key.decode(): value for key, value in raw.items()}
    return {raw[index].decode(): raw[index + 1] for index in range(0, len(raw), 2)}
