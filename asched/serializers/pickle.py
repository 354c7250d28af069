"""PickleSerializer: the default serializer, for any picklable object."""

from __future__ import annotations

import pickle
from typing import Any

import attrs

from .._exceptions import DeserializationError, SerializationError
from .base import Serializer


@attrs.define(frozen=True)
class PickleSerializer(Serializer):
    """Serialize with :mod:`pickle`.

    Only deserialize data your own processes wrote: unpickling runs code.

    :ivar protocol: the pickle protocol to write (0 to :data:`pickle.HIGHEST_PROTOCOL`)
    :raises TypeError: if ``protocol`` is not an integer
    :raises ValueError: if this Python cannot write ``protocol``
    """

    protocol: int = attrs.field(default=pickle.HIGHEST_PROTOCOL)

    @protocol.validator
    def _check_protocol(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"protocol must be an integer, got {value!r}")
        if not 0 <= value <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"protocol must be from 0 to {pickle.HIGHEST_PROTOCOL} on this Python, got {value}"
            )

    def serialize(self, obj: Any) -> bytes:
        """Pickle ``obj``; see :meth:`Serializer.serialize`."""
        try:
            return pickle.dumps(obj, self.protocol)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {obj!r}: {exc}") from exc

    def deserialize(self, serialized: bytes) -> Any:
        """Unpickle ``serialized``; see :meth:`Serializer.deserialize`."""
        try:
            return pickle.loads(serialized)
        except Exception as exc:
            raise DeserializationError(f"cannot unpickle stored data: {exc}") from exc
