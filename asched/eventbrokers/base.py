"""The EventBroker interface, and the local delivery machinery every broker shares."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from logging import Logger, getLogger
from typing import Any, TypeVar
from uuid import uuid4

from anyio import (
    BrokenResourceError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
    create_memory_object_stream,
    create_task_group,
    move_on_after,
    sleep,
)
from anyio import Event as Event_
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._coroutines import is_coroutine_callable
from .._event_loops import require_asyncio
from .._exceptions import describe_error
from ..events import BrokerReconnected, Event, Subscription, event_from_dict

_EventT = TypeVar("_EventT", bound=Event)
EventCallback = Callable[[_EventT], Awaitable[None] | None]


class EventBroker(ABC):
    """Delivers events to subscribers, in this process and, for external brokers, in others.

    Brokers only make other schedulers react sooner: a lost event costs latency, never
    correctness, because the data store is where schedulers coordinate.
    """

    @abstractmethod
    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        """Start the broker; everything it opens is closed when ``exit_stack`` unwinds.

        :param exit_stack: the scheduler's exit stack
        :param logger: where to log
        """

    @abstractmethod
    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to local subscribers at once and, if external, to other processes.

        Never raises for a delivery problem: failures are logged.
        """

    @abstractmethod
    def subscribe(
        self,
        callback: Callable[[Any], Any],
        event_types: Iterable[type[Event]] | None = None,
        *,
        one_shot: bool = False,
    ) -> Subscription:
        """Call ``callback(event)`` for each event of the given classes (or subclasses).

        :param callback: a function or coroutine function taking the event; an exception it
            raises is logged and never reaches the publisher
        :param event_types: event classes to receive (``None``: all)
        :param one_shot: unsubscribe after the first matching event
        :return: a handle to unsubscribe with
        """


class BaseEventBroker(EventBroker):
    """Subscription bookkeeping and local delivery, for every broker implementation.

    Sync callbacks run inline in :meth:`publish_local`; coroutine callbacks run in a task of
    the broker's task group, so a slow subscriber never holds up the publisher.
    """

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._async_callbacks: set[Subscription] = set()
        self._dispatch_cache: dict[type[Event], tuple[Subscription, ...]] = {}
        self._task_group: TaskGroup | None = None
        self._logger = getLogger(__name__)

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        """Start the task group that runs coroutine callbacks; see :meth:`EventBroker.start`."""
        self._logger = logger
        self._task_group = await exit_stack.enter_async_context(create_task_group())
        exit_stack.callback(self._forget_task_group)

    def _forget_task_group(self) -> None:
        self._task_group = None

    def subscribe(
        self,
        callback: Callable[[Any], Any],
        event_types: Iterable[type[Event]] | None = None,
        *,
        one_shot: bool = False,
    ) -> Subscription:
        """Add a subscriber; see :meth:`EventBroker.subscribe`.

        :raises TypeError: if ``callback`` is not callable or an event type is not an
            :class:`~asched.events.Event` subclass
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        types: frozenset[type[Event]] | None = None
        if event_types is not None:
            types = frozenset(event_types)
            for event_type in types:
                if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                    raise TypeError(f"not an event class: {event_type!r}")

        subscription = Subscription(callback, types, one_shot, self._unsubscribe)
        if is_coroutine_callable(callback):
            self._async_callbacks.add(subscription)
        self._subscriptions.append(subscription)
        self._dispatch_cache.clear()
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.remove(subscription)
        self._async_callbacks.discard(subscription)
        self._dispatch_cache.clear()

    def _subscriptions_for(self, event_type: type[Event]) -> tuple[Subscription, ...]:
        subscriptions = tuple(
            subscription
            for subscription in self._subscriptions
            if subscription.event_types is None
            or any(issubclass(event_type, cls) for cls in subscription.event_types)
        )
        self._dispatch_cache[event_type] = subscriptions
        return subscriptions

    def publish_local(self, event: Event) -> None:
        """Deliver ``event`` to this process's subscribers (never raises)."""
        subscriptions = self._dispatch_cache.get(type(event))
        if subscriptions is None:
            subscriptions = self._subscriptions_for(type(event))

        for subscription in subscriptions:
            if not subscription.active:
                continue
            if subscription.one_shot:
                subscription.unsubscribe()
            if subscription in self._async_callbacks:
                if self._task_group is None:
                    self._logger.error(
                        "Cannot deliver %s to coroutine subscriber %r: the event broker is "
                        "not running",
                        type(event).__name__,
                        subscription.callback,
                    )
                else:
                    self._task_group.start_soon(self._deliver_async, subscription, event)
                continue
            try:
                subscription.callback(event)
            except Exception:
                self._logger.exception(
                    "Event subscriber %r raised an exception while handling %s",
                    subscription.callback,
                    type(event).__name__,
                )

    async def _deliver_async(self, subscription: Subscription, event: Event) -> None:
        try:
            await subscription.callback(event)
        except Exception:
            self._logger.exception(
                "Event subscriber %r raised an exception while handling %s",
                subscription.callback,
                type(event).__name__,
            )


_RELAY_QUEUE_SIZE = 100_000
#: how long start() waits for the listener to listen, retrying connection errors
_START_TIMEOUT_SECONDS = 30.0
_RELAY_BATCH_SIZE = 500
#: how long the relay gathers events after the first one of a batch
_RELAY_GATHER_SECONDS = 0.002
#: how long a stopping broker keeps relaying what is queued
_RELAY_DRAIN_SECONDS = 2.0
#: waits between attempts to relay a batch, and between reconnections of a listener
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class BaseExternalEventBroker(BaseEventBroker):
    """Shared by brokers that relay events between processes as JSON.

    :meth:`publish` delivers locally at once and queues the event; a sender task relays the
    queue in batches, each batch one message (``{"origin": …, "events": […]}``) sent with
    :meth:`_send_batch` (retried on failure), and :meth:`_listen_forever` receives the other
    processes' messages. Each broker instance tags what it sends with an origin id, so that
    its own messages are skipped, unparsed, when they come back from the server.
    """

    #: the client library, for a broker whose library runs on asyncio only (else None)
    asyncio_only_library: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._origin = uuid4().hex
        # what every message this broker sends starts with (see encode_events)
        self._own_prefix = f'{{"origin":"{self._origin}"'
        self._own_prefix_bytes = self._own_prefix.encode()
        self._relay: MemoryObjectSendStream[Event] | None = None
        self._listening = False
        # set once the listener listens, or failed in a way no retry can mend
        self._start_settled = Event_()
        self._permanent_failure: BaseException | None = None
        self._last_listen_error: BaseException | None = None

    async def start(self, exit_stack: AsyncExitStack, logger: Logger) -> None:
        """Start the sender and the listener; see :meth:`EventBroker.start`.

        Errors that retrying cannot mend (a database that does not exist, a wrong password,
        an unknown option) are raised at once; connection errors are retried for up to
        30 s (a server still starting up, say), then raised as a ``TimeoutError`` naming
        the last one.

        :raises TimeoutError: if the listener cannot start listening within 30 s
        :raises RuntimeError: if the broker's client library needs asyncio and the event loop
            is another one
        """
        if self.asyncio_only_library is not None:
            require_asyncio(type(self).__name__, self.asyncio_only_library)
        await super().start(exit_stack, logger)
        send, receive = create_memory_object_stream[Event](_RELAY_QUEUE_SIZE)
        self._relay = send
        exit_stack.push_async_callback(self._close_sender)
        exit_stack.callback(receive.close)
        exit_stack.callback(send.close)
        task_group = await exit_stack.enter_async_context(create_task_group())
        relay_finished = Event_()

        async def stop() -> None:
            # the relay sends what is queued, briefly, then everything stops
            send.close()
            with move_on_after(_RELAY_DRAIN_SECONDS):
                await relay_finished.wait()
            task_group.cancel_scope.cancel()

        exit_stack.push_async_callback(stop)
        task_group.start_soon(self._listen_forever)
        task_group.start_soon(self._relay_forever, receive, relay_finished)
        with move_on_after(_START_TIMEOUT_SECONDS):
            await self._start_settled.wait()
        if self._permanent_failure is not None:
            raise self._permanent_failure
        if not self._listening:
            last = self._last_listen_error
            reason = "no error" if last is None else describe_error(last)
            raise TimeoutError(
                f"{type(self).__name__} could not start listening within "
                f"{_START_TIMEOUT_SECONDS:.0f} s (last error: {reason})"
            ) from last

    def _now_listening(self) -> None:
        """Tell :meth:`start` that the listener listens, and this process if it listens again.

        What other processes published while the listener was away is lost:
        :class:`~asched.events.BrokerReconnected` tells subscribers here to look again.
        """
        if self._listening:
            self.publish_local(BrokerReconnected())
        self._listening = True
        self._start_settled.set()

    def _listen_failed(self, exc: Exception) -> None:
        """Record a failure of the listener; one no retry can mend ends a pending start."""
        self._last_listen_error = exc
        if not self._listening and not self._is_transient(exc):
            self._permanent_failure = exc
            self._start_settled.set()

    def _is_transient(self, exc: Exception) -> bool:
        """Whether a listener error may go away by itself (a connection error, by default)."""
        return isinstance(exc, (OSError, TimeoutError))

    async def publish(self, event: Event) -> None:
        """Deliver locally, then queue the event for other processes; never raises."""
        self.publish_local(event)
        if self._relay is None:
            return
        try:
            self._relay.send_nowait(event)
        except WouldBlock:
            self._logger.warning("Event relay queue full: %s not sent to other processes", event)
        except (ClosedResourceError, BrokenResourceError):
            pass

    async def _relay_forever(
        self, receive: MemoryObjectReceiveStream[Event], finished: Event_
    ) -> None:
        try:
            await self._relay_batches(receive)
        finally:
            finished.set()

    async def _relay_batches(self, receive: MemoryObjectReceiveStream[Event]) -> None:
        async for event in receive:
            # Events that trickle in (a job added, acquired, released) would each cost a
            # round trip: a short wait gathers them into one message, while local
            # subscribers already have them
            await sleep(_RELAY_GATHER_SECONDS)
            batch = [event]
            while len(batch) < _RELAY_BATCH_SIZE:
                try:
                    batch.append(receive.receive_nowait())
                except (WouldBlock, EndOfStream):  # nothing more now, or ever (stopping)
                    break
            messages = [self.encode_events(batch)]
            for delay in (*RECONNECT_DELAYS, None):
                try:
                    await self._send_batch(messages)
                    break
                except Exception as exc:  # any failure: the relay must not die
                    if delay is None:
                        self._logger.error(
                            "Could not relay %d events to other processes: %s",
                            len(batch),
                            describe_error(exc),
                        )
                        break
                    await sleep(delay)

    async def _close_sender(self) -> None:
        """Close what :meth:`_send_batch` opened (called once the relay has stopped)."""

    @abstractmethod
    async def _send_batch(self, messages: list[str]) -> None:
        """Send messages (see :meth:`encode_events`) to the other processes in one round trip.

        Raises on failure (the relay retries).
        """

    @abstractmethod
    async def _listen_forever(self) -> None:
        """Receive other processes' events, reconnecting after drops, until cancelled.

        Calls :meth:`_now_listening` once it listens and :meth:`_listen_failed` with each
        error, and hands each payload to :meth:`deliver_remote`.
        """

    def deliver_remote(self, payload: str | bytes) -> None:
        """Deliver the events of another process's message to this process's subscribers."""
        for event in self.decode_events(payload):
            self.publish_local(event)

    def encode_events(self, events: Iterable[Event]) -> str:
        """Return ``events`` as one JSON message tagged with this broker's origin.

        An event that cannot be encoded is logged and left out; the others still go.
        """
        dicts = [event.to_dict() for event in events]
        try:
            body = json.dumps(dicts, separators=(",", ":"))
        except (TypeError, ValueError):
            # an event with a value JSON cannot hold: find it, send the others
            encoded: list[str] = []
            for data in dicts:
                try:
                    encoded.append(json.dumps(data, separators=(",", ":")))
                except (TypeError, ValueError):
                    self._logger.exception("Cannot relay %.200r to other processes", data)
            body = f"[{','.join(encoded)}]"
        return f'{self._own_prefix},"events":{body}}}'

    def decode_events(self, payload: str | bytes) -> list[Event]:
        """Return the events in ``payload``, none if it is our own message or unreadable.

        Unreadable messages and events are logged, not raised: a bad message must not stop
        the listener.
        """
        own_prefix = self._own_prefix_bytes if isinstance(payload, bytes) else self._own_prefix
        if payload.startswith(own_prefix):  # type: ignore[arg-type]
            return []
        try:
            message = json.loads(payload)
            raw_events = message["events"]
            if message.get("origin") == self._origin or not isinstance(raw_events, list):
                return []
        except (ValueError, KeyError, TypeError, AttributeError):
            self._logger.warning("Ignoring an unreadable event message: %.200r", payload)
            return []
        events: list[Event] = []
        for raw in raw_events:
            try:
                events.append(event_from_dict(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                self._logger.warning("Ignoring an unreadable event: %.200r", raw)
        return events
