"""Scheduler benchmarks, asched beside APScheduler 3.11 and 4.0a6 in one run.

    python -m benchmarks.vendor                 # once: installs the competitors
    python -m benchmarks [throughput|postgresql|postgresql-extra|stores|lateness|scale|all]
                         [--quick] [--million]

Every case runs in a fresh interpreter (the two APScheduler versions are both the package
``apscheduler``, each from its own folder in ``benchmarks/.vendor``) and prints markdown
tables. ``--quick`` runs smaller sizes; ``--million`` adds 1M schedules to the scale case.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VENDOR = Path(__file__).resolve().parent / ".vendor"
POSTGRESQL_URL = os.environ.get(
    "ASCHED_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SIDES = {
    "asched": ("benchmarks.asched_cases", None),
    "APScheduler 3.11": ("benchmarks.apscheduler3_cases", "ap3"),
    "APScheduler 4.0a6": ("benchmarks.apscheduler4_cases", "ap4"),
    "arq 0.28": ("benchmarks.arq_cases", "arq"),
    "floor": ("benchmarks.floors", None),
}
# a number no task ever reaches: "no per-task limit" in APScheduler 4
UNLIMITED = 1_000_000


def run_case(side: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case of one side in a fresh interpreter and return its JSON result."""
    module, vendor = SIDES[side]
    env = dict(os.environ)
    if vendor is not None:
        path = VENDOR / vendor
        if not path.is_dir():
            sys.exit(f"{path} is missing: run `python -m benchmarks.vendor` first")
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if completed.returncode != 0:
        print(f"  {side} {spec} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if math.isnan(value):  # a case that gave up waiting (see its side)
        return "never: not within the case's time limit"
    return f"{value:,.{digits}f}"


def throughput(jobs: int) -> None:
    print(f"\n### One-off no-op jobs, memory store ({jobs:,} jobs, end to end)\n")
    floor = run_case("asched", {"case": "floor", "jobs": jobs}).get("jobs_per_second")
    print("| system | kind | jobs/s | vs floor |")
    print("|---|---|---:|---:|")
    print(
        f"| anyio task group spawning no-op tasks (the floor) | async | {_number(floor)} | 1.00 |"
    )
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for kind in ("async", "sync"):
        base = {"case": "throughput", "jobs": jobs, "kind": kind}
        rows.append(("asched (memory)", kind, run_case("asched", base)))
        rows.append(
            ("APScheduler 3.11 (MemoryJobStore)", kind, run_case("APScheduler 3.11", base))
        )
        if kind == "async":
            rows.append(
                (
                    "APScheduler 4.0a6 (MemoryDataStore, defaults)",
                    kind,
                    run_case("APScheduler 4.0a6", base),
                )
            )
        rows.append(
            (
                "APScheduler 4.0a6 (MemoryDataStore, no per-task limit)",
                kind,
                run_case("APScheduler 4.0a6", {**base, "max_running_jobs": UNLIMITED}),
            )
        )
    for name, kind, result in rows:
        rate = result.get("jobs_per_second")
        ratio = f"{rate / floor:.2f}" if rate and floor else "n/a"
        print(f"| {name} | {kind} | {_number(rate)} | {ratio} |")

    print(f"\n### Plain functions added from plain code ({jobs:,} jobs, end to end)\n")
    print("| system | µs per add_job call | jobs/s |")
    print("|---|---:|---:|")
    spec = {"case": "blocking", "jobs": jobs}
    for name, side in (
        ("asched `Scheduler` (blocking, memory)", "asched"),
        ("APScheduler 3.11 `BackgroundScheduler` (MemoryJobStore)", "APScheduler 3.11"),
    ):
        result = run_case(side, spec)
        print(
            f"| {name} | {_number(result.get('add_microseconds'), 1)} | "
            f"{_number(result.get('jobs_per_second'))} |"
        )


def postgresql(jobs: int, ap4_jobs: int) -> None:
    print(
        f"\n### One-off no-op async jobs on PostgreSQL (asched and APScheduler 3.11: {jobs:,} "
        f"jobs; APScheduler 4.0a6: {ap4_jobs:,})\n"
    )
    print("| system | producers | worker | jobs/s |")
    print("|---|---:|---|---:|")
    asched_url = f"{POSTGRESQL_URL}?schema=asched_bench"
    base = {"case": "throughput", "kind": "async"}
    for producers, processes in ((1, 0), (10, 0), (10, 1), (10, 2)):
        result = run_case(
            "asched",
            {**base, "jobs": jobs, "store": asched_url, "producers": producers,
             "processes": processes},
        )  # fmt: skip
        worker = _worker_processes(processes) if processes else "in the same process"
        print(f"| asched | {producers} | {worker} | {_number(result.get('jobs_per_second'))} |")
    for processes in (0, 1, 2):
        result = run_case(
            "asched",
            {"case": "backlog", "jobs": jobs, "store": asched_url, "processes": processes},
        )
        worker = _worker_processes(processes) if processes else "a worker-only scheduler"
        print(
            f"| asched, a backlog (batched acquire/release) | - | {worker} | "
            f"{_number(result.get('jobs_per_second'))} |"
        )
    print(
        f"| asched, adding only (`add_job` one call at a time) | 1 | none | "
        f"{_number(result.get('adds_per_second'))} |"
    )
    for batch in (1, 100):
        result = run_case("floor", {"case": "postgresql", "jobs": jobs, "batch": batch})
        print(
            f"| floor: bare asyncpg loop, {_jobs(batch)} per statement | 1 | same loop | "
            f"{_number(result.get('jobs_per_second'))} |"
        )
    for producers, processes in ((1, 0), (10, 0), (10, 1), (10, 2)):
        result = run_case(
            "APScheduler 4.0a6",
            {**base, "jobs": ap4_jobs, "store": "postgresql", "producers": producers,
             "processes": processes, "max_running_jobs": UNLIMITED},
        )  # fmt: skip
        worker = _worker_processes(processes) if processes else "in the same process"
        print(
            f"| APScheduler 4.0a6 SQLAlchemyDataStore (asyncpg) + AsyncpgEventBroker, no "
            f"per-task limit, {ap4_jobs:,} jobs | {producers} | {worker} | "
            f"{_number(result.get('jobs_per_second'))} |"
        )
    result = run_case("APScheduler 3.11", {**base, "jobs": jobs, "store": "postgresql"})
    print(
        f"| APScheduler 3.11 SQLAlchemyJobStore (psycopg2) | 1 | in the same process | "
        f"{_number(result.get('jobs_per_second'))} |"
    )


def _jobs(count: int) -> str:
    return f"{count} job{'s' if count > 1 else ''}"


def _worker_processes(count: int) -> str:
    return f"{count} worker process{'es' if count > 1 else ''}"


def embedded_and_redis(jobs: int, schedules: int) -> None:
    import tempfile

    folder = tempfile.mkdtemp(prefix="asched-bench-")
    print(
        f"\n### Memory, SQLite and Redis: {jobs:,} one-off no-op async jobs and "
        f"{schedules:,} far-future schedules\n"
    )
    print(
        "| system | jobs/s, 1 producer | jobs/s, 10 producers | backlog jobs/s "
        "| add µs/schedule (10 producers) | Redis bytes/schedule | due one late (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    memory_rates = [
        run_case(
            "asched",
            {"case": "throughput", "kind": "async", "jobs": jobs, "producers": producers},
        ).get("jobs_per_second")
        for producers in (1, 10)
    ]
    memory_scaled = run_case("asched", {"case": "scale", "schedules": schedules, "producers": 10})
    print(
        f"| asched memory (for reference: one process) | {_number(memory_rates[0])} | "
        f"{_number(memory_rates[1])} | n/a | "
        f"{_number(memory_scaled.get('add_microseconds_per_schedule'), 1)} | n/a | "
        f"{_number(memory_scaled.get('due_lateness_ms'), 1)} |"
    )
    for label, asched_store, ap3_store in (
        ("SQLite", f"sqlite:///{folder}/asched-{{case}}.sqlite", f"sqlite:///{folder}/ap3.sqlite"),
        ("Redis", "redis://127.0.0.1:6379/0?prefix=asched_bench_{case}", "redis://"),
    ):
        rates = [
            run_case(
                "asched",
                {"case": "throughput", "kind": "async", "jobs": jobs, "producers": producers,
                 "store": asched_store.format(case="t")},
            ).get("jobs_per_second")
            for producers in (1, 10)
        ]  # fmt: skip
        _remove_benchmark_data()
        backlog = run_case(
            "asched", {"case": "backlog", "jobs": jobs, "store": asched_store.format(case="b")}
        )
        scaled = run_case(
            "asched",
            {"case": "scale", "schedules": schedules, "producers": 10,
             "store": asched_store.format(case="s")},
        )  # fmt: skip
        _remove_benchmark_data()
        print(
            f"| asched {label} | {_number(rates[0])} | {_number(rates[1])} | "
            f"{_number(backlog.get('jobs_per_second'))} | "
            f"{_number(scaled.get('add_microseconds_per_schedule'), 1)} | "
            f"{_number(scaled.get('redis_bytes_per_schedule'))} | "
            f"{_number(scaled.get('due_lateness_ms'), 1)} |"
        )
        ap3 = run_case(
            "APScheduler 3.11",
            {"case": "throughput", "kind": "async", "jobs": jobs, "store": ap3_store},
        )
        ap3_scaled = run_case(
            "APScheduler 3.11", {"case": "scale", "schedules": schedules, "store": ap3_store}
        )
        print(
            f"| APScheduler 3.11 {label} job store | {_number(ap3.get('jobs_per_second'))} | "
            f"n/a | n/a | {_number(ap3_scaled.get('add_microseconds_per_schedule'), 1)} "
            f"(added before start) | {_number(ap3_scaled.get('redis_bytes_per_schedule'))} | "
            f"{_number(ap3_scaled.get('due_lateness_ms'), 1)} |"
        )
        if label == "Redis":
            arq_rates = [
                run_case(
                    "arq 0.28", {"case": "throughput", "jobs": jobs, "producers": producers}
                ).get("jobs_per_second")
                for producers in (1, 10)
            ]
            arq_scaled = run_case(
                "arq 0.28", {"case": "scale", "schedules": schedules, "producers": 10}
            )
            print(
                f"| arq 0.28 (deferred jobs as schedules) | {_number(arq_rates[0])} | "
                f"{_number(arq_rates[1])} | n/a | "
                f"{_number(arq_scaled.get('add_microseconds_per_schedule'), 1)} | "
                f"{_number(arq_scaled.get('redis_bytes_per_schedule'))} | "
                f"{_number(arq_scaled.get('due_lateness_ms'), 1)} |"
            )
            for batch in (1, 100):
                floor = run_case("floor", {"case": "redis", "jobs": jobs, "batch": batch})
                print(
                    f"| floor: bare loop of the store's scripts on its connection, "
                    f"{_jobs(batch)} per call | {_number(floor.get('jobs_per_second'))} "
                    "| n/a | n/a | n/a | n/a | n/a |"
                )


def postgresql_lateness_and_scale(schedules: int, seconds: int, scale_sizes: list[int]) -> None:
    asched_url = f"{POSTGRESQL_URL}?schema=asched_bench"
    print(
        f"\n### PostgreSQL fire lateness: {schedules:,} schedules firing every second for "
        f"{seconds} s\n"
    )
    print("| system | fires/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    spec = {"case": "lateness", "schedules": schedules, "seconds": seconds}
    for side, extra in (
        ("asched", {"store": asched_url}),
        ("APScheduler 3.11", {"store": "postgresql"}),
        ("APScheduler 4.0a6", {"store": "postgresql", "max_running_jobs": UNLIMITED}),
    ):
        result = run_case(side, {**spec, **extra})
        _remove_benchmark_data()
        print(
            f"| {side} | {_number(result.get('fires_per_second'))} | "
            f"{_number(result.get('p50_ms'), 1)} | {_number(result.get('p99_ms'), 1)} | "
            f"{_number(result.get('max_ms'), 1)} |"
        )

    print("\n### PostgreSQL scale: far-future schedules\n")
    print("| system | schedules | add µs/schedule | due one fires late (ms) |")
    print("|---|---:|---:|---:|")
    for side, store, sizes in (
        ("asched", asched_url, scale_sizes),
        ("APScheduler 3.11", "postgresql", scale_sizes),
        ("APScheduler 4.0a6", "postgresql", scale_sizes),
    ):
        for count in sizes:
            result = run_case(side, {"case": "scale", "schedules": count, "store": store})
            _remove_benchmark_data()
            print(
                f"| {side} | {count:,} | "
                f"{_number(result.get('add_microseconds_per_schedule'), 1)} | "
                f"{_number(result.get('due_lateness_ms'), 1)} |"
            )


def million_on_servers() -> None:
    """1M far-future schedules on PostgreSQL and Redis, beside the competitors that finish.

    APScheduler 4.0a6 is left out: at its 2.4 ms per add on PostgreSQL a million would take
    40 minutes (and its memory store keeps 4.3 KB per schedule).
    """
    print("\n### 1,000,000 far-future schedules on PostgreSQL and Redis\n")
    print("| system | store | add µs/schedule | Redis bytes/schedule | due one fires late (ms) |")
    print("|---|---|---:|---:|---:|")
    count = 1_000_000
    for side, label, spec in (
        ("asched", "PostgreSQL (10 producers)",
         {"producers": 10, "store": f"{POSTGRESQL_URL}?schema=asched_bench"}),
        ("APScheduler 3.11", "PostgreSQL (added before start)", {"store": "postgresql"}),
        ("asched", "Redis (10 producers)",
         {"producers": 10, "store": "redis://127.0.0.1:6379/0?prefix=asched_bench_s"}),
        ("APScheduler 3.11", "Redis (added before start)", {"store": "redis://"}),
        ("arq 0.28", "Redis, deferred jobs (10 producers)", {"producers": 10}),
    ):  # fmt: skip
        result = run_case(side, {"case": "scale", "schedules": count, **spec})
        _remove_benchmark_data()
        print(
            f"| {side} | {label} | {_number(result.get('add_microseconds_per_schedule'), 1)} | "
            f"{_number(result.get('redis_bytes_per_schedule'))} | "
            f"{_number(result.get('due_lateness_ms'), 1)} |"
        )


def _remove_benchmark_data() -> None:
    """Drop what asched's benchmark cases left in PostgreSQL and Redis."""
    import asyncio

    import asyncpg
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for case in "tbsl":
        keys = list(client.scan_iter(match=f"{{asched_bench_{case}}}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    client.close()

    async def drop_schema() -> None:
        connection = await asyncpg.connect(POSTGRESQL_URL)
        try:
            for schema in ("asched_bench", "ap4_bench"):
                await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await connection.execute("DROP TABLE IF EXISTS ap3_bench")
        finally:
            await connection.close()

    asyncio.run(drop_schema())


def redis_lateness(schedules: int, seconds: int) -> None:
    print(f"\n### Redis fire lateness: {schedules:,} schedules every second for {seconds} s\n")
    print("| system | fires/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    spec = {"case": "lateness", "schedules": schedules, "seconds": seconds}
    for side, store in (
        ("asched", "redis://127.0.0.1:6379/0?prefix=asched_bench_l"),
        ("APScheduler 3.11", "redis://"),
        ("arq 0.28", None),
    ):
        result = run_case(side, {**spec, "store": store})
        _remove_benchmark_data()
        print(
            f"| {side} | {_number(result.get('fires_per_second'))} | "
            f"{_number(result.get('p50_ms'), 1)} | {_number(result.get('p99_ms'), 1)} | "
            f"{_number(result.get('max_ms'), 1)} |"
        )


def lateness(schedules: int, seconds: int) -> None:
    print(
        f"\n### Fire lateness: {schedules:,} schedules firing every second for {seconds} s, "
        "memory store\n"
    )
    print("| system | fires/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    spec = {"case": "lateness", "schedules": schedules, "seconds": seconds}
    for side, extra in (
        ("asched", {}),
        ("APScheduler 3.11", {}),
        ("APScheduler 4.0a6", {"max_running_jobs": UNLIMITED}),
    ):
        result = run_case(side, {**spec, **extra})
        print(
            f"| {side} | {_number(result.get('fires_per_second'))} | "
            f"{_number(result.get('p50_ms'), 1)} | {_number(result.get('p99_ms'), 1)} | "
            f"{_number(result.get('max_ms'), 1)} |"
        )


def scale(sizes: list[int], competitor_sizes: list[int]) -> None:
    print("\n### Scale: far-future schedules in the memory store\n")
    print(
        "| system | schedules | add µs/schedule | RSS bytes/schedule | due one fires late (ms) |"
    )
    print("|---|---:|---:|---:|---:|")
    for side in ("asched", "APScheduler 3.11", "APScheduler 4.0a6"):
        for count in sizes if side == "asched" else competitor_sizes:
            result = run_case(side, {"case": "scale", "schedules": count})
            print(
                f"| {side} | {count:,} | {_number(result.get('add_microseconds_per_schedule'), 1)}"
                f" | {_number(result.get('rss_bytes_per_schedule'))}"
                f" | {_number(result.get('due_lateness_ms'), 1)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "case",
        nargs="?",
        default="all",
        choices=[
            "throughput",
            "lateness",
            "scale",
            "postgresql",
            "postgresql-extra",
            "stores",
            "all",
        ],
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--million",
        action="store_true",
        help="add 1M schedules to scale (and, with stores or postgresql-extra, on the servers)",
    )
    args = parser.parse_args()
    quick = args.quick
    if args.case in ("throughput", "all"):
        throughput(2_000 if quick else 10_000)
    if args.case in ("postgresql", "all"):
        # APScheduler 4.0a6 runs 20-100 jobs/s on PostgreSQL here: 10,000 would take minutes
        # per row, and its rate does not improve with the count
        postgresql(2_000 if quick else 10_000, 500 if quick else 2_000)
    if args.case in ("stores", "all"):
        embedded_and_redis(2_000 if quick else 10_000, 100_000)
    if args.case in ("postgresql-extra", "all"):
        postgresql_lateness_and_scale(500, 10, [10_000, 100_000])
    if args.case in ("stores", "all"):
        redis_lateness(500, 10)
    if args.million and args.case in ("postgresql-extra", "stores", "all"):
        million_on_servers()
    if args.case in ("postgresql", "stores", "all"):
        _remove_benchmark_data()
    if args.case in ("lateness", "all"):
        lateness(200 if quick else 1_000, 5 if quick else 10)
    if args.case in ("scale", "all"):
        sizes = [10_000] if quick else [10_000, 100_000]
        scale([*sizes, 1_000_000] if args.million else sizes, sizes)


if __name__ == "__main__":
    main()
