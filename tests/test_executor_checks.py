"""Executors through the scheduler: functions they refuse, and process pool worker deaths."""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from functools import partial
from typing import IO, Any

import anyio
import pytest

from asched import AsyncScheduler, DeserializationError, JobOutcome
from asched.executors import _process_pool
from asched.executors._process_pool import WorkerProcessTraceback
from asched.executors.process import ProcessPoolJobExecutor
from asched.triggers import IntervalTrigger
from tests import executor_jobs, jobs
from tests.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def scheduler(clock: FakeClock) -> AsyncIterator[AsyncScheduler]:
    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        yield scheduler


@pytest.fixture
async def one_process_scheduler(clock: FakeClock) -> AsyncIterator[AsyncScheduler]:
    """A started scheduler whose process pool has one worker process."""
    executor = ProcessPoolJobExecutor(max_workers=1)
    async with AsyncScheduler(clock=clock, job_executors={"processpool": executor}) as scheduler:
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


def run_python(directory: Any, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run Python in ``directory`` with this checkout importable; its output as text."""
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=directory,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )


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
    # level would run in each of them too, on the same store (and, blocking, would never let
    # the worker answer): it refuses to start there, and the job fails saying why
    start = 'if __name__ == "__main__":\n    anyio.run(main)\n' if guarded else "anyio.run(main)\n"
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FUNCTIONS + start)
    completed = run_python(tmp_path, str(script))
    assert completed.returncode == 0, completed.stderr
    if guarded:
        assert completed.stdout.splitlines() == ["result 49"]
    else:
        [line] = completed.stdout.splitlines()
        assert line.startswith("error a worker process could not load the main module")
        assert "a scheduler was started while a process-pool worker process loaded" in line
        assert line.endswith('keep that under `if __name__ == "__main__":`)')


def _process_is_gone(pid: int) -> bool:
    # a worker process of a process that has exited: reaped, or it would be reparented
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class _OutputLines:
    """The lines a child process writes, read in a thread, waited for with a bound."""

    def __init__(self, process: subprocess.Popen[str]):
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        self._stdout = process.stdout
        self._reader = threading.Thread(target=self._read, args=[self._stdout], daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 30) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} in {self.lines}") from None
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        """Read up to the end (the process has exited), and close the pipe."""
        self._reader.join(timeout=30)
        self._stdout.close()


SIGNAL_SCRIPT = """
import logging
import sys

from asched import Scheduler
from asched.events import JobReleased
from tests import executor_jobs


def log_outcome(event):
    logging.getLogger("script").info("released %s", event.outcome.name)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    with Scheduler() as scheduler:
        scheduler.subscribe(log_outcome, JobReleased)
        for fifo in sys.argv[1:]:
            scheduler.add_job(
                executor_jobs.wait_for_release, args=[fifo], job_executor="processpool"
            )
        scheduler.run_until_stopped()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("signals", "outcome"), [(1, "success"), (2, "cancelled")], ids=["once", "twice"]
)
def test_a_signal_to_the_process_group_leaves_process_pool_jobs_to_the_scheduler(
    tmp_path: Any, signum: signal.Signals, signals: int, outcome: str
) -> None:
    # a terminal's Ctrl+C (and systemd's SIGTERM) reaches every process of the group: the
    # worker processes ignore it, and the scheduler lets their jobs finish, or cancels them
    fifos = [str(tmp_path / f"release-{number}") for number in range(2)]
    for fifo in fifos:
        os.mkfifo(fifo)
    # held open (read-write: without waiting for a reader) until the jobs may return
    release_handles = [os.open(fifo, os.O_RDWR) for fifo in fifos]
    script = tmp_path / "script.py"
    script.write_text(SIGNAL_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), *fifos],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    output = _OutputLines(process)
    try:
        worker_pids = [int(output.wait_for("started ").split()[1]) for _ in fifos]
        os.killpg(process.pid, signum)
        output.wait_for("Stopping on a signal")
        if signals == 2:
            os.killpg(process.pid, signum)
            output.wait_for("Stopping on a second signal")
        else:
            while release_handles:
                os.close(release_handles.pop())  # the jobs' cue to return
        assert process.wait(timeout=30) == 0, output.lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.close()
        for handle in release_handles:
            os.close(handle)

    assert [line for line in output.lines if line.startswith("released")] == [
        f"released {outcome}"
    ] * len(fifos), output.lines
    assert not [line for line in output.lines if "Interrupt" in line], output.lines
    assert all(_process_is_gone(pid) for pid in worker_pids)


def _write_package(root: Any) -> None:
    package = root / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def square(x):\n    return x * x\n")
    (package / "main.py").write_text(
        "import sys\n"
        "import anyio\n"
        "from asched import AsyncScheduler\n"
        "from .helpers import square\n\n\n"
        "def context(x):\n"
        "    return square(x), sys.argv[1:], sys.flags.optimize\n\n\n"
        "async def main():\n"
        "    async with AsyncScheduler() as scheduler:\n"
        "        await scheduler.start_in_background()\n"
        '        result = await scheduler.run_job(context, args=[7], job_executor="processpool")\n'
        "        print(result)\n\n\n"
        'if __name__ == "__main__":\n'
        "    anyio.run(main)\n"
    )


def test_a_module_run_with_dash_m_runs_its_functions_in_worker_processes(tmp_path: Any) -> None:
    # the module is loaded by name in worker processes (its relative imports work); they get
    # the scheduler process's arguments and interpreter flags (-O here)
    _write_package(tmp_path)
    completed = run_python(tmp_path, "-O", "-m", "app.main", "--an-option")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["(49, ['--an-option'], 1)"], completed.stderr


def test_worker_processes_do_not_import_from_the_current_directory(tmp_path: Any) -> None:
    # `python -c` puts the current directory first on sys.path: a typing.py there would
    # shadow the standard library's before the worker process gets the scheduler's sys.path
    script_directory = tmp_path / "scripts"
    script_directory.mkdir()
    script = script_directory / "script.py"
    script.write_text(SCRIPT_FUNCTIONS + 'if __name__ == "__main__":\n    anyio.run(main)\n')
    (tmp_path / "typing.py").write_text("raise ImportError('the wrong typing module')\n")
    completed = run_python(tmp_path, str(script))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["result 49"], completed.stderr


async def test_process_pool_job_error_keeps_its_type_and_the_worker_processes_traceback(
    scheduler: AsyncScheduler,
) -> None:
    with anyio.fail_after(30), pytest.raises(KeyError, match="missing-key") as caught:
        await scheduler.run_job(executor_jobs.fail_deep_down, job_executor="processpool")

    cause = caught.value.__cause__
    assert isinstance(cause, WorkerProcessTraceback)
    assert "in _look_up_a_missing_key\n" in cause.traceback
    assert cause.traceback.endswith("KeyError: 'missing-key'\n")
    # printed in a log, the traceback from the worker process comes first
    logged = "".join(traceback.format_exception(caught.value))
    assert 'raise KeyError("missing-key")' in logged


async def test_process_pool_job_error_that_cannot_be_unpickled_says_what_it_was(
    scheduler: AsyncScheduler,
) -> None:
    job_id = await scheduler.add_job(
        executor_jobs.raise_two_argument_error,
        job_executor="processpool",
        result_expiration_time=60,
    )
    with anyio.fail_after(30):
        result = await scheduler.get_job_result(job_id)

    assert result.outcome is JobOutcome.error
    assert isinstance(result.exception, DeserializationError)
    assert re.fullmatch(
        rf"job {job_id} \(task 'tests\.executor_jobs:raise_two_argument_error'\) raised "
        r"tests\.executor_jobs\.TwoArgumentError, which could not be restored in the scheduler "
        r"process \(TypeError: .*missing 1 required positional argument: 'code'\)",
        str(result.exception),
    )
    assert isinstance(result.exception.__cause__, WorkerProcessTraceback)
    assert "TwoArgumentError: needs two" in result.exception.__cause__.traceback


async def test_process_pool_return_value_that_cannot_be_unpickled_says_what_it_was(
    scheduler: AsyncScheduler,
) -> None:
    with (
        anyio.fail_after(30),
        pytest.raises(
            DeserializationError,
            match=r"^the return value of job \S+ \(task 'tests\.executor_jobs:return_an_instance_"
            r"of_a_worker_only_class'\) \(of type module_only_in_the_worker\.OnlyHere\) could not "
            r"be restored in the scheduler process \(ModuleNotFoundError: No module named "
            r"'module_only_in_the_worker'\)$",
        ),
    ):
        await scheduler.run_job(
            executor_jobs.return_an_instance_of_a_worker_only_class, job_executor="processpool"
        )


async def test_process_pool_job_that_forks_gets_its_own_result_and_so_do_later_jobs(
    one_process_scheduler: AsyncScheduler,
) -> None:
    scheduler = one_process_scheduler
    with anyio.fail_after(30):
        side, pid = await scheduler.run_job(
            executor_jobs.fork_and_return_in_both, job_executor="processpool"
        )
        assert side == "parent"
        for number in range(3):
            assert (
                await scheduler.run_job(jobs.add, args=[number, 10], job_executor="processpool")
                == number + 10
            )
        assert await scheduler.run_job(jobs.process_id, job_executor="processpool") == pid


async def test_process_pool_stops_its_idle_processes_together(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each worker process is left with a non-daemon thread: it does not exit when told to,
    # and is killed after the grace period, which all of them share
    grace = 2
    monkeypatch.setattr(_process_pool, "EXIT_GRACE_SECONDS", grace)
    executor = ProcessPoolJobExecutor(max_workers=3)
    async with AsyncScheduler(clock=clock, job_executors={"processpool": executor}) as scheduler:
        await scheduler.start_in_background()
        pids: list[int] = []

        async def run_one() -> None:
            pids.append(
                await scheduler.run_job(
                    executor_jobs.start_a_thread_and_return_pid,
                    args=[60, 0.5],
                    job_executor="processpool",
                )
            )

        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:
                for _ in range(3):
                    task_group.start_soon(run_one)
        assert len(set(pids)) == 3  # three processes, each with its thread
        stopping_started = anyio.current_time()

    assert anyio.current_time() - stopping_started < 2 * grace
    assert all(_process_is_gone(pid) for pid in pids)


async def test_process_pool_stops_a_long_idle_process_without_delaying_the_next_job(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process_pool, "EXIT_GRACE_SECONDS", 60)
    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        with anyio.fail_after(30):
            # its non-daemon thread keeps the first process from exiting when told to
            first_pid = await scheduler.run_job(
                executor_jobs.start_a_thread_and_return_pid, args=[60], job_executor="processpool"
            )
        monkeypatch.setattr(_process_pool, "MAX_IDLE_SECONDS", 0)
        with anyio.fail_after(10):  # well within the grace period of the first process
            second_pid = await scheduler.run_job(jobs.process_id, job_executor="processpool")
        assert second_pid != first_pid
        monkeypatch.setattr(_process_pool, "EXIT_GRACE_SECONDS", 0.1)

    assert _process_is_gone(first_pid)


async def test_process_pool_does_not_blame_a_job_on_a_process_that_died_idle(
    one_process_scheduler: AsyncScheduler,
) -> None:
    scheduler = one_process_scheduler
    with anyio.fail_after(30):
        for _ in range(3):
            pid = await scheduler.run_job(jobs.process_id, job_executor="processpool")
            process_handle = os.pidfd_open(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                # dead, without the event loop having noticed yet (more often than not)
                assert select.select([process_handle], [], [], 10)[0]
            finally:
                os.close(process_handle)
            new_pid = await scheduler.run_job(jobs.process_id, job_executor="processpool")
            assert new_pid != pid


async def test_a_job_waiting_for_a_worker_process_starts_when_it_gets_one() -> None:
    # its start (the deadline check, started_at) is when a process is free for it
    executor = ProcessPoolJobExecutor(max_workers=1)
    async with AsyncScheduler(job_executors={"processpool": executor}) as scheduler:
        await scheduler.start_in_background()
        first, second = [
            await scheduler.add_job(executor_jobs.pause, args=[0.2], job_executor="processpool")
            for _ in range(2)
        ]
        with anyio.fail_after(30):
            first_result = await scheduler.get_job_result(first)
            second_result = await scheduler.get_job_result(second)
    assert first_result.started_at is not None
    assert second_result.started_at is not None
    assert second_result.started_at >= first_result.started_at + timedelta(seconds=0.2)


async def test_a_job_whose_worker_process_is_still_starting_goes_back_at_a_stop(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # starting a process (and loading the script in it) can take a while: the job has not
    # started until the process is there
    starting, go_on = anyio.Event(), anyio.Event()
    start_worker = _process_pool.ProcessPool._start_worker

    async def slow_start(self: _process_pool.ProcessPool) -> Any:
        starting.set()
        await go_on.wait()
        return await start_worker(self)

    monkeypatch.setattr(_process_pool.ProcessPool, "_start_worker", slow_start)
    async with AsyncScheduler(clock=clock) as scheduler:
        await scheduler.start_in_background()
        job_id = await scheduler.add_job(jobs.add, args=[1, 2], job_executor="processpool")
        with anyio.fail_after(10):
            await starting.wait()
            await scheduler.stop(wait=False)
            await scheduler.wait_until_stopped()
        assert [job.id for job in await scheduler.get_jobs()] == [job_id]  # back in the store
