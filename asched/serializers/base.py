"""The Serializer interface: turns job arguments, return values and exceptions into bytes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Serializer(ABC):
    """Turns objects into bytes and back, for persistent data stores.

    Only user objects (job arguments, return values, exceptions) go through a serializer;
    triggers and options are stored as JSON by the data stores themselves.
    """

    __slots__ = ()

    @abstractmethod
    def serialize(self, obj: Any) -> bytes:
        """Return ``obj`` as bytes.

        :raises ~asched.SerializationError: if the object cannot be serialized
        """

    @abstractmethod
    def deserialize(self, serialized: bytes) -> Any:
        """Return the object ``serialized`` was made from.

        :raises ~asched.DeserializationError: if the bytes cannot be deserialized
        """
