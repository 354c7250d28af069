"""Measurements shared by every side of the benchmarks (asched and its competitors alike).

Standard library only: it is imported inside the competitors' environments too.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable


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


def time_blocking_adds(
    add: Callable[[], object], count: int, finished: threading.Event
) -> dict[str, float]:
    """Call ``add()`` ``count`` times from plain code, then wait for ``finished``.

    Returns jobs per second from the first add to ``finished``, and the time per add call.
    """
    start = time.perf_counter()
    for _ in range(count):
        add()
    added = time.perf_counter()
    if not finished.wait(600):
        raise TimeoutError(f"the {count} jobs did not finish within 600 s")
    elapsed = time.perf_counter() - start
    return {
        "jobs_per_second": count / elapsed,
        "add_microseconds": (added - start) / count * 1e6,
        "seconds": elapsed,
    }
