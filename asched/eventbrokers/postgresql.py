"""PostgreSQLEventBroker: events between processes over LISTEN/NOTIFY (asyncpg).

Events are delivered locally at once; a sender task relays them to other processes in
batches (one ``SELECT pg_notify(...) FROM unnest(...)`` round trip per batch). A dedicated
listening connection receives the others' events and reconnects after a drop. NOTIFY
payloads are limited to 8,000 bytes: longer events travel in numbered chunks and are
reassembled by the listeners.
"""

from __future__ import annotations

import math
import re
from contextlib import AsyncExitStack
from logging import Logger
from typing import Any
from uuid import uuid4

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..datastores.postgresql import split_dsn
from ..events import Event
from .base import BaseExternalEventBroker

_CHANNEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# JSON from json.dumps is ASCII, so characters are bytes; stay well under NOTIFY's 8,000
_CHUNK_SIZE = 7_000
_CHUNK_PREFIX = "#chunk "
_MAX_BATCH = 500
_RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class PostgreSQLEventBroker(BaseExternalEventBroker):
    """Relays events between processes with PostgreSQL's LISTEN/NOTIFY.

    :param dsn: a ``postgresql://`` URL (``?channel=name`` picks the channel)
    :param channel: the NOTIFY channel; schedulers sharing a store must share it
    :raises ValueError: on a channel name that is not a plain identifier
    """

    def __init__(self, dsn: str, *, channel: str | None = None) -> None:
        super().__init__()
        if not isinstance(dsn, str):
            raise TypeError(f"PostgreSQLEventBroker: expected a postgresql:// URL, got {dsn!r}")
        self._dsn, options = split_dsn(dsn)
        self.channel = channel or options.get("channel") or options.get("schema") or "asched"
        if not _CHANNEL.match(self.channel):
            raise ValueError(
                f"PostgreSQLEventBroker: channel must be a plain identifier, got {self.channel!r}"
            )
        self._send: MemoryObjectSendStream[str] | None = None
        self._chunks: dict[str, list[str | None]] = {}
        self._listening = anyio.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

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

    #
    # Sending
    #

    def _payloads(self, message: str) -> list[str]:
        if len(message) <= _CHUNK_SIZE:
            return [message]
        message_id = uuid4().hex
        count = math.ceil(len(message) / _CHUNK_SIZE)
        return [
            f"{_CHUNK_PREFIX}{message_id} {index} {count} "
            + message[index * _CHUNK_SIZE : (index + 1) * _CHUNK_SIZE]
            for index in range(count)
        ]

    async def _send_forever(self, receive: MemoryObjectReceiveStream[str]) -> None:
        connection: asyncpg.Connection | None = None
        try:
            async for message in receive:
                batch = [message]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                payloads = [payload for item in batch for payload in self._payloads(item)]
                for delay in (*_RECONNECT_DELAYS, None):
                    try:
                        if connection is None or connection.is_closed():
                            connection = await asyncpg.connect(self._dsn)
                        await connection.execute(
                            "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                            self.channel,
                            payloads,
                        )
                        break
                    except Exception as exc:  # any failure: this loop must not die
                        if connection is not None:
                            connection.terminate()
                        connection = None
                        if delay is None:
                            self._logger.error(
                                "Could not relay %d events to other processes: %r",
                                len(batch),
                                exc,
                            )
                            break
                        await anyio.sleep(delay)
        finally:
            if connection is not None:
                with anyio.CancelScope(shield=True):
                    await connection.close(timeout=2)

    #
    # Listening
    #

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if payload.startswith(_CHUNK_PREFIX):
            assembled = self._assemble(payload)
            if assembled is None:
                return
            payload = assembled
        event = self.decode_event(payload)
        if event is not None:
            self.publish_local(event)

    def _assemble(self, payload: str) -> str | None:
        try:
            message_id, index_text, count_text, part = payload[len(_CHUNK_PREFIX) :].split(" ", 3)
            index, count = int(index_text), int(count_text)
        except ValueError:
            self._logger.warning("Ignoring a malformed event chunk: %.100r", payload)
            return None
        parts = self._chunks.setdefault(message_id, [None] * count)
        parts[index] = part
        if any(piece is None for piece in parts):
            if len(self._chunks) > 1000:  # senders that died mid-message leave debris
                self._chunks.pop(next(iter(self._chunks)))
            return None
        del self._chunks[message_id]
        return "".join(piece or "" for piece in parts)

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen_until_closed(reconnected=attempt > 0)
                attempt = 0
                self._logger.warning("Event broker lost its listening connection; reconnecting")
            except Exception as exc:  # any failure: this loop must not die
                self._logger.warning("Event broker cannot listen (%r); retrying", exc)
            await anyio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _listen_until_closed(self, *, reconnected: bool) -> None:
        closed = anyio.Event()
        connection = await asyncpg.connect(self._dsn)
        try:
            connection.add_termination_listener(lambda _connection: closed.set())
            await connection.add_listener(self.channel, self._on_notification)
            if reconnected:
                self._logger.info("Event broker reconnected to channel %r", self.channel)
            self._listening.set()
            await closed.wait()
        finally:
            if not connection.is_closed():
                with anyio.CancelScope(shield=True):
                    await connection.close(timeout=2)
