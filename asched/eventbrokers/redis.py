"""RedisEventBroker: events between processes over Redis pub/sub (redis-py's asyncio client).

Events are delivered locally at once; a sender task relays them to other processes in
batches (one pipelined round trip of PUBLISH commands per batch). A dedicated pub/sub
connection receives the others' events and resubscribes after a drop.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterDownError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._exceptions import describe_error
from .._redis_client import RedisClient
from .._urls import check_url, split_own_options
from .base import RECONNECT_DELAYS, BaseExternalEventBroker


class RedisEventBroker(BaseExternalEventBroker):
    """Relays events between processes with Redis pub/sub.

    :param url_or_client: a ``redis://`` URL (``?channel=name`` or ``?prefix=name`` picks the
        channel), or a ``redis.asyncio.Redis`` or ``RedisCluster`` client the application
        already has: the broker publishes through it and takes one connection of its pool for
        its subscription (``client.pubsub()``); it never closes the client
    :param channel: the pub/sub channel; schedulers sharing a store must share it (default:
        the URL's ``channel`` or ``prefix``, else ``asched``)
    :raises TypeError: if ``url_or_client`` is neither a URL nor a client
    """

    asyncio_only_library = "redis-py's asyncio client"

    def __init__(self, url_or_client: str | RedisClient, *, channel: str | None = None) -> None:
        super().__init__()
        self._url: str | None = None
        self._given: RedisClient | None = None
        options: dict[str, str] = {}
        if isinstance(url_or_client, str):
            check_url(url_or_client, "RedisEventBroker")
            self._url, options = split_own_options(url_or_client, "redis")
        elif isinstance(url_or_client, (aioredis.Redis, aioredis.RedisCluster)):
            self._given = url_or_client
        else:
            raise TypeError(
                f"RedisEventBroker: expected a redis:// URL or a redis.asyncio.Redis or "
                f"RedisCluster client, got {url_or_client!r}"
            )
        self.channel = channel or options.get("channel") or options.get("prefix") or "asched"
        self._sender: RedisClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

    def _client(self, role: str) -> aioredis.Redis:
        assert self._url is not None
        return aioredis.Redis.from_url(
            self._url, health_check_interval=10, client_name=f"asched-{role}-{self.channel}"
        )

    async def _close_sender(self) -> None:
        if self._sender is not None and self._given is None:
            with anyio.CancelScope(shield=True):
                await self._sender.aclose()
        self._sender = None

    async def _send_batch(self, messages: list[str]) -> None:
        if self._sender is None:
            self._sender = self._given or self._client("publisher")
        if len(messages) == 1 or isinstance(self._sender, aioredis.RedisCluster):
            # a cluster pipeline has no node for keyless commands; any node relays a PUBLISH
            for message in messages:
                await self._sender.publish(self.channel, message)
            return
        async with self._sender.pipeline(transaction=False) as pipeline:
            for message in messages:
                pipeline.publish(self.channel, message)
            await pipeline.execute()

    def _is_transient(self, exc: Exception) -> bool:
        # redis-py makes a wrong password a ConnectionError, but no retry mends one
        if isinstance(exc, (AuthenticationError, AuthenticationWrongNumberOfArgsError)):
            return False
        return isinstance(
            exc,
            (
                RedisConnectionError,
                RedisTimeoutError,
                BusyLoadingError,
                ClusterDownError,
                TryAgainError,
                OSError,
                TimeoutError,
            ),
        )

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            # a connection of its own, or one taken from the given client's pool
            client = self._client("listener") if self._given is None else None
            source = client or self._given
            assert source is not None
            pubsub: PubSub | None = None
            try:
                if isinstance(source, aioredis.RedisCluster):
                    await source.initialize()  # a cluster pub/sub picks its node from the map
                pubsub = source.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                if attempt:
                    self._logger.info("Event broker resubscribed to channel %r", self.channel)
                attempt = 0
                self._now_listening()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.deliver_remote(message["data"])
                self._logger.warning("Event broker lost its subscription; reconnecting")
            except Exception as exc:  # any failure: this loop must not die
                self._listen_failed(exc)
                self._logger.warning(
                    "Event broker cannot listen (%s); reconnecting", describe_error(exc)
                )
            finally:
                with anyio.CancelScope(shield=True):
                    if pubsub is not None:
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                    if client is not None:
                        await client.aclose()
            await anyio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1
