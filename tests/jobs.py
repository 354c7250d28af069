"""Importable job functions, for tests that pass functions by reference or to processes."""

from __future__ import annotations

import os


def add(a: int, b: int = 0) -> int:
    return a + b


def process_id() -> int:
    return os.getpid()


async def async_echo(value: object) -> object:
    return value


def fail(message: str) -> None:
    raise ValueError(message)


#: values recorded by ``record``, for tests where another scheduler instance runs the job
RECORDED: list[object] = []


async def record(value: object) -> None:
    RECORDED.append(value)
