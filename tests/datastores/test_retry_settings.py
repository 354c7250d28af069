from __future__ import annotations

from typing import Any

import pytest

from asched.datastores import RetrySettings


def test_waits_start_at_wait_min_and_double_up_to_wait_max() -> None:
    settings = RetrySettings()
    waits = [settings.wait_after(failures) for failures in range(1, 10)]
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_wait_is_capped_for_long_failure_streaks() -> None:
    assert RetrySettings(wait_min=1, wait_max=7).wait_after(10_000) == 7


def test_wait_after_no_failure_is_refused() -> None:
    with pytest.raises(ValueError, match="failed_attempts must be 1 or more, got 0"):
        RetrySettings().wait_after(0)


@pytest.mark.parametrize(
    ("field", "settings"),
    [
        ("attempts", {"attempts": 0}),
        ("wait_min", {"wait_min": 0.0}),
        ("wait_max", {"wait_max": -1.0}),
    ],
)
def test_bad_settings_are_refused(field: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=field):
        RetrySettings(**settings)
