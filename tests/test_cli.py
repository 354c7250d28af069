from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest

from asched import AsyncScheduler
from asched._cli import main
from asched.eventbrokers import LocalEventBroker
from asched.triggers import DateTrigger
from tests import jobs, unrestorable
from tests.backends import backend
from tests.services import POSTGRESQL_URL, require_postgresql
from tests.unrestorable import Unrestorable


def test_preview_crontab_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["preview", "*/15 9-17 * * mon-fri", "--count", "5", "--timezone", "UTC"])
    output = capsys.readouterr().out.splitlines()
    assert status == 0
    assert output[0] == "cron[day_of_week='mon-fri', hour='9-17', minute='*/15', second='0']"
    assert len(output) == 6
    assert all(line.split()[0] in {"Mon", "Tue", "Wed", "Thu", "Fri"} for line in output[1:])
    assert all(line.split()[2][3:5] in {"00", "15", "30", "45"} for line in output[1:])


def test_preview_keyword_fields(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["preview", "--cron", "hour=17,minute=*/5,day_of_week=mon,fri", "--count", "3"])
    output = capsys.readouterr().out.splitlines()
    assert status == 0
    assert output[0] == "cron[day_of_week='mon,fri', hour='17', minute='*/5']"
    assert [line.split()[2][:5] for line in output[1:]] == ["17:00", "17:05", "17:10"]


def test_preview_of_an_expression_that_runs_out(capsys: pytest.CaptureFixture[str]) -> None:
    next_year = datetime.now(timezone.utc).year + 1
    assert (
        main(["preview", "--cron", f"year={next_year},month=1,day=1,hour=0", "--count", "3"]) == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "(no more fire times)"


@pytest.mark.parametrize("argv", [["--cron", "year=2020"], ["0 0 30 2 *"]], ids=["past", "feb30"])
def test_preview_of_an_expression_that_never_matches_fails(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["preview", *argv, "--timezone", "UTC"]) == 1
    assert "never matches again" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preview", "61 * * * *"], "invalid value '61' for field 'minute'"),
        (["preview", "--cron", "hour=25"], "invalid value '25' for field 'hour'"),
        (["preview", "--cron", "hours=5"], "--cron: unknown field 'hours' (fields: year,"),
        (["preview", "--cron", "hour=17,minutes=5"], "--cron: unknown field 'minutes'"),
        (["preview", "--cron", "*/5"], "--cron: expected field=value pairs"),
        (["preview", "* * * * *", "--timezone", "Nowhere/City"], "unknown time zone"),
    ],
)
def test_preview_rejects_bad_input(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_preview_needs_exactly_one_expression(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview"]) == 2
    assert main(["preview", "* * * * *", "--cron", "hour=1"]) == 2
    output = capsys.readouterr()
    assert output.err.count("give either a crontab expression or --cron") == 2
    assert output.out == ""


def test_preview_count_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "* * * * *", "--count", "0"]) == 2
    output = capsys.readouterr()
    assert "--count must be at least 1, got 0" in output.err
    assert output.out == ""


def test_module_entry_point_exits_non_zero_on_error() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "asched", "preview", "*/0 * * * *"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert "the step '0' must be a positive integer" in completed.stderr


def test_demo_runs_every_kind_of_job(capsys: pytest.CaptureFixture[str]) -> None:
    # stops as soon as each schedule ran twice; 60 s is only the bound on a stuck demo
    assert main(["demo", "--runs", "2", "--seconds", "60"]) == 0
    output = capsys.readouterr().out
    assert "one-off job returned" in output
    assert output.count("cron */2 s ran") >= 2
    assert output.count("interval 3 s ran") >= 2
    assert output.rstrip().endswith("each schedule ran 2 time(s)")


def test_demo_refuses_a_run_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--runs", "0"]) == 2
    assert "--runs must be 1 or more, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql", "redis"])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_list_prints_a_stores_schedules_soonest_first_and_its_jobs(
    backend_name: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with backend(backend_name).open_cluster(namespace) as setup:
        async with AsyncScheduler(setup.store_url, LocalEventBroker()) as scheduler:
            for schedule_id, moment, paused in [
                ("later", datetime(2031, 1, 1, tzinfo=timezone.utc), False),
                ("held", datetime(2029, 1, 1, tzinfo=timezone.utc), True),
                ("sooner", datetime(2030, 1, 1, tzinfo=timezone.utc), False),
                # half an hour before "sooner", though its wall-clock text sorts after it
                ("soonest", datetime(2030, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin")), False),
            ]:
                await scheduler.add_schedule(
                    jobs.add, DateTrigger(moment), id=schedule_id, args=[1], paused=paused
                )
            job_id = await scheduler.add_job(jobs.add, args=[1])

        argv = ["list", setup.store_url, "--jobs", "--timezone", "Asia/Kolkata"]
        status = await anyio.to_thread.run_sync(main, argv)

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0] == "4 schedule(s), 1 job(s) queued or running"
    assert lines[2].split() == ["ID", "TASK", "NEXT", "FIRE", "TIME", "STATE", "TRIGGER"]
    rows = [line.split() for line in lines[3:7]]
    assert [row[0] for row in rows] == ["soonest", "sooner", "later", "held"]
    assert rows[1][1:6] == ["tests.jobs:add", "2030-01-01", "05:30:00", "IST", "waiting"]
    assert rows[3][5] == "paused"
    assert lines[8].split()[0] == "ID"
    assert lines[9].split()[:3] == [str(job_id), "tests.jobs:add", "-"]
    assert lines[9].split()[-1] == "queued"


def test_list_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sqlite"
    assert main(["list", f"sqlite:///{missing}"]) == 1
    assert main(["list", "memory://"]) == 1
    assert main(["list", "jobs.sqlite"]) == 1
    errors = capsys.readouterr().err
    assert f"no SQLite database at {missing}" in errors
    assert "a memory store lives inside its process" in errors
    assert "'jobs.sqlite' is not a URL" in errors
    assert not missing.exists()  # listing creates nothing


def test_list_creates_no_postgresql_schema(
    namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    require_postgresql()
    url = backend("postgresql").url_for(namespace)

    assert main(["list", url]) == 1
    assert "no such schema" in capsys.readouterr().err

    async def schema_count() -> int:
        connection = await asyncpg.connect(POSTGRESQL_URL)
        try:
            return int(
                await connection.fetchval(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = $1", namespace
                )
            )
        finally:
            await connection.close()

    assert anyio.run(schema_count) == 0


def test_list_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["list", "redis://127.0.0.1:1/0"])  # nothing listens on port 1

    assert status == 1
    errors = capsys.readouterr().err
    assert "error: cannot read redis://127.0.0.1:1/0: " in errors
    assert "connecting to 127.0.0.1:1" in errors


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_list_reports_what_it_cannot_restore_instead_of_leaving_it_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    far = DateTrigger(datetime(2031, 1, 1, tzinfo=timezone.utc))
    async with AsyncScheduler(url, LocalEventBroker()) as scheduler:
        await scheduler.add_schedule(jobs.add, far, id="fine", args=[1])
        await scheduler.add_schedule(jobs.add, far, id="broken", args=[Unrestorable()])

    status = await anyio.to_thread.run_sync(main, ["list", url])

    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[0] == "1 schedule(s), 0 job(s) queued or running"
    assert "1 more that this process cannot restore:" in out
    assert "  schedule broken: " in out
    assert unrestorable.MESSAGE in out
