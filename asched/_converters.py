"""Converters and validators applied at the public boundary (attrs converters and friends).

Everything inside asched works with aware datetimes, ``tzinfo`` objects and ``timedelta``;
these functions turn what users hand in (strings, naive datetimes, numbers of seconds) into
those, or raise a ``ValueError``/``TypeError`` naming the offending value.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from enum import Enum
from functools import lru_cache
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal import get_localzone


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


@lru_cache(maxsize=256)
def _zone_from_key(key: str) -> ZoneInfo:
    return ZoneInfo(key)


_FIXED_OFFSET = re.compile(
    r"^(?P<sign>[+-])(?P<hours>\d{2}):(?P<minutes>\d{2})"
    r"(?::(?P<seconds>\d{2})(?:\.(?P<microseconds>\d{6}))?)?$"
)


def as_timezone(value: str | tzinfo | None, *, field: str = "timezone") -> tzinfo:
    """Return a ``tzinfo`` for a zone name, a ``tzinfo`` or ``None`` (the local zone).

    Names are zoneinfo keys (``"Europe/Berlin"``), ``"UTC"``, or fixed offsets from UTC as
    :func:`timezone_key` writes them (``"+05:30"``, ``"-03:00"``).

    :raises ValueError: if the zone name is unknown
    :raises TypeError: if the value is neither a string nor a ``tzinfo``
    """
    if value is None:
        return get_localzone()
    if isinstance(value, tzinfo):
        return value
    if isinstance(value, str):
        if value.upper() == "UTC":
            return timezone.utc
        offset = _FIXED_OFFSET.match(value)
        if offset is not None:
            return _fixed_offset_zone(value, offset, field)
        try:
            return _zone_from_key(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{field}: unknown time zone {value!r}") from None

    raise TypeError(f"{field}: expected a time zone name or a tzinfo, got {value!r}")


def _fixed_offset_zone(text: str, match: re.Match[str], field: str) -> tzinfo:
    hours, minutes, seconds, microseconds = (
        int(match.group(name) or 0) for name in ("hours", "minutes", "seconds", "microseconds")
    )
    if minutes > 59 or seconds > 59:
        raise ValueError(f"{field}: invalid UTC offset {text!r}")
    offset = timedelta(
        hours=hours, minutes=minutes, seconds=seconds, microseconds=microseconds
    ) * (-1 if match.group("sign") == "-" else 1)
    if not offset:
        return timezone.utc
    try:
        return timezone(offset)
    except ValueError:
        raise ValueError(
            f"{field}: invalid UTC offset {text!r} (must be less than 24 hours)"
        ) from None


def timezone_key(tz: tzinfo) -> str:
    """Return a name for ``tz`` that :func:`as_timezone` turns back into an equal zone.

    That is its zoneinfo key, ``"UTC"``, or for a fixed offset from UTC (such as
    ``datetime.now().astimezone()`` gives) the offset: ``"+05:30"``.

    :raises ValueError: if the zone has no portable name (e.g. a custom ``tzinfo`` class)
    """
    if tz is timezone.utc:
        return "UTC"
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if isinstance(key, str):
        return key
    if isinstance(tz, timezone):
        offset = tz.utcoffset(None)
        if not offset:
            return "UTC"
        sign = "-" if offset < timedelta(0) else "+"
        minutes, seconds = divmod(abs(offset), timedelta(minutes=1))
        text = f"{sign}{minutes // 60:02}:{minutes % 60:02}"
        if seconds:
            text += f":{seconds.seconds:02}"
            if seconds.microseconds:
                text += f".{seconds.microseconds:06}"
        return text
    raise ValueError(f"time zone {tz!r} has no portable name; use a zoneinfo key")


def timezone_text(tz: tzinfo) -> str:
    """Return :func:`timezone_key` of ``tz``, or its ``repr()`` if it has no portable name."""
    try:
        return timezone_key(tz)
    except ValueError:
        return repr(tz)


def as_aware_datetime(value: datetime | date | str, tz: tzinfo, *, field: str) -> datetime:
    """Return ``value`` as an aware datetime.

    Accepts aware datetimes (kept as they are), naive datetimes and dates (interpreted in
    ``tz``) and ISO 8601 strings (``"2026-04-30 08:00:00"``, optionally with an offset).

    :raises ValueError: on an unparseable string
    :raises TypeError: on any other type
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{field}: {value!r} is not an ISO 8601 date or datetime "
                "(expected e.g. '2026-04-30 08:00:00')"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            result = localize(value, tz)
        else:
            result = value
    elif isinstance(value, date):
        result = localize(datetime.combine(value, time()), tz)
    else:
        raise TypeError(
            f"{field}: expected a datetime, a date or an ISO 8601 string, got {value!r}"
        )

    try:
        result.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(
            f"{field}: {result.isoformat()} is outside the range of datetime in UTC"
        ) from None
    return result


_UTC_MIN = datetime.min.replace(tzinfo=timezone.utc)
_UTC_MAX = datetime.max.replace(tzinfo=timezone.utc)


def utc_instant(value: datetime) -> datetime:
    """Return an aware datetime in UTC, clamped to the range of ``datetime``.

    An instant too late (or too early) for ``datetime`` in UTC (9999-12-31 23:00-05:00)
    becomes ``datetime.max`` (``datetime.min``) in UTC: nothing can fire after (before) it.
    """
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        offset = value.utcoffset()
        return _UTC_MAX if offset is not None and offset < timedelta(0) else _UTC_MIN


def optional_aware_datetime(
    value: datetime | date | str | None, tz: tzinfo, *, field: str
) -> datetime | None:
    """Like :func:`as_aware_datetime`, but lets ``None`` through."""
    return None if value is None else as_aware_datetime(value, tz, field=field)


def aware_in(value: datetime, tz: tzinfo) -> datetime:
    """Return ``value`` if it is aware, else the naive wall-clock time in ``tz``.

    The rule for an ``after`` given to a trigger: a naive datetime is read like a naive
    ``start_time`` (see :func:`localize`).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        return localize(value, tz)
    return value


def localize(naive: datetime, tz: tzinfo) -> datetime:
    """Attach ``tz`` to a naive wall-clock time, resolving DST transitions.

    A time inside a DST gap (it never happens on the wall clock) moves forward by the length
    of the gap; an ambiguous time (it happens twice) resolves to its first occurrence.
    """
    candidate = naive.replace(tzinfo=tz)
    # Outside transitions both folds agree; in an overlap fold 0 (the default) is the first
    # occurrence, and its offset is the larger one
    offset = candidate.utcoffset()
    later_offset = candidate.replace(fold=1).utcoffset()
    if offset is None or later_offset is None or later_offset <= offset:
        return candidate

    # In a gap, fold 0 uses the offset from before the gap: that instant, shown on the wall
    # clock after the gap, is the time shifted forward by the gap's length
    return (naive - offset).replace(tzinfo=timezone.utc).astimezone(tz)


def as_timedelta(value: timedelta | float | None, *, field: str) -> timedelta | None:
    """Return ``value`` as a ``timedelta``; numbers are seconds, ``None`` stays ``None``.

    :raises ValueError: if the duration is negative
    :raises TypeError: on any other type
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        raise TypeError(f"{field}: expected a timedelta or a number of seconds, got {value!r}")

    if result < timedelta(0):
        raise ValueError(f"{field}: must not be negative, got {value!r}")

    return result


def positive_int_or_none(value: Any, *, field: str) -> int | None:
    """Validate an optional limit: ``None`` or an int of at least 1."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field}: expected an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{field}: must be at least 1, got {value!r}")
    return value


_EnumT = TypeVar("_EnumT", bound=Enum)


def as_enum(enum_class: type[_EnumT], value: Any, *, field: str) -> _EnumT:
    """Return ``value`` as a member of ``enum_class``; its value or name (any case) will do.

    :raises TypeError: if it is neither a member nor a string
    :raises ValueError: if it is a string naming no member, listing the members
    """
    if isinstance(value, enum_class):
        return value
    choices = ", ".join(repr(member.value) for member in enum_class)
    if not isinstance(value, str):
        raise TypeError(
            f"{field}: expected a {enum_class.__name__} or one of {choices}, got {value!r}"
        )
    for member in enum_class:
        if value.lower() in (member.value, member.name):
            return member
    raise ValueError(f"{field}: expected one of {choices}, got {value!r}")


def as_uuid(value: UUID | str, *, field: str) -> UUID:
    """Return ``value`` as a UUID; its text form (as a web API hands it back) will do.

    :raises TypeError: if it is neither a UUID nor a string
    :raises ValueError: if the string is not a UUID
    """
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a UUID or its text, got {value!r}")
    try:
        return UUID(value)
    except ValueError:
        raise ValueError(f"{field}: not a UUID: {value!r}") from None
