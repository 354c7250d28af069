"""A loopback TCP proxy in front of the real PostgreSQL server that can lose a reply.

Armed with a predicate on statement text, it lets the next matching statement reach the
server and run to the end (in autocommit, committed by the time the server says it is ready
for the next query), then closes both connections without passing the reply on: the client
sees a dropped connection for work the server did. That is the fault a network cut or a
timeout causes between commit and reply, made to happen exactly once, on purpose.

It reads the protocol's message framing only (a type byte and a length), so connections
through it must not use TLS (``sslmode=disable``).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import SocketStream

#: request codes of the untyped messages a client may send before its startup message
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


class _MessageReader:
    """Splits a byte stream into protocol messages as bytes arrive."""

    def __init__(self, *, typed: bool) -> None:
        self.typed = typed
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Return the (type, body) of each message completed by ``data`` (type b"" if none)."""
        self._buffer += data
        messages: list[tuple[bytes, bytes]] = []
        while True:
            header = 5 if self.typed else 4
            if len(self._buffer) < header:
                return messages
            kind = bytes(self._buffer[:1]) if self.typed else b""
            (length,) = struct.unpack("!I", self._buffer[header - 4 : header])
            end = header - 4 + length
            if len(self._buffer) < end:
                return messages
            messages.append((kind, bytes(self._buffer[header:end])))
            del self._buffer[:end]
            if not self.typed:
                (code,) = struct.unpack("!I", messages[-1][1][:4])
                if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    self.typed = True  # the startup message: typed messages from now on


class ReplyDroppingProxy:
    """Forwards connections to PostgreSQL; :meth:`drop_reply_to` loses one reply."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._predicate: Callable[[str], bool] | None = None
        self._stall = False
        self.dropped = 0  # replies lost so far
        self.port = 0

    def drop_reply_to(self, predicate: Callable[[str], bool], *, stall: bool = False) -> None:
        """Lose the reply to the next statement whose SQL text ``predicate`` accepts.

        The connection is closed once the statement has committed; with ``stall``, it stays
        open and silent instead, as a connection whose peer vanished without a word.
        """
        self._predicate = predicate
        self._stall = stall

    async def serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Listen on a free loopback port (:attr:`port`) until cancelled."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        upstream = await anyio.connect_tcp(*self._upstream)
        statements: dict[bytes, str] = {}  # prepared statement name -> SQL text
        bound: list[str] = [""]  # SQL text of the statement bound last
        dropping = anyio.Event()  # set once this connection's next reply is to be lost

        async def client_to_server() -> None:
            reader = _MessageReader(typed=False)
            async for data in client:
                for kind, body in reader.feed(data):
                    if kind == b"P":  # Parse: name, SQL text, ...
                        name, text = body.split(b"\0")[:2]
                        statements[name] = text.decode()
                    elif kind == b"B":  # Bind: portal, statement name, ...
                        bound[0] = statements.get(body.split(b"\0")[1], "")
                    elif kind == b"Q":  # a simple query carries its text
                        bound[0] = body.rstrip(b"\0").decode()
                    if kind in (b"E", b"Q") and self._predicate and self._predicate(bound[0]):
                        self._predicate = None
                        dropping.set()
                await upstream.send(data)
            task_group.cancel_scope.cancel()  # the client left: close the server side too

        async def server_to_client() -> None:
            reader = _MessageReader(typed=True)
            async for data in upstream:
                if not dropping.is_set():
                    reader.feed(data)  # keep the framing in step
                    await client.send(data)
                    continue
                # withhold everything up to ReadyForQuery: the statement has committed
                if any(kind == b"Z" for kind, _ in reader.feed(data)):
                    self.dropped += 1
                    if self._stall:
                        await anyio.sleep_forever()  # until the client gives up
                    break
            task_group.cancel_scope.cancel()  # the server left (or the reply is lost)

        async with client, upstream, anyio.create_task_group() as task_group:
            task_group.start_soon(client_to_server)
            task_group.start_soon(server_to_client)


@asynccontextmanager
async def reply_dropping_proxy(url: str) -> AsyncIterator[tuple[ReplyDroppingProxy, str]]:
    """Run a :class:`ReplyDroppingProxy` for the server of ``url``; yield it and its URL."""
    parts = urlsplit(url)
    proxy = ReplyDroppingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with anyio.create_task_group() as task_group:
        await task_group.start(proxy.serve)
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else ""
        separator = "&" if parts.query else ""
        proxied = urlunsplit(
            parts._replace(
                netloc=netloc or f"127.0.0.1:{proxy.port}",
                query=f"{parts.query}{separator}sslmode=disable",
            )
        )
        yield proxy, proxied
        task_group.cancel_scope.cancel()
