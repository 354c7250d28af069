"""Trigger tests and their shared helpers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone


def instants(values: Sequence[datetime | None]) -> list[tuple[datetime, timedelta | None] | None]:
    """Each value's UTC instant and UTC offset: equal only if both the instant and zone match."""
    return [
        None if value is None else (value.astimezone(timezone.utc), value.utcoffset())
        for value in values
    ]
