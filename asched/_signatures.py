"""Checking that a job's arguments fit its function, when the job is added, not when it runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ._marshalling import callable_name

# Working a signature out costs ~10 µs and binding to it ~1 µs, on every add_job: both are
# remembered per function. Bounded, since bound methods of new objects keep coming (each is
# a new key); unhashable callables are checked without remembering
_MAX_REMEMBERED = 4096
_signatures: dict[Callable[..., Any], inspect.Signature | None] = {}
#: functions known to accept a call without arguments (the common case of the hot path)
_callable_without_arguments: set[Callable[..., Any]] = set()


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return _signatures[function]
    except KeyError:
        if len(_signatures) >= _MAX_REMEMBERED:
            _signatures.clear()
        signature = _signatures[function] = _signature_of(function)
        return signature
    except TypeError:  # unhashable
        return _signature_of(function)


def _signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and extension functions have none
        return None


def check_arguments(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Raise ``TypeError`` if ``function`` cannot be called with ``args`` and ``kwargs``.

    Functions without a signature Python can read are not checked.
    """
    without_arguments = not args and not kwargs
    if without_arguments:
        try:
            if function in _callable_without_arguments:
                return
        except TypeError:  # unhashable
            without_arguments = False  # checked every time, not remembered
    signature = _signature(function)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        try:
            name = callable_name(function)
        except TypeError:  # a partial or a callable instance
            name = repr(function)
        reason = str(exc)
        unknown = _unknown_keywords(signature, kwargs)
        if unknown and "unexpected keyword" not in reason:
            # bind() names only the first problem it meets, often a missing argument that
            # the misspelled keyword was meant to be
            reason += f"; no parameter is named {', '.join(map(repr, unknown))}"
        raise TypeError(f"args/kwargs do not fit {name}{signature}: {reason}") from None
    if without_arguments:
        if len(_callable_without_arguments) >= _MAX_REMEMBERED:
            _callable_without_arguments.clear()
        _callable_without_arguments.add(function)


def _unknown_keywords(signature: inspect.Signature, kwargs: Mapping[str, Any]) -> list[str]:
    parameters = signature.parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return []
    accepted = {
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    return [name for name in kwargs if name not in accepted]
