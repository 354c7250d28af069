"""The Redis store's pipelined connection, against the real server: replies reach their
callers whatever the others do (cancelled, timed out, killed), errors map to redis-py's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.credentials import UsernamePasswordCredentialProvider
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asched.datastores._redis_connection import PipelinedConnection
from tests.backends.redis import kill_connections
from tests.private_servers import private_redis
from tests.services import REDIS_URL, require_redis

pytestmark = pytest.mark.anyio

#: (redis-py before 8.2 raises its parent class)
MaxClientsReachedError = getattr(redis.exceptions, "MaxClientsReachedError", RedisConnectionError)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for the test's own commands; deletes the test's keys on exit."""
    require_redis()
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.delete(f"{namespace}:list")
    await client.aclose()


def connection_for(namespace: str, url: str = REDIS_URL, **settings: Any) -> PipelinedConnection:
    connection = PipelinedConnection.of_client(
        aioredis.Redis.from_url(url, client_name=namespace, **settings)
    )
    assert connection is not None
    return connection


async def blocked_on_blpop(client: aioredis.Redis, namespace: str) -> None:
    """Wait until the connection named ``namespace`` is blocked in BLPOP on the server."""
    with anyio.fail_after(10):
        while not any(  # noqa: ASYNC110 - another connection's state: only the server knows
            info.get("name") == namespace and info.get("cmd") == "blpop"
            for info in await client.client_list()
        ):
            await anyio.sleep(0.005)


async def test_concurrent_callers_each_get_their_own_reply(namespace: str) -> None:
    require_redis()
    connection = connection_for(namespace)
    replies: dict[int, Any] = {}

    async def echo(number: int) -> None:
        replies[number] = await connection.execute("ECHO", f"reply {number}")

    try:
        async with anyio.create_task_group() as task_group:
            for number in range(500):
                task_group.start_soon(echo, number)
    finally:
        await connection.aclose()
    assert replies == {number: f"reply {number}".encode() for number in range(500)}


async def test_a_cancelled_caller_does_not_shift_the_replies_after_it(
    namespace: str, client: aioredis.Redis
) -> None:
    connection = connection_for(namespace)
    try:
        # a command whose reply comes late (BLPOP waits for a push), then its caller leaves
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(connection.execute, "BLPOP", f"{namespace}:list", 0)
            await blocked_on_blpop(client, namespace)
            task_group.cancel_scope.cancel()

        async with anyio.create_task_group() as task_group:
            echoed: list[Any] = []

            async def echo() -> None:
                echoed.append(await connection.execute("ECHO", "mine"))

            task_group.start_soon(echo)  # queued behind the BLPOP on the server
            await client.rpush(f"{namespace}:list", "the late reply")
        assert echoed == [b"mine"]
    finally:
        await connection.aclose()


async def test_a_reply_that_never_comes_times_out_and_the_next_call_reconnects(
    namespace: str, client: aioredis.Redis
) -> None:
    connection = connection_for(namespace, socket_timeout=0.2)
    try:
        with pytest.raises(RedisTimeoutError, match=r"no reply from Redis within 0\.2 s"):
            await connection.execute("BLPOP", f"{namespace}:list", 0)
        assert await connection.execute("ECHO", "again") == b"again"
    finally:
        await connection.aclose()


async def test_a_killed_connection_fails_its_callers_and_is_opened_again(
    namespace: str, client: aioredis.Redis
) -> None:
    connection = connection_for(namespace)
    try:
        failures: list[BaseException] = []

        async def wait_for_push() -> None:
            try:
                await connection.execute("BLPOP", f"{namespace}:list", 0)
            except RedisConnectionError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(wait_for_push)
            await blocked_on_blpop(client, namespace)
            assert await kill_connections(namespace) == 1
        assert len(failures) == 1
        assert await connection.execute("ECHO", "again") == b"again"
    finally:
        await connection.aclose()


async def test_error_replies_raise_redis_py_exceptions(namespace: str) -> None:
    require_redis()
    connection = connection_for(namespace)
    try:
        with pytest.raises(NoScriptError):
            await connection.execute("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match="unknown command"):
            await connection.execute("NO-SUCH-COMMAND")
        # the connection still serves after error replies
        assert await connection.execute("EVAL", "return ARGV[1]", 0, "fine") == b"fine"
    finally:
        await connection.aclose()


async def test_it_selects_the_clients_database_and_name(namespace: str) -> None:
    require_redis()
    connection = connection_for(namespace, urlunsplit(urlsplit(REDIS_URL)._replace(path="/3")))
    try:
        info = (await connection.execute("CLIENT", "INFO")).decode()
    finally:
        await connection.aclose()
    assert " db=3 " in f" {info} "
    assert f" name={namespace} " in f" {info} "


async def test_a_server_that_is_not_there_is_named_in_the_error() -> None:
    with anyio.fail_after(10):
        connection = PipelinedConnection(host="127.0.0.1", port=1, connect_timeout=5)
        with pytest.raises(
            RedisConnectionError, match=r"Redis: error connecting to 127\.0\.0\.1:1: "
        ):
            await connection.execute("PING")


@pytest.mark.parametrize(
    "client",
    [
        aioredis.Redis.from_url("rediss://127.0.0.1:6379/0"),
        aioredis.Redis(credential_provider=UsernamePasswordCredentialProvider("u", "p")),
    ],
    ids=["tls", "credential provider"],
)
def test_connections_only_redis_py_can_open_are_left_to_it(client: aioredis.Redis) -> None:
    assert PipelinedConnection.of_client(client) is None


async def test_it_authenticates_as_the_urls_user(namespace: str, client: aioredis.Redis) -> None:
    # a user of the test's own, removed after it
    await client.acl_setuser(
        namespace, enabled=True, passwords=["+secret"], commands=["+@all"], keys=["*"]
    )
    parts = urlsplit(REDIS_URL)
    try:
        for password, works in [("secret", True), ("wrong", False)]:
            url = urlunsplit(parts._replace(netloc=f"{namespace}:{password}@{parts.netloc}"))
            connection = connection_for(namespace, url)
            try:
                if works:
                    assert await connection.execute("ACL", "WHOAMI") == namespace.encode()
                else:
                    with pytest.raises(AuthenticationError):
                        await connection.execute("PING")
            finally:
                await connection.aclose()
    finally:
        await client.acl_deluser(namespace)


async def test_it_authenticates_as_a_user_without_password(
    namespace: str, client: aioredis.Redis
) -> None:
    await client.acl_setuser(namespace, enabled=True, nopass=True, commands=["+@all"], keys=["*"])
    parts = urlsplit(REDIS_URL)
    connection = connection_for(
        namespace, urlunsplit(parts._replace(netloc=f"{namespace}@{parts.netloc}"))
    )
    try:
        assert await connection.execute("ACL", "WHOAMI") == namespace.encode()
    finally:
        await connection.aclose()
        await client.acl_deluser(namespace)


async def test_callers_meeting_a_silent_server_share_one_bounded_attempt_to_connect() -> None:
    with private_redis() as server:
        connection = connection_for("silent", server.url, socket_connect_timeout=0.3)
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await connection.execute("PING")
            except RedisTimeoutError as exc:
                errors.append(exc)

        try:
            with server.frozen(), anyio.fail_after(10):
                async with anyio.create_task_group() as task_group:
                    for _ in range(20):
                        task_group.start_soon(call)
            # one attempt for all (not twenty, one after another), and its error for each
            assert len(errors) == 20
            assert len({id(error) for error in errors}) == 1
            assert "no connection to" in str(errors[0])
            assert await connection.execute("PING") == b"PONG"
        finally:
            await connection.aclose()


async def test_a_server_refusing_the_connection_says_why() -> None:
    with private_redis() as server:
        admin = aioredis.Redis.from_url(server.url)
        connection = connection_for("refused", server.url)
        try:
            await admin.config_set("maxclients", 1)  # the admin's own connection is the one
            with anyio.fail_after(10), pytest.raises(MaxClientsReachedError):
                await connection.execute("PING")
        finally:
            await connection.aclose()
            await admin.aclose()


async def test_a_closed_connection_refuses_calls(namespace: str) -> None:
    require_redis()
    connection = connection_for(namespace)
    assert await connection.execute("PING") == b"PONG"
    await connection.aclose()
    with pytest.raises(RedisConnectionError, match="was closed"):
        await connection.execute("PING")


async def test_a_silent_connection_is_dropped_even_when_its_callers_left() -> None:
    with private_redis() as server:
        connection = connection_for("left", server.url, socket_timeout=0.3)
        try:
            assert await connection.execute("PING") == b"PONG"
            protocol = connection._protocol
            assert protocol is not None
            with server.frozen():
                with anyio.move_on_after(0.05):  # a caller that gives up before the timeout
                    await connection.execute("PING")
                with anyio.fail_after(10):
                    while protocol.usable:  # noqa: ASYNC110 - a timer of the connection's
                        await anyio.sleep(0.01)
            assert await connection.execute("PING") == b"PONG"
            assert connection._protocol is not protocol
        finally:
            await connection.aclose()
