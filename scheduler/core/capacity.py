"""The capacity index: free capacity per alive node, kept sorted for fast placement.

An admission pass builds one from the cluster snapshot (an ``activeset.ActiveSet`` keeps
one between passes), asks ``placement.CapacityIndex.place`` for each job in queue
order, and ``take``s what it admits; a what-if (would preempting these jobs make room?)
works on a ``copy`` and ``give``s their resources back.

How it is fast (a pass asks thousands of times against a thousand nodes): each
selector's nodes (a pool) are kept sorted by free (GPUs, CPUs, memory), then id, with
counts of each free CPU and memory amount, so the component-wise largest free is O(1)
(an O(1) "no"), and a best fit bisects into the few groups of equal free GPUs instead of
scanning every node. The lists sorted by CPUs or memory first, for gangs of CPU-only or
memory-only workers split over nodes, are built when asked for. Least-loaded searches a
max-tree over nodes in utilization order.

Invariants: never over-commit (``take`` raises, changing nothing, on a node without the
room); ``give`` skips nodes that are not alive; copies share nothing mutable.

Words:
- free: what a node can still give (``NodeState.available``).
- pool: the alive nodes that match one node selector.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Self

from dcsched.core.cluster import NodeState
from dcsched.core.resources import EPSILON, Resources

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


def _vector(r: Resources) -> _Free:
    return (round(r.gpus, 9), round(r.cpus, 9), int(r.memory))


def _holds(w: _Free, free: _Free) -> int:
    """Workers of size ``w`` that fit in ``free``."""
    count = _UNBOUNDED
    if w[0] > EPSILON:
        count = min(count, math.floor((free[0] + EPSILON) / w[0]))
    if w[1] > EPSILON:
        count = min(count, math.floor((free[1] + EPSILON) / w[1]))
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
        # The counts of each free CPU and memory amount, and their largest (``top``),
        # written out per component: this runs for every node of every take and give.
        top = self.top
        a, b = old[1], new[1]
        if a != b:
            counts = self.cpus
            left = counts[a] - 1
            if left:
                counts[a] = left
            else:
                del counts[a]
            counts[b] = counts.get(b, 0) + 1
            if b > top[0]:
                top[0] = b
            elif not left and a == top[0]:
                top[0] = max(counts)
        a, b = old[2], new[2]
        if a != b:
            counts = self.mems
            left = counts[a] - 1
            if left:
                counts[a] = left
            else:
                del counts[a]
            counts[b] = counts.get(b, 0) + 1
            if b > top[1]:
                top[1] = b
            elif not left and a == top[1]:
                top[1] = max(counts)
        if self._by_cpu is not None or self._by_mem is not None:
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
            and need[0] <= s[-1][0] + EPSILON
            and need[1] <= self.top[0] + EPSILON
            and need[2] <= self.top[1]
        )

    def tightest(self, need: _Free, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """The node holding ``need`` with the least free (GPUs, CPUs, memory, then id)."""
        s = self.by_gpu
        n = len(s)
        cpus = need[1] - EPSILON
        i = bisect_left(s, (need[0] - EPSILON, -_INF, -_INF, ""))
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
        lo = bisect_left(s, (need[0] - EPSILON, -_INF, -_INF, ""))
        hi = len(s)
        cpus = need[1] - EPSILON
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
        g, c, m = need[0] - EPSILON, need[1] - EPSILON, need[2]
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


class CapacityBase:
    """Free capacity per alive node, for one admission pass; mutable, cheap to copy.
    ``placement.CapacityIndex`` adds ``place``."""

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

    def copy(self) -> Self:
        other = type(self).__new__(type(self))
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

    def take(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """Hold one worker on each listed node. Raises (changing nothing) on a node that
        is not alive here or lacks the room."""
        moves = self._moves(nodes, per_worker, -1)
        for node, new in moves:
            old = self._free[node]
            if new[0] < -EPSILON or new[1] < -EPSILON or new[2] < 0:
                raise ValueError(
                    f"node {node} has {_resources(old).describe()} free, less than the "
                    f"{nodes.count(node)} workers of {per_worker.describe()} taken there"
                )
        self._apply(moves)

    def give(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """Free one worker on each listed node; a node not alive here is skipped (what ran
        there is gone with it)."""
        self._apply(self._moves([n for n in nodes if n in self._free], per_worker, 1))

    def take_back(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """Undo a ``give``: ``take`` on the listed nodes that are alive here."""
        self.take([n for n in nodes if n in self._free], per_worker)

    def whole(self, nodes: Iterable[str]) -> bool:
        """Whether the free capacity of each of ``nodes`` alive here is in whole numbers
        below 2**52 (so sums on them do not depend on their order)."""
        free = self._free
        for node in nodes:
            v = free.get(node)
            if v is not None:
                for x in v:
                    if not (float(x).is_integer() and abs(x) < 2.0**52):
                        return False
        return True

    def give_all(self, runs: Iterable[tuple[Sequence[str], Resources]]) -> None:
        """``give`` each (nodes, per-worker) in turn; the same result as one ``give`` per
        pair, with each changed node moved once in its pools (or the pool rebuilt when
        most of its nodes changed) instead of once per pair."""
        free = self._free
        before: dict[str, _Free] = {}
        for nodes, per_worker in runs:
            counts: dict[str, int] = {}
            for node in nodes:
                if node in free:
                    counts[node] = counts.get(node, 0) + 1
            wg, wc, wm = (
                round(per_worker.gpus, 9),
                round(per_worker.cpus, 9),
                int(per_worker.memory),
            )
            for node, k in counts.items():
                g, c, m = old = free[node]
                if node not in before:
                    before[node] = old
                free[node] = (
                    max(round(g + k * wg, 9), 0.0),
                    max(round(c + k * wc, 9), 0.0),
                    m + k * wm,
                )
        self._moved(before)

    def give_sums(self, sums: Mapping[str, Sequence[float]]) -> None:
        """Give each node the (GPUs, CPUs, memory) that ``sums`` lists for it, in one
        move. For whole amounts on whole free capacity (``whole``) this is what ``give``
        of each summed worker gives, in any order; a node not alive here is skipped."""
        free = self._free
        before: dict[str, _Free] = {}
        for node, (dg, dc, dm) in sums.items():
            old = free.get(node)
            if old is not None and (dg or dc or dm):
                before[node] = old
                free[node] = (old[0] + dg, old[1] + dc, old[2] + int(dm))
        self._moved(before)

    def _moved(self, before: Mapping[str, _Free]) -> None:
        """Move the nodes whose free was ``before`` to their free now in every pool (or
        rebuild a pool when most of its nodes changed)."""
        if not before:
            return
        free = self._free
        for key, pool in self._pools.items():
            members = pool.members
            changed = [n for n in before if n in members]
            if len(changed) * 4 > len(members):
                self._pools[key] = _Pool(free, members)
            else:
                for node in changed:
                    pool.move(node, before[node], free[node])

    def _moves(
        self, nodes: Sequence[str], per_worker: Resources, sign: int
    ) -> list[tuple[str, _Free]]:
        free = self._free
        count = len(nodes)
        if count and nodes.count(nodes[0]) == count:  # one node (most gangs)
            if nodes[0] not in free:
                raise KeyError(f"node {nodes[0]} is not an alive node of this cluster snapshot")
            counted: Iterable[tuple[str, int]] = ((nodes[0], count),)
        else:
            counts: dict[str, int] = {}
            for node in nodes:
                if node not in free:
                    raise KeyError(f"node {node} is not an alive node of this cluster snapshot")
                counts[node] = counts.get(node, 0) + 1
            counted = counts.items()
        wg, wc, wm = round(per_worker.gpus, 9), round(per_worker.cpus, 9), int(per_worker.memory)
        moves = []
        for node, k in counted:
            g, c, m = free[node]
            f = sign * k
            moves.append((node, (round(g + f * wg, 9), round(c + f * wc, 9), m + f * wm)))
        return moves

    def _apply(self, moves: list[tuple[str, _Free]]) -> None:
        free = self._free
        pools = self._pools.values()
        for node, (g, c, m) in moves:
            new = (g if g >= 0.0 else 0.0, c if c >= 0.0 else 0.0, m)  # max(x, 0.0)
            old = free[node]
            free[node] = new
            for pool in pools:
                if node in pool.members:
                    pool.move(node, old, new)
