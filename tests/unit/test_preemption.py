"""Preemption over several passes (pure core, no Ray): the reproductions of issue 11 (B3
preempt / re-admit livelock, B1 reclaim from a team not borrowing the contested
resource, B2 in-team and cohort victims combined), the victim order, and a property
that runs the service's loop on the core (apply decisions, requeue victims, plan again)
over random cohorts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dcsched.core.activeset import ActiveSet
from dcsched.core.admission import (
    Admit,
    Decision,
    Preempt,
    SchedulingInput,
    Wait,
    plan,
    preemptors_after,
)
from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.config import GPU_TYPE_LABEL, ClusterConfig
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.quota import QuotaLedger, dimensions, job_gpu_type
from tests.unit.test_admission import (
    NOW,
    NodeState,
    borrowing_in_turn,
    by_id,
    config,
    decide,
    job,
    node,
    quota_invariant,
    running,
    snapshot,
    wait,
)


def requeued(j: Job) -> Job:
    """A victim back in the queue, as the service leaves it (RUNNING -> PENDING)."""
    return dataclasses.replace(
        j, state=JobState.PENDING, nodes=(), admitted_at=None, started_at=None
    )


class Loop:
    """The service's loop on the core, on a virtual clock: plan, admit, stop and requeue
    victims, plan again at once after a preemption; jobs arrive at their submit time and
    run for exactly their max_runtime."""

    def __init__(self, nodes: Sequence[NodeState], cfg: ClusterConfig, jobs: Sequence[Job]):
        self.nodes = list(nodes)
        self.cfg = cfg
        self.now = 0.0
        self.arrivals = sorted(jobs, key=lambda j: (j.submitted_at, j.id))
        self.pending: dict[str, Job] = {}
        self.active: dict[str, Job] = {}
        self.finished: set[str] = set()
        self.preemptions: list[tuple[str, str]] = []  # (preemptor, victim)
        self.passes: list[tuple[SchedulingInput, list[Decision]]] = []
        self.preemptors: frozenset[str] = frozenset()  # as the service keeps them

    def snapshot(self) -> ClusterSnapshot:
        return snapshot(self.nodes, list(self.active.values()))  # asserts no over-commit

    def step(self) -> list[Decision]:
        while self.arrivals and self.arrivals[0].submitted_at <= self.now:
            arrived = self.arrivals.pop(0)
            self.pending[arrived.id] = arrived
        active = sorted(self.active.values(), key=lambda j: j.id)
        inp = SchedulingInput(
            pending=sorted(self.pending.values(), key=lambda j: j.id),
            active=ActiveSet(self.snapshot(), self.cfg, held=active),
            now=self.now,
            preemptors=self.preemptors,
        )
        decisions = plan(inp)
        self.passes.append((inp, decisions))
        for d in decisions:
            if isinstance(d, Admit):
                self.active[d.job_id] = running(self.pending.pop(d.job_id), d.nodes, self.now)
            elif isinstance(d, Preempt):
                for victim in d.victims:
                    self.preemptions.append((d.job_id, victim))
                    self.pending[victim] = requeued(self.active.pop(victim))
        self.preemptors = preemptors_after(self.preemptors, decisions)
        self.snapshot()
        return decisions

    def advance(self) -> bool:
        ends = [
            (j.started_at or 0) + (j.request.max_runtime or 0)
            for j in self.active.values()
            if j.request.max_runtime is not None
        ]
        times = [*ends, self.arrivals[0].submitted_at] if self.arrivals else ends
        if not times:
            return False
        self.now = max(self.now, min(times))
        for j in list(self.active.values()):
            runtime = j.request.max_runtime
            if runtime is not None and (j.started_at or 0) + runtime <= self.now:
                del self.active[j.id]
                self.finished.add(j.id)
        return True

    def run(self, max_passes: int) -> None:
        for _ in range(max_passes):
            decisions = self.step()
            if not self.pending and not self.active and not self.arrivals:
                return
            if any(isinstance(d, Preempt) for d in decisions):
                continue  # the victims are gone: decide again at the same time
            if not self.advance():
                return


# -- B3: preempt / re-admit livelock ----------------------------------------------------------

B3_TEAMS = [
    {"name": "a", "cohort": "x", "quota": {"cpus": 2}},
    {"name": "b", "cohort": "x", "quota": {"cpus": 2}},
]


def test_b3_a_job_that_would_still_borrow_does_not_preempt() -> None:
    """Issue 11 B3: ``in`` (3 CPUs) exceeds team a's nominal quota (2) even with a-low
    gone, so it may not preempt a-low (Kueue's rule); it waits for the cohort to lend."""
    nodes = [node("n", cpus=8)]
    active = [
        running(job("a-low", team="a", priority="low", cpus=1), ["n"], NOW - 100),
        running(job("b-low", team="b", priority="low", cpus=1), ["n"], NOW - 100),
    ]
    d = decide([job("in", team="a", cpus=3, at=5)], nodes, active, config(teams=B3_TEAMS))
    assert wait(d[0]).reason == (
        "team a uses 1/2 of its CPU quota and this job needs 3 and its cohort can lend only 1 more"
    )


def test_b3_over_many_passes_nothing_is_preempted_and_in_starts_when_room_is_lent() -> None:
    cfg = config(teams=B3_TEAMS)
    jobs = [
        job("a-low", team="a", priority="low", cpus=1, runtime=100),
        job("b-low", team="b", priority="low", cpus=1, runtime=300),
        job("in", team="a", cpus=3, at=5, runtime=50),
    ]
    loop = Loop([node("n", cpus=8)], cfg, jobs)
    loop.run(max_passes=50)
    assert loop.preemptions == []
    assert loop.finished == {"a-low", "b-low", "in"}
    started = {d.job_id: inp.now for inp, ds in loop.passes for d in ds if isinstance(d, Admit)}
    assert started == {"a-low": 0.0, "b-low": 0.0, "in": 100.0}  # once a-low has ended


def test_b3_a_job_that_fits_nominal_after_preempting_is_admitted_next_pass() -> None:
    """The room a preemption frees goes to its beneficiary: the requeued victim is behind
    it (same team, lower class), so the next pass admits the beneficiary, not the victim."""
    cfg = config(teams=B3_TEAMS)
    jobs = [
        job("a-low", team="a", priority="low", cpus=1, runtime=100),
        job("b-low", team="b", priority="low", cpus=1, runtime=100),
        job("b-more", team="b", priority="low", cpus=1, runtime=100),
        job("in", team="a", cpus=2, at=5, runtime=50),
    ]
    loop = Loop([node("n", cpus=4)], cfg, jobs)
    loop.step()
    loop.advance()
    assert [type(d) for d in loop.step()] == [Preempt]
    d = by_id(loop.step())
    assert isinstance(d["in"], Admit)
    assert isinstance(d["a-low"], Wait)
    loop.run(max_passes=50)
    assert loop.preemptions == [("in", "a-low")]
    assert loop.finished == {j.id for j in jobs}


def test_a_team_that_preempted_does_not_borrow_in_the_same_pass() -> None:
    """Found by the loop below: b-cpu, admitted by borrowing after b-big's reclaim, would
    run first in the next pass and leave b-big over b's nominal CPU quota (so deferred
    behind the requeued victim, which takes the room back: a livelock)."""
    cfg = config(
        "fifo",
        teams=[
            {"name": "a", "cohort": "x", "quota": {"cpus": 2, "gpus": 0}},
            {"name": "b", "cohort": "x", "quota": {"cpus": 2, "gpus": 4}},
        ],
    )
    nodes = [node("n", cpus=16, gpus=8)]
    a_gpu = running(job("a-gpu", team="a", gpus=1, priority="low"), ["n"], NOW - 30)
    pending = [job("b-big", team="b", gpus=4, at=0), job("b-cpu", team="b", cpus=2, at=1)]
    d = by_id(decide(pending, nodes, [a_gpu], cfg))
    assert isinstance(d["b-big"], Preempt) and d["b-big"].victims == ("a-gpu",)
    assert wait(d["b-cpu"]).reason == (
        "team b holds quota for b-big, which preempted jobs to start; its jobs do not "
        "borrow until b-big has started"
    )
    d = by_id(decide([*pending, requeued(a_gpu)], nodes, [], cfg))
    assert isinstance(d["b-big"], Admit)
    assert isinstance(d["b-cpu"], Admit)
    assert borrowing_in_turn(cfg, pending) == [False, True]  # b-cpu borrows
    assert isinstance(d["a-gpu"], Wait)


# -- B1: reclaim from the team borrowing the contested resource -------------------------------


def b1_config() -> ClusterConfig:
    return config(
        teams=[
            {"name": "a", "cohort": "x", "quota": {"gpus": 4, "cpus": 8}},
            {"name": "b", "cohort": "x", "quota": {"gpus": 4, "cpus": 8}},
            {"name": "c", "cohort": "x", "quota": {"gpus": 4, "cpus": 2}},
        ]
    )


def test_b1_reclaim_takes_from_the_team_borrowing_the_contested_resource() -> None:
    """Issue 11 B1: a needs GPUs; b borrows GPUs, c only CPUs (and is within its GPU
    quota), so the victim is b's job even though c's started later."""
    nodes = [node("n1", cpus=16, gpus=8), node("n2", cpus=16, gpus=8)]
    active = [
        running(job("b-gpu", team="b", gpus=6, cpus=1), ["n1"], NOW - 10_000),
        running(job("c-gpu", team="c", gpus=4, cpus=4), ["n2"], NOW - 10),
    ]
    d = decide([job("a-gpu", team="a", gpus=4, cpus=1, at=5)], nodes, active, b1_config())
    assert isinstance(d[0], Preempt) and d[0].victims == ("b-gpu",)
    assert "team a reclaims the quota that team b borrowed" in d[0].reason
    # Next pass: b-gpu would borrow again, so a-gpu goes first and b-gpu waits.
    d = by_id(
        decide(
            [requeued(active[0]), job("a-gpu", team="a", gpus=4, cpus=1, at=5)],
            nodes,
            active[1:],
            b1_config(),
        )
    )
    assert isinstance(d["a-gpu"], Admit)
    assert wait(d["b-gpu"]).reason == (
        "team b uses 0/4 of its GPU quota and this job needs 6 and its cohort has none to lend"
    )


def test_b1_with_gpu_types_the_victim_borrows_that_type() -> None:
    a100 = {GPU_TYPE_LABEL: "A100"}
    teams = [
        {"name": t, "cohort": "x", "quota": {"gpus": 8, "cpus": cpus, "gpu_types": {"A100": 4}}}
        for t, cpus in (("a", 8), ("b", 8), ("c", 2))
    ]
    nodes = [node("n1", cpus=16, gpus=8, **a100), node("n2", cpus=16, gpus=8, **a100)]
    active = [
        running(job("b-gpu", team="b", gpus=6, cpus=1, selector=a100), ["n1"], NOW - 10_000),
        running(job("c-gpu", team="c", gpus=4, cpus=4, selector=a100), ["n2"], NOW - 10),
    ]
    pending = [job("a-gpu", team="a", gpus=4, cpus=1, at=5, selector=a100)]
    d = decide(pending, nodes, active, config(teams=teams))
    assert isinstance(d[0], Preempt) and d[0].victims == ("b-gpu",)


def test_b1_capacity_reclaim_also_takes_only_from_borrowers_of_what_is_short() -> None:
    """a fits its quota but the GPUs are taken (by c within its GPU quota, and by a team
    outside the cohort): c borrows CPUs only, so evicting it for GPUs is no reclaim."""
    nodes = [node("n1", cpus=16, gpus=8)]
    active = [
        running(job("c-gpu", team="c", gpus=4, cpus=4), ["n1"], NOW - 10),
        running(job("other", team="d", gpus=4, cpus=1), ["n1"], NOW - 10),
    ]
    d = decide([job("a-gpu", team="a", gpus=4, cpus=1, at=5)], nodes, active, b1_config())
    assert "needs 1 CPUs, 4 GPUs" in wait(d[0]).reason
    # Were c borrowing GPUs (quota 2), its job would be reclaimed for the capacity.
    teams = [t.model_dump() for t in b1_config().teams]
    teams[2]["quota"]["gpus"] = 2
    d = decide([job("a-gpu", team="a", gpus=4, cpus=1, at=5)], nodes, active, config(teams=teams))
    assert isinstance(d[0], Preempt) and d[0].victims == ("c-gpu",)


# -- B2: in-team and cohort victims combined --------------------------------------------------


def test_b2_in_team_and_cohort_victims_combine() -> None:
    """Issue 11 B2: c1's own lower-class job and c2's loan together make room."""
    cfg = config(
        teams=[
            {"name": "c1", "cohort": "co", "quota": {"cpus": 6}},
            {"name": "c2", "cohort": "co", "quota": {"cpus": 6}},
        ]
    )
    nodes = [node("n", cpus=16)]
    active = [
        running(job("c1-low", team="c1", priority="low", cpus=3), ["n"], NOW - 100),
        running(job("c1-mid", team="c1", cpus=2), ["n"], NOW - 100),
        running(job("c2-low", team="c2", priority="low", cpus=3), ["n"], NOW - 100),
        running(job("c2-mid", team="c2", cpus=4), ["n"], NOW - 100),
    ]
    incoming = job("in", team="c1", cpus=4, at=5)
    d = decide([incoming], nodes, active, cfg)
    assert isinstance(d[0], Preempt) and sorted(d[0].victims) == ["c1-low", "c2-low"]
    assert "whose priority class normal outranks it" in d[0].reason
    assert "team c1 reclaims the quota that team c2 borrowed" in d[0].reason
    # Next pass: in first; the victims wait (c1-low behind it, c2-low would borrow).
    rest = [a for a in active if a.id not in d[0].victims]
    again = [incoming, *(requeued(a) for a in active if a.id in d[0].victims)]
    d = by_id(decide(again, nodes, rest, cfg))
    assert isinstance(d["in"], Admit)
    assert isinstance(d["c1-low"], Wait) and isinstance(d["c2-low"], Wait)


# -- victim order -----------------------------------------------------------------------------


def test_victim_order_lowest_class_first_among_equal_start_times() -> None:
    classes = [
        {"name": "low", "value": 0},
        {"name": "normal", "value": 100},
        {"name": "mid", "value": 50},
        {"name": "high", "value": 1000, "preemptible": False},
    ]
    nodes = [node("n", cpus=8, gpus=4)]
    active = [
        running(job("mid", gpus=2, priority="mid"), ["n"], NOW - 10),
        running(job("low", gpus=2, priority="low"), ["n"], NOW - 10),
    ]
    d = decide(
        [job("want", gpus=2, priority="high")], nodes, active, config(priority_classes=classes)
    )
    assert isinstance(d[0], Preempt) and d[0].victims == ("low",)
    # The lower class goes first even when it started long before.
    older = [active[0], running(job("low", gpus=2, priority="low"), ["n"], NOW - 10_000)]
    d = decide(
        [job("want", gpus=2, priority="high")], nodes, older, config(priority_classes=classes)
    )
    assert isinstance(d[0], Preempt) and d[0].victims == ("low",)


def test_victim_order_most_recently_started_within_a_class() -> None:
    nodes = [node("n", cpus=8, gpus=4)]
    active = [
        running(job("old", gpus=2, priority="low"), ["n"], NOW - 500),
        running(job("new", gpus=2, priority="low"), ["n"], NOW - 5),
    ]
    d = decide([job("want", gpus=2)], nodes, active)
    assert isinstance(d[0], Preempt) and d[0].victims == ("new",)


def test_victim_order_borrowers_before_teams_within_quota() -> None:
    """Same class, same start: the borrowing team's job goes before the own team's."""
    cfg = config(
        teams=[
            {"name": "a", "cohort": "x", "quota": {"gpus": 6}},
            {"name": "b", "cohort": "x", "quota": {"gpus": 2}},
        ]
    )
    nodes = [node("n", cpus=16, gpus=6)]
    active = [
        running(job("a-low", team="a", gpus=2, priority="low"), ["n"], NOW - 10),
        running(job("b-keep", team="b", gpus=2, priority="low"), ["n"], NOW - 100),
        running(job("b-low", team="b", gpus=2, priority="low"), ["n"], NOW - 10),
    ]
    # The node is full; a is within quota either way. a-low (its own, lower class) or
    # b-low (b's loan) would make room: same class, same start, so the borrower's goes.
    d = decide([job("want", team="a", gpus=2, at=5)], nodes, active, cfg)
    assert isinstance(d[0], Preempt) and d[0].victims == ("b-low",)
    # Without the loan, the own team's job.
    within = [active[0], active[2]]
    d = decide([job("want", team="a", gpus=4, at=5)], nodes, within, cfg)
    assert isinstance(d[0], Preempt) and d[0].victims == ("a-low",)


# -- the loop over random cohorts -------------------------------------------------------------


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[list[NodeState], ClusterConfig, list[Job], bool]:
    """Teams in a cohort (one maybe alone) with CPU, GPU and sometimes A100 quotas; jobs
    of three classes arriving over time, some pinned to a GPU type. ``ample``: nodes so
    large that only quotas bind (so every reclaim is a quota reclaim)."""
    ample = draw(st.booleans())
    typed = draw(st.booleans())
    nodes = []
    for i in range(draw(st.integers(1, 3))):
        labels = {GPU_TYPE_LABEL: draw(st.sampled_from(["A100", "H100"]))} if typed else {}
        cpus, gpus = (
            (256, 64) if ample else (draw(st.integers(4, 16)), draw(st.sampled_from([4, 8])))
        )
        nodes.append(node(f"n{i}", cpus=cpus, gpus=gpus, **labels))
    teams: list[dict[str, Any]] = []
    for name in ("a", "b", "c"):
        quota: dict[str, Any] = {"gpus": draw(st.integers(0, 6)), "cpus": draw(st.integers(2, 8))}
        if typed and draw(st.booleans()):
            quota["gpu_types"] = {"A100": draw(st.integers(0, quota["gpus"]))}
        entry: dict[str, Any] = {
            "name": name,
            "cohort": draw(st.sampled_from(["x"] * 5 + [None])),
            "quota": quota,
        }
        if draw(st.booleans()):
            entry["lending_limit"] = {"gpus": draw(st.integers(0, 4))}
        teams.append(entry)
    cfg = config(
        draw(st.sampled_from(["fifo", "priority"])),
        backfill=draw(st.booleans()),
        preemption=True,
        teams=teams,
    )
    jobs = []
    for i in range(draw(st.integers(2, 12))):
        selector = None
        if typed and draw(st.integers(0, 2)) == 0:
            selector = {GPU_TYPE_LABEL: draw(st.sampled_from(["A100", "H100"]))}
        at = draw(st.sampled_from([0, 0, 0, 5, 20, 50]))  # the early ones mostly low
        classes = ["low", "low", "normal"] if at == 0 else ["low", "normal", "normal", "high"]
        jobs.append(
            job(
                f"j{i:02d}",
                team=draw(st.sampled_from(["a", "b", "c"])),
                cpus=draw(st.integers(1, 4)),
                gpus=draw(st.sampled_from([0, 1, 2, 4])),
                at=at,
                priority=draw(st.sampled_from(classes)),
                runtime=draw(st.sampled_from([30.0, 100.0, 400.0])),
                selector=selector,
            )
        )
    return nodes, cfg, jobs, ample


def _dims(j: Job) -> set[str]:
    return {d for d, _ in dimensions(j.request.resources.total(), job_gpu_type(j))}


def check_reclaims(inp: SchedulingInput, decisions: Sequence[Decision], ample: bool) -> None:
    """Each victim of another team gives back some of what its team borrowed before the
    pass, in a dimension the preemptor asks for; when only quotas bind, in one where the
    preemptor's cohort is short with its team within nominal quota (at the most the pass
    could have used: every admission and beneficiary of the pass taken, no victim
    given back)."""
    before = QuotaLedger(inp.active.config, inp.active)
    most = before.copy()
    pending = {j.id: j for j in inp.pending}
    active = {j.id: j for j in inp.active}
    for d in decisions:
        if isinstance(d, Admit | Preempt):
            j = pending[d.job_id]
            most.take(j.team, j.request.resources.total(), job_gpu_type(j))
    for d in decisions:
        if not isinstance(d, Preempt):
            continue
        taker = pending[d.job_id]
        total = taker.request.resources.total()
        contested = set(most.reclaim_dims(taker.team, total, job_gpu_type(taker)))
        for victim in (active[v] for v in d.victims):
            if victim.team == taker.team:
                continue
            gave = set(before.borrowing(victim.team)) & _dims(victim) & _dims(taker)
            assert gave, (d, victim.team, before.borrowing(victim.team))
            if ample:
                assert gave & contested, (d, victim.team, before.borrowing(victim.team))
        event("reclaim" if any(active[v].team != taker.team for v in d.victims) else "in-team")


B1_LOOP = (
    [node("n0", cpus=256, gpus=64)],
    b1_config(),
    [
        job("b-gpu", team="b", gpus=6, cpus=1, runtime=400),
        job("c-gpu", team="c", gpus=4, cpus=4, runtime=400),
        job("a-gpu", team="a", gpus=4, cpus=1, at=5, runtime=100),
    ],
    True,
)
B3_LOOP = (
    [node("n0", cpus=8)],
    config(teams=[{**t, "quota": {"cpus": 2, "gpus": 0}} for t in B3_TEAMS]),
    [
        job("a-low", team="a", priority="low", cpus=1, runtime=400),
        job("b-low", team="b", priority="low", cpus=1, runtime=400),
        job("in", team="a", cpus=3, at=5, runtime=100),
    ],
    False,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
@example(B1_LOOP)
@example(B3_LOOP)
def test_the_service_loop_never_preempts_a_job_twice_for_the_same_preemptor(
    workload: tuple[list[NodeState], ClusterConfig, list[Job], bool],
) -> None:
    """Over many passes: no (preemptor, victim) pair twice (no livelock), reclaim only
    from teams borrowing the contested resource, quotas and capacity respected, and
    every job ends."""
    nodes, cfg, jobs, ample = workload
    loop = Loop(nodes, cfg, jobs)
    loop.run(max_passes=300)
    assert len(set(loop.preemptions)) == len(loop.preemptions), loop.preemptions
    for inp, decisions in loop.passes:
        check_reclaims(inp, decisions, ample)
    for inp, _ in loop.passes:
        quota_invariant(cfg, list(inp.active))
    event(f"preemptions: {min(len(loop.preemptions), 3)}")
    assert len(loop.passes) < 300  # it came to rest: all ended, or the rest can never start


def test_the_room_a_preemption_freed_goes_to_its_preemptor_first() -> None:
    """Found by the loop test above: j10 preempts for 2 GPUs; in the next pass an older,
    lower-priority job of the same team (j11, first in submit order) took the quota the
    victims gave back, so j10 waited and later preempted the same victims again. A job
    whose preemption was applied comes first in the next pass's order."""
    cfg = config("fifo")
    nodes = [node("n0", cpus=2, gpus=2)]
    older = job("j11", team="b", cpus=2, at=1, priority="low")
    preemptor = job("j10", team="b", cpus=1, gpus=2, at=2)
    pending = [older, preemptor]
    # Without the preemptor's claim, submit order admits the older job.
    assert decide(pending, nodes, cfg=cfg)[0] == Admit("j11", ("n0",))
    # With it, the preemptor starts and the older job waits behind it.
    decided = by_id(decide(pending, nodes, cfg=cfg, preemptors=frozenset({"j10"})))
    assert decided["j10"] == Admit("j10", ("n0",))
    assert isinstance(decided["j11"], Wait)
