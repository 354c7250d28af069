"""Measurements shared by every side of the benchmarks (asched and its competitors alike).

Standard library only: it is imported inside the competitors' environments too.
"""

from __future__ import annotations

import os
import statistics


def rss_bytes() -> int:
    """Return this process's resident set size (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def lateness_summary(latenesses: list[float]) -> dict[str, float]:
    """Return p50, p99 and max of latenesses given in seconds, in milliseconds."""
    ordered = sorted(latenesses)
    if not ordered:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    p99_index = min(len(ordered) - 1, int(len(ordered) * 0.99))
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[p99_index] * 1000,
        "max_ms": ordered[-1] * 1000,
    }
