"""Executors through the scheduler: functions they refuse, and process pool worker deaths."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from functools import partial
from typing import Any

import anyio
import pytest

from asched import AsyncScheduler, JobOutcome
from asched.triggers import IntervalTrigger
from tests import executor_jobs, jobs
from tests.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def scheduler(clock: FakeClock) -> AsyncIterator[AsyncScheduler]:
    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        yield scheduler


class AsyncCallable:
    async def __call__(self) -> int:
        return 1


async def test_thread_pool_refuses_a_coroutine_function(scheduler: AsyncScheduler) -> None:
    refusal = r"threadpool executor runs plain functions.*async_echo.*async executor"
    with pytest.raises(TypeError, match=refusal):
        await scheduler.run_job(jobs.async_echo, args=[1], job_executor="threadpool")
    with pytest.raises(TypeError, match=refusal):
        await scheduler.add_job(jobs.async_echo, args=[1], job_executor="threadpool")
    with pytest.raises(TypeError, match=refusal):
        await scheduler.configure_task(jobs.async_echo, job_executor="threadpool")
    with pytest.raises(TypeError, match=refusal):
        await scheduler.add_schedule(
            jobs.async_echo,
            IntervalTrigger(seconds=10, start_time=scheduler.clock.now()),
            args=[1],
            job_executor="threadpool",
        )

    assert await scheduler.get_jobs() == []
    assert await scheduler.get_schedules() == []


async def test_thread_pool_refuses_async_callable_objects_and_partials(
    scheduler: AsyncScheduler,
) -> None:
    with pytest.raises(TypeError, match=r"threadpool executor runs plain functions.*AsyncCall"):
        await scheduler.configure_task("object", func=AsyncCallable(), job_executor="threadpool")
    with pytest.raises(TypeError, match=r"threadpool executor runs plain functions.*partial"):
        await scheduler.configure_task(
            "partial", func=partial(jobs.async_echo, 1), job_executor="threadpool"
        )

    assert await scheduler.get_tasks() == []


@pytest.mark.parametrize("default", ["threadpool", "processpool"])
async def test_a_pool_as_default_executor_leaves_coroutine_functions_on_async(
    clock: FakeClock, default: str
) -> None:
    # the default is for plain functions: a coroutine function it cannot run keeps its own
    async with AsyncScheduler(clock=clock, default_job_executor=default) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(10):
            assert await scheduler.run_job(jobs.async_echo, args=[1]) == 1
        assert [task.job_executor for task in await scheduler.get_tasks()] == ["async"]
        # named explicitly, the pool still refuses it
        with pytest.raises(TypeError, match=rf"{default} executor .*async_echo.*async executor"):
            await scheduler.configure_task(jobs.async_echo, job_executor=default)


def returns_a_coroutine() -> Coroutine[Any, Any, object]:
    return jobs.async_echo(1)


async def test_thread_pool_fails_a_job_whose_function_returns_a_coroutine(
    scheduler: AsyncScheduler,
) -> None:
    with anyio.fail_after(10), pytest.raises(TypeError, match=r"returned a coroutine.*async"):
        await scheduler.run_job(returns_a_coroutine, job_executor="threadpool")


async def test_async_executor_runs_a_plain_function_given_to_it(
    scheduler: AsyncScheduler,
) -> None:
    with anyio.fail_after(10):
        assert await scheduler.run_job(jobs.add, args=[2, 3], job_executor="async") == 5


async def test_process_pool_job_whose_worker_process_exits_fails_with_its_exit_code(
    scheduler: AsyncScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await scheduler.add_job(
        executor_jobs.exit_abruptly,
        args=[3],
        job_executor="processpool",
        result_expiration_time=60,
    )
    with anyio.fail_after(30):
        result = await scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, anyio.BrokenWorkerProcess)
    assert re.fullmatch(
        rf"the worker process \(pid \d+\) running job {job_id} "
        r"\(task 'tests\.executor_jobs:exit_abruptly'\) died \(exit code 3\)",
        str(result.exception),
    )
    assert result.exception.__cause__ is None
    assert not [r for r in caplog.records if "Unknown child process" in r.getMessage()]


async def test_process_pool_job_whose_worker_process_is_killed_names_the_signal(
    scheduler: AsyncScheduler,
) -> None:
    with (
        anyio.fail_after(30),
        pytest.raises(
            anyio.BrokenWorkerProcess, match=r"worker process .* died \(killed by SIGKILL\)"
        ),
    ):
        await scheduler.run_job(executor_jobs.kill_own_process, job_executor="processpool")


async def test_process_pool_runs_the_next_job_after_a_worker_process_died(
    clock: FakeClock,
) -> None:
    async with AsyncScheduler(clock=clock) as scheduler:
        scheduler.job_executors["processpool"].max_workers = 1  # type: ignore[attr-defined]
        await scheduler.start_in_background()
        with anyio.fail_after(30):
            with pytest.raises(anyio.BrokenWorkerProcess, match=r"died \(exit code 3\)"):
                await scheduler.run_job(
                    executor_jobs.exit_abruptly, args=[3], job_executor="processpool"
                )
            pid = await scheduler.run_job(jobs.process_id, job_executor="processpool")
            assert await scheduler.run_job(jobs.process_id, job_executor="processpool") == pid

    assert isinstance(pid, int)
    assert pid != os.getpid()


async def test_process_pool_job_raising_system_exit_fails_without_stopping_anything(
    scheduler: AsyncScheduler,
) -> None:
    with anyio.fail_after(30):
        with pytest.raises(RuntimeError, match=r"the function raised SystemExit: SystemExit\(4\)"):
            await scheduler.run_job(
                executor_jobs.call_sys_exit, args=[4], job_executor="processpool"
            )
        assert await scheduler.run_job(jobs.add, args=[1, 2], job_executor="processpool") == 3


@pytest.fixture(autouse=True)
def _log_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")


SCRIPT_FUNCTIONS = """
import anyio
from asched import AsyncScheduler


def square(x):
    return x * x


async def main():
    async with AsyncScheduler() as scheduler:
        await scheduler.start_in_background()
        try:
            print("result", await scheduler.run_job(square, args=[7], job_executor="processpool"))
        except Exception as exc:
            print("error", exc)
"""


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_a_scripts_functions_run_in_worker_processes_if_its_scheduler_is_guarded(
    tmp_path: Any, guarded: bool
) -> None:
    # worker processes load the script again, as __mp_main__: a scheduler started at its top
    # level runs in each of them too, and must not start worker processes of its own in turn
    # (each would load the script again): its process-pool jobs fail, saying why
    start = 'if __name__ == "__main__":\n    anyio.run(main)\n' if guarded else "anyio.run(main)\n"
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FUNCTIONS + start)
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["result 49"]
    hint = 'keep that under `if __name__ == "__main__":`'
    # (what the worker process prints goes to standard error)
    assert (f"{hint}\nerror a process-pool worker process" in completed.stderr) is not guarded
