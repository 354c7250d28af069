"""Telling coroutine functions from plain ones, through partials and callable objects."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from inspect import iscoroutinefunction
from typing import Any


def is_coroutine_callable(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` returns a coroutine.

    True for a coroutine function, a partial of one, and an object whose ``__call__`` is one.
    """
    while isinstance(func, partial):
        func = func.func
    return iscoroutinefunction(func) or iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )
