"""The Ray executor on a real multi-node cluster (ray.cluster_utils.Cluster): reservations
land exactly on the nodes the decision chose, the driver runs on the first worker's node,
both run paths train for real, and releasing frees the resources."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.kinds import document_of, load_job_spec_yaml, split
from dcsched.ports import RunPhase
from tests.conftest import EXAMPLES, await_condition, dashboard_url, start_cluster

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster(ray_head: object) -> Iterator[Any]:
    """A head with no CPUs and three 2-CPU worker nodes (token auth as the session head)."""
    import ray

    cluster: Any = start_cluster(
        [{"num_cpus": 2, "labels": {"dcsched.io/rack": f"r{index}"}} for index in range(3)]
    )
    ray.init(address=cluster.address, namespace="dcsched", logging_level="WARNING")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def worker_nodes() -> list[str]:
    from dcsched.adapters.ray_executor import RayClusterView

    snapshot = RayClusterView().snapshot()
    return sorted(n.id for n in snapshot.nodes if n.total.cpus > 0)


def make_job(job_id: str, nodes: tuple[str, ...], epochs: int = 3) -> Job:
    text = (EXAMPLES / "train-mlp.yaml").read_text().replace("epochs: 30", f"epochs: {epochs}")
    text = text.replace("memory: 1GiB", "memory: 64MiB")
    request, kind, payload = split(load_job_spec_yaml(text))
    return Job(
        job_id,
        request,
        JobState.ADMITTED,
        submitted_at=time.time(),
        nodes=nodes,
        kind=kind,
        payload=payload,
    )


def spec_json(job: Job) -> str:
    return json.dumps(document_of(job.request, job.kind, dict(job.payload)))


def run_to_end(executor: Any, job: Job, run_dir: Path, timeout: float = 180) -> RunPhase:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(spec_json(job))
    executor.start(job, run_dir)

    def ended() -> RunPhase | None:
        status = executor.status(job.id)
        assert status is not None, f"{job.id} was started but Ray does not know it"
        return status.phase if status.phase.is_terminal() else None

    phase: RunPhase = await_condition(f"{job.id} to finish", ended, timeout=timeout)
    return phase


def await_released(job_id: str, node: str) -> None:
    """Until the job's placement group is removed and its node has both CPUs free."""
    from ray.util import placement_group_table

    from dcsched.adapters.ray_executor import RayClusterView

    def released() -> bool:
        groups = placement_group_table().values()
        live = [g for g in groups if g["name"] == f"dcsched-{job_id}" and g["state"] != "REMOVED"]
        free = {n.id: n.available.cpus for n in RayClusterView().snapshot().nodes}
        return not live and free[node] == 2

    await_condition(f"{job_id}'s reservation released", released, timeout=30)


def test_cluster_view_reports_every_node_with_labels(cluster: Any) -> None:
    from dcsched.adapters.ray_executor import RayClusterView

    snapshot = RayClusterView().snapshot()
    workers = [n for n in snapshot.nodes if n.total.cpus > 0]
    assert len(workers) == 3 and all(n.alive for n in workers)
    assert sorted(n.labels["dcsched.io/rack"] for n in workers) == ["r0", "r1", "r2"]
    assert all(n.total.cpus == 2 and n.available.cpus == 2 for n in workers)


@pytest.mark.parametrize("in_group", [False, True], ids=["driver-trains", "task-in-group"])
def test_job_runs_where_the_decision_placed_it(
    cluster: Any, tmp_path: Path, in_group: bool
) -> None:
    from ray.util import placement_group_table

    from dcsched.adapters.ray_executor import RayClusterView, RayExecutor

    executor = RayExecutor(dashboard_url(cluster), run_in_group=lambda job: in_group)
    target = worker_nodes()[1]
    job = make_job(f"placed-{int(in_group)}-{time.time_ns()}", (target,))
    executor.reserve(job, job.nodes)
    assert executor.reservation_ready(job.id, timeout_s=30)
    from ray.util import get_placement_group

    table = placement_group_table(get_placement_group(f"dcsched-{job.id}"))
    assert list(table["bundles_to_node_id"].values()) == [target]
    held = {n.id: n.available.cpus for n in RayClusterView().snapshot().nodes}
    assert held[target] == 1

    phase = run_to_end(executor, job, tmp_path / job.id)
    logs = executor.logs(job.id)
    assert phase is RunPhase.SUCCEEDED, logs
    info = executor._client.get_job_info(job.id)  # the Ray job, as the dashboard shows it
    assert info.driver_node_id == target
    assert info.metadata["dcsched_team"] == "research"
    result = json.loads((tmp_path / job.id / "result.json").read_text())
    assert result["metrics"]["accuracy"] > 0.8

    executor.release(job.id)
    await_released(job.id, target)


def test_stop_ends_a_running_job(cluster: Any, tmp_path: Path) -> None:
    from dcsched.adapters.ray_executor import RayExecutor

    executor = RayExecutor(dashboard_url(cluster))
    assert executor.status("never-submitted") is None
    job = make_job(f"stopped-{time.time_ns()}", (worker_nodes()[0],), epochs=100000)
    executor.reserve(job, job.nodes)
    assert executor.reservation_ready(job.id, timeout_s=30)
    run_dir = tmp_path / job.id
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(spec_json(job))
    executor.start(job, run_dir)
    executor.start(job, run_dir)  # idempotent: a second start is a no-op
    ray_jobs = [j for j in executor._client.list_jobs() if j.submission_id == job.id]
    assert len(ray_jobs) == 1, ray_jobs
    await_condition(
        f"{job.id} running",
        lambda: executor.status(job.id).phase is RunPhase.RUNNING,  # type: ignore[union-attr]
        timeout=60,
    )
    executor.stop(job.id)
    status = executor.status(job.id)
    assert status is not None and status.phase is RunPhase.STOPPED
    executor.release(job.id)
    executor.release(job.id)  # idempotent: no error, and the resources are back
    await_released(job.id, job.nodes[0])
