"""Translating crontab lines into CronTrigger fields.

Crontab numbers weekdays 0-7 with 0 and 7 both Sunday; the keyword API counts 0 = Monday as
APScheduler does. The translation turns crontab weekdays into names, so ``str()`` of the
resulting trigger reads the same whatever numbering the user had in mind.
"""

from __future__ import annotations

from .fields import (
    WEEKDAY_NAMES,
    WEEKDAYS_BY_NAME,
    CronFieldError,
    ReversedRangeError,
    range_values,
    tidy_expression,
)

SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIVE_FIELDS = ("minute", "hour", "day", "month", "day_of_week")

# Weekday names (lower case) to crontab numbers: 0 = Sunday
_CRONTAB_WEEKDAYS = {name: (number + 1) % 7 for name, number in WEEKDAYS_BY_NAME.items()}


def _crontab_weekdays(expression: str) -> str:
    """Translate a crontab ``day_of_week`` expression (0/7 = Sunday) to weekday names.

    :param expression: the field as the user wrote it (errors quote it so)
    """
    if expression == "*":
        return "*"

    weekdays: set[int] = set()
    for part in expression.split(","):
        # Evaluate in crontab numbering (0-7), with names mapped to crontab numbers
        try:
            values = range_values("day_of_week", expression, part, (0, 7), _CRONTAB_WEEKDAYS)
        except CronFieldError as exc:
            if isinstance(exc, ReversedRangeError):
                reason = (
                    f"the range {part!r} ends before it starts; as in cron a range cannot "
                    "wrap past the end of the week: Monday to Sunday is '1-7' or "
                    "'mon-sat,sun', not 'mon-sun'"
                )
            else:
                reason = f"{exc.reason}; days are 0-7 (0 and 7 are Sunday) or sun-sat"
            raise ValueError(f"crontab: invalid day of week {expression!r} ({reason})") from None
        weekdays.update((value + 6) % 7 for value in values)

    # Render runs of consecutive weekdays as ranges: {0..4} -> "mon-fri"
    runs: list[str] = []
    ordered = sorted(weekdays)
    while ordered:
        first = last = ordered.pop(0)
        while ordered and ordered[0] == last + 1:
            last = ordered.pop(0)
        if last == first:
            runs.append(WEEKDAY_NAMES[first])
        else:
            runs.append(f"{WEEKDAY_NAMES[first]}-{WEEKDAY_NAMES[last]}")
    # "mon-sun" is not "*": under cron's rule for both day fields it still counts as given
    return ",".join(runs)


def crontab_fields(line: str) -> tuple[dict[str, str], bool]:
    """Return the CronTrigger fields for a crontab line, and whether either day may match.

    :raises ValueError: naming the line and what is wrong with it
    """
    if not isinstance(line, str):
        raise TypeError(f"crontab: expected a string, got {line!r}")
    # The case is kept: the fields ignore it, and their errors quote the user's text
    text = line.strip()
    text = SHORTCUTS.get(text.lower(), text)
    if text.startswith("@"):
        known = ", ".join(SHORTCUTS)
        raise ValueError(f"crontab: unknown shortcut {line.strip()!r} (known: {known})")

    parts = text.split()
    if len(parts) == 5:
        names: tuple[str, ...] = _FIVE_FIELDS
    elif len(parts) == 6:
        names = ("second", *_FIVE_FIELDS)
    else:
        raise ValueError(
            f"crontab: expected 5 fields (minute hour day month day_of_week) or 6 (with "
            f"seconds first), got {len(parts)} in {line!r}"
        )

    fields = dict(zip(names, parts, strict=True))
    # Standard cron: a field starting with "*" counts as unrestricted for the day rule
    match_either_day = not fields["day"].startswith("*") and not fields["day_of_week"].startswith(
        "*"
    )
    fields["day_of_week"] = _crontab_weekdays(tidy_expression("day_of_week", parts[-1]))
    fields.setdefault("second", "0")
    # "*" on a field coarser than a given one is the default anyway; leaving it out keeps
    # str() short: "0 9 * * 1-5" -> cron[day_of_week='mon-fri', hour='9', minute='0', ...].
    # The seconds stay, even "*": they are the finest field, so all others default to "*"
    kept = {name: value for name, value in fields.items() if value != "*" or name == "second"}
    return kept, match_either_day
