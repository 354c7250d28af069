from __future__ import annotations

import subprocess
import sys

import pytest

from asched._cli import main


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


def test_preview_of_an_exhausted_expression(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--cron", "year=2020", "--timezone", "UTC"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "(no more fire times)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["preview", "61 * * * *"], "invalid value '61' for field 'minute'"),
        (["preview", "--cron", "hour=25"], "invalid value '25' for field 'hour'"),
        (["preview", "--cron", "hours=5"], "--cron: expected field=value pairs"),
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
    assert "give either a crontab expression or --cron" in capsys.readouterr().out


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
    assert main(["demo", "--seconds", "2.5"]) == 0
    output = capsys.readouterr().out
    assert "one-off job returned" in output
    assert "cron */2 s ran" in output
    assert "interval 3 s ran" in output
    assert output.rstrip().endswith("demo finished after 2.5 s")
