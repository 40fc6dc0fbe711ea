"""Preemption's shortcuts decide exactly as its general path (pure core, no Ray).

Two shortcuts in ``core.preemption``: a job whose team would stay over its nominal quota
even with all its own lower-priority jobs gone looks no further (``_stays_over``); and
when every number involved is whole, dropping the victims a job does not need takes one
victim back at a time instead of giving back all the others again
(``_drop_unneeded_exact``). Each test plans with them and with them turned off and
compares every decision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings

from dcsched.core.admission import Decision, Preempt, SchedulingInput, plan
from dcsched.core.config import ClusterConfig
from dcsched.core.job import Job
from dcsched.core.preemption import Preemption
from tests.unit.test_admission import NodeState, config, decide, job, node, running
from tests.unit.test_preemption import B1_LOOP, B3_LOOP, Loop, cohorts


@contextmanager
def general_path() -> Iterator[None]:
    """Preemption without its shortcuts."""
    with (
        mock.patch.object(Preemption, "_exact", lambda self, victims: False),
        mock.patch.object(Preemption, "_stays_over", lambda self, item, candidates: False),
    ):
        yield


def plan_general(inp: SchedulingInput) -> list[Decision]:
    with general_path():
        return plan(inp)


@contextmanager
def counting(name: str) -> Iterator[list[int]]:
    """Count the calls of a Preemption method (still calling it)."""
    calls = [0]
    original = getattr(Preemption, name)

    def spy(self: Preemption, *args: Any) -> Any:
        calls[0] += 1
        return original(self, *args)

    with mock.patch.object(Preemption, name, spy):
        yield calls


def test_a_whole_node_is_freed_by_the_victims_on_it_only() -> None:
    """32 one-GPU jobs over 4 nodes, started in turn on each node; a high-priority job
    of the same team needs a whole node. The most recently started go first, so victims
    are added from every node until one is empty; the ones on other nodes are dropped."""
    nodes = [node(f"n{i}", cpus=64, gpus=8) for i in range(4)]
    active = [
        running(job(f"r{i:02d}", team="t", gpus=1, priority="low"), [f"n{i % 4}"], float(i))
        for i in range(32)
    ]
    big = job("big", team="t", gpus=8, priority="high", at=100)
    with counting("_drop_unneeded_exact") as exact:
        (fast,) = decide([big], nodes, active)
    assert exact[0] == 1
    with general_path():
        (general,) = decide([big], nodes, active)
    assert fast == general
    assert isinstance(fast, Preempt)
    held = {a.id: a.nodes[0] for a in active}
    assert len(fast.victims) == 8 and len({held[v] for v in fast.victims}) == 1


def test_a_team_over_its_quota_even_without_its_own_jobs_does_not_preempt() -> None:
    """Team a borrows beyond its quota and b holds most of the rest; a's high-priority
    job would still borrow with all a's low-priority jobs gone, so it waits, with or
    without the shortcut."""
    cfg = config(
        teams=[
            {"name": "a", "cohort": "x", "quota": {"gpus": 2}},
            {"name": "b", "cohort": "x", "quota": {"gpus": 6}},
        ]
    )
    nodes = [node("n0", cpus=64, gpus=8)]
    active = [
        running(job(f"a{i}", team="a", gpus=1, priority="low"), ["n0"], float(i)) for i in range(3)
    ] + [running(job("b0", team="b", gpus=4), ["n0"], 0.0)]
    urgent = job("urgent", team="a", gpus=4, priority="high", at=10)
    with counting("_stays_over") as over:
        (fast,) = decide([urgent], nodes, active, cfg)
    assert over[0] == 1
    with general_path():
        (general,) = decide([urgent], nodes, active, cfg)
    assert fast == general
    assert not isinstance(fast, Preempt)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_every_pass_of_the_service_loop_decides_as_the_general_path(
    workload: tuple[list[NodeState], ClusterConfig, list[Job], bool],
) -> None:
    nodes, cfg, jobs, _ = workload
    loop = Loop(nodes, cfg, jobs)
    loop.run(max_passes=300)
    for inp, decisions in loop.passes:
        assert plan_general(inp) == decisions


def test_the_known_loops_decide_as_the_general_path() -> None:
    for nodes, cfg, jobs, _ in (B1_LOOP, B3_LOOP):  # B1 reclaims; B3 never preempts
        loop = Loop(nodes, cfg, jobs)
        loop.run(max_passes=300)
        preempts = any(isinstance(d, Preempt) for _, ds in loop.passes for d in ds)
        assert preempts == (cfg is B1_LOOP[1])
        for inp, decisions in loop.passes:
            assert plan_general(inp) == decisions
