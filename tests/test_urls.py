"""Store and broker URLs, and the plug-in classes importable from their subpackages."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import asched.datastores
import asched.eventbrokers
from asched import AsyncScheduler, Scheduler
from asched._urls import split_own_options
from asched.datastores import (
    MemoryDataStore,
    PostgreSQLDataStore,
    RedisDataStore,
    SQLiteDataStore,
)
from asched.datastores.postgresql import PostgreSQLDataStore as PostgreSQLDataStoreInModule
from asched.datastores.redis import RedisDataStore as RedisDataStoreInModule
from asched.datastores.sqlite import SQLiteDataStore as SQLiteDataStoreInModule
from asched.eventbrokers import LocalEventBroker, PostgreSQLEventBroker, RedisEventBroker
from asched.eventbrokers.postgresql import PostgreSQLEventBroker as PostgreSQLEventBrokerInModule
from asched.eventbrokers.redis import RedisEventBroker as RedisEventBrokerInModule
from tests import jobs
from tests.backends import postgresql as postgresql_backend
from tests.backends import redis as redis_backend
from tests.services import POSTGRESQL_URL, REDIS_URL, require_postgresql, require_redis

LAZY_NAMES = {
    asched.datastores: ["PostgreSQLDataStore", "RedisDataStore", "SQLiteDataStore"],
    asched.eventbrokers: ["PostgreSQLEventBroker", "RedisEventBroker"],
}


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#
# Subpackages
#


def test_store_and_broker_classes_are_importable_from_their_subpackages() -> None:
    assert PostgreSQLDataStore is PostgreSQLDataStoreInModule
    assert RedisDataStore is RedisDataStoreInModule
    assert SQLiteDataStore is SQLiteDataStoreInModule
    assert PostgreSQLEventBroker is PostgreSQLEventBrokerInModule
    assert RedisEventBroker is RedisEventBrokerInModule
    for package, names in LAZY_NAMES.items():
        for name in names:
            assert name in package.__all__
            assert name in dir(package)
        assert set(package.__all__) <= set(dir(package))


def test_an_unknown_name_of_a_subpackage_is_an_attribute_error() -> None:
    with pytest.raises(
        AttributeError, match=r"module 'asched\.datastores' has no attribute 'Nope'"
    ):
        asched.datastores.Nope  # noqa: B018
    assert not hasattr(asched.eventbrokers, "KafkaEventBroker")


def test_importing_the_subpackages_imports_no_optional_dependency() -> None:
    completed = run_python(
        """
        import sys
        import asched.datastores, asched.eventbrokers
        loaded = sorted(name for name in ("asyncpg", "redis") if name in sys.modules)
        print(loaded)
        from asched.datastores import SQLiteDataStore
        print(sorted(name for name in ("asyncpg", "redis") if name in sys.modules))
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["[]", "[]"]


@pytest.mark.parametrize(
    ("missing", "statement", "extra"),
    [
        ("asyncpg", "from asched.datastores import PostgreSQLDataStore", "postgresql"),
        ("asyncpg", "from asched.eventbrokers import PostgreSQLEventBroker", "postgresql"),
        ("redis", "from asched.datastores import RedisDataStore", "redis"),
        ("redis", "from asched.eventbrokers import RedisEventBroker", "redis"),
        ("asyncpg", "AsyncScheduler('postgresql://user@host/db')", "postgresql"),
        ("redis", "AsyncScheduler('redis://host:6379/0')", "redis"),
    ],
)
def test_a_missing_optional_dependency_names_the_extra_to_install(
    missing: str, statement: str, extra: str
) -> None:
    completed = run_python(
        f"""
        import sys
        sys.modules[{missing!r}] = None  # as if not installed: importing it fails
        from asched import AsyncScheduler
        try:
            {statement}
        except ImportError as exc:
            print(exc)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert f"needs {missing!r}, which is not installed" in completed.stdout
    assert f'pip install "asched[{extra}]"' in completed.stdout


#
# URLs that are refused at construction
#


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///jobs.sqlite?foo=1", r"sqlite:// URLs take no query options, got 'foo'"),
        ("sqlite:///jobs.sqlite?mode=ro&cache=x", r"no query options, got 'mode', 'cache'"),
        ("sqlite:///jobs.sqlite#backup", r"sqlite:// URLs take no query options"),
        ("memory://jobs", r"memory:// URLs take nothing after the '://'"),
        ("redis://h:6379/0?prefx=x", r"unknown option 'prefx' .* did you mean 'prefix'\?"),
        ("redis://h:6379/0?chanel=x", r"unknown option 'chanel' .* did you mean 'channel'\?"),
        ("redis://h:6379/0?socket_timout=1", r"did you mean 'socket_timeout'\?"),
        ("redis://h:6379/0?schema=x", r"a Redis store takes 'prefix'"),
        ("redis://h:6379/0?ssl_cert_reqs=none", r"TLS options need a rediss:// URL"),
        ("redis://h:6379/0?timeout=3", r"unknown option 'timeout' in the redis:// URL"),
        ("redis://h:6379/0?prefix=", r"option 'prefix' of the redis:// URL has no value"),
        ("postgresql://u@h/db?schem=x", r"unknown option 'schem' .* did you mean 'schema'\?"),
        ("postgresql://u@h/db?shema=x", r"did you mean 'schema'\?"),
        ("postgres://u@h/db?chanel=x", r"did you mean 'channel'\?"),
        ("postgresql://u@h/db?sslmod=require", r"did you mean 'sslmode'\?"),
        ("postgresql://u@h/db?prefix=x", r"a PostgreSQL store takes 'schema'"),
        ("postgresql://u@h/db?connect_timeout=5", r"libpq option that asyncpg does not support"),
        ("postgresql://u@h/db?schema", r"option 'schema' of the postgresql:// URL has no '="),
        ("postgresql://u@h/db?schema=", r"option 'schema' of the postgresql:// URL has no value"),
        ("postgresql://u@[::1/db", r"malformed postgresql:// URL"),
        ("redis://h:6379/abc", r"the path '/abc' of the redis:// URL is not a database number"),
        ("redis://h:6379/-1", r"the path '/-1' of the redis:// URL is not a database number"),
        ("redis://h:6379/0/", r"the path '/0/' of the redis:// URL is not a database number"),
        ("redis://h:6379/db1", r"path '/db1' .* \(expected none, or one such as '/0'\)"),
        ("rediss://h:6380/x", r"the path '/x' of the rediss:// URL is not a database number"),
        ("redis://h:6379?db=abc", r"option 'db' of the redis:// URL must be a database number"),
        ("redis://h:6379?db=-1", r"option 'db' of the redis:// URL must be a database number"),
        ("redis://h/0?prefix=a&prefix=b", r"option 'prefix' appears more than once in the redis"),
        ("redis://h/0?channel=a&channel=b", r"option 'channel' appears more than once"),
        ("redis://h/0?db=1&db=2", r"option 'db' appears more than once in the redis:// URL"),
        ("postgresql://u@h/db?schema=a&schema=b", r"option 'schema' appears more than once"),
        ("postgres://u@h/db?channel=a&channel=b", r"option 'channel' appears more than once"),
        ("postgresql://u@h/db?schema=a&sch%65ma=b", r"option 'schema' appears more than once"),
    ],
)
def test_a_store_url_the_store_would_misread_is_refused_at_construction(
    url: str, match: str
) -> None:
    with pytest.raises(ValueError, match=f"^data_store: .*{match}"):
        AsyncScheduler(url)
    with pytest.raises(ValueError, match=f"^data_store: .*{match}"):
        Scheduler(url)


def test_a_refused_sqlite_url_creates_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="got 'foo'"):
        AsyncScheduler(f"sqlite:///{tmp_path}/jobs.sqlite?foo=1")
    assert list(tmp_path.iterdir()) == []


def test_the_error_for_a_url_option_does_not_repeat_the_password() -> None:
    with pytest.raises(ValueError, match="prefx") as caught:
        AsyncScheduler("redis://:s3cret@h:6379/0?prefx=x")
    assert "s3cret" not in str(caught.value)


def test_the_error_for_a_repeated_option_does_not_repeat_its_values() -> None:
    with pytest.raises(ValueError, match="'password' appears more than once") as caught:
        AsyncScheduler("redis://h:6379/0?password=s3cret&password=0ther")
    assert "s3cret" not in str(caught.value)
    assert "0ther" not in str(caught.value)


def test_a_slash_in_a_redis_password_is_refused_without_quoting_the_password() -> None:
    # unencoded, the "/" ends the host part: the rest of the password is read as the path
    with pytest.raises(ValueError, match="password must be percent-encoded") as caught:
        AsyncScheduler("redis://:s3/cret@h:6379/0")
    assert "cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("cls", "url", "match"),
    [
        (RedisDataStore, "redis://127.0.0.1:6379/abc", r"^RedisDataStore: the path '/abc'"),
        (RedisEventBroker, "redis://127.0.0.1:6379/abc", r"^RedisEventBroker: the path '/abc'"),
        (RedisDataStore, "redis://h/0?prefix=a&prefix=b", r"^RedisDataStore: option 'prefix'"),
        (
            RedisEventBroker,
            "redis://h/0?channel=a&channel=b",
            r"^RedisEventBroker: option 'channel' appears more than once",
        ),
        (
            PostgreSQLDataStore,
            "postgresql://u@h/db?schema=a&schema=b",
            r"^PostgreSQLDataStore: option 'schema' appears more than once",
        ),
        (
            PostgreSQLEventBroker,
            "postgresql://u@h/db?channel=a&channel=b",
            r"^PostgreSQLEventBroker: option 'channel' appears more than once",
        ),
    ],
)
def test_a_bad_redis_database_or_a_repeated_option_is_refused_by_the_constructor(
    cls: type[object], url: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        cls(url)  # type: ignore[call-arg]


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_splitting_off_a_repeated_option_of_ascheds_refuses_to_pick_one(kind: str) -> None:
    # check_url refuses it first; split_own_options must not pick one without it either
    name = "channel"
    with pytest.raises(ValueError, match=f"option '{name}' appears more than once"):
        split_own_options(f"{kind}://h/0?{name}=a&{name}=b", kind)


@pytest.mark.anyio
async def test_a_missing_folder_of_a_relative_sqlite_path_hints_at_four_slashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite:///tmp/... is the relative tmp/...: from a working directory without it, the
    # folder is missing though the absolute one exists
    folder = tmp_path / "qa"
    folder.mkdir()
    working_directory = tmp_path / "elsewhere"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    relative = folder.relative_to(folder.anchor) / "jobs.sqlite"
    url = f"sqlite:///{relative.as_posix()}"
    message = (
        f"the folder {relative.parent} of jobs.sqlite does not exist (create it first; "
        f"{relative.parent} is relative to the working directory: for /{relative.as_posix()}, "
        f"write sqlite:////{relative.as_posix()}, with four slashes)"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        async with AsyncScheduler(url):
            pass
    assert not relative.parent.exists()  # nothing made up in the working directory
    assert not (folder / "jobs.sqlite").exists()


@pytest.mark.anyio
async def test_a_missing_folder_of_a_relative_sqlite_path_says_it_is_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-folder"
    message = (
        "the folder no-such-folder of jobs.sqlite does not exist (create it first; "
        "no-such-folder is relative to the working directory)"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        async with AsyncScheduler("sqlite:///no-such-folder/jobs.sqlite"):
            pass
    assert not missing.exists()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", r"the URL is empty"),
        ("   ", r"the URL is empty"),
        ("redis://h:6379/0?prefx=x", r"unknown option 'prefx' .* did you mean 'prefix'\?"),
        ("postgresql://u@h/db?schem=x", r"did you mean 'schema'\?"),
        ("local://x", r"local:// URLs take nothing after the '://'"),
    ],
)
def test_a_bad_event_broker_url_is_refused_at_construction(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=f"^event_broker: .*{match}"):
        AsyncScheduler(None, url)


def test_an_empty_store_url_is_refused_rather_than_taken_for_memory() -> None:
    with pytest.raises(ValueError, match=r"^data_store: the URL is empty"):
        AsyncScheduler("")
    with pytest.raises(ValueError, match=r"^data_store: the URL is empty"):
        Scheduler("")


#
# URLs that are accepted, with the options that reach the store and the client
#


def test_the_sqlite_url_takes_a_relative_or_an_absolute_path(tmp_path: Path) -> None:
    relative = AsyncScheduler("sqlite:///relative/jobs.sqlite")
    assert isinstance(relative.data_store, SQLiteDataStore)
    assert relative.data_store.path == Path("relative/jobs.sqlite")
    assert isinstance(relative.event_broker, LocalEventBroker)
    absolute = AsyncScheduler(f"sqlite:///{tmp_path}/jobs.sqlite")
    assert isinstance(absolute.data_store, SQLiteDataStore)
    assert absolute.data_store.path == tmp_path / "jobs.sqlite"


def test_memory_and_local_urls_give_the_in_process_store_and_broker() -> None:
    scheduler = AsyncScheduler("memory://", "local://")
    assert isinstance(scheduler.data_store, MemoryDataStore)
    assert isinstance(scheduler.event_broker, LocalEventBroker)


@pytest.mark.parametrize(
    "query",
    [
        "prefix=app&channel=app_events",
        "db=1&client_name=x&socket_timeout=2.5&socket_keepalive=true&max_connections=5",
        # (not decode_responses: redis-py takes any value of it in a URL, "false" too, as
        # true, and the store refuses a client that decodes)
        "username=u&password=p&health_check_interval=5&protocol=3",
    ],
)
def test_redis_urls_take_ascheds_options_and_redis_pys(query: str) -> None:
    scheduler = AsyncScheduler(f"redis://h:6379/0?{query}")
    assert isinstance(scheduler.data_store, RedisDataStore)
    assert isinstance(scheduler.event_broker, RedisEventBroker)


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379", "redis://h:6379/", "redis://h:6379/15", "redis://h?db=2", "rediss://h/3"],
)
def test_redis_urls_take_a_database_number_or_none(url: str) -> None:
    scheduler = AsyncScheduler(url)
    assert isinstance(scheduler.data_store, RedisDataStore)


def test_rediss_urls_take_tls_options() -> None:
    scheduler = AsyncScheduler("rediss://h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false")
    assert isinstance(scheduler.data_store, RedisDataStore)


@pytest.mark.parametrize(
    "query",
    [
        "schema=app&channel=app_events",
        "sslmode=require&target_session_attrs=read-write&application_name=x",
        "search_path=public&options=-c%20statement_timeout%3D5000&myapp.tenant=7",
    ],
)
def test_postgresql_urls_take_ascheds_options_asyncpgs_and_server_settings(query: str) -> None:
    scheduler = AsyncScheduler(f"postgresql://u@h/db?{query}")
    assert isinstance(scheduler.data_store, PostgreSQLDataStore)
    assert isinstance(scheduler.event_broker, PostgreSQLEventBroker)


def test_a_scheduler_on_a_redis_url_with_client_options_runs_a_job(namespace: str) -> None:
    require_redis()
    separator = "&" if "?" in REDIS_URL else "?"
    url = f"{REDIS_URL}{separator}prefix={namespace}&socket_keepalive=true&max_connections=20"
    try:
        with Scheduler(url) as scheduler:
            scheduler.start_in_background()
            assert scheduler.run_job(jobs.add, args=[1, 2]) == 3
    finally:
        anyio.run(redis_backend.delete_keys, namespace)


def test_a_scheduler_on_a_postgresql_url_with_a_server_setting_runs_a_job(namespace: str) -> None:
    require_postgresql()
    separator = "&" if "?" in POSTGRESQL_URL else "?"
    url = f"{POSTGRESQL_URL}{separator}schema={namespace}&application_name=asched_{namespace}"
    try:
        with Scheduler(url) as scheduler:
            scheduler.start_in_background()
            assert scheduler.run_job(jobs.add, args=[2, 3]) == 5
    finally:
        anyio.run(postgresql_backend.drop_schema, namespace)


@pytest.mark.parametrize(
    ("cls", "url", "match"),
    [
        (RedisDataStore, "redis://127.0.0.1:6379/0?prefx=app", "RedisDataStore: .*'prefix'"),
        (RedisEventBroker, "redis://127.0.0.1:6379/0?chanel=app", "RedisEventBroker: .*'channel'"),
        (PostgreSQLDataStore, "postgresql://u@h/db?schem=app", "PostgreSQLDataStore: .*'schema'"),
        (
            PostgreSQLEventBroker,
            "postgresql://u@h/db?shema=a",
            "PostgreSQLEventBroker: .*'schema'",
        ),
    ],
)
def test_a_url_given_to_a_store_or_broker_directly_is_checked_too(
    cls: type[object], url: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        cls(url)  # type: ignore[call-arg]
