"""Install the competitors the benchmarks compare against, outside asched's environment.

    python -m benchmarks.vendor

APScheduler 3.11 goes to ``benchmarks/.vendor/ap3`` and 4.0a6 to ``benchmarks/.vendor/ap4``
(``pip install --target``), each imported only by the benchmark side that needs it, so
neither is ever a dependency of asched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / ".vendor"
COMPETITORS = {
    "ap3": ["apscheduler==3.11.0", "sqlalchemy>=2", "psycopg2-binary"],
    "ap4": ["apscheduler[asyncpg]==4.0.0a6", "sqlalchemy[asyncio]>=2", "asyncpg"],
    "arq": ["arq==0.28.*"],
}


def main() -> None:
    for name, requirements in COMPETITORS.items():
        target = VENDOR / name
        if (target / name.replace("ap3", "apscheduler").replace("ap4", "apscheduler")).is_dir():
            continue
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), *requirements],
            check=True,
        )
        print(f"installed {', '.join(requirements)} into {target}")


if __name__ == "__main__":
    main()
