"""Gang placement: choose a node for every worker of a job, or none at all.

An admission pass builds one ``CapacityIndex`` from the cluster snapshot, asks ``place``
for each job in queue order, and ``take``s what it admits; a what-if (would preempting
these jobs make room?) works on a ``copy`` and ``give``s their resources back.

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
- Deterministic: ties break by node id. ``place`` never mutates; ``take``/``give`` do.
- Fast (an admission pass asks thousands of times against a thousand nodes): each
  selector's nodes are kept sorted three ways (by free GPUs, CPUs and memory, the other
  components following), so the component-wise largest free is a last entry (an O(1)
  "no"), and a best fit bisects into the few groups of equal free GPUs instead of
  scanning every node. Least-loaded searches a max-tree over nodes in utilization
  order; a split counts runs of equal nodes and stops as soon as the choice is settled;
  repeated reasons are remembered.

Words:
- free: what a node can still give (``NodeState.available``).
- worker: one equal share of a gang (``per_worker``); a gang: all workers of one job.
- holds: a node holds k workers when k of them fit in its free capacity.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import PlacementPolicy
from dcsched.core.resources import Resources

_EPS = 1e-9
_UNBOUNDED = 1_000_000
"""Workers that fit when a worker asks for nothing."""

_Free = tuple[float, float, int]
"""Free GPUs, CPUs, memory: the order that binpack and spread compare in."""
_Entry = tuple[float, float, float, str]
"""A node in one of a pool's sorted lists: three free components, then the node id."""
_POLICIES = ("binpack", "spread", "least-loaded")
_INF = math.inf
_SCAN = 16
"""A level of more nodes than this (equal utilization) gets a pool of its own."""
_SelectorKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Placement:
    """One node id per worker, in worker order."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NoFit:
    """The gang does not fit now; ``reason`` says why, in a user's words."""

    reason: str


def _vector(r: Resources) -> _Free:
    return (round(r.gpus, 9), round(r.cpus, 9), int(r.memory))


def _holds(w: _Free, free: _Free) -> int:
    """Workers of size ``w`` that fit in ``free``."""
    count = _UNBOUNDED
    if w[0] > _EPS:
        count = min(count, math.floor((free[0] + _EPS) / w[0]))
    if w[1] > _EPS:
        count = min(count, math.floor((free[1] + _EPS) / w[1]))
    if w[2] > 0:
        count = min(count, free[2] // w[2])
    return max(count, 0)


def _resources(v: _Free) -> Resources:
    return Resources(cpus=v[1], gpus=v[0], memory=v[2])


def _selector_key(selector: Mapping[str, str] | None) -> _SelectorKey:
    return tuple(sorted(selector.items())) if selector else ()


def _describe_selector(key: _SelectorKey) -> str:
    return ", ".join(f"{k}={v}" for k, v in key)


class _Pool:
    """The nodes of one selector: kept sorted by (GPUs, CPUs, memory) free, then node id,
    with counts of each free CPU and memory amount for the component-wise largest free.
    The lists sorted by CPUs and by memory first (for gangs of CPU-only or memory-only
    workers split over nodes) are built when asked for and dropped on the next change."""

    __slots__ = ("_by_cpu", "_by_mem", "by_gpu", "cpus", "levels", "members", "mems", "top")

    def __init__(self, free: Mapping[str, _Free], members: Iterable[str]) -> None:
        self.members = frozenset(members)
        self.by_gpu: list[_Entry] = sorted((*free[n], n) for n in self.members)
        self.cpus: dict[float, int] = {}
        self.mems: dict[float, int] = {}  # memory amounts are ints (a float's subtype)
        for n in self.members:
            f = free[n]
            self.cpus[f[1]] = self.cpus.get(f[1], 0) + 1
            self.mems[f[2]] = self.mems.get(f[2], 0) + 1
        self.top: list[float] = [max(self.cpus, default=0.0), max(self.mems, default=0)]
        self._by_cpu: list[_Entry] | None = None
        self._by_mem: list[_Entry] | None = None
        self.levels: _Levels | None = None

    def copy(self) -> _Pool:
        other = _Pool.__new__(_Pool)
        other.members = self.members
        other.by_gpu = self.by_gpu[:]
        other.cpus, other.mems, other.top = dict(self.cpus), dict(self.mems), self.top[:]
        other._by_cpu, other._by_mem = self._by_cpu, self._by_mem  # never changed in place
        other.levels = None if self.levels is None else self.levels.copy()
        return other

    def move(self, node: str, old: _Free, new: _Free) -> None:
        s = self.by_gpu
        del s[bisect_left(s, (*old, node))]
        insort(s, (*new, node))
        top = self.top
        counted: tuple[tuple[int, dict[float, int]], ...] = ((1, self.cpus), (2, self.mems))
        for i, counts in counted:
            a, b = old[i], new[i]
            if a == b:
                continue
            left = counts[a] - 1
            if left:
                counts[a] = left
            else:
                del counts[a]
            counts[b] = counts.get(b, 0) + 1
            if b > top[i - 1]:
                top[i - 1] = b
            elif not left and a == top[i - 1]:
                top[i - 1] = max(counts)
        self._by_cpu = self._by_mem = None
        if self.levels is not None:
            self.levels.move(node, old, new)

    def by_cpu(self) -> list[_Entry]:
        """(CPUs, memory, GPUs free, node id), sorted."""
        if self._by_cpu is None:
            self._by_cpu = sorted((e[1], e[2], e[0], e[3]) for e in self.by_gpu)
        return self._by_cpu

    def by_mem(self) -> list[_Entry]:
        """(memory, CPUs, GPUs free, node id), sorted."""
        if self._by_mem is None:
            self._by_mem = sorted((e[2], e[1], e[0], e[3]) for e in self.by_gpu)
        return self._by_mem

    def largest(self) -> _Free:
        """Component-wise largest free (each from its own node)."""
        if not self.by_gpu:
            return (0.0, 0.0, 0)
        return (self.by_gpu[-1][0], self.top[0], int(self.top[1]))

    def may_hold(self, need: _Free) -> bool:
        """False when no node can hold ``need`` (O(1)); True is only a maybe."""
        s = self.by_gpu
        return (
            bool(s)
            and need[0] <= s[-1][0] + _EPS
            and need[1] <= self.top[0] + _EPS
            and need[2] <= self.top[1]
        )

    def tightest(self, need: _Free, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """The node holding ``need`` with the least free (GPUs, CPUs, memory, then id)."""
        s = self.by_gpu
        n = len(s)
        cpus = need[1] - _EPS
        i = bisect_left(s, (need[0] - _EPS, -_INF, -_INF, ""))
        while i < n:
            group = s[i][0]  # one group: nodes with equal free GPUs, sorted by CPUs
            k = bisect_left(s, (group, cpus, -_INF, ""), i)
            while k < n:
                e = s[k]
                if e[0] != group:
                    break
                if e[2] >= need[2] and e[3] not in exclude:
                    return e[3]
                k += 1
            i = k
        return None

    def emptiest(self, need: _Free, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """The node holding ``need`` with the most free (GPUs, CPUs, memory), then lowest id."""
        s = self.by_gpu
        lo = bisect_left(s, (need[0] - _EPS, -_INF, -_INF, ""))
        hi = len(s)
        cpus = need[1] - _EPS
        while hi > lo:
            start = bisect_left(s, (s[hi - 1][0], -_INF, -_INF, ""), lo, hi)
            for k in range(hi - 1, start - 1, -1):
                e = s[k]
                if e[1] < cpus:
                    break
                if e[2] >= need[2] and e[3] not in exclude:
                    # Equal free: the lowest id wins.
                    first = bisect_left(s, (e[0], e[1], e[2], ""), start, k)
                    return next(s[q][3] for q in range(first, k + 1) if s[q][3] not in exclude)
            hi = start
        return None


class _Levels:
    """A pool's nodes in order of utilization (then id) under a max-tree.

    Each tree node holds the component-wise largest free below it, so the search for the
    least utilized node that holds a request skips whole ranges of busy or full nodes.
    Nodes of equal utilization form a level; the most free node of a level wins, found
    by a scan, or by a pool of its own in a level of more than ``_SCAN`` nodes.
    """

    __slots__ = ("big", "leaf", "level", "nodes", "size", "top")

    def __init__(self, free: Mapping[str, _Free], pool: _Pool, util: Mapping[str, float]) -> None:
        # Fixed after construction, so shared by copies: order, positions, level bounds.
        self.nodes = sorted(pool.members, key=lambda n: (util[n], n))
        self.leaf = {n: i for i, n in enumerate(self.nodes)}
        self.level: list[tuple[int, int]] = []
        lo = 0
        for i in range(1, len(self.nodes) + 1):
            if i == len(self.nodes) or util[self.nodes[i]] != util[self.nodes[lo]]:
                self.level.extend([(lo, i)] * (i - lo))
                lo = i
        self.big = {
            lo: _Pool(free, self.nodes[lo:hi]) for lo, hi in set(self.level) if hi - lo > _SCAN
        }
        self.size = 1
        while self.size < len(self.nodes):
            self.size *= 2
        self.top: list[_Free] = [(-_INF, -_INF, -1)] * (2 * self.size)
        for i, node in enumerate(self.nodes):
            self.top[self.size + i] = free[node]
        for v in range(self.size - 1, 0, -1):
            self.top[v] = _max3(self.top[2 * v], self.top[2 * v + 1])

    def copy(self) -> _Levels:
        other = _Levels.__new__(_Levels)
        other.nodes, other.leaf, other.level, other.size = (
            self.nodes,
            self.leaf,
            self.level,
            self.size,
        )
        other.top = self.top[:]
        other.big = {lo: pool.copy() for lo, pool in self.big.items()}
        return other

    def move(self, node: str, old: _Free, new: _Free) -> None:
        i = self.leaf[node]
        lo = self.level[i][0]
        if lo in self.big:
            self.big[lo].move(node, old, new)
        top = self.top
        v = self.size + i
        top[v] = new
        v //= 2
        while v:
            a, b = top[2 * v], top[2 * v + 1]
            top[v] = (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))
            v //= 2

    def least_loaded(self, need: _Free, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """In the least utilized level that holds ``need``, the node with the most free."""
        g, c, m = need[0] - _EPS, need[1] - _EPS, need[2]
        top, size = self.top, self.size
        stack = [1]
        while stack:
            v = stack.pop()
            t = top[v]
            if t[0] < g or t[1] < c or t[2] < m:
                continue
            if v < size:
                stack.append(2 * v + 1)
                stack.append(2 * v)  # the less utilized half is searched first
            elif self.nodes[v - size] not in exclude:
                lo, hi = self.level[v - size]
                if lo in self.big:
                    return self.big[lo].emptiest(need, exclude)
                best: tuple[float, float, int, str] | None = None
                for i in range(lo, hi):
                    f, n = top[size + i], self.nodes[i]
                    fits = f[0] >= g and f[1] >= c and f[2] >= m and n not in exclude
                    if fits and (best is None or (f[0], f[1], f[2]) > best[:3]):
                        best = (f[0], f[1], f[2], n)
                return None if best is None else best[3]
        return None


def _max3(a: _Free, b: _Free) -> _Free:
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))


class CapacityIndex:
    """Free capacity per alive node, for one admission pass; mutable, cheap to copy."""

    __slots__ = ("_free", "_labels", "_pools", "_reasons", "_util")

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self._free: dict[str, _Free] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        self._util: dict[str, float] = {}
        for node in nodes:
            if node.alive:
                self._add(node.id, node.available, node.labels, node.utilization)
        self._pools: dict[_SelectorKey, _Pool] = {(): _Pool(self._free, self._free)}
        self._reasons: dict[tuple[object, ...], str] = {}

    def _add(
        self, node: str, free: Resources, labels: Mapping[str, str], util: float | None
    ) -> None:
        g, c, m = _vector(free)
        self._free[node] = (max(g, 0.0), max(c, 0.0), max(m, 0))
        self._labels[node] = labels
        self._util[node] = util if util is not None and math.isfinite(util) else 0.0

    # -- reading -------------------------------------------------------------------------

    def free(self, node_id: str) -> Resources:
        """What the node can still give; nothing for a node that is not alive here."""
        v = self._free.get(node_id)
        return Resources() if v is None else _resources(v)

    def largest_free(self, selector: Mapping[str, str] | None = None) -> Resources:
        """Component-wise largest free capacity over the nodes that match ``selector``."""
        return _resources(self._pool(_selector_key(selector)).largest())

    def copy(self) -> CapacityIndex:
        other = CapacityIndex.__new__(CapacityIndex)
        other._free = dict(self._free)
        other._labels = self._labels  # never changed after construction
        other._util = self._util
        other._pools = {key: pool.copy() for key, pool in self._pools.items()}
        other._reasons = self._reasons  # keyed by everything a reason says
        return other

    def _pool(self, key: _SelectorKey) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            members = (
                n for n, labels in self._labels.items() if all(labels.get(k) == v for k, v in key)
            )
            pool = self._pools[key] = _Pool(self._free, members)
        return pool

    # -- placing -------------------------------------------------------------------------

    def place(
        self,
        per_worker: Resources,
        workers: int,
        policy: PlacementPolicy,
        selector: Mapping[str, str] | None = None,
    ) -> Placement | NoFit:
        """Nodes for all ``workers`` under ``policy``, or why they do not fit now."""
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
        if w[0] > _EPS:
            entries, unit, second = pool.by_gpu, w[0], w[1] - _EPS
        elif w[1] > _EPS:
            entries, unit, second = pool.by_cpu(), w[1], float(w[2])
        else:  # memory only (a worker that asks for nothing fits any node whole)
            entries, unit, second = pool.by_mem(), float(w[2]), -_EPS
        classes: dict[int, int] = {}  # workers a node holds -> how many nodes hold that many
        last_bound = -1
        for e, start, end in _groups_descending(entries, unit - _EPS, second):
            bound = math.floor((e[0] + _EPS) / unit)
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

    def take(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """Hold one worker on each listed node. Raises (changing nothing) on a node that
        is not alive here or lacks the room."""
        moves = self._moves(nodes, per_worker, -1)
        for node, new in moves:
            old = self._free[node]
            if new[0] < -1e-6 or new[1] < -1e-6 or new[2] < 0:
                raise ValueError(
                    f"node {node} has {_resources(old).describe()} free, less than the "
                    f"{nodes.count(node)} workers of {per_worker.describe()} taken there"
                )
        self._apply(moves)

    def give(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """Free one worker on each listed node; a node not alive here is skipped (what ran
        there is gone with it)."""
        self._apply(self._moves([n for n in nodes if n in self._free], per_worker, 1))

    def _moves(
        self, nodes: Sequence[str], per_worker: Resources, sign: int
    ) -> list[tuple[str, _Free]]:
        counts: dict[str, int] = {}
        free = self._free
        for node in nodes:
            if node not in free:
                raise KeyError(f"node {node} is not an alive node of this cluster snapshot")
            counts[node] = counts.get(node, 0) + 1
        wg, wc, wm = round(per_worker.gpus, 9), round(per_worker.cpus, 9), int(per_worker.memory)
        moves = []
        for node, k in counts.items():
            g, c, m = free[node]
            f = sign * k
            moves.append((node, (round(g + f * wg, 9), round(c + f * wc, 9), m + f * wm)))
        return moves

    def _apply(self, moves: list[tuple[str, _Free]]) -> None:
        for node, new in moves:
            new = (max(new[0], 0.0), max(new[1], 0.0), new[2])
            old = self._free[node]
            self._free[node] = new
            for pool in self._pools.values():
                if node in pool.members:
                    pool.move(node, old, new)


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
        if need > have + _EPS
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
