"""Compare asched at several git revisions on one benchmark case, taking turns.

    python -m benchmarks.ab 330b1a0 HEAD \
        --spec '{"case": "throughput", "jobs": 10000, "kind": "sync"}'

Each revision is checked out into a temporary git worktree, and the case runs in a fresh
interpreter *inside* that worktree (``python -m`` puts the working directory first on the
import path, so running from this checkout would import this checkout's asched whatever
``PYTHONPATH`` says). The revisions take turns for ``--rounds`` rounds, so a slow phase of
a shared machine hits all of them alike; the table gives each one's median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent


def _run_case(tree: Path, spec: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.asched_cases", spec],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", help="git revisions (HEAD, a hash, a tag)")
    parser.add_argument("--spec", required=True, help="a benchmarks.asched_cases JSON spec")
    parser.add_argument("--rounds", type=int, default=3, help="turns each revision takes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="asched-ab-") as folder:
        trees = []
        for index, revision in enumerate(args.revisions):
            tree = Path(folder) / f"{index}"
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(tree), revision],
                cwd=REPOSITORY,
                check=True,
            )
            trees.append(tree)
        try:
            results: list[list[dict[str, Any]]] = [[] for _ in trees]
            for _ in range(args.rounds):
                for tree, runs in zip(trees, results, strict=True):
                    runs.append(_run_case(tree, args.spec))
        finally:
            for tree in trees:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)],
                    cwd=REPOSITORY,
                    check=False,
                )

    print(f"\n{args.spec}, median of {args.rounds} turns\n")
    print("| revision | jobs/s | CPU µs/job |")
    print("|---|---:|---:|")
    for revision, runs in zip(args.revisions, results, strict=True):
        rate = statistics.median(run["jobs_per_second"] for run in runs)
        cpu = [run["cpu_us_per_job"] for run in runs if "cpu_us_per_job" in run]
        cpu_text = f"{statistics.median(cpu):,.1f}" if cpu else "n/a"
        print(f"| {revision} | {rate:,.0f} | {cpu_text} |")


if __name__ == "__main__":
    main()
