"""RedisEventBroker: events between processes over Redis pub/sub (redis-py's asyncio client).

Events are delivered locally at once; a sender task relays them to other processes in
batches (one pipelined round trip of PUBLISH commands per batch). A dedicated pub/sub
connection receives the others' events and resubscribes after a drop.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from logging import Logger

import anyio
import redis.asyncio as aioredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..datastores.redis import split_url
from ..events import Event
from .base import BaseExternalEventBroker

_MAX_BATCH = 500
_RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


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
        self._send: MemoryObjectSendStream[str] | None = None
        self._listening = anyio.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

    def _client(self, role: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url, health_check_interval=10, client_name=f"asched-{role}-{self.channel}"
        )

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        """Start listening and sending; see :meth:`EventBroker.start`."""
        await super().start(exit_stack, logger)
        send, receive = anyio.create_memory_object_stream[str](100_000)
        self._send = send
        exit_stack.callback(receive.close)
        exit_stack.callback(send.close)
        task_group = await exit_stack.enter_async_context(anyio.create_task_group())
        exit_stack.callback(task_group.cancel_scope.cancel)
        task_group.start_soon(self._listen_forever)
        task_group.start_soon(self._send_forever, receive)
        with anyio.fail_after(30):
            await self._listening.wait()

    async def publish(self, event: Event) -> None:
        """Deliver locally, then queue the event for other processes; never raises."""
        self.publish_local(event)
        if self._send is None:
            return
        try:
            self._send.send_nowait(self.encode_event(event))
        except anyio.WouldBlock:
            self._logger.warning("Event relay queue full: %s not sent to other processes", event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def _send_forever(self, receive: MemoryObjectReceiveStream[str]) -> None:
        client = self._client("publisher")
        try:
            async for message in receive:
                batch = [message]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                for delay in (*_RECONNECT_DELAYS, None):
                    try:
                        async with client.pipeline(transaction=False) as pipeline:
                            for payload in batch:
                                pipeline.publish(self.channel, payload)
                            await pipeline.execute()
                        break
                    except Exception as exc:  # any failure: this loop must not die
                        if delay is None:
                            self._logger.error(
                                "Could not relay %d events to other processes: %r",
                                len(batch),
                                exc,
                            )
                            break
                        await anyio.sleep(delay)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

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
                        event = self.decode_event(message["data"])
                        if event is not None:
                            self.publish_local(event)
                self._logger.warning("Event broker lost its subscription; reconnecting")
            except Exception as exc:  # any failure: this loop must not die
                self._logger.warning("Event broker cannot listen (%r); reconnecting", exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await anyio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            attempt += 1
