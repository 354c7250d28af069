"""Event brokers: deliver events to subscribers, locally or across processes."""

from .base import BaseEventBroker, BaseExternalEventBroker, EventBroker
from .local import LocalEventBroker

__all__ = ["BaseEventBroker", "BaseExternalEventBroker", "EventBroker", "LocalEventBroker"]
