"""Several scheduler processes on one persistent store: every fire runs exactly once.

Each backend module in ``tests/backends/`` that supports this defines
``open_cluster(namespace) -> AsyncContextManager[ClusterSetup]``: the URLs the processes use
(isolated by ``namespace``), the size of the run, and a ``fault()`` coroutine that breaks
the processes' connections for real (``None`` if the backend has no connections to break).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asched import JobOutcome
from tests.backends import backend
from tests.cluster.harness import ClusterResult, run_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

CLUSTER_BACKENDS = ("sqlite", "postgresql", "redis")


def assert_each_fire_ran_once(result: ClusterResult) -> None:
    assert not result.duplicates, f"fires run more than once: {sorted(result.duplicates)[:10]}"
    assert not result.unexpected, f"runs nobody scheduled: {sorted(result.unexpected)[:10]}"
    twice = result.released_twice
    assert not twice, f"jobs released more than once: {sorted(twice.items())[:10]}"


@pytest.mark.parametrize("name", CLUSTER_BACKENDS)
async def test_every_fire_runs_exactly_once(name: str, namespace: str, tmp_path: Path) -> None:
    module = backend(name)
    if not hasattr(module, "open_cluster"):
        pytest.skip(f"the {name} backend has no multi-process support yet")

    async with module.open_cluster(namespace) as setup:
        result = await run_cluster(
            store_url=setup.store_url,
            broker_url=setup.broker_url,
            output=tmp_path,
            nodes=setup.nodes,
            schedules=setup.schedules,
            seconds=setup.seconds,
        )

    assert_each_fire_ran_once(result)
    assert not result.missing, f"{len(result.missing)} fires never ran"
    assert result.count(JobOutcome.success) == len(result.expected)
    assert sum(result.releases.values()) == len(result.expected)  # nothing else was released
    # the work was shared: every process ran something
    assert set(result.runs_by_node) == {f"node{index}" for index in range(setup.nodes)}


@pytest.mark.parametrize("name", CLUSTER_BACKENDS)
async def test_killed_process_and_dropped_connections(
    name: str, namespace: str, tmp_path: Path
) -> None:
    module = backend(name)
    if not hasattr(module, "open_cluster"):
        pytest.skip(f"the {name} backend has no multi-process support yet")

    async with module.open_cluster(namespace) as setup:
        result = await run_cluster(
            store_url=setup.store_url,
            broker_url=setup.broker_url,
            output=tmp_path,
            nodes=setup.nodes,
            schedules=setup.schedules,
            seconds=setup.seconds,
            # mid-second: every schedule fires on the second and its job holds for 0.2 s
            kill_node_after=setup.seconds // 2 + 0.1,
            fault=setup.fault,
        )

    assert_each_fire_ran_once(result)
    # A fire is either run once, or its job was abandoned with the killed process (it may
    # have started there, so it is never run again); nothing else may go missing
    assert result.missing <= result.abandoned_fires, (
        f"{len(result.missing - result.abandoned_fires)} fires neither ran nor were abandoned"
    )
    # The killed process was running jobs (the harness kills it only while it is): each was
    # released as abandoned, exactly once, and never run again. (A live process can lose a
    # lease too while its connections are being killed: its job is then released as
    # abandoned and still never runs twice.)
    assert result.running_at_kill, "node1 was killed while running no job"
    not_abandoned = {
        job_id: result.outcomes.get(job_id)
        for job_id in result.running_at_kill
        if result.outcomes.get(job_id) != JobOutcome.abandoned.value
    }
    assert not not_abandoned, (
        f"{len(not_abandoned)} of the {len(result.running_at_kill)} jobs running in the killed "
        f"process were not released as abandoned: {sorted(not_abandoned.items())[:10]}"
    )
    assert {result.releases[job_id] for job_id in result.running_at_kill} == {1}
    assert "node1" in result.abandoned_job_nodes, "the killed process's jobs were not released"
    survivors = {f"node{index}" for index in range(setup.nodes)} - {"node1"}
    assert survivors <= set(result.runs_by_node)
