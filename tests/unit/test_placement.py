"""Placement policies on crafted snapshots, and properties checked against a plain oracle.

The oracle (``oracle_place``) states the rules in the simplest code there is, one node at
a time, and the index must agree with it exactly, through any sequence of take and give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import GPU_TYPE_LABEL, PlacementPolicy
from dcsched.core.placement import (
    CapacityIndex,
    NoFit,
    Placement,
    fits_cluster_at_all,
)
from dcsched.core.resources import Resources

GiB = 1024**3
POLICIES: tuple[PlacementPolicy, ...] = ("binpack", "spread", "least-loaded")
A100 = {GPU_TYPE_LABEL: "a100"}


def node(
    name: str,
    cpus: float,
    gpus: float = 0,
    memory: int = 64 * GiB,
    *,
    free: Resources | None = None,
    labels: Mapping[str, str] | None = None,
    util: float | None = None,
    alive: bool = True,
) -> NodeState:
    total = Resources(cpus, gpus, memory)
    return NodeState(name, "127.0.0.1", alive, total, free or total, labels or {}, util)


def one(placement: Placement | NoFit) -> str:
    """The node of a placement that sits on one node."""
    assert isinstance(placement, Placement), placement
    assert len(set(placement.nodes)) == 1
    return placement.nodes[0]


def no_fit(result: Placement | NoFit) -> str:
    assert isinstance(result, NoFit), result
    return result.reason


# -- each policy's choice -------------------------------------------------------------


def test_binpack_takes_the_fullest_node_that_fits_gpus_first() -> None:
    index = CapacityIndex(
        [
            node("a", 32, 8),
            node("b", 32, 8, free=Resources(2, 2, 8 * GiB)),
            node("c", 32, 8, free=Resources(32, 1, 64 * GiB)),
            node("d", 64, 0),
            node("e", 32, 8, free=Resources(4, 2, 4 * GiB)),
        ]
    )
    assert one(index.place(Resources(1, 2, GiB), 1, "binpack")) == "b"
    # GPUs weigh first: a CPU-only job goes where no GPU is free, however many CPUs.
    assert one(index.place(Resources(2, 0, GiB), 1, "binpack")) == "d"
    assert one(index.place(Resources(1, 1, GiB), 1, "binpack")) == "c"
    # Then CPUs: b and e both have 2 GPUs free; b has fewer CPUs but too few for this job.
    assert one(index.place(Resources(3, 2, GiB), 1, "binpack")) == "e"
    # Then memory: e has the room in CPUs and GPUs but not in memory.
    assert one(index.place(Resources(1, 2, 6 * GiB), 1, "binpack")) == "b"
    assert one(index.place(Resources(3, 2, 6 * GiB), 1, "binpack")) == "a"


def test_spread_takes_the_emptiest_node_and_ties_go_to_the_lowest_id() -> None:
    index = CapacityIndex(
        [
            node("c", 32, 8),
            node("a", 32, 8),
            node("b", 32, 8, free=Resources(32, 4, 64 * GiB)),
        ]
    )
    assert one(index.place(Resources(1, 1, GiB), 1, "spread")) == "a"
    assert one(index.place(Resources(1, 1, GiB), 1, "binpack")) == "b"


def test_spread_moves_on_as_nodes_fill() -> None:
    index = CapacityIndex([node("a", 8, 2), node("b", 8, 2)])
    per = Resources(1, 1, GiB)
    chosen = []
    for _ in range(4):
        placed = index.place(per, 1, "spread")
        assert isinstance(placed, Placement)
        index.take(placed.nodes, per)
        chosen.append(placed.nodes[0])
    assert chosen == ["a", "b", "a", "b"]
    assert isinstance(index.place(per, 1, "spread"), NoFit)


def test_least_loaded_avoids_a_node_busy_with_outside_work() -> None:
    index = CapacityIndex(
        [
            node("busy", 64, 8, util=0.9),
            node("quiet", 64, 8, free=Resources(8, 1, 8 * GiB), util=0.1),
            node("unmeasured", 64, 8, free=Resources(8, 1, 8 * GiB)),
        ]
    )
    # Not measured counts as 0, so it beats 0.1; both beat the emptier busy node.
    assert one(index.place(Resources(1, 1, GiB), 1, "least-loaded")) == "unmeasured"
    # What the quiet nodes cannot hold goes to the busy node.
    assert one(index.place(Resources(1, 2, GiB), 1, "least-loaded")) == "busy"
    assert one(index.place(Resources(1, 1, GiB), 1, "spread")) == "busy"


def test_least_loaded_ties_go_to_the_most_free_then_the_lowest_id() -> None:
    nodes = [
        node("d", 16, 4, util=0.5),
        node("c", 16, 4, free=Resources(16, 2, 64 * GiB), util=0.5),
        node("b", 16, 4, util=0.5),
    ]
    index = CapacityIndex(nodes)
    assert one(index.place(Resources(1, 1, GiB), 1, "least-loaded")) == "b"
    index.take(["b"] * 3, Resources(1, 1, GiB))
    assert one(index.place(Resources(1, 1, GiB), 1, "least-loaded")) == "d"


def test_least_loaded_works_in_a_large_level_of_equal_utilization() -> None:
    # More nodes of one utilization than a level scans: the level gets a pool of its own.
    nodes = [node(f"n{i:02d}", 8, 1, util=0.2) for i in range(40)]
    nodes.append(node("idle", 8, 1, free=Resources(8, 1, GiB), util=0.0))
    index = CapacityIndex(nodes)
    per = Resources(1, 1, GiB)
    seen = []
    for _ in range(41):
        placed = index.place(per, 1, "least-loaded")
        assert isinstance(placed, Placement)
        seen.append(placed.nodes[0])
        index.take(placed.nodes, per)
    assert seen[0] == "idle" and seen[1:] == [f"n{i:02d}" for i in range(40)]
    assert isinstance(index.place(per, 1, "least-loaded"), NoFit)


# -- gangs ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_gang_goes_on_one_node_when_one_holds_it(policy: PlacementPolicy) -> None:
    index = CapacityIndex(
        [node("a", 8, 4, util=0.9), node("b", 8, 2, util=0.0), node("c", 8, 2, util=0.0)]
    )
    assert index.place(Resources(1, 1, GiB), 4, policy) == Placement(("a",) * 4)


def test_a_gang_splits_over_the_fewest_nodes_the_rest_by_policy() -> None:
    nodes = [
        node("a", 8, 4),
        node("b", 8, 2),
        node("c", 8, 1),
        node("d", 8, 3),
    ]
    index = CapacityIndex(nodes)
    per = Resources(1, 1, GiB)
    # 5 workers: a holds 4; the last one goes to the tightest node (c) or the emptiest (d).
    assert index.place(per, 5, "binpack") == Placement(("a",) * 4 + ("c",))
    assert index.place(per, 5, "spread") == Placement(("a",) * 4 + ("d",))
    # 8 workers: a (4) + d (3) + one more; 10 workers: every GPU.
    assert index.place(per, 8, "binpack") == Placement(("a",) * 4 + ("d",) * 3 + ("c",))
    placed = index.place(per, 10, "spread")
    assert isinstance(placed, Placement) and sorted(placed.nodes) == sorted("aaaabbcddd")
    assert "holds 10 of them" in no_fit(index.place(per, 11, "binpack"))


def test_nodes_that_hold_equally_many_are_ranked_by_the_policy() -> None:
    # Each node holds one 2-GPU worker; binpack fills the exact fits, spread the roomy ones.
    nodes = [node("a", 8, 3), node("b", 8, 2), node("c", 8, 3), node("d", 8, 2)]
    index = CapacityIndex(nodes)
    per = Resources(1, 2, GiB)
    assert index.place(per, 2, "binpack") == Placement(("b", "d"))
    assert index.place(per, 2, "spread") == Placement(("a", "c"))


def test_cpu_only_and_memory_only_gangs_split_too() -> None:
    index = CapacityIndex([node("a", 4, 0), node("b", 6, 0, memory=3 * GiB)])
    assert index.place(Resources(2, 0, 0), 5, "binpack") == Placement(("b",) * 3 + ("a",) * 2)
    placed = index.place(Resources(0, 0, 16 * GiB), 4, "spread")
    assert placed == Placement(("a",) * 4)
    placed = index.place(Resources(0, 0, GiB), 67, "binpack")
    assert placed == Placement(("a",) * 64 + ("b",) * 3)


def test_fractional_resources_add_up_without_float_noise() -> None:
    index = CapacityIndex([node("a", 1, 1)])
    per = Resources(0.1, 0.1, 0)
    placed = index.place(per, 10, "binpack")
    assert placed == Placement(("a",) * 10)
    index.take(placed.nodes, per)
    assert index.free("a") == Resources(0, 0, 64 * GiB)
    assert isinstance(index.place(per, 1, "binpack"), NoFit)
    index.give(placed.nodes[:3], per)
    assert index.place(per, 3, "spread") == Placement(("a",) * 3)
    tenths = CapacityIndex([node("b", 0.9, memory=0)])
    assert tenths.place(Resources(0.3, 0, 0), 3, "binpack") == Placement(("b",) * 3)
    assert isinstance(tenths.place(Resources(0.3, 0, 0), 4, "binpack"), NoFit)


def test_a_worker_that_asks_for_nothing_fits_any_node() -> None:
    index = CapacityIndex([node("a", 0, 0, 0)])
    assert index.place(Resources(), 3, "spread") == Placement(("a",) * 3)
    assert index.place(Resources(), 5000, "binpack") == Placement(("a",) * 5000)


# -- selectors ------------------------------------------------------------------------


def test_only_nodes_that_carry_the_selector_labels() -> None:
    nodes = [
        node("h1", 32, 8, labels={GPU_TYPE_LABEL: "h100", "zone": "x"}),
        node("a1", 32, 8, free=Resources(32, 2, 64 * GiB), labels={**A100, "zone": "x"}),
        node("a2", 32, 8, free=Resources(32, 1, 64 * GiB), labels={**A100, "zone": "y"}),
    ]
    index = CapacityIndex(nodes)
    per = Resources(1, 1, GiB)
    assert one(index.place(per, 1, "spread", A100)) == "a1"
    assert one(index.place(per, 1, "binpack", {**A100, "zone": "x"})) == "a1"
    assert index.place(per, 3, "binpack", A100) == Placement(("a1", "a1", "a2"))
    assert one(index.place(per, 3, "binpack")) == "h1"
    assert index.largest_free(A100) == Resources(32, 2, 64 * GiB)
    assert index.largest_free() == Resources(32, 8, 64 * GiB)
    reason = no_fit(index.place(per, 4, "binpack", A100))
    assert reason == (
        f"needs 4 workers of 1 CPUs, 1 GPUs, 1GiB; free capacity on nodes matching "
        f"{GPU_TYPE_LABEL}=a100 holds 3 of them"
    )
    reason = no_fit(index.place(per, 1, "binpack", {GPU_TYPE_LABEL: "v100"}))
    assert reason == f"no alive node matches node_selector {GPU_TYPE_LABEL}=v100"
    assert index.largest_free({GPU_TYPE_LABEL: "v100"}) == Resources()


def test_take_and_give_keep_every_selector_view_in_step() -> None:
    index = CapacityIndex([node("a1", 8, 4, labels=A100), node("a2", 8, 4, labels=A100)])
    per = Resources(1, 1, GiB)
    assert index.largest_free(A100).gpus == 4  # builds the selector's view
    index.take(["a1"] * 4, per)
    assert index.largest_free(A100).gpus == 4 and one(index.place(per, 4, "spread", A100)) == "a2"
    index.take(["a2"] * 3, per)
    assert index.largest_free(A100).gpus == 1
    assert "holds 1 of them" in no_fit(index.place(per, 2, "binpack", A100))
    index.give(["a1", "a1"], per)
    assert index.place(per, 3, "binpack", A100) == Placement(("a1", "a1", "a2"))


# -- reasons --------------------------------------------------------------------------


def test_reasons_say_what_is_short() -> None:
    index = CapacityIndex(
        [node("a", 8, 2), node("b", 2, 8, free=Resources(2, 4, 64 * GiB)), node("c", 4, 0)]
    )
    assert no_fit(index.place(Resources(1, 8, GiB), 1, "binpack")) == (
        "needs 1 CPUs, 8 GPUs, 1GiB on one node; the most free on any node is "
        "8 CPUs, 4 GPUs, 64GiB (not enough GPUs)"
    )
    assert no_fit(index.place(Resources(16, 0, 128 * GiB), 1, "spread")).endswith(
        "(not enough CPUs, memory)"
    )
    # Each resource is free somewhere, but not together.
    assert no_fit(index.place(Resources(6, 4, GiB), 1, "binpack")) == (
        "needs 6 CPUs, 4 GPUs, 1GiB on one node; no node has all of it free at once (the most "
        "free of each kind on any node is 8 CPUs, 4 GPUs, 64GiB, on different nodes)"
    )
    assert no_fit(index.place(Resources(1, 1, GiB), 7, "binpack")) == (
        "needs 7 workers of 1 CPUs, 1 GPUs, 1GiB; free capacity holds 4 of them"
    )
    assert no_fit(index.place(Resources(1, 5, GiB), 2, "binpack")) == (
        "needs 2 workers of 1 CPUs, 5 GPUs, 1GiB; free capacity holds 0 of them "
        "(the most free on any node is 8 CPUs, 4 GPUs, 64GiB)"
    )
    assert no_fit(CapacityIndex([]).place(Resources(1), 1, "binpack")) == (
        "no alive nodes in the cluster"
    )


def test_a_repeated_reason_is_still_current() -> None:
    index = CapacityIndex([node("a", 8, 2)])
    per = Resources(1, 2, GiB)
    first = no_fit(index.place(per, 2, "binpack"))
    assert first == no_fit(index.place(per, 2, "binpack")) and "holds 1 of them" in first
    index.take(["a"], Resources(1, 1, GiB))
    assert "holds 0 of them" in no_fit(index.place(per, 2, "binpack"))


def test_bad_requests_raise() -> None:
    index = CapacityIndex([node("a", 8)])
    with pytest.raises(ValueError, match="at least one worker"):
        index.place(Resources(1), 0, "binpack")
    with pytest.raises(ValueError, match="unknown placement policy"):
        index.place(Resources(1), 1, "random")  # type: ignore[arg-type]


# -- take, give, copy -----------------------------------------------------------------


def test_take_give_and_copy() -> None:
    index = CapacityIndex([node("a", 8, 4), node("b", 8, 4), node("dead", 8, 4, alive=False)])
    per = Resources(2, 1, 4 * GiB)
    before = index.place(per, 2, "binpack")
    assert index.place(per, 2, "binpack") == before  # place changes nothing
    index.take(["a", "a", "b"], per)
    assert index.free("a") == Resources(4, 2, 56 * GiB)
    assert index.free("b") == Resources(6, 3, 60 * GiB)
    assert index.free("dead") == Resources()  # not alive: nothing free there
    what_if = index.copy()
    what_if.give(["a", "a", "dead"], per)  # a dead node frees nothing
    assert what_if.free("a") == Resources(8, 4, 64 * GiB)
    assert index.free("a") == Resources(4, 2, 56 * GiB)  # the copy is independent
    index.take(["b"], per)
    assert what_if.free("b") == Resources(6, 3, 60 * GiB)
    assert what_if.largest_free() == Resources(8, 4, 64 * GiB)
    assert index.largest_free() == Resources(4, 2, 56 * GiB)


def test_take_refuses_to_over_commit_and_changes_nothing() -> None:
    index = CapacityIndex([node("a", 8, 1), node("b", 8, 4)])
    per = Resources(1, 1, GiB)
    with pytest.raises(ValueError, match="node a has 8 CPUs, 1 GPUs, 64GiB free"):
        index.take(["b", "a", "a"], per)
    assert index.free("a") == Resources(8, 1, 64 * GiB)
    assert index.free("b") == Resources(8, 4, 64 * GiB)
    with pytest.raises(KeyError, match="dead"):
        index.take(["dead"], per)


def test_copy_carries_the_least_loaded_view() -> None:
    index = CapacityIndex([node("a", 8, 2, util=0.1), node("b", 8, 2, util=0.5)])
    per = Resources(1, 1, GiB)
    assert one(index.place(per, 1, "least-loaded")) == "a"
    index.take(["a", "a"], per)
    other = index.copy()
    assert one(other.place(per, 1, "least-loaded")) == "b"
    other.give(["a"], per)
    assert one(other.place(per, 1, "least-loaded")) == "a"
    assert one(index.place(per, 1, "least-loaded")) == "b"


# -- reasons ---------------------------------------------------------------------------


def test_binpack_takes_the_tightest_node_and_says_what_is_short() -> None:
    index = CapacityIndex([node("a", 8), node("b", 2)])
    assert index.place(Resources(2, 0, GiB), 1, "binpack") == Placement(("b",))
    gpus = CapacityIndex([node("a", 8, 2)])
    reason = no_fit(gpus.place(Resources(1, 4, GiB), 1, "binpack"))
    assert "needs 1 CPUs, 4 GPUs" in reason and "most free on any node is 8 CPUs, 2 GPUs" in reason


def test_fits_cluster_at_all_with_and_without_a_selector() -> None:
    cluster = ClusterSnapshot(
        (
            node("a", 4, 2, labels=A100),
            node("b", 4, 2, labels=A100, free=Resources()),  # busy now: totals count
            node("h", 16, 8, labels={GPU_TYPE_LABEL: "h100"}),
            node("gone", 64, 8, labels=A100, alive=False),
        )
    )
    assert fits_cluster_at_all(Resources(4, 2, GiB), 2, cluster, A100) is None
    why = fits_cluster_at_all(Resources(4, 4, GiB), 1, cluster, A100)
    assert why == (
        f"one worker needs 4 CPUs, 4 GPUs, 1GiB, but no node matching {GPU_TYPE_LABEL}=a100 "
        "is that large (largest node: 4 CPUs, 2 GPUs, 64GiB); lower the per-worker request"
    )
    why = fits_cluster_at_all(Resources(4, 2, GiB), 3, cluster, A100)
    assert why is not None and f"more than the nodes matching {GPU_TYPE_LABEL}=a100 hold" in why
    assert "(2 nodes, 8 CPUs, 4 GPUs, 128GiB)" in why
    assert fits_cluster_at_all(Resources(4, 4, GiB), 1, cluster) is None
    why = fits_cluster_at_all(Resources(4, 4, GiB), 1, cluster, {GPU_TYPE_LABEL: "v100"})
    assert why == f"no alive node matches node_selector {GPU_TYPE_LABEL}=v100"
    assert fits_cluster_at_all(Resources(1), 1, ClusterSnapshot(())) == (
        "the cluster has no alive nodes"
    )


# -- at scale -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_thousand_nodes_fill_up_exactly(policy: PlacementPolicy) -> None:
    nodes = [
        node(f"n{i:04d}", 64, 8, 512 * GiB, labels=A100 if i % 2 else {}, util=(i % 7) / 10)
        for i in range(1000)
    ]
    index = CapacityIndex(nodes)
    shapes = [(Resources(4, 1, GiB), 1), (Resources(16, 4, GiB), 2), (Resources(32, 8, GiB), 3)]
    placed_gpus = 0
    for i in range(3000):
        per, workers = shapes[i % 3]
        selector = A100 if i % 5 == 0 else None
        placed = index.place(per, workers, policy, selector)
        if isinstance(placed, Placement):
            assert len(placed.nodes) == workers
            index.take(placed.nodes, per)
            placed_gpus += int(per.gpus) * workers
    assert placed_gpus == 8000  # every GPU used, none twice (take would have raised)
    assert index.largest_free().gpus == 0
    assert "holds 0 of them" in no_fit(index.place(Resources(1, 1, GiB), 2, policy))


# -- properties against the oracle ------------------------------------------------------

Free = dict[str, Resources]


def _holds(per: Resources, free: Resources) -> int:
    counts = [
        math.floor(have / need + 1e-9)
        for need, have in ((per.cpus, free.cpus), (per.gpus, free.gpus))
        if need > 0
    ]
    if per.memory > 0:
        counts.append(free.memory // per.memory)
    return max(0, min(counts)) if counts else 10**6


def _rank(
    policy: PlacementPolicy, free: Resources, util: float, node_id: str
) -> tuple[object, ...]:
    if policy == "binpack":
        return (free.gpus, free.cpus, free.memory, node_id)
    if policy == "spread":
        return (-free.gpus, -free.cpus, -free.memory, node_id)
    return (util, -free.gpus, -free.cpus, -free.memory, node_id)


def oracle_place(
    free: Free,
    nodes: Sequence[NodeState],
    per: Resources,
    workers: int,
    policy: PlacementPolicy,
    selector: Mapping[str, str] | None,
) -> tuple[str, ...] | None:
    """The rules, plainly: one node that holds the gang, else node after node, each the
    policy's best among those left that hold as many workers as any node left does (or the
    workers still to place, if fewer)."""
    util = {n.id: n.utilization or 0.0 for n in nodes}
    matching = [
        n.id
        for n in nodes
        if n.alive and all(n.labels.get(k) == v for k, v in (selector or {}).items())
    ]
    if sum(_holds(per, free[n]) for n in matching) < workers:
        return None
    chosen: list[str] = []
    left = list(matching)
    while len(chosen) < workers:
        most = max(_holds(per, free[n]) for n in left)
        count = min(most, workers - len(chosen))
        best = min(
            (n for n in left if _holds(per, free[n]) >= count),
            key=lambda n: _rank(policy, free[n], util[n], n),
        )
        chosen.extend([best] * count)
        left.remove(best)
    return tuple(chosen)


amounts = st.sampled_from([0, 0.5, 1, 2, 3, 4, 8])
node_lists = st.lists(
    st.tuples(
        st.integers(0, 99),  # id
        amounts,  # CPUs
        amounts,  # GPUs
        st.sampled_from([0, 1, 2, 8]),  # GiB
        st.sampled_from([None, "a100", "h100"]),
        st.sampled_from([None, 0.0, 0.3, 0.3, 0.9]),
        st.booleans(),  # alive (mostly)
    ),
    min_size=0,
    max_size=8,
    unique_by=lambda t: t[0],
)
requests = st.tuples(
    st.sampled_from([0, 0.5, 1, 2]),  # CPUs
    st.sampled_from([0, 0.5, 1, 2, 4]),  # GPUs
    st.sampled_from([0, 1, 4]),  # GiB
    st.integers(1, 6),  # workers
    st.sampled_from(POLICIES),
    st.sampled_from([None, A100]),
    st.integers(0, 2),  # 0: place only, 1: take, 2: take, then give an earlier one back
)


def build(
    raw: list[tuple[int, float, float, int, str | None, float | None, bool]],
) -> list[NodeState]:
    return [
        node(
            f"node-{i}",
            cpus,
            gpus,
            gib * GiB,
            labels={GPU_TYPE_LABEL: kind} if kind else {},
            util=util,
            alive=alive or i % 3 != 0,
        )
        for i, cpus, gpus, gib, kind, util, alive in raw
    ]


@settings(max_examples=300, deadline=None)
@given(raw=node_lists, steps=st.lists(requests, min_size=1, max_size=12))
def test_the_index_agrees_with_the_oracle_through_take_and_give(raw, steps) -> None:  # type: ignore[no-untyped-def]
    nodes = build(raw)
    index = CapacityIndex(nodes)
    free: Free = {n.id: n.available for n in nodes if n.alive}
    held: list[tuple[tuple[str, ...], Resources]] = []
    for cpus, gpus, gib, workers, policy, selector, action in steps:
        per = Resources(cpus, gpus, gib * GiB)
        expected = oracle_place(free, nodes, per, workers, policy, selector)
        placed = index.place(per, workers, policy, selector)
        if expected is None:
            assert isinstance(placed, NoFit)
            assert placed.reason
            continue
        assert placed == Placement(expected)
        if action:
            index.take(placed.nodes, per)
            for n in placed.nodes:
                free[n] = free[n] - per
            held.append((placed.nodes, per))
        if action == 2 and len(held) > 1:
            nodes_back, per_back = held.pop(0)
            index.give(nodes_back, per_back)
            for n in nodes_back:
                free[n] = free[n] + per_back
        for n, f in free.items():
            got = index.free(n)
            assert math.isclose(got.cpus, f.cpus, abs_tol=1e-9)
            assert math.isclose(got.gpus, f.gpus, abs_tol=1e-9) and got.memory == f.memory


@settings(max_examples=150, deadline=None)
@given(raw=node_lists, request=requests)
def test_placements_are_whole_gangs_that_fit_on_matching_nodes(raw, request) -> None:  # type: ignore[no-untyped-def]
    cpus, gpus, gib, workers, policy, selector, _ = request
    nodes = build(raw)
    per = Resources(cpus, gpus, gib * GiB)
    index = CapacityIndex(nodes)
    placed = index.place(per, workers, policy, selector)
    by_id = {n.id: n for n in nodes}
    matching = [
        n
        for n in nodes
        if n.alive and all(n.labels.get(k) == v for k, v in (selector or {}).items())
    ]
    capacity = sorted((_holds(per, n.available) for n in matching), reverse=True)
    if isinstance(placed, NoFit):
        assert sum(capacity) < workers  # all or nothing: NoFit only when it cannot fit
        return
    assert len(placed.nodes) == workers
    for n in set(placed.nodes):
        state = by_id[n]
        assert state.alive and all(state.labels.get(k) == v for k, v in (selector or {}).items())
        assert per.scaled(placed.nodes.count(n)).fits_in(state.available)  # no over-commit
    # The fewest nodes: no fewer nodes hold the gang.
    fewest = next(k for k in range(1, len(capacity) + 1) if sum(capacity[:k]) >= workers)
    assert len(set(placed.nodes)) == fewest
    index.take(placed.nodes, per)  # and the index agrees it fits


@settings(max_examples=150, deadline=None)
@given(raw=node_lists, request=requests)
def test_binpack_and_spread_on_one_node_take_the_tightest_and_the_roomiest(raw, request) -> None:  # type: ignore[no-untyped-def]
    """Strictly better fit: a node that holds the gang whole and has less free, compared
    GPUs, then CPUs, then memory (ties: the lower id). Binpack never passes one over;
    spread never passes over a node with more free."""
    cpus, gpus, gib, workers, _, selector, _ = request
    nodes = build(raw)
    per = Resources(cpus, gpus, gib * GiB)
    index = CapacityIndex(nodes)
    whole = per.scaled(workers)
    holders = [
        n
        for n in nodes
        if n.alive
        and all(n.labels.get(k) == v for k, v in (selector or {}).items())
        and whole.fits_in(n.available)
    ]
    packed = index.place(per, workers, "binpack", selector)
    spread = index.place(per, workers, "spread", selector)
    if not holders:
        assert not isinstance(packed, Placement) or len(set(packed.nodes)) > 1
        return

    def key(n: NodeState) -> tuple[float, float, int]:
        return (n.available.gpus, n.available.cpus, n.available.memory)

    tight, roomy = one(packed), one(spread)
    by_id = {n.id: n for n in holders}
    for other in holders:
        assert (key(other), other.id) >= (key(by_id[tight]), tight)
        assert key(other) < key(by_id[roomy]) or (
            key(other) == key(by_id[roomy]) and other.id >= roomy
        )
    if len({key(n) for n in holders}) > 1:
        assert key(by_id[tight]) < key(by_id[roomy])  # they differ as they should
    else:
        assert tight == roomy  # all alike: the lowest id for both


@settings(max_examples=150, deadline=None)
@given(raw=node_lists, request=requests)
def test_least_loaded_takes_the_least_utilized_node_that_holds_the_gang(raw, request) -> None:  # type: ignore[no-untyped-def]
    cpus, gpus, gib, workers, _, selector, _ = request
    nodes = build(raw)
    per = Resources(cpus, gpus, gib * GiB)
    whole = per.scaled(workers)
    holders = [
        n
        for n in nodes
        if n.alive
        and all(n.labels.get(k) == v for k, v in (selector or {}).items())
        and whole.fits_in(n.available)
    ]
    placed = CapacityIndex(nodes).place(per, workers, "least-loaded", selector)
    if holders:
        chosen = next(n for n in holders if n.id == one(placed))
        assert (chosen.utilization or 0) == min(n.utilization or 0 for n in holders)


@settings(max_examples=150, deadline=None)
@given(raw=node_lists, request=requests)
def test_give_undoes_take_and_copies_are_independent(raw, request) -> None:  # type: ignore[no-untyped-def]
    cpus, gpus, gib, workers, policy, selector, _ = request
    nodes = build(raw)
    per = Resources(cpus, gpus, gib * GiB)
    index = CapacityIndex(nodes)
    before = {n.id: index.free(n.id) for n in nodes}
    first = index.place(per, workers, policy, selector)
    if not isinstance(first, Placement):
        return
    snapshot = index.copy()
    index.take(first.nodes, per)
    assert {n.id: snapshot.free(n.id) for n in nodes} == before
    index.give(first.nodes, per)
    for n in nodes:
        after = index.free(n.id)
        assert math.isclose(after.cpus, before[n.id].cpus, abs_tol=1e-9)
        assert math.isclose(after.gpus, before[n.id].gpus, abs_tol=1e-9)
        assert after.memory == before[n.id].memory
    assert index.place(per, workers, policy, selector) == first
