"""An object that pickles but cannot be unpickled: stored data a deploy can no longer read."""

from __future__ import annotations

from typing import Any

#: what restoring an :class:`Unrestorable` raises (as a ``RuntimeError``)
MESSAGE = "this class is gone from the deployed code"


def _gone() -> None:
    raise RuntimeError(MESSAGE)


class Unrestorable:
    """Stored fine; restoring it fails, as a class since removed from the code would."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _gone, ()
