"""WriteBatcher: merges concurrent writes into batched calls (a group commit in the client)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

_Item = TypeVar("_Item")


class _Submission(Generic[_Item]):
    __slots__ = ("done", "error", "items", "turn")

    def __init__(self, items: Sequence[_Item]) -> None:
        self.items = items
        #: set when the submission was written (``done``) or its caller must lead the next batch
        self.turn = anyio.Event()
        self.done = False
        self.error: Exception | None = None


class WriteBatcher(Generic[_Item]):
    """Sends the items of concurrent :meth:`submit` calls to ``write`` in shared batches.

    The first caller writes at once (no task switch on the uncontended path). Callers arriving
    while a write is in flight queue up; when it completes, the first of them writes
    everything queued in one call, and so on: N callers adding at once cost about one round
    trip instead of N. Each :meth:`submit` returns once its own items are written (an
    acknowledged write), or raises what ``write`` raised for its batch.

    A write in flight is shielded from the cancellation of the caller leading it: once sent,
    it may have been stored, and writing its items again later could store a job that ran
    meanwhile a second time. The cancelled leader's call returns once the write is done (its
    own items written) and the cancellation strikes at its next checkpoint.

    :param write: stores a list of items in one round trip (retrying as it sees fit)
    :param max_batch: the most items handed to one ``write`` call (a submission is never split)
    """

    def __init__(
        self, write: Callable[[list[_Item]], Awaitable[None]], *, max_batch: int = 1000
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: deque[_Submission[_Item]] = deque()
        self._leading = False

    async def submit(self, items: Sequence[_Item]) -> None:
        """Write ``items``, alone or with other callers', and return once they are written."""
        submission = _Submission(items)
        self._queue.append(submission)
        if self._leading:
            try:
                await submission.turn.wait()
            except BaseException:
                self._withdraw(submission)
                raise
            if submission.done:
                if submission.error is not None:
                    raise submission.error
                return
        self._leading = True
        await self._lead(submission)

    async def _lead(self, submission: _Submission[_Item]) -> None:
        """Write the queued submissions, ``submission`` first; then hand the lead on."""
        batch = [self._queue.popleft()]
        assert batch[0] is submission
        size = len(submission.items)
        while self._queue and size + len(self._queue[0].items) <= self._max_batch:
            size += len(self._queue[0].items)
            batch.append(self._queue.popleft())
        error: Exception | None = None
        try:
            with anyio.CancelScope(shield=True):
                await self._write([item for entry in batch for item in entry.items])
        except Exception as exc:
            error = exc
        except BaseException:
            # KeyboardInterrupt and the like: the others' items go out with the next batch
            self._queue.extendleft(reversed(batch[1:]))
            self._hand_over()
            raise
        for entry in batch[1:]:
            entry.done = True
            entry.error = error
            entry.turn.set()
        self._hand_over()
        if error is not None:
            raise error

    def _hand_over(self) -> None:
        if self._queue:
            self._queue[0].turn.set()  # its caller leads the next batch
        else:
            self._leading = False

    def _withdraw(self, submission: _Submission[_Item]) -> None:
        """Take a cancelled caller's submission back, passing on the lead if it was given one."""
        if submission.done:
            return
        was_next_leader = bool(self._queue) and self._queue[0] is submission
        try:
            self._queue.remove(submission)
        except ValueError:
            return  # in a batch being written: its items may still be stored
        if was_next_leader and submission.turn.is_set():
            self._hand_over()
