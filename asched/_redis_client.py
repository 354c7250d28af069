"""The Redis clients the Redis store and broker accept (needs the ``redis`` extra)."""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis

#: a client the Redis store and broker accept (a Redis Cluster works: all of a store's keys
#: share one slot)
RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster
