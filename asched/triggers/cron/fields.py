"""Parsing and evaluating the fields of a cron trigger.

Each field turns into a sorted tuple of the values it allows. Only the ``day`` field can
depend on the month it is evaluated in (``last``, ``3rd fri``, ``last fri``); it is evaluated
per (year, month) by :class:`DaySpec`.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from datetime import date

import attrs

#: field order, coarsest first
FIELD_NAMES = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")

#: (minimum, maximum) of each field; ``*`` on ``year`` means every year from 1970
FIELD_RANGES: dict[str, tuple[int, int]] = {
    "year": (1970, 9999),
    "month": (1, 12),
    "day": (1, 31),
    "week": (1, 53),
    "day_of_week": (0, 6),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 59),
}

#: what an unset field finer than the finest set field becomes (coarser ones become ``*``)
FIELD_MINIMUMS: dict[str, str] = {
    "year": "*",
    "month": "1",
    "day": "1",
    "week": "*",
    "day_of_week": "*",
    "hour": "0",
    "minute": "0",
    "second": "0",
}

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

# Full English names, also accepted (fixed here: the calendar module's follow the locale)
_WEEKDAY_FULL_NAMES = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
_MONTH_FULL_NAMES = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip

# Names allowed in place of numbers, per field (lower case)
_NAMES: dict[str, dict[str, int]] = {
    "day_of_week": {
        name: index
        for names in (WEEKDAY_NAMES, _WEEKDAY_FULL_NAMES)
        for index, name in enumerate(names)
    },
    "month": {
        name: index
        for names in (MONTH_NAMES, _MONTH_FULL_NAMES)
        for index, name in enumerate(names, start=1)
    },
}
#: weekday names (short and full, lower case) to numbers, 0 = Monday
WEEKDAYS_BY_NAME = _NAMES["day_of_week"]

_RANGE = re.compile(r"^(?P<first>\*|\w+)(?:-(?P<last>\w+))?(?:/(?P<step>\w+))?$")
_ORDINAL_WEEKDAY = re.compile(
    r"^(?P<ordinal>1st|2nd|3rd|4th|5th|last)\s+(?P<weekday>\w+)$", re.IGNORECASE
)
_ORDINAL_START = re.compile(r"^(\d+(?:st|nd|rd|th)|last)\s", re.IGNORECASE)
# Quartz's "nth weekday of the month" (fri#3), which asched writes as day="3rd fri"
_HASH_WEEKDAY = re.compile(r"^(?P<weekday>\w+)#(?P<nth>[1-5])$")
_ORDINALS = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5}
_ORDINAL_NAMES = {number: text for text, number in _ORDINALS.items()}


class CronFieldError(ValueError):
    """A cron field expression that cannot be parsed or is out of range."""

    def __init__(self, field: str, expression: str, reason: str) -> None:
        super().__init__(
            f"CronTrigger: invalid value {expression!r} for field {field!r} ({reason})"
        )
        self.field = field
        self.expression = expression
        self.reason = reason


class ReversedRangeError(CronFieldError):
    """A range ``a-b`` whose end comes before its start."""


def tidy_expression(field: str, value: object) -> str:
    """Return a field value given by the user (an int or a string) as expression text.

    Spaces are tidied, the case is kept: parsing ignores it, and error messages quote the
    user's own text.

    :raises TypeError: if the value is neither an int nor a string
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"CronTrigger: field {field!r} must be an int or an expression string, got {value!r}"
        )
    text = str(value).strip()
    # "mon - fri" and "1, 2" read naturally; the grammar has no spaces except in "3rd fri"
    text = re.sub(r"\s*([,/-])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text)


def normalize_expression(field: str, value: object) -> str:
    """Return a field value given by the user as the expression text a trigger keeps.

    That is :func:`tidy_expression` in lower case.

    :raises TypeError: if the value is neither an int nor a string
    """
    return tidy_expression(field, value).lower()


def error_as_given(error: CronFieldError, value: object) -> CronFieldError:
    """Return ``error``, raised on a normalized expression, as it reads for the given value.

    Normalizing lowers the case; the error returned quotes ``value`` as the user wrote it
    (leading and trailing spaces aside), and the parts of it at fault in their case.
    """
    field = error.field
    text = tidy_expression(field, value)
    try:
        if field == "day":
            DaySpec.parse(text)
        else:
            parse_values(field, text)
    except CronFieldError as as_given:
        return type(as_given)(field, str(value).strip(), as_given.reason)
    return error  # parsing ignores case: unreachable unless the two disagree


def _number(
    field: str,
    expression: str,
    token: str,
    bounds: tuple[int, int],
    names: Mapping[str, int],
) -> int:
    folded = token.lower()
    if folded in names:
        return names[folded]
    # isdecimal(), not isdigit(): int() refuses digits such as "²"
    if not token.isdecimal():
        expected = "a number" if not names else "a number or a name such as " + next(iter(names))
        hint = ""
        if field == "day" and folded == "l":
            hint = "; for the last day of the month, write 'last'"
        raise CronFieldError(field, expression, f"{token!r} is not {expected}{hint}")
    value = int(token)
    low, high = bounds
    if not low <= value <= high:
        raise CronFieldError(field, expression, f"{value} is out of range, expected {low}-{high}")
    return value


def _hash_weekday_hint(part: str) -> str:
    """Return how to write a Quartz-style ``fri#3`` in asched, or ``""`` for other parts."""
    match = _HASH_WEEKDAY.match(part)
    if match is None:
        return ""
    ordinal = _ORDINAL_NAMES[int(match.group("nth"))]
    weekday = _NAMES["day_of_week"].get(match.group("weekday").lower())
    example = f"{ordinal} {WEEKDAY_NAMES[weekday] if weekday is not None else 'fri'}"
    return (
        "; '#' is not supported: the day field takes the nth weekday of the month, as in "
        f"CronTrigger(day={example!r})"
    )


def range_values(
    field: str,
    expression: str,
    part: str,
    bounds: tuple[int, int] | None = None,
    names: Mapping[str, int] | None = None,
) -> range:
    """Return the values of one comma-separated part (``*``, ``a``, ``a-b``, ``a-b/c``, ...).

    :param expression: the whole expression, for error messages
    :param bounds: the allowed (minimum, maximum), by default the field's own
    :param names: the names allowed in place of numbers (lower case), by default the
        field's own
    :raises CronFieldError: naming the field and the expression
    """
    if names is None:
        names = _NAMES.get(field, {})
    match = _RANGE.match(part)
    if match is None:
        hint = _hash_weekday_hint(part) if field == "day_of_week" else ""
        raise CronFieldError(field, expression, f"cannot parse {part!r}{hint}")

    low, high = bounds = bounds or FIELD_RANGES[field]
    first_text, last_text, step_text = match.group("first", "last", "step")
    if first_text == "*":
        if last_text is not None:
            raise CronFieldError(field, expression, "'*' cannot start a range")
        first, last = low, high
    else:
        first = _number(field, expression, first_text, bounds, names)
        if last_text is not None:
            last = _number(field, expression, last_text, bounds, names)
        else:
            # "5/15" means from 5 to the end in steps of 15; a plain "5" is just 5
            last = high if step_text is not None else first
        if last < first:
            raise ReversedRangeError(
                field, expression, f"the range {part!r} ends before it starts ({last} < {first})"
            )

    step = 1
    if step_text is not None:
        if not step_text.isdecimal() or int(step_text) == 0:
            raise CronFieldError(
                field, expression, f"the step {step_text!r} must be a positive integer"
            )
        step = int(step_text)
    return range(first, last + 1, step)


def parse_values(field: str, expression: str) -> tuple[int, ...]:
    """Return the sorted values a field expression allows (all fields but ``day``).

    :raises CronFieldError: naming the field and the expression
    """
    if not expression:
        raise CronFieldError(field, expression, "empty expression")
    values: set[int] = set()
    for part in expression.split(","):
        if part.lower() == "last" or _ORDINAL_WEEKDAY.match(part):
            raise CronFieldError(field, expression, f"{part!r} is only allowed on the 'day' field")
        values.update(range_values(field, expression, part))
    return tuple(sorted(values))


@attrs.frozen
class DaySpec:
    """The ``day`` field: fixed days of the month plus month-dependent ones."""

    #: days given as numbers or ranges (may exceed the length of a month: those are skipped)
    fixed_days: frozenset[int]
    #: ``last``: the last day of each month
    last_day: bool
    #: ``(ordinal, weekday)`` pairs: ordinal 1-5 or -1 for ``last``, weekday 0 = Monday
    weekday_ordinals: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, expression: str) -> DaySpec:
        """Parse a ``day`` expression.

        :raises CronFieldError: naming the field and the expression
        """
        if not expression:
            raise CronFieldError("day", expression, "empty expression")
        fixed: set[int] = set()
        last_day = False
        ordinals: list[tuple[int, int]] = []
        for part in expression.split(","):
            if part.lower() == "last":
                last_day = True
                continue
            match = _ORDINAL_WEEKDAY.match(part)
            if match is not None:
                weekday_text = match.group("weekday")
                weekday = _NAMES["day_of_week"].get(weekday_text.lower())
                if weekday is None:
                    raise CronFieldError(
                        "day", expression, f"{weekday_text!r} is not a weekday name (mon-sun)"
                    )
                ordinal_text = match.group("ordinal").lower()
                ordinals.append((_ORDINALS.get(ordinal_text, -1), weekday))
                continue
            ordinal_start = _ORDINAL_START.match(part)
            if ordinal_start is not None:
                ordinal_text = ordinal_start.group(1)
                if ordinal_text.lower() not in ("last", *_ORDINALS):
                    raise CronFieldError(
                        "day", expression, f"{ordinal_text!r} is not an ordinal from 1st to 5th"
                    )
                raise CronFieldError(
                    "day",
                    expression,
                    f"{part!r}: an ordinal takes one weekday name, as in '3rd fri' or "
                    "'last sun' (no ranges or steps)",
                )
            fixed.update(range_values("day", expression, part))
        return cls(frozenset(fixed), last_day, tuple(ordinals))

    def days_in(self, year: int, month: int) -> set[int]:
        """Return the days of the given month this spec allows."""
        first_weekday, length = calendar.monthrange(year, month)
        days = {day for day in self.fixed_days if day <= length}
        if self.last_day:
            days.add(length)
        for ordinal, weekday in self.weekday_ordinals:
            first = 1 + (weekday - first_weekday) % 7
            if ordinal == -1:
                days.add(first + (length - first) // 7 * 7)
            else:
                day = first + (ordinal - 1) * 7
                if day <= length:
                    days.add(day)
        return days


def weekday_days(year: int, month: int, weekdays: Iterable[int]) -> set[int]:
    """Return the days of the month falling on any of ``weekdays`` (0 = Monday)."""
    first_weekday, length = calendar.monthrange(year, month)
    allowed = set(weekdays)
    return {day for day in range(1, length + 1) if (first_weekday + day - 1) % 7 in allowed}


def iso_week_days(year: int, month: int, weeks: Iterable[int]) -> set[int]:
    """Return the days of the month whose ISO week number is in ``weeks``."""
    length = calendar.monthrange(year, month)[1]
    allowed = set(weeks)
    return {
        day for day in range(1, length + 1) if date(year, month, day).isocalendar()[1] in allowed
    }
