"""Placement and admission on crafted cluster snapshots (pure core, no Ray)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dcsched.core.admission import Admit, Wait, plan_admissions
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.placement import NoFit, Placement, fits_cluster_at_all, place_gang
from dcsched.core.priority import DEFAULT_PRIORITY_CLASSES
from dcsched.core.resources import Resources
from dcsched.core.spec import parse_spec

GiB = 1024**3


def node(
    name: str, cpus: float, gpus: float = 0, memory: int = 64 * GiB, free: Resources | None = None
) -> NodeState:
    total = Resources(cpus, gpus, memory)
    return NodeState(name, "127.0.0.1", True, total, free or total)


def job(
    job_id: str,
    cpus: float = 1,
    gpus: float = 0,
    workers: int = 1,
    at: float = 0,
    priority: str = "normal",
) -> Job:
    spec = parse_spec(
        {
            "name": "j",
            "kind": "train",
            "team": "t",
            "priority": priority,
            "resources": {"workers": workers, "cpus": cpus, "gpus": gpus, "memory": "1GiB"},
            "model": {"type": "mlp"},
            "data": {"source": "sklearn:iris"},
        }
    )
    return Job(job_id, spec, JobState.PENDING, submitted_at=at)


def test_binpack_prefers_the_fullest_node_that_fits() -> None:
    free = {"a": Resources(8, 0, 64 * GiB), "b": Resources(2, 0, 64 * GiB)}
    assert place_gang(Resources(2, 0, GiB), 1, free) == Placement(("b",))


def test_gang_consolidates_on_one_node_when_possible() -> None:
    free = {
        "a": Resources(4, 4, 64 * GiB),
        "b": Resources(2, 2, 64 * GiB),
        "c": Resources(2, 2, 64 * GiB),
    }
    assert place_gang(Resources(1, 1, GiB), 4, free) == Placement(("a",) * 4)


def test_gang_splits_over_fewest_nodes_or_not_at_all() -> None:
    free = {
        "a": Resources(2, 2, 64 * GiB),
        "b": Resources(2, 2, 64 * GiB),
        "c": Resources(1, 1, 64 * GiB),
    }
    placement = place_gang(Resources(1, 1, GiB), 4, free)
    assert isinstance(placement, Placement) and sorted(placement.nodes) == ["a", "a", "b", "b"]
    result = place_gang(Resources(1, 1, GiB), 6, free)
    assert isinstance(result, NoFit) and "holds 5 of them" in result.reason


def test_no_fit_reason_names_the_most_free_node() -> None:
    result = place_gang(Resources(1, 4, GiB), 1, {"a": Resources(8, 2, 64 * GiB)})
    assert isinstance(result, NoFit)
    assert (
        "needs 1 CPUs, 4 GPUs" in result.reason
        and "most free on any node is 8 CPUs, 2 GPUs" in result.reason
    )


def test_request_larger_than_cluster_is_explained() -> None:
    cluster = ClusterSnapshot((node("a", 4), node("b", 4)))
    why = fits_cluster_at_all(Resources(16, 0, GiB), 1, cluster)
    assert why is not None and "no node is that large" in why and "largest node: 4 CPUs" in why
    why = fits_cluster_at_all(Resources(4, 0, GiB), 3, cluster)
    assert why is not None and "more than the whole cluster" in why and "2 nodes, 8 CPUs" in why
    assert fits_cluster_at_all(Resources(4, 0, GiB), 2, cluster) is None


def test_priority_then_fifo_with_head_of_line_blocking() -> None:
    cluster = ClusterSnapshot((node("a", 4),))
    jobs = [
        job("small-early", cpus=1, at=1),
        job("big", cpus=4, at=2, priority="high"),
        job("small-late", cpus=1, at=3),
    ]
    decisions = plan_admissions(jobs, cluster, DEFAULT_PRIORITY_CLASSES)
    assert decisions[0] == Admit("big", ("a",))
    assert isinstance(decisions[1], Wait) and decisions[1].job_id == "small-early"
    assert "waiting for resources" in decisions[1].reason and decisions[1].position == 1
    assert isinstance(decisions[2], Wait) and "queued behind small-early" in decisions[2].reason
    assert decisions[2].position == 2


def test_reservations_cap_what_ray_reports_free() -> None:
    cluster = ClusterSnapshot((node("a", 4),)).with_reservations({"a": Resources(3, 0, GiB)})
    assert cluster.nodes[0].available.cpus == 1


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(st.tuples(st.integers(1, 16), st.integers(0, 8)), min_size=1, max_size=6),
    jobs=st.lists(
        st.tuples(
            st.integers(1, 4),
            st.integers(0, 2),
            st.integers(1, 4),
            st.sampled_from(["low", "normal", "high"]),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_admission_never_overcommits_and_gangs_are_whole(nodes, jobs) -> None:  # type: ignore[no-untyped-def]
    cluster = ClusterSnapshot(tuple(node(f"n{i}", c, g) for i, (c, g) in enumerate(nodes)))
    pending = [job(f"j{i}", c, g, w, at=i, priority=p) for i, (c, g, w, p) in enumerate(jobs)]
    decisions = plan_admissions(pending, cluster, DEFAULT_PRIORITY_CLASSES)
    assert len(decisions) == len(pending)
    used = {n.id: Resources() for n in cluster.nodes}
    by_id = {j.id: j for j in pending}
    for decision in decisions:
        if isinstance(decision, Admit):
            placed = by_id[decision.job_id]
            assert len(decision.nodes) == placed.workers  # all workers or none
            for n in decision.nodes:
                used[n] = used[n] + placed.per_worker
    for n in cluster.nodes:
        assert used[n.id].fits_in(n.total)
