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
    """Run the benchmarks (competitors are installed into benchmarks/.vendor/)."""
    session.install("-e", ".[bench,postgresql,redis]")
    session.run("python", "-m", "benchmarks", *session.posargs)
