"""The state one admission pass changes as it walks the queue, shared by the walk
(``admission``), ``preemption`` and the ``timeline``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dcsched.core.activeset import ActiveSet, QueuedJob, Release
from dcsched.core.config import ClusterConfig, Queueing
from dcsched.core.placement import CapacityIndex, NoFit, Placement
from dcsched.core.quota import QuotaLedger
from dcsched.core.resources import Resources


@dataclass(slots=True)
class PassState:
    """What one pass changes as it walks the queue; the walk, ``preemption`` and
    ``timeline`` read and change it.

    ``index`` and ``ledger`` start as the active set's own and are copied the first time
    the pass changes them (``own_index``, ``own_ledger``); ``ledger_at_start`` is the
    set's, never changed. ``extra``: when what this pass admitted or held comes back.
    ``spread``: per (team, spread group), the nodes of its jobs admitted in this pass.
    ``claimed``: victims of this pass's ``Preempt``s; ``held_until``: when each of them
    counts as free again (when the job it made way for ends). ``holding``: per team, the
    first of its jobs that preempted in this pass. ``nofit``: why each shape does not fit
    ``index`` now."""

    active: ActiveSet
    config: ClusterConfig
    queueing: Queueing
    now: float
    index: CapacityIndex
    ledger: QuotaLedger
    ledger_at_start: QuotaLedger
    extra: list[Release] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    held_until: dict[str, float | None] = field(default_factory=dict)
    holding: dict[str, str] = field(default_factory=dict)
    nofit: dict[int, str] = field(default_factory=dict)
    spread: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    index_owned: bool = False
    ledger_owned: bool = False

    def admitted(self, item: QueuedJob, nodes: Sequence[str]) -> None:
        """Remember where a job of a spread group went in this pass."""
        if item.spread_group is not None:
            self.spread.setdefault((item.team, item.spread_group), set()).update(nodes)

    def own_index(self) -> CapacityIndex:
        if not self.index_owned:
            self.index = self.index.copy()
            self.index_owned = True
        return self.index

    def own_ledger(self) -> QuotaLedger:
        if not self.ledger_owned:
            self.ledger = self.ledger.copy()
            self.ledger_owned = True
        return self.ledger

    def release_later(self, at: float, nodes: Sequence[str], per_worker: Resources) -> None:
        self.extra.append(Release(at, len(self.extra), tuple(nodes), per_worker))

    def place(self, item: QueuedJob) -> Placement | NoFit:
        """Where the job fits now; "does not fit" answers are remembered per shape (free
        capacity only shrinks during the walk). A job of a spread group avoids the nodes
        its group's jobs hold (active, or admitted in this pass) when another node fits."""
        known = self.nofit.get(item.shape)
        if known is not None:
            return NoFit(known)
        avoid: set[str] = set()
        if item.spread_group is not None:
            key = (item.team, item.spread_group)
            avoid = self.active.group_nodes(*key) | self.spread.get(key, set())
        placed = self.index.place(
            item.per_worker, item.workers, item.policy, item.selector, avoid=avoid
        )
        if isinstance(placed, NoFit):
            self.nofit[item.shape] = placed.reason
        return placed
