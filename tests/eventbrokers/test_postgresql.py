"""PostgreSQL broker specifics: what anyone else may send on the channel."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from uuid import uuid4

import anyio
import asyncpg
import pytest

from asched import AsyncScheduler
from asched.eventbrokers.postgresql import PostgreSQLEventBroker
from asched.events import JobAdded
from tests.conftest import EventRecorder
from tests.services import POSTGRESQL_URL, require_postgresql

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


@pytest.fixture(autouse=True)
def _postgresql() -> None:
    require_postgresql()


@pytest.mark.parametrize("channel", ["events\n", "bad-name", "1abc", "x" * 64])
def test_channel_must_be_a_plain_identifier(channel: str) -> None:
    with pytest.raises(ValueError, match="channel must be a plain identifier"):
        PostgreSQLEventBroker(POSTGRESQL_URL, channel=channel)


async def test_malformed_notifications_are_logged_and_skipped(
    namespace: str, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    malformed = [
        "#chunk m1 5 2 index past the count",
        "#chunk m2 -1 2 negative index",
        "#chunk m3 0 0 no chunks",
        "#chunk m4 0 1000000000 a count nobody sends",
        "#chunk m5 x y not numbers",
        "#chunk m6 0 2 first of two",
        "#chunk m6 1 3 then a count that disagrees",
        "#chunk",
        "not json at all",
        '{"origin": "someone", "events": [{"type": "NoSuchEvent"}]}',
    ]
    recorder = EventRecorder()
    async with AsyncExitStack() as stack:
        listener = PostgreSQLEventBroker(POSTGRESQL_URL, channel=namespace)
        sender = PostgreSQLEventBroker(POSTGRESQL_URL, channel=namespace)
        await listener.start(stack, logger)
        await sender.start(stack, logger)
        listener.subscribe(recorder)
        connection = await asyncpg.connect(POSTGRESQL_URL)
        try:
            for payload in malformed:
                await connection.execute("SELECT pg_notify($1, $2)", namespace, payload)
        finally:
            await connection.close()
        # NOTIFYs reach a listener in commit order: the listener read the malformed ones first
        event = JobAdded(job_id=uuid4(), task_id="t", schedule_id=None)
        with caplog.at_level(logging.WARNING):
            await sender.publish(event)
            assert await recorder.wait_for(JobAdded) == [event]

    chunk_warnings = [
        record for record in caplog.records if "malformed event chunk" in record.getMessage()
    ]
    assert len(chunk_warnings) == 2 * 6  # both brokers listen; six of the payloads are chunks


async def test_a_missing_database_fails_the_start_at_once_and_plainly(
    logger: logging.Logger,
) -> None:
    # no retry brings a database into being: the error comes at once, as it is
    dsn = POSTGRESQL_URL.rsplit("/", 1)[0] + f"/asched_missing_{uuid4().hex[:8]}"
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            with pytest.raises(asyncpg.InvalidCatalogNameError, match="does not exist"):
                await PostgreSQLEventBroker(dsn).start(stack, logger)


async def test_a_scheduler_on_a_missing_database_raises_its_error_unwrapped() -> None:
    url = POSTGRESQL_URL.rsplit("/", 1)[0] + f"/asched_missing_{uuid4().hex[:8]}"
    with anyio.fail_after(10), pytest.raises(asyncpg.InvalidCatalogNameError):
        async with AsyncScheduler(url):
            pass
