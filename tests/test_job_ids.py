"""Job ids: random version 4 UUIDs, unique across threads and forked processes."""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from uuid import RFC_4122, UUID

import pytest

from asched import Job


def new_id() -> UUID:
    return Job(task_id="task").id


def test_job_ids_are_version_4_uuids_and_never_repeat() -> None:
    ids = [new_id() for _ in range(5_000)]  # several refills of the buffer

    assert all(job_id.version == 4 and job_id.variant == RFC_4122 for job_id in ids)
    assert len(set(ids)) == len(ids)


def test_threads_drawing_ids_at_once_get_distinct_ones() -> None:
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(1_000)], range(8)))

    ids = [job_id for batch in batches for job_id in batch]
    assert len(set(ids)) == len(ids)


def send_ids(connection: Connection) -> None:
    connection.send([new_id() for _ in range(10)])


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_a_forked_child_does_not_reuse_its_parents_randomness() -> None:
    new_id()  # the parent holds unused buffered randomness when it forks
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=send_ids, args=(sender,))
    child.start()
    child_ids = receiver.recv()
    child.join(10)
    parent_ids = [new_id() for _ in range(10)]

    assert child.exitcode == 0
    assert set(child_ids).isdisjoint(parent_ids)
