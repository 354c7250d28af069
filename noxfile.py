"""Developer sessions: ``nox -s tests``, ``lint``, ``typing``, ``docs``, ``bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON_VERSIONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHON_VERSIONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (PostgreSQL and Redis tests skip without the servers)."""
    session.install("-e", ".[test,postgresql,redis]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check with mypy --strict."""
    session.install("-e", ".[test,postgresql,redis]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation (strict: warnings are errors)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks beside the competitors, which go to benchmarks/.vendor/ first.

    The trigger benchmark, then the scheduler cases: all of them, or those the arguments
    name (``nox -s bench -- throughput --quick``, passed to ``python -m benchmarks``).
    """
    session.install("-e", ".[bench,postgresql,redis]")
    session.run("python", "-m", "benchmarks.vendor")  # skips what is already there
    session.run("python", "-m", "benchmarks.bench_triggers", "--repeat", "5", "--rounds", "3")
    session.run("python", "-m", "benchmarks", *session.posargs)
