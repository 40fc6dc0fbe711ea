"""Gang placement: choose a node for every worker of a job, or none at all.

What the policies mean; the index they search (free capacity per node, kept sorted) is
``capacity``. ``CapacityIndex.place`` is asked for each job of an admission pass.

Policies (``PlacementPolicy``), for a gang that one node can hold whole:
- ``binpack`` (best fit): the node left with the least free capacity, compared GPUs
  first, then CPUs, then memory. Whole nodes stay free for large jobs, and CPU-only jobs
  go to the nodes with the fewest free GPUs.
- ``spread``: the node with the most free capacity (same order).
- ``least-loaded``: the node with the lowest measured utilization (work outside dcsched
  included; not measured counts as 0), then the most free capacity.

A gang that no single node holds goes on the fewest nodes: the nodes that hold the most
workers are filled first (equal ones ranked by the policy as above), and the node that
takes the remaining workers is chosen by the policy among the nodes that hold them.

Invariants:
- Always gang: ``place`` returns one node per worker, or ``NoFit`` with a reason in words.
- Never over-commit: every node's placed workers fit in its free capacity.
- Only nodes whose labels carry every key=value of the selector.
- Soft anti-affinity: with ``avoid`` (the nodes of a job's spread group), a gang that
  one node holds goes on a node outside ``avoid`` when one holds it, else as without.
- Deterministic: ties break by node id. ``place`` never mutates; ``take``/``give`` do.
- Fast: the index (``capacity``) answers "no node holds this" in O(1) and finds a best
  fit by bisection; a split counts runs of equal nodes and stops as soon as the choice
  is settled; repeated reasons are remembered.

Words:
- free: what a node can still give (``NodeState.available``).
- worker: one equal share of a gang (``per_worker``); a gang: all workers of one job.
- holds: a node holds k workers when k of them fit in its free capacity.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from dcsched.core.capacity import (
    _INF,
    _POLICIES,
    CapacityBase,
    _describe_selector,
    _Entry,
    _Free,
    _holds,
    _Levels,
    _Pool,
    _resources,
    _selector_key,
    _SelectorKey,
    _vector,
)
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import PlacementPolicy
from dcsched.core.resources import EPSILON, Resources


@dataclass(frozen=True)
class Placement:
    """One node id per worker, in worker order."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NoFit:
    """The gang does not fit now; ``reason`` says why, in a user's words."""

    reason: str


class CapacityIndex(CapacityBase):
    """The capacity index with gang placement under a policy."""

    __slots__ = ()

    def place(
        self,
        per_worker: Resources,
        workers: int,
        policy: PlacementPolicy,
        selector: Mapping[str, str] | None = None,
        avoid: AbstractSet[str] = frozenset(),
    ) -> Placement | NoFit:
        """Nodes for all ``workers`` under ``policy``, or why they do not fit now.
        ``avoid``: nodes to leave out when another node holds the whole gang (a spread
        group's nodes); they are chosen only when none other fits."""
        if workers < 1:
            raise ValueError(f"a gang has at least one worker, not {workers}")
        if policy not in _POLICIES:
            raise ValueError(f"unknown placement policy {policy!r}; known: {', '.join(_POLICIES)}")
        key = _selector_key(selector)
        pool = self._pool(key)
        if not pool.members:
            if key:
                return NoFit(f"no alive node matches node_selector {_describe_selector(key)}")
            return NoFit("no alive nodes in the cluster")
        w = _vector(per_worker)
        whole: _Free = (w[0] * workers, w[1] * workers, w[2] * workers)
        if pool.may_hold(whole):
            node = self._best(pool, policy, whole, avoid) if avoid else None
            if node is None:
                node = self._best(pool, policy, whole)
            if node is not None:
                return Placement((node,) * workers)
        if workers == 1:
            return self._no_fit(pool, per_worker, 1, 0, key)
        if not pool.may_hold(w):
            return self._no_fit(pool, per_worker, workers, 0, key)
        return self._split(pool, per_worker, w, workers, policy, key)

    def _best(
        self,
        pool: _Pool,
        policy: PlacementPolicy,
        need: _Free,
        exclude: AbstractSet[str] = frozenset(),
    ) -> str | None:
        if policy == "binpack":
            return pool.tightest(need, exclude)
        if policy == "spread":
            return pool.emptiest(need, exclude)
        if pool.tightest(need, exclude) is None:  # a quick no, when the answer is no
            return None
        if pool.levels is None:
            pool.levels = _Levels(self._free, pool, self._util)
        return pool.levels.least_loaded(need, exclude)

    def _split(
        self,
        pool: _Pool,
        per_worker: Resources,
        w: _Free,
        workers: int,
        policy: PlacementPolicy,
        key: _SelectorKey,
    ) -> Placement | NoFit:
        """The gang on the fewest nodes: the nodes that hold the most workers first."""
        # Count what the nodes hold, walking down from the most free of the worker's main
        # resource (GPUs, else CPUs, else memory), one run of nodes with equal free at a
        # time. By that resource alone, a node not yet seen holds at most `bound` workers.
        # Once the nodes seen that hold at least `bound` hold the whole gang, the walk
        # stops: the nodes chosen below each hold at least `bound` (all that hold more
        # were seen), and `_best` finds them among all nodes, seen or not.
        if w[0] > EPSILON:
            entries, unit, second = pool.by_gpu, w[0], w[1] - EPSILON
        elif w[1] > EPSILON:
            entries, unit, second = pool.by_cpu(), w[1], float(w[2])
        else:  # memory only (a worker that asks for nothing fits any node whole)
            entries, unit, second = pool.by_mem(), float(w[2]), -EPSILON
        classes: dict[int, int] = {}  # workers a node holds -> how many nodes hold that many
        last_bound = -1
        for e, start, end in _groups_descending(entries, unit - EPSILON, second):
            bound = math.floor((e[0] + EPSILON) / unit)
            if bound < 1:
                break
            if bound != last_bound:
                if sum(h * n for h, n in classes.items() if h >= bound) >= workers:
                    break
                last_bound = bound
            holds = _holds(w, self._free[e[3]])
            if holds:
                classes[holds] = classes.get(holds, 0) + end - start
        total = sum(h * n for h, n in classes.items())
        if total >= workers:
            # Each node in turn is the policy's choice among the nodes not yet chosen that
            # hold as many workers (all that hold more are chosen by then); the last one
            # is its choice among those that hold the workers left.
            chosen: list[str] = []
            taken: set[str] = set()
            for holds in sorted(classes, reverse=True):
                for _ in range(classes[holds]):
                    count = min(holds, workers - len(chosen))
                    node = self._best(
                        pool, policy, (w[0] * count, w[1] * count, w[2] * count), taken
                    )
                    if node is None:  # float noise between "holds" and "fits": do not risk it
                        return self._no_fit(pool, per_worker, workers, len(chosen), key)
                    chosen.extend([node] * count)
                    taken.add(node)
                    if len(chosen) == workers:
                        return Placement(tuple(chosen))
        return self._no_fit(pool, per_worker, workers, total, key)

    # -- reasons -------------------------------------------------------------------------

    def _no_fit(
        self, pool: _Pool, per_worker: Resources, workers: int, holds: int, key: _SelectorKey
    ) -> NoFit:
        """Why the gang does not fit now; remembered, since a full cluster says it often."""
        largest = pool.largest()
        memo = (per_worker, workers, holds, key, largest)
        reason = self._reasons.get(memo)
        if reason is None:
            if len(self._reasons) >= 4096:
                self._reasons.clear()
            reason = self._reasons[memo] = _why_not(per_worker, workers, holds, key, largest)
        return NoFit(reason)

    # -- changing ------------------------------------------------------------------------


def _why_not(
    per_worker: Resources, workers: int, holds: int, key: _SelectorKey, largest: _Free
) -> str:
    most = _resources(largest).describe()
    where = f"any node matching {_describe_selector(key)}" if key else "any node"
    if workers > 1:
        within = f" on nodes matching {_describe_selector(key)}" if key else ""
        why = (
            f"needs {workers} workers of {per_worker.describe()}; free capacity{within} holds "
            f"{holds} of them"
        )
        return why + (f" (the most free on {where} is {most})" if holds == 0 else "")
    w = _vector(per_worker)
    short = [
        kind
        for kind, need, have in (("CPUs", w[1], largest[1]), ("GPUs", w[0], largest[0]))
        if need > have + EPSILON
    ] + (["memory"] if w[2] > largest[2] else [])
    if short:
        return (
            f"needs {per_worker.describe()} on one node; the most free on {where} is {most} "
            f"(not enough {', '.join(short)})"
        )
    return (
        f"needs {per_worker.describe()} on one node; no node has all of it free at once "
        f"(the most free of each kind on {where} is {most}, on different nodes)"
    )


def _groups_descending(
    entries: Sequence[_Entry], first: float, second: float
) -> Iterator[tuple[_Entry, int, int]]:
    """Runs of entries with equal free, most free first, of those with at least ``first``
    in the leading component and ``second`` in the next: (an entry of the run, start, end).
    """
    lo = bisect_left(entries, (first, -_INF, -_INF, ""))
    hi = len(entries)
    while hi > lo:
        lead = entries[hi - 1][0]
        group = bisect_left(entries, (lead, -_INF, -_INF, ""), lo, hi)
        cut = bisect_left(entries, (lead, second, -_INF, ""), group, hi)
        while hi > cut:
            e = entries[hi - 1]
            start = bisect_left(entries, (e[0], e[1], e[2], ""), cut, hi)
            yield e, start, hi
            hi = start
        hi = group


def fits_cluster_at_all(
    per_worker: Resources,
    workers: int,
    cluster: ClusterSnapshot,
    selector: Mapping[str, str] | None = None,
) -> str | None:
    """Why the request can never run on this cluster even when empty, or None if it can."""
    empty = CapacityIndex(
        [
            NodeState(n.id, n.address, True, n.total, n.total, n.labels, n.utilization)
            for n in cluster.alive_nodes()
        ]
    )
    return never_fits(empty, per_worker, workers, selector)


def never_fits(
    empty: CapacityIndex,
    per_worker: Resources,
    workers: int,
    selector: Mapping[str, str] | None = None,
) -> str | None:
    """Why the request can never run on the nodes of ``empty`` (an index of each alive
    node's total), or None if it can."""
    if not empty._free:
        return "the cluster has no alive nodes"
    key = _selector_key(selector)
    members = empty._pool(key).members
    if not members:
        return f"no alive node matches node_selector {_describe_selector(key)}"
    where = f" matching {_describe_selector(key)}" if key else ""
    if isinstance(empty.place(per_worker, 1, "binpack", selector), NoFit):
        return (
            f"one worker needs {per_worker.describe()}, but no node{where} is that large "
            f"(largest node: {empty.largest_free(selector).describe()}); lower the per-worker "
            "request"
        )
    if isinstance(empty.place(per_worker, workers, "binpack", selector), NoFit):
        matching = [n for n in empty._free if n in members]
        total = Resources()
        for n in matching:
            total = total + empty.free(n)
        whole = f"the nodes{where} hold" if key else "the whole cluster holds"
        return (
            f"needs {workers} workers of {per_worker.describe()} "
            f"({per_worker.scaled(workers).describe()} in all), more than {whole} "
            f"({len(matching)} nodes, {total.describe()}); lower workers or per-worker resources"
        )
    return None
