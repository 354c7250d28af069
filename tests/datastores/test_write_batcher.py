"""The group commit behind the persistent stores' add_jobs: merging, errors, cancellation."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asched.datastores._write_batcher import WriteBatcher

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:  # not the contract suite's cases
    return str(request.param)


class SlowWriter:
    """Records each batch and holds it until released, like a write waiting for its commit."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, items: list[int]) -> None:
        self.batches.append(items)
        self.started.set()
        await self.release.wait()


async def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    writer = SlowWriter()
    batcher: WriteBatcher[int] = WriteBatcher(writer)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(batcher.submit, [1])
        await writer.started.wait()
        for item in (2, 3, 4):
            task_group.start_soon(batcher.submit, [item])
        await anyio.wait_all_tasks_blocked()
        writer.release.set()
    # (trio starts tasks in no fixed order)
    assert [sorted(batch) for batch in writer.batches] == [[1], [2, 3, 4]]


async def test_a_cancelled_leader_lets_its_write_finish_and_nothing_is_written_twice() -> None:
    writer = SlowWriter()
    batcher: WriteBatcher[int] = WriteBatcher(writer)
    leader_scope = anyio.CancelScope()
    follower_done = anyio.Event()
    leader_outcome: list[str] = []

    async def lead() -> None:
        with leader_scope:
            try:
                await batcher.submit([1])
                leader_outcome.append("returned")
                await anyio.lowlevel.checkpoint()  # the pending cancellation strikes here
            except anyio.get_cancelled_exc_class():
                leader_outcome.append("cancelled")
                raise

    async def follow() -> None:
        await batcher.submit([2])
        follower_done.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(lead)
        await writer.started.wait()  # the first batch ([1]) is in flight...
        task_group.start_soon(follow)  # ...and [2] queues behind it
        await anyio.wait_all_tasks_blocked()
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert writer.batches == [[1]]  # the cancelled write is neither dropped nor re-sent
        writer.release.set()
        await follower_done.wait()

    assert writer.batches == [[1], [2]]
    assert leader_outcome == ["returned", "cancelled"]


async def test_a_failed_write_fails_every_caller_in_its_batch() -> None:
    writer = SlowWriter()
    calls = 0

    async def failing(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("connection lost")
        await writer(items)

    batcher: WriteBatcher[int] = WriteBatcher(failing)
    errors: list[str] = []

    async def submit(item: int) -> None:
        try:
            await batcher.submit([item])
        except OSError as exc:
            errors.append(f"{item}: {exc}")

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(submit, 1)
        await writer.started.wait()
        task_group.start_soon(submit, 2)
        task_group.start_soon(submit, 3)
        await anyio.wait_all_tasks_blocked()
        writer.release.set()

    assert sorted(errors) == ["2: connection lost", "3: connection lost"]
