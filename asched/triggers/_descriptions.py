"""Reading trigger descriptions (what ``to_dict()`` writes) back, with errors that say why."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

T = TypeVar("T")


def checked_description(
    data: object, type_name: str, *, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, Any]:
    """Return ``data`` once it is a dict of the trigger type with the keys it must have.

    :raises ValueError: naming the trigger type and the missing, unknown or wrong key
    """
    where = f"{type_name!r} trigger description"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict, got {data!r}")
    if data.get("type", type_name) != type_name:
        raise ValueError(f"{where}: 'type' is {data['type']!r}, expected {type_name!r}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r} in {data!r}")
    known = {"type", *required, *optional}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    return data


def build(type_name: str, factory: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``factory`` with the arguments read from a description.

    :raises ValueError: for any bad value, naming the trigger type (a ``TypeError`` from the
        constructor becomes the ``ValueError`` that ``from_dict`` promises)
    """
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{type_name!r} trigger description: {exc}") from exc
