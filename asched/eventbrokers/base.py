"""The EventBroker interface, and the local delivery machinery every broker shares."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from inspect import iscoroutinefunction
from logging import Logger, getLogger
from typing import Any, TypeVar
from uuid import uuid4

from anyio import create_task_group
from anyio.abc import TaskGroup

from ..events import Event, Subscription, event_from_dict

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
        if iscoroutinefunction(callback) or iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async callable objects
        ):
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


class BaseExternalEventBroker(BaseEventBroker):
    """Shared by brokers that relay events between processes as JSON.

    Each broker instance tags what it sends with an origin id, so that events it published
    (already delivered locally by :meth:`publish`) are not delivered a second time when they
    come back from the server.
    """

    def __init__(self) -> None:
        super().__init__()
        self._origin = uuid4().hex

    def encode_event(self, event: Event) -> str:
        """Return ``event`` as a JSON text tagged with this broker's origin."""
        return json.dumps(
            {"origin": self._origin, "event": event.to_dict()}, separators=(",", ":")
        )

    def decode_event(self, payload: str | bytes) -> Event | None:
        """Return the event in ``payload``, or ``None`` if it is our own or unreadable.

        Unreadable payloads are logged, not raised: a bad message must not stop the listener.
        """
        try:
            message = json.loads(payload)
            if message.get("origin") == self._origin:
                return None
            return event_from_dict(message["event"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self._logger.warning("Ignoring an unreadable event message: %.200r", payload)
            return None
