"""Pickle and JSON serializers: round trips, exceptions, and errors that name the culprit."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone
from pathlib import Path
from uuid import uuid4

import anyio
import pytest

from asched import (
    AsyncScheduler,
    DeserializationError,
    JobOutcome,
    JobResult,
    RemoteJobError,
    SerializationError,
)
from asched.datastores.sqlite import SQLiteDataStore
from asched.serializers import JSONSerializer, PickleSerializer, Serializer
from tests import jobs


class Unpicklable:
    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("this object refuses to be pickled")

    def __repr__(self) -> str:
        return "<Unpicklable>"


def test_pickle_round_trips_python_objects_and_exceptions() -> None:
    serializer = PickleSerializer()
    value = {"when": datetime(2026, 11, 25, tzinfo=timezone.utc), "args": (1, "two", [3.0])}

    assert serializer.deserialize(serializer.serialize(value)) == value
    restored = serializer.deserialize(serializer.serialize(KeyError("missing")))
    assert isinstance(restored, KeyError)
    assert restored.args == ("missing",)


def test_pickle_writes_the_protocol_it_was_given() -> None:
    serialized = PickleSerializer(protocol=2).serialize([1, 2])

    assert serialized[:2] == b"\x80\x02"


@pytest.mark.parametrize("protocol", [pickle.HIGHEST_PROTOCOL + 1, "5", 2.0])
def test_pickle_refuses_a_protocol_it_cannot_write(protocol: object) -> None:
    with pytest.raises((ValueError, TypeError), match="protocol"):
        PickleSerializer(protocol=protocol)  # type: ignore[arg-type]


def test_pickle_errors_name_the_object_and_the_reason() -> None:
    serializer = PickleSerializer()

    with pytest.raises(SerializationError, match="cannot pickle <Unpicklable>: this object"):
        serializer.serialize(Unpicklable())
    with pytest.raises(DeserializationError, match="cannot unpickle stored data"):
        serializer.deserialize(b"not a pickle")


def test_json_round_trips_json_values_and_turns_tuples_into_lists() -> None:
    serializer = JSONSerializer()
    value = {"name": "zoë", "count": 3, "ratio": 0.5, "tags": ["a", None, True]}

    assert serializer.deserialize(serializer.serialize(value)) == value
    assert serializer.deserialize(serializer.serialize((1, 2))) == [1, 2]
    assert serializer.serialize("zoë") == '"zoë"'.encode()  # readable UTF-8, not \\u escapes


def test_json_keeps_an_exception_as_its_type_message_and_traceback() -> None:
    serializer = JSONSerializer()
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        error = exc

    restored = serializer.deserialize(serializer.serialize(error))

    assert isinstance(restored, RemoteJobError)
    assert (restored.exception_type, restored.message) == ("builtins.ValueError", "bad value")
    assert 'raise ValueError("bad value")' in restored.traceback_text
    assert str(restored) == "builtins.ValueError: bad value"
    again = serializer.deserialize(serializer.serialize(restored))
    assert (again.exception_type, again.message, again.traceback_text) == (
        restored.exception_type,
        restored.message,
        restored.traceback_text,
    )


def test_json_errors_name_the_object_and_the_reason() -> None:
    serializer = JSONSerializer()

    with pytest.raises(SerializationError, match=r"cannot encode \{1, 2\} as JSON: .*set"):
        serializer.serialize({1, 2})
    with pytest.raises(SerializationError, match="cannot encode nan as JSON"):
        serializer.serialize(float("nan"))
    with pytest.raises(DeserializationError, match="cannot decode stored JSON"):
        serializer.deserialize(b"{not json")
    with pytest.raises(DeserializationError, match="cannot decode stored JSON"):
        serializer.deserialize(b"\xff\xfe")


@pytest.mark.parametrize("serializer", [PickleSerializer(), JSONSerializer()], ids=repr)
@pytest.mark.anyio
async def test_a_persistent_store_keeps_arguments_results_and_errors_through_its_serializer(
    serializer: Serializer, tmp_path: Path
) -> None:
    store = SQLiteDataStore(tmp_path / "jobs.sqlite", serializer=serializer)
    async with AsyncScheduler(store) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(10):
            total = await scheduler.run_job(jobs.add, args=[2], kwargs={"b": 3})
            echoed = await scheduler.run_job(jobs.async_echo, args=[("zoë", 1)])
            failed_id = await scheduler.add_job(jobs.fail, args=["broken on purpose"])
            failed = await scheduler.get_job_result(failed_id)

    assert total == 5
    assert echoed == (["zoë", 1] if isinstance(serializer, JSONSerializer) else ("zoë", 1))
    assert failed.outcome is JobOutcome.error
    assert "broken on purpose" in str(failed.exception)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TwoPartError(Exception):
    def __init__(self, first: int, second: int):
        super().__init__(f"{first}/{second}")


def test_a_kept_exception_that_would_not_unpickle_is_kept_as_a_remote_job_error() -> None:
    serializer = PickleSerializer()
    now = datetime.now(timezone.utc)
    result = JobResult(
        job_id=uuid4(),
        outcome=JobOutcome.error,
        exception=TwoPartError(1, 2),
        finished_at=now,
        expires_at=now,
    )

    restored = JobResult.unmarshal(serializer, result.marshal(serializer))

    assert isinstance(restored.exception, RemoteJobError)
    assert restored.exception.exception_type.endswith("TwoPartError")
    assert restored.exception.message == "1/2"


def test_a_stored_exception_that_cannot_be_restored_reads_as_a_remote_job_error() -> None:
    # as stored before the check above, or by a deploy whose exception class changed since
    serializer = PickleSerializer()
    now = datetime.now(timezone.utc)
    record = JobResult(
        job_id=uuid4(), outcome=JobOutcome.error, finished_at=now, expires_at=now
    ).marshal(serializer)
    record["exception"] = pickle.dumps(TwoPartError(1, 2))

    restored = JobResult.unmarshal(serializer, record)

    assert restored.outcome is JobOutcome.error
    assert isinstance(restored.exception, RemoteJobError)
    assert "cannot restore the exception" in restored.exception.message
