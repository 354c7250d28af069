"""One Redis connection for many tasks, each sending without waiting for earlier replies.

(Needs the ``redis`` extra: hiredis parses the replies.) Redis answers the commands of a
connection in the order they arrived, so a queue of futures matches replies to callers. A
caller that is cancelled or gives up leaves its future in the queue, and its reply, when
it comes, is read and dropped: the replies after it still reach their callers. A command
costs about half the client CPU it costs through redis-py's pool (no connection checked
out and back, no per-command health check or timeout context), and concurrent commands go
out together without waiting for each other.

The connection speaks RESP2 whatever redis-py's client speaks (RESP3 by default since
redis-py 8): the store's scripts return only strings, integers, nil and arrays, which read
the same in both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _error_of(reply: hiredis.ReplyError) -> RedisError:
    """Return the exception redis-py's own client raises for an error reply.

    (redis-py's table of error codes, so that ``MaxClientsReachedError``, ``NoScriptError``,
    ``BusyLoadingError`` and the rest are the classes the store's retries know.)
    """
    error: RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class _ReplyProtocol(asyncio.Protocol):
    """The connection's protocol: writes commands and hands replies to the waiting futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        #: why the connection was lost, once it is: a lost one is never written to again
        self.loss: RedisError | None = None
        #: how many commands were written, and how many replies came (whoever waits)
        self.sent = self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting:
                    # a reply nobody asked for: Redis refusing the connection as it opens
                    # (too many clients, protected mode) says why; other data (RESP3 push
                    # messages) would leave every later reply with the wrong caller
                    self.close(
                        _error_of(reply)
                        if isinstance(reply, hiredis.ReplyError)
                        else RedisConnectionError("Redis sent a reply nobody asked for")
                    )
                    return
                waiter = self._waiting.popleft()
                self.answered += 1
                if not waiter.done():
                    waiter.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.close(RedisConnectionError(f"Redis sent what is not RESP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.loss is None:
            reason = "Redis closed the connection" if exc is None else f"connection lost: {exc}"
            self.loss = RedisConnectionError(reason)
        self._fail_waiting(self.loss)

    def _fail_waiting(self, exc: RedisError) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    @property
    def usable(self) -> bool:
        """Whether commands can still be written (not lost, not closing)."""
        # (a closing transport is one asyncio is about to report lost: a write failed, or
        # the server closed it)
        return (
            self.loss is None and self._transport is not None and not self._transport.is_closing()
        )

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; return the future of its reply.

        On a lost connection, the future has failed already with the reason of the loss.
        """
        waiter = self._loop.create_future()
        if not self.usable:
            waiter.set_exception(self.loss or RedisConnectionError("the connection is closing"))
            return waiter
        assert self._transport is not None
        self._waiting.append(waiter)
        self._transport.write(packed)
        self.sent += 1
        return waiter

    def close(self, exc: RedisError) -> None:
        """Fail every waiting caller with ``exc`` and drop the connection at once."""
        if self.loss is None:
            self.loss = exc
        self._fail_waiting(exc)
        if self._transport is not None:
            self._transport.abort()


class PipelinedConnection:
    """A connection to one Redis server for commands from many tasks at once.

    It connects on first use and again after a loss; a command in flight when the connection
    is lost fails with redis-py's ``ConnectionError`` (the server may or may not have run
    it), one not answered within ``reply_timeout`` with its ``TimeoutError`` (and the
    connection is dropped, failing the others in flight with ``ConnectionError``). Callers
    that find the connection lost share one attempt to open it again, bounded as a whole
    (connecting and the handshake) by ``connect_timeout``. Error replies raise redis-py's
    exception for their code (``NoScriptError``, ``ResponseError``, …). Replies are as
    hiredis parses them: bytes, ints, lists and ``None``.

    :param host: the server's host name or address (for TCP)
    :param port: its TCP port
    :param path: the server's Unix socket (instead of ``host`` and ``port``)
    :param db: the database to select
    :param username: the ACL user to authenticate as
    :param password: the password to authenticate with
    :param client_name: the name the connection gives itself (``CLIENT SETNAME``)
    :param connect_timeout: seconds to connect and authenticate
    :param reply_timeout: seconds to wait for a reply
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float = 5.0,
    ) -> None:
        self._address = (host, port)
        self._path = path
        self._handshake: list[tuple[Any, ...]] = []
        if username is not None:
            self._handshake.append(("AUTH", username, password or ""))
        elif password is not None:
            self._handshake.append(("AUTH", password))
        if db:
            self._handshake.append(("SELECT", db))
        if client_name:
            self._handshake.append(("CLIENT", "SETNAME", client_name))
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._protocol: _ReplyProtocol | None = None
        #: the attempt to (re)open the connection that every caller meanwhile waits for
        self._opening: asyncio.Task[_ReplyProtocol] | None = None
        #: a connection still shaking hands (closed at once if the connection is closed)
        self._handshaking: _ReplyProtocol | None = None
        self._closed = False

    @classmethod
    def of_client(cls, client: aioredis.Redis) -> PipelinedConnection | None:
        """Return a connection with the settings of ``client``'s connections, if it can.

        Only for plain TCP and Unix socket connections with a fixed password: ``None`` for
        TLS, Sentinel, credential providers and connection classes of their own, which
        only redis-py's client knows how to open.
        """
        pool = client.connection_pool
        settings = pool.connection_kwargs
        if type(pool) is not aioredis.ConnectionPool or settings.get("credential_provider"):
            return None
        common: dict[str, Any] = {
            "db": int(settings.get("db") or 0),
            "username": settings.get("username"),
            "password": settings.get("password"),
            "client_name": settings.get("client_name"),
            "connect_timeout": settings.get("socket_connect_timeout")
            or settings.get("socket_timeout")
            or 5.0,
            "reply_timeout": settings.get("socket_timeout") or 5.0,
        }
        if pool.connection_class is aioredis.Connection:
            return cls(
                host=settings.get("host", "localhost"),
                port=int(settings.get("port", 6379)),
                **common,
            )
        if pool.connection_class is aioredis.UnixDomainSocketConnection:
            return cls(path=settings["path"], **common)
        return None

    async def execute(self, *args: Any) -> Any:
        """Send one command (its name, then its arguments); return the server's reply.

        :raises redis.exceptions.ConnectionError: if the connection could not be opened, was
            lost before the reply came, or was closed
        :raises redis.exceptions.TimeoutError: if no reply came in time
        :raises redis.exceptions.ResponseError: (or a subclass) for an error reply
        """
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._open()
        waiter = protocol.send(hiredis.pack_command(args))
        timer = asyncio.get_running_loop().call_later(
            self._reply_timeout, self._time_out, protocol, waiter, protocol.sent
        )
        try:
            reply = await waiter
        except asyncio.CancelledError:
            # the timer stays: a caller leaving must not keep a silent connection alive
            raise
        except BaseException:
            timer.cancel()
            raise
        timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            raise _error_of(reply)
        return reply

    def _time_out(
        self, protocol: _ReplyProtocol, waiter: asyncio.Future[Any], number: int
    ) -> None:
        if protocol.answered >= number or protocol.loss is not None:
            return  # its reply came (to a caller that left), or the connection is gone
        # a server that sends nothing for this long is gone or stuck: fail this call and,
        # by dropping the connection, every other in flight, which can then retry
        if not waiter.done():
            waiter.set_exception(
                RedisTimeoutError(f"no reply from Redis within {self._reply_timeout:g} s")
            )
        protocol.close(RedisConnectionError("connection dropped: an earlier command got no reply"))

    async def _open(self) -> _ReplyProtocol:
        """Return an open connection, opening it (once for all callers) if need be."""
        if self._closed:
            raise RedisConnectionError("the connection to Redis was closed")
        if self._opening is None:
            opening = asyncio.get_running_loop().create_task(self._connect())
            opening.add_done_callback(self._opened)
            self._opening = opening
        # shielded: one caller cancelled leaves the attempt to the others (it ends by itself
        # within the connect timeout)
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Task[_ReplyProtocol]) -> None:
        if self._opening is opening:
            self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved: when every caller left, nobody else does

    async def _connect(self) -> _ReplyProtocol:
        try:
            protocol = await asyncio.wait_for(
                self._connect_and_shake_hands(), self._connect_timeout
            )
        except asyncio.TimeoutError as exc:
            raise RedisTimeoutError(
                f"Redis: no connection to {self._where} within {self._connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
            raise RedisConnectionError(
                f"Redis: error connecting to {self._where}: {reason}"
            ) from exc
        if self._closed:
            protocol.close(RedisConnectionError("the connection to Redis was closed"))
            raise RedisConnectionError("the connection to Redis was closed")
        self._protocol = protocol
        return protocol

    @property
    def _where(self) -> str:
        host, port = self._address
        return self._path or f"{host}:{port}"

    async def _connect_and_shake_hands(self) -> _ReplyProtocol:
        loop = asyncio.get_running_loop()
        if self._path is not None:
            _, protocol = await loop.create_unix_connection(
                lambda: _ReplyProtocol(loop), self._path
            )
        else:
            _, protocol = await loop.create_connection(
                lambda: _ReplyProtocol(loop), *self._address
            )
        waiters = [protocol.send(hiredis.pack_command(command)) for command in self._handshake]
        self._handshaking = protocol
        try:
            for waiter in waiters:
                reply = await waiter
                if isinstance(reply, hiredis.ReplyError):
                    raise _error_of(reply)
        except BaseException:
            for waiter in waiters:
                waiter.cancel()  # their outcomes are of no interest any more
            protocol.close(RedisConnectionError("Redis: the connection failed while opening"))
            raise
        finally:
            self._handshaking = None
        if not protocol.usable:
            assert protocol.loss is not None
            raise protocol.loss
        return protocol

    async def aclose(self) -> None:
        """Close the connection: commands in flight, and any sent later, fail."""
        self._closed = True
        if self._handshaking is not None:
            self._handshaking.close(RedisConnectionError("the connection to Redis was closed"))
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("the connection to Redis was closed"))
            self._protocol = None
