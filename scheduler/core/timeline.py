"""The timeline of an admission pass: free capacity going forward in time as held
resources come back, for the backfill head's reservation and for estimated starts.

Held resources come back at each active job's expected end (``started_at``, else
``admitted_at``, + ``max_runtime``; a victim of this pass when the job it made way for
ends) and at the end of what this pass admitted or held; a job without ``max_runtime``
never gives anything back on the timeline.

- The head's reservation (backfill, EASY): the head's reserved start T and nodes R are
  the earliest time and place it fits on the timeline; a later job starts now only if
  it fits now and either ends by T (by its own ``max_runtime``) or uses no node of R
  (the "shadow": free capacity now with R taken whole). A job without ``max_runtime``
  is never backfilled; if T cannot be computed (some needed job has no
  ``max_runtime``) nothing is backfilled past the head.
- Estimated starts: the jobs that wait for capacity are replayed in queue order on the
  timeline, each held until it ends by its ``max_runtime``; a job gets the time it
  would start in strict order, or None once the timeline runs out of known ends.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence

from dcsched.core.activeset import QueuedJob, Release
from dcsched.core.passstate import PassState
from dcsched.core.placement import CapacityIndex, NoFit, Placement
from dcsched.core.resources import Resources
from dcsched.core.units import format_duration
from dcsched.core.waits import WaitKind, WaitReason


def releases(state: PassState) -> list[Release]:
    """When held resources come back: active jobs by their expected end (victims when
    the job that took their place ends), and what this pass admitted or held. A heap."""
    active = state.active
    if not state.claimed:
        found = active.releases[:]  # sorted, so already a heap
        for extra in state.extra:
            heapq.heappush(found, extra)
        return found
    found = list(state.extra)
    seq = len(found)
    for run in active.runs.values():
        end = run.end
        if run.job.id in state.claimed:
            end = state.held_until.get(run.job.id)
        if end is None:
            continue
        nodes = tuple(n for n in run.nodes if n in active.alive)
        if nodes:
            found.append(Release(end, seq, nodes, run.per_worker))
            seq += 1
    heapq.heapify(found)
    return found


class HeadReservation:
    """The backfill head's reserved start and nodes, and the shadow index that later
    jobs which would not end by then must fit in."""

    def __init__(self, state: PassState, head: QueuedJob, behind: str) -> None:
        self.state = state
        self.head = head
        self.behind = behind
        self.start: float | None = None
        self.reserved: frozenset[str] = frozenset()
        self.shadow: CapacityIndex | None = None
        self.nofit: dict[int, str] = {}
        self._delay: WaitReason | None = None
        found = timeline(state).earliest(head)
        if found is None:
            return
        self.start, placement = found
        self.reserved = frozenset(placement.nodes)
        shadow = state.index.copy()
        for node in sorted(self.reserved):
            free = shadow.free(node)
            if free.cpus > 0 or free.gpus > 0 or free.memory > 0:
                shadow.take([node], free)
        self.shadow = shadow

    def admitted(self, nodes: Sequence[str], per_worker: Resources) -> None:
        """A job was admitted now on ``nodes``: the shadow loses what it took outside R."""
        if self.shadow is not None:
            outside = [n for n in nodes if n not in self.reserved]
            if outside:
                self.shadow.take(outside, per_worker)

    def place(self, item: QueuedJob) -> Placement | NoFit:
        """Where a job that would not end by the reserved start fits without R."""
        assert self.shadow is not None
        known = self.nofit.get(item.shape)
        if known is not None:
            return NoFit(known)
        placed = self.shadow.place(item.per_worker, item.workers, item.policy, item.selector)
        if isinstance(placed, NoFit):
            self.nofit[item.shape] = placed.reason
        return placed

    def would_delay(self) -> WaitReason:
        """Why a job that cannot be backfilled past the head waits (``backfill-shadow``)."""
        assert self.start is not None
        if self._delay is None:  # the same for every job behind the head
            self._delay = self.state.active.wait_reason(
                WaitKind.BACKFILL_SHADOW,
                f"{self.behind}; backfilling it now would delay {self.head.job.id}'s "
                f"reserved start (in {format_duration(self.start - self.state.now)})",
            )
        return self._delay


def estimate_starts(state: PassState, waiting: Sequence[QueuedJob]) -> dict[str, float]:
    """Each waiting job's start in strict queue order on the timeline, while known."""
    ahead = timeline(state)
    starts: dict[str, float] = {}
    for item in waiting:
        found = ahead.earliest(item, hold=True)
        if found is None:
            break  # strict order: nothing after it has a known start either
        starts[item.job.id] = found[0]
    return starts


def timeline(state: PassState) -> Timeline:
    """The pass's timeline from now: its free capacity with what is due by now given
    back. The active set keeps what its due releases give back per node; when those and
    the free capacity they go to are whole (so the order of the sums does not matter)
    and nothing of this pass is due, they are given at once, node by node, instead of
    one release at a time (the same capacity, and the same releases left, popped in the
    same order: ties of (at, seq) between this pass's and the set's, whose order would
    depend on the heap's shape, take the general path)."""
    index = state.index.copy()
    active = state.active
    if not state.claimed and all(extra.at > state.now for extra in state.extra):
        due = active.due(state.now)
        if due is not None:
            k, sums = due
            left = active.releases[k:]  # sorted, so already a heap
            if index.whole(sums) and not any(_tied(left, extra) for extra in state.extra):
                index.give_sums(sums)
                for extra in state.extra:
                    heapq.heappush(left, extra)
                count = len(active.releases) + len(state.extra)  # as ``releases`` gives
                return Timeline(index, left, state.now, count)
    found = releases(state)
    return Timeline(index, found, state.now, len(found))


def _tied(ordered: list[Release], release: Release) -> bool:
    """Whether the sorted ``ordered`` holds another release of the same (at, seq)."""
    i = bisect_left(ordered, release)
    return i < len(ordered) and not release < ordered[i]


class Timeline:
    """Free capacity going forward in time as held resources come back. ``count``: how
    many releases the pass has in all (those already given back included); what the
    timeline holds gets the sequence numbers after ``count + 1_000_000``."""

    def __init__(
        self, index: CapacityIndex, releases: list[Release], now: float, count: int
    ) -> None:
        self.index = index
        self.releases = releases  # a heap
        self.now = now
        self.nofit: dict[int, str] = {}
        self.seq = count + 1_000_000
        self._advance_to(now)

    def _advance_to(self, at: float) -> None:
        heap = self.releases
        due: list[Release] = []
        while heap and heap[0].at <= at:
            due.append(heapq.heappop(heap))
        if len(due) == 1:
            self.index.give(due[0].nodes, due[0].per_worker)
        elif due:  # in the order popped: the same as one give each, each node moved once
            self.index.give_all((r.nodes, r.per_worker) for r in due)
        if due:
            self.nofit.clear()  # capacity grew: old answers no longer hold
        self.now = max(self.now, at)

    def earliest(self, item: QueuedJob, hold: bool = False) -> tuple[float, Placement] | None:
        """The earliest time (not before the timeline's present) and nodes where the job
        fits; with ``hold``, it is then placed there until it ends. None if it never
        fits by the known ends."""
        while True:
            if item.shape not in self.nofit:
                placed = self.index.place(item.per_worker, item.workers, item.policy, item.selector)
                if isinstance(placed, Placement):
                    if hold:
                        self.index.take(placed.nodes, item.per_worker)
                        if item.runtime is not None:
                            self.seq += 1
                            heapq.heappush(
                                self.releases,
                                Release(
                                    self.now + item.runtime, self.seq, placed.nodes, item.per_worker
                                ),
                            )
                    return self.now, placed
                self.nofit[item.shape] = placed.reason
            if not self.releases:
                return None
            self._advance_to(self.releases[0].at)
