"""RedisEventBroker: events between processes over Redis pub/sub (redis-py's asyncio client).

Events are delivered locally at once; a sender task relays them to other processes in
batches (one pipelined round trip of PUBLISH commands per batch). A dedicated pub/sub
connection receives the others' events and resubscribes after a drop.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis

from ..datastores.redis import split_url
from .base import RECONNECT_DELAYS, BaseExternalEventBroker


class RedisEventBroker(BaseExternalEventBroker):
    """Relays events between processes with Redis pub/sub.

    :param url: a ``redis://`` URL (``?channel=name`` or ``?prefix=name`` picks the channel)
    :param channel: the pub/sub channel; schedulers sharing a store must share it
    """

    def __init__(self, url: str, *, channel: str | None = None) -> None:
        super().__init__()
        if not isinstance(url, str):
            raise TypeError(f"RedisEventBroker: expected a redis:// URL, got {url!r}")
        self._url, options = split_url(url)
        self.channel = channel or options.get("channel") or options.get("prefix") or "asched"
        self._sender: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

    def _client(self, role: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url, health_check_interval=10, client_name=f"asched-{role}-{self.channel}"
        )

    async def _close_sender(self) -> None:
        if self._sender is not None:
            with anyio.CancelScope(shield=True):
                await self._sender.aclose()
            self._sender = None

    async def _send_batch(self, messages: list[str]) -> None:
        if self._sender is None:
            self._sender = self._client("publisher")
        async with self._sender.pipeline(transaction=False) as pipeline:
            for message in messages:
                pipeline.publish(self.channel, message)
            await pipeline.execute()

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            client = self._client("listener")
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if attempt:
                    self._logger.info("Event broker resubscribed to channel %r", self.channel)
                attempt = 0
                self._listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.deliver_remote(message["data"])
                self._logger.warning("Event broker lost its subscription; reconnecting")
            except Exception as exc:  # any failure: this loop must not die
                self._logger.warning("Event broker cannot listen (%r); reconnecting", exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await anyio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1
