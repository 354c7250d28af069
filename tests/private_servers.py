"""PostgreSQL and Redis servers of a test's own, on free loopback ports, that it may crash.

The shared test servers must never be restarted (other tests use them), so the tests of
"a restarted server loses nothing acknowledged" start servers of their own here: Redis with
an append-only file synced on every write, PostgreSQL as a fresh cluster (``initdb``). Both
are crashed the hard way (SIGKILL; PostgreSQL's immediate shutdown, which skips the
checkpoint and recovers from the WAL on start) and started again on the same port and files.

Without the server programs the tests skip, or fail in CI (``CI=true``), like the tests of
the shared servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests.services import running_in_ci


def _unavailable(reason: str) -> NoReturn:
    message = f"cannot start a private test server: {reason}"
    if running_in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the private test server did not come up: {what}")
        time.sleep(0.02)  # another process coming up: there is nothing to wait on


class PrivateRedis:
    """A redis-server keeping every acknowledged write (``appendfsync always``)."""

    def __init__(self, server: str, cli: str, folder: Path) -> None:
        self._server, self._cli, self._folder = server, cli, folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self._server,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._folder)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                *("--logfile", str(self._folder / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(self._answers, f"redis-server on port {self.port} does not answer")

    def _answers(self) -> bool:
        reply = subprocess.run(
            [self._cli, "-p", str(self.port), "ping"], capture_output=True, check=False
        )
        return reply.stdout.strip() == b"PONG"  # not LOADING: the data is back

    def crash_and_restart(self, down_for: float = 1.0) -> None:
        """SIGKILL the server, then start it again on the same port and files."""
        assert self._process is not None
        self._process.kill()
        self._process.wait()
        time.sleep(down_for)  # an outage the clients must ride out
        self.start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Stop the server's process (SIGSTOP) inside the block: connections open, nothing
        answers; it goes on (SIGCONT) after."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class PrivatePostgreSQL:
    """A PostgreSQL cluster of its own (trust authentication, user ``postgres``)."""

    def __init__(self, bindir: Path, folder: Path, as_user: list[str]) -> None:
        self._bindir, self._folder, self._as_user = bindir, folder, as_user
        self._data = folder / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        completed = subprocess.run(
            [*self._as_user, str(self._bindir / program), *args],
            capture_output=True,
            check=False,
            timeout=120,
        )
        if completed.returncode != 0:
            log = self._folder / "postgresql.log"
            raise RuntimeError(
                f"{program} {' '.join(args)} failed:\n{completed.stderr.decode()}"
                + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
            )

    def create(self) -> None:
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self._folder} -c listen_addresses=127.0.0.1"
        log = str(self._folder / "postgresql.log")
        self._run("pg_ctl", "-D", str(self._data), "-o", options, "-l", log, "-w", "start")

    def crash_and_restart(self, down_for: float = 1.0) -> None:
        """Stop the server without a checkpoint (as a crash would), then start it again."""
        self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        time.sleep(down_for)  # an outage the clients must ride out
        self.start()

    def stop(self) -> None:
        if (self._data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop")


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """Start a private redis-server; stop it and delete its files on exit."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _unavailable("redis-server and redis-cli are not on PATH")
    folder = Path(tempfile.mkdtemp(prefix="asched-redis-"))
    redis = PrivateRedis(server, cli, folder)
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _postgresql_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        reply = subprocess.run([pg_config, "--bindir"], capture_output=True, check=False)
        bindir = Path(reply.stdout.decode().strip())
        if (bindir / "initdb").exists():
            return bindir
    on_debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return on_debian[-1].parent if on_debian else None


@contextmanager
def private_postgresql() -> Iterator[PrivatePostgreSQL]:
    """Create and start a private PostgreSQL cluster; stop it and delete it on exit.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres``
    user and its programs run through ``runuser``.
    """
    bindir = _postgresql_bindir()
    if bindir is None:
        _unavailable("PostgreSQL's initdb was not found (pg_config --bindir)")
    # mkdtemp's folder is private to its owner, so it is handed to the postgres user as root
    folder = Path(tempfile.mkdtemp(prefix="asched-postgresql-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(folder)
            _unavailable("running as root without runuser to start PostgreSQL as postgres")
        shutil.chown(folder, "postgres")
        as_user = [runuser, "-u", "postgres", "--"]
    postgresql = PrivatePostgreSQL(bindir, folder, as_user)
    try:
        postgresql.create()
        postgresql.start()
        yield postgresql
    finally:
        postgresql.stop()
        shutil.rmtree(folder, ignore_errors=True)
