"""EventThread: runs the blocking Scheduler's plain event callbacks in a thread of their own.

A callback that ran in the event loop's thread could not call the blocking ``Scheduler``'s
methods (each waits for that very loop), so ``Scheduler.subscribe`` hands plain callbacks
to this thread instead: one at a time, in the order the events came.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from logging import Logger
from queue import SimpleQueue
from typing import Any

from .events import Event

#: (callback, event), (callback, None) to cancel the callback there, or None to end
_Queue = SimpleQueue[tuple["ThreadedCallback", Event | None] | None]


class ThreadedCallback:
    """A plain callback whose events are passed to an :class:`EventThread`.

    Called with an event (in the event loop), it queues the event and returns at once.
    Once :attr:`cancelled`, it is called no more.
    """

    __slots__ = ("_thread", "callback", "cancelled")

    def __init__(self, callback: Callable[[Any], Any], thread: EventThread):
        self.callback = callback
        self.cancelled = False
        self._thread = thread

    def __call__(self, event: Event) -> None:
        self._thread.put(self, event)

    def __repr__(self) -> str:
        return repr(self.callback)


class EventThread:
    """Calls :class:`ThreadedCallback` callbacks with their events, in one daemon thread.

    The thread starts with the first event and ends on :meth:`close`; a later event starts
    it again. A callback that raises is logged and the next event is delivered as usual.
    """

    def __init__(self, logger: Logger):
        self._logger = logger
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._queue: _Queue = SimpleQueue()

    def put(self, callback: ThreadedCallback, event: Event) -> None:
        """Queue ``event`` for ``callback``."""
        with self._lock:
            if self._thread is None:
                # A queue per thread: one that is closing still drains its own
                self._queue = SimpleQueue()
                self._thread = threading.Thread(
                    target=self._deliver, args=(self._queue,), name="asched events", daemon=True
                )
                self._thread.start()
            self._queue.put((callback, event))

    def cancel(self, callback: ThreadedCallback) -> None:
        """Call ``callback`` no more, once the events queued for it so far are delivered.

        From a callback (in this thread) it takes effect at once.
        """
        with self._lock:
            if self._thread is not None and self._thread is not threading.current_thread():
                self._queue.put((callback, None))
                return
        callback.cancelled = True

    def is_current(self) -> bool:
        """Whether the calling code runs in this event thread."""
        return self._thread is threading.current_thread()

    def close(self) -> None:
        """Deliver what is queued, then end the thread (without waiting for itself)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        if thread is not threading.current_thread():
            thread.join()

    def _deliver(self, queue: _Queue) -> None:
        while (item := queue.get()) is not None:
            callback, event = item
            if event is None:
                callback.cancelled = True
            if callback.cancelled:
                continue
            try:
                callback.callback(event)
            except Exception:
                self._logger.exception(
                    "Event subscriber %r raised an exception while handling %s",
                    callback.callback,
                    type(event).__name__,
                )
