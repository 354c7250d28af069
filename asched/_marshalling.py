"""Callables to textual references ("package.module:attr.path") and back."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from ._exceptions import CallableLookupError


def callable_name(func: Callable[..., Any]) -> str:
    """Return ``"module:qualname"`` for a function or class, importable or not.

    :raises TypeError: if the callable has no module or qualified name (a
        ``functools.partial``, a callable instance): give it an explicit task id instead
    """
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{func!r} has no module and qualified name to derive a task id from; "
            "configure a task for it with an explicit id (configure_task('my-id', func=...))"
        )
    return f"{module}:{qualname}"


def importable_reference(func: Callable[..., Any]) -> str | None:
    """Return the textual reference that imports back to ``func``, or ``None``.

    ``None`` for lambdas, nested functions, bound methods of instances, and anything else
    whose ``"module:qualname"`` does not resolve to the very same callable.
    """
    try:
        reference = callable_name(func)
    except TypeError:
        return None
    if "<" in reference:  # <lambda>, <locals>
        return None
    try:
        resolved = callable_from_reference(reference)
    except CallableLookupError:
        return None
    return reference if resolved == func else None


def callable_from_reference(reference: str) -> Callable[..., Any]:
    """Import and return the callable that ``reference`` (``"package.module:attr"``) names.

    :raises CallableLookupError: if the reference is malformed, the module cannot be
        imported, the attribute does not exist or is not callable
    """
    module_name, sep, attribute_path = reference.partition(":")
    if not sep or not module_name or not attribute_path:
        raise CallableLookupError(
            f"invalid reference {reference!r}: expected 'package.module:attribute'"
        )

    try:
        obj: Any = import_module(module_name)
    except ImportError as exc:
        raise CallableLookupError(
            f"cannot import module {module_name!r} of reference {reference!r}: {exc}"
        ) from exc

    for name in attribute_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise CallableLookupError(
                f"reference {reference!r}: {obj!r} has no attribute {name!r}"
            ) from None

    if not callable(obj):
        raise CallableLookupError(f"reference {reference!r} names {obj!r}, which is not callable")
    return obj  # type: ignore[no-any-return]
