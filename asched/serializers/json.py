"""JSONSerializer: portable serialization for JSON-compatible job arguments."""

from __future__ import annotations

import json
from typing import Any

import attrs

from .._exceptions import DeserializationError, SerializationError
from .._structures import RemoteJobError
from .base import Serializer


@attrs.define(frozen=True)
class JSONSerializer(Serializer):
    """Serialize with :mod:`json`: arguments and results other languages can read.

    Tuples come back as lists. NaN and infinities are refused (standard JSON has no
    spelling for them). An exception is stored as its type, message and traceback
    text and comes back as :class:`~asched.RemoteJobError`.
    """

    def serialize(self, obj: Any) -> bytes:
        """Encode ``obj`` as UTF-8 JSON; see :meth:`Serializer.serialize`."""
        if isinstance(obj, BaseException):
            remote = obj if isinstance(obj, RemoteJobError) else RemoteJobError.from_exception(obj)
            obj = {
                "__asched_exception__": [
                    remote.exception_type,
                    remote.message,
                    remote.traceback_text,
                ]
            }
        try:
            return json.dumps(
                obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode {obj!r} as JSON: {exc}") from exc

    def deserialize(self, serialized: bytes) -> Any:
        """Decode UTF-8 JSON; see :meth:`Serializer.deserialize`."""
        try:
            obj = json.loads(serialized)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DeserializationError(f"cannot decode stored JSON: {exc}") from exc
        if isinstance(obj, dict) and obj.keys() == {"__asched_exception__"}:
            return RemoteJobError(*obj["__asched_exception__"])
        return obj
