"""PostgreSQLEventBroker: events between processes over LISTEN/NOTIFY (asyncpg).

Events are delivered locally at once; a sender task relays them to other processes in
batches (one ``SELECT pg_notify(...) FROM unnest(...)`` round trip per batch). A dedicated
listening connection receives the others' events and reconnects after a drop. NOTIFY
payloads are limited to 8,000 bytes: longer events travel in numbered chunks and are
reassembled by the listeners.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any
from uuid import uuid4

import anyio
import asyncpg

from .._exceptions import describe_error
from .._urls import check_url, split_own_options
from .base import RECONNECT_DELAYS, BaseExternalEventBroker

_CHANNEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# JSON from json.dumps is ASCII, so characters are bytes; stay well under NOTIFY's 8,000
_CHUNK_SIZE = 7_000
_CHUNK_PREFIX = "#chunk "
# a message of more chunks than this is not one of ours (and must not allocate a huge list)
_MAX_CHUNKS = 10_000


#: errors of a server starting up or shutting down, and of too many connections
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "53400"})


class PostgreSQLEventBroker(BaseExternalEventBroker):
    """Relays events between processes with PostgreSQL's LISTEN/NOTIFY.

    :param dsn: a ``postgresql://`` URL (``?channel=name`` picks the channel)
    :param channel: the NOTIFY channel; schedulers sharing a store must share it
    :raises ValueError: on a channel name that is not a plain identifier
    """

    asyncio_only_library = "asyncpg"

    def __init__(self, dsn: str, *, channel: str | None = None) -> None:
        super().__init__()
        if not isinstance(dsn, str):
            raise TypeError(f"PostgreSQLEventBroker: expected a postgresql:// URL, got {dsn!r}")
        check_url(dsn, "PostgreSQLEventBroker")
        self._dsn, options = split_own_options(dsn, "postgresql")
        self.channel = channel or options.get("channel") or options.get("schema") or "asched"
        if not isinstance(self.channel, str) or not _CHANNEL.fullmatch(self.channel):
            raise ValueError(
                f"PostgreSQLEventBroker: channel must be a plain identifier, got {self.channel!r}"
            )
        self._chunks: dict[str, list[str | None]] = {}
        self._sender: asyncpg.Connection | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self.channel!r})"

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

    async def _close_sender(self) -> None:
        if self._sender is not None:
            with anyio.CancelScope(shield=True):
                await self._sender.close(timeout=2)
            self._sender = None

    async def _send_batch(self, messages: list[str]) -> None:
        payloads = [payload for message in messages for payload in self._payloads(message)]
        try:
            if self._sender is None or self._sender.is_closed():
                self._sender = await asyncpg.connect(self._dsn)
            await self._sender.execute(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                self.channel,
                payloads,
            )
        except BaseException:
            # a broken connection is replaced on the next attempt
            if self._sender is not None:
                self._sender.terminate()
                self._sender = None
            raise

    #
    # Listening
    #

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if payload.startswith(_CHUNK_PREFIX):
            assembled = self._assemble(payload)
            if assembled is None:
                return
            payload = assembled
        self.deliver_remote(payload)

    def _assemble(self, payload: str) -> str | None:
        """Keep one chunk; return the whole message once its last chunk is in.

        Anyone may NOTIFY on the channel: a chunk that does not parse, or whose index or count
        does not fit its message, is logged and skipped.
        """
        try:
            message_id, index_text, count_text, part = payload[len(_CHUNK_PREFIX) :].split(" ", 3)
            index, count = int(index_text), int(count_text)
            if not 0 < count <= _MAX_CHUNKS or not 0 <= index < count:
                raise ValueError(f"chunk {index} of {count}")
            parts = self._chunks.setdefault(message_id, [None] * count)
            if len(parts) != count:
                raise ValueError(f"{count} chunks, earlier chunks said {len(parts)}")
        except ValueError as exc:
            self._logger.warning("Ignoring a malformed event chunk (%s): %.100r", exc, payload)
            return None
        parts[index] = part
        if any(piece is None for piece in parts):
            if len(self._chunks) > 1000:  # senders that died mid-message leave debris
                self._chunks.pop(next(iter(self._chunks)))
            return None
        del self._chunks[message_id]
        return "".join(piece or "" for piece in parts)

    def _is_transient(self, exc: Exception) -> bool:
        if isinstance(exc, asyncpg.PostgresError):
            # connection exceptions (class 08), a server starting up or shutting down, too
            # many connections; not a missing database, a wrong password or an unknown option
            sqlstate = exc.sqlstate or ""
            return sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
        if isinstance(exc, asyncpg.ClientConfigurationError):  # a bad DSN option
            return False
        return isinstance(
            exc, (OSError, TimeoutError, asyncio.TimeoutError, asyncpg.InterfaceError)
        )

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen_until_closed(reconnected=attempt > 0)
                attempt = 0
                self._logger.warning("Event broker lost its listening connection; reconnecting")
            except Exception as exc:  # any failure: this loop must not die
                self._listen_failed(exc)
                self._logger.warning(
                    "Event broker cannot listen (%s); retrying", describe_error(exc)
                )
            await anyio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _listen_until_closed(self, *, reconnected: bool) -> None:
        closed = anyio.Event()
        connection = await asyncpg.connect(self._dsn)
        try:
            connection.add_termination_listener(lambda _connection: closed.set())
            await connection.add_listener(self.channel, self._on_notification)
            if reconnected:
                self._logger.info("Event broker reconnected to channel %r", self.channel)
            self._now_listening()
            await closed.wait()
        finally:
            if not connection.is_closed():
                with anyio.CancelScope(shield=True):
                    await connection.close(timeout=2)
