"""An ``ActiveSet`` kept between passes gives exactly the decisions of a fresh pass over
the same active jobs, as the live service builds it (a new set on a snapshot that counts
them; pure core, no Ray): over random workloads, every pass of a simulated run is planned
both ways and compared, estimated starts included."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings

from dcsched.core.accounting import AllocationInterval
from dcsched.core.activeset import ActiveSet
from dcsched.core.admission import Admit, Cancel, Preempt, SchedulingInput, plan
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import ClusterConfig
from dcsched.core.fairshare import decayed_usage
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from tests.unit.test_admission import job, node, running, snapshot, workloads


def _past(
    cfg: ClusterConfig, history: list[AllocationInterval], active: dict[str, Job], now: float
):
    intervals = history + [
        AllocationInterval(j.team, j.request.resources.total(), j.started_at or 0, None)
        for j in active.values()
    ]
    return decayed_usage(intervals, now, cfg.queueing.fair_share_half_life)


def _run_both_ways(nodes: list[NodeState], cfg: ClusterConfig, jobs: list[Job]) -> int:
    """Simulated passes (jobs run for their max_runtime); returns how many were compared."""
    base = ClusterSnapshot(tuple(nodes))
    prepared = ActiveSet(base, cfg)
    pending = {j.id: j for j in jobs}
    active: dict[str, Job] = {}
    history: list[AllocationInterval] = []
    now = 0.0
    passes = 0
    for _ in range(40):
        past = _past(cfg, history, active, now) if cfg.queueing.policy == "fair" else {}
        queue = sorted(pending.values(), key=lambda j: j.id)
        fresh = plan(
            SchedulingInput(
                queue,
                ActiveSet(
                    snapshot(nodes, list(active.values())),
                    cfg,
                    held=sorted(active.values(), key=lambda j: j.id),
                ),
                now,
                past,
            )
        )
        kept = plan(SchedulingInput(queue, prepared, now, past))
        assert kept == fresh
        passes += 1
        for d in fresh:
            if isinstance(d, Admit):
                j = running(pending.pop(d.job_id), d.nodes, now)
                active[j.id] = j
                prepared.add(j)
            elif isinstance(d, Preempt):
                for victim in d.victims:
                    v = active.pop(victim)
                    prepared.remove(victim)
                    history.append(
                        AllocationInterval(
                            v.team, v.request.resources.total(), v.started_at or 0, now
                        )
                    )
                    pending[victim] = dataclasses.replace(
                        v, state=JobState.PENDING, nodes=(), admitted_at=None, started_at=None
                    )
            elif isinstance(d, Cancel):
                prepared.forget(d.job_id)
                pending.pop(d.job_id)
        if any(isinstance(d, Preempt) for d in fresh):
            continue
        ends = [
            (j.started_at or 0) + j.request.max_runtime
            for j in active.values()
            if j.request.max_runtime is not None
        ]
        if not ends:
            break
        now = min(ends)
        for j in list(active.values()):
            if (
                j.request.max_runtime is not None
                and (j.started_at or 0) + j.request.max_runtime <= now
            ):
                del active[j.id]
                prepared.remove(j.id)
                history.append(
                    AllocationInterval(j.team, j.request.resources.total(), j.started_at or 0, now)
                )
    assert sorted(prepared.runs) == sorted(active)
    return passes


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_an_active_set_decides_as_a_fresh_list(
    workload: tuple[list[NodeState], ClusterConfig, list[Job]],
) -> None:
    nodes, cfg, jobs = workload
    assert _run_both_ways(nodes, cfg, jobs) >= 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(with_quotas=False, runtimes=False))
def test_an_active_set_decides_as_a_fresh_list_without_runtimes(
    workload: tuple[list[NodeState], ClusterConfig, list[Job]],
) -> None:
    nodes, cfg, jobs = workload
    _run_both_ways(nodes, cfg, jobs)


def test_the_set_tracks_capacity_quota_and_releases() -> None:
    nodes = [node("n0", cpus=8, gpus=4), node("n1", cpus=8, gpus=4)]
    cfg = ClusterConfig.model_validate({"teams": [{"name": "a", "quota": {"gpus": 6}}]})
    prepared = ActiveSet(ClusterSnapshot(tuple(nodes)), cfg)
    first = running(job("x", team="a", gpus=2, workers=2, runtime=50), ["n0", "n1"], 10.0)
    prepared.add(first)
    assert len(prepared) == 1 and list(prepared) == [first] and first in prepared
    assert prepared.free_total() == Resources(14, 4, 126 * 1024**3)
    assert prepared.ledger.used("a")["gpus"] == 4
    assert [r.at for r in prepared.releases] == [60.0]
    with pytest.raises(ValueError, match="already active"):
        prepared.add(first)
    too_big = running(job("y", team="a", gpus=4), ["n0"], 10.0)
    with pytest.raises(ValueError):
        prepared.add(too_big)  # n0 has 2 GPUs left: nothing changes
    assert prepared.free_total().gpus == 4 and len(prepared) == 1
    assert prepared.remove("x") == first
    assert prepared.free_total() == Resources(16, 8, 128 * 1024**3)
    assert prepared.releases == [] and prepared.alloc["a"] == [0.0, 0.0, 0.0]
    with pytest.raises(KeyError):
        prepared.remove("x")


def test_held_jobs_are_counted_in_the_snapshot_and_given_back_on_removal() -> None:
    nodes = [node("n0", cpus=8, gpus=4), node("n1", cpus=8, gpus=4)]
    cfg = ClusterConfig.model_validate({"teams": [{"name": "a", "quota": {"gpus": 6}}]})
    x = running(job("x", team="a", gpus=2, workers=2, runtime=50), ["n0", "n1"], 10.0)
    live = snapshot(nodes, [x])  # as the service sees it: x's GPUs are not free
    held = ActiveSet(live, cfg, held=[x])
    assert held.free_total() == Resources(14, 4, 126 * 1024**3)  # not taken twice
    assert held.ledger.used("a")["gpus"] == 4 and [r.at for r in held.releases] == [60.0]
    assert held.remove("x") == x
    assert held.free_total() == Resources(16, 8, 128 * 1024**3)
    # A held job on a node that is gone (not alive in the snapshot) is accepted.
    gone = ClusterSnapshot((live.nodes[0], dataclasses.replace(live.nodes[1], alive=False)))
    assert ActiveSet(gone, cfg, held=[x]).ledger.used("a")["gpus"] == 4
    (decision,) = plan(SchedulingInput([job("p", team="a", gpus=2)], held, 0.0))
    assert isinstance(decision, Admit)
