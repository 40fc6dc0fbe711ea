"""One admission pass: which pending jobs start now, which jobs are preempted to make room,
and why every other job waits.

``plan(SchedulingInput)`` decides against a frozen view (pending jobs, the active jobs as
an ``activeset.ActiveSet`` with the cluster and configuration it was built on, ``now``)
and returns one decision per pending job, in queue order:

- ``Admit(job, nodes)``: start now on these nodes (one per worker).
- ``Preempt(job, victims, reason)``: evict these active jobs so that ``job`` fits; the
  job itself is admitted by a later pass once they are gone, and waits meanwhile
  (``Preempt.pending()``: a ``preemption-pending`` wait).
- ``Wait(job, position, why, estimated_start)``: not now; ``position`` is 1-based
  among the waiting jobs in queue order; ``why`` is a ``waits.WaitReason``: its kind
  (dependency, unknown-team, never-fits, quota, quota-held, capacity, behind-head,
  backfill-shadow) and its words for this job (``Wait.kind``, ``Wait.reason``).
- ``Cancel(job, reason)``: it can never start (a dependency failed or does not exist);
  the service ends it CANCELLED, the simulator reports it UNSCHEDULABLE (its word for a
  job that never started). There is no other refusal decision: a job that can never fit
  or whose team is refused is turned away at submission, or waits (``never-fits``,
  ``unknown-team``).

The pass, in order:
1. Dependencies: a job waits until every job in ``depends_on`` SUCCEEDED; a FAILED,
   CANCELLED or unknown dependency cancels it. A job that can never fit the cluster as it
   is now, or whose team is refused, waits too (``QueuedJob.blocked``). Such jobs block
   no one.
2. Queue order (``queueing.policy``): ``fifo``: submit time, then id. ``priority``:
   priority class value (higher first), then submit time, then id. ``fair``: weighted
   dominant-resource fairness with memory of the past (``fairshare.fair_order``). Jobs
   decided in step 1 take their place in the order without changing any share.
3. Walk the queue. Quota (``quota.QuotaLedger``) first: a job its team's quota blocks
   waits and blocks no other job. A job that would have to borrow is decided after all
   the others, in queue order, so nominal quota goes before borrowing (and a team that
   reclaimed its quota gets it before the borrower's requeued jobs). Then capacity
   (``placement.CapacityIndex``, policy ``spec.placement`` or ``config.placement``,
   ``spec.node_selector``; gangs are all or nothing and the index never over-commits).
   The first job that does not fit is the head: without backfill every later job waits
   behind it ("queued behind J"), so a big job is not starved by a stream of small ones.
   With ``backfill`` (EASY): a later job starts now only if it cannot delay the head's
   reserved start (``timeline.HeadReservation``).
4. Preemption (``queueing.preemption``), tried by a job that blocks on quota or
   capacity while no head blocks the queue: ``preemption``.
5. Estimated starts of the jobs that wait for capacity: ``timeline.estimate_starts``.
   Quota and dependency waits get None.

What the walk, preemption and the timeline share of one pass is a ``PassState``.

Invariants: one decision per pending job; deterministic (every tie breaks by id);
resources are never over-committed and gangs are whole; a team exceeds its nominal
quota only by borrowing within limits (see ``quota``); victims are active, preemptible
and claimed once. Speed: the active set's index and ledger are copied only when the pass
first changes them, "cannot fit" answers are cached per shape while capacity only
shrinks, quota answers are cached until the ledger changes.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from dcsched.core.activeset import ActiveSet, QueuedJob
from dcsched.core.activeset import is_preemptible as is_preemptible  # re-exported
from dcsched.core.fairshare import fair_order
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.passstate import PassState
from dcsched.core.placement import NoFit, Placement
from dcsched.core.preemption import Preemption
from dcsched.core.quota import QuotaFit, QuotaLedger
from dcsched.core.resources import EPSILON, Resources
from dcsched.core.timeline import HeadReservation, estimate_starts
from dcsched.core.waits import WaitKind, WaitReason


@dataclass(frozen=True)
class Admit:
    job_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """Not now. ``position``: 1-based among the waiting jobs in queue order (0: a job
    that preempted others, which starts before any of them); ``why``: the kind of wait
    and its words."""

    job_id: str
    position: int
    why: WaitReason
    estimated_start: float | None = None

    @property
    def kind(self) -> WaitKind:
        return self.why.kind

    @property
    def reason(self) -> str:
        return self.why.words


@dataclass(frozen=True)
class Preempt:
    """Evict ``victims`` so that ``job_id`` fits; ``reason`` goes into each victim's
    history."""

    job_id: str
    victims: tuple[str, ...]
    reason: str

    def pending(self) -> Wait:
        """How the job waits until its victims are gone (position 0: it starts before any
        waiting job)."""
        return Wait(
            self.job_id,
            0,
            WaitReason(
                WaitKind.PREEMPTION_PENDING,
                "starting once the jobs it preempted have released their resources: "
                + ", ".join(self.victims),
            ),
        )


@dataclass(frozen=True)
class Cancel:
    job_id: str
    reason: str


Decision = Admit | Wait | Preempt | Cancel


@dataclass(frozen=True)
class SchedulingInput:
    """Everything one pass decides against. ``active``: the ADMITTED and RUNNING jobs,
    which hold their resources on ``job.nodes``, with the cluster and configuration the
    set was built on; ``past_usage``: decayed resource-seconds per team
    (``fairshare.decayed_usage``), used by ``fair``; ``job_states``: the state of every
    job named in some ``depends_on`` (pending and active jobs are known anyway);
    ``estimate_starts``: whether to compute waiting jobs' estimated starts (step 5; a
    caller that never shows them, like the simulator, saves the work)."""

    pending: Sequence[Job]
    active: ActiveSet
    now: float
    past_usage: Mapping[str, Resources] = field(default_factory=dict)
    job_states: Mapping[str, JobState] = field(default_factory=dict)
    estimate_starts: bool = True
    preemptors: frozenset[str] = frozenset()
    """Pending jobs that preempted others in an earlier pass and have not started yet:
    the room their victims gave back is theirs, so they come first in the queue order
    (else a job queued before one of them could take that room, and the preemptor would
    preempt again)."""


_ORDER_WORDS = {
    "fifo": "submit time order",
    "priority": "priority, then submit time",
    "fair": "fair-share order",
}

Outcome = Decision | WaitReason
"""A job's outcome in the walk: a decision, or why it waits, to become a ``Wait`` once
positions and estimated starts are known."""


# -- public --------------------------------------------------------------------------------


def plan(inp: SchedulingInput) -> list[Decision]:
    """One decision per pending job, in queue order (see the module docstring)."""
    return _Walk(inp).run()


def preemptors_after(owed: AbstractSet[str], decisions: Iterable[Decision]) -> frozenset[str]:
    """``SchedulingInput.preemptors`` for the next pass, once ``decisions`` are applied: the
    jobs that preempted in this pass, and those owed their room before it that still wait.
    One that started, was cancelled or was not in the pass is owed nothing."""
    return frozenset(
        d.job_id
        for d in decisions
        if isinstance(d, Preempt) or (isinstance(d, Wait) and d.job_id in owed)
    )


# -- the walk ------------------------------------------------------------------------------


class _Walk:
    def __init__(self, inp: SchedulingInput) -> None:
        active = inp.active
        self.inp = inp
        self.state = PassState(
            active=active,
            config=active.config,
            queueing=active.config.queueing,
            now=inp.now,
            index=active.free_index,
            ledger=active.ledger,
            ledger_at_start=active.ledger,
        )
        self.items = active.queued_all(inp.pending)
        self.early: dict[str, Cancel | WaitReason] = {}
        self.head: QueuedJob | None = None
        self.behind = WaitReason(WaitKind.BEHIND_HEAD, "")
        self.reservation: HeadReservation | None = None
        self.preemption: Preemption | None = None

    # -- step 1 ----------------------------------------------------------------------------

    def _early(self) -> None:
        states: dict[str, JobState] = {}
        if any(map(_has_dependencies, self.items)):
            states.update(self.inp.job_states)
            for job in self.inp.active:
                states.setdefault(job.id, job.state)
            for job in self.inp.pending:
                states.setdefault(job.id, job.state)
        early = self.early
        for item in self.items:
            if item.has_dependencies:
                found = _dependencies(item, states)
                if found is not None:
                    early[item.job.id] = found
                    continue
            if item.blocked is not None:
                early[item.job.id] = item.blocked

    # -- step 2 ----------------------------------------------------------------------------

    def order(self) -> list[QueuedJob]:
        ordered = self._policy_order()
        owed = self.inp.preemptors
        if owed and any(item.job.id in owed for item in ordered):
            first = [item for item in ordered if item.job.id in owed]
            ordered = first + [item for item in ordered if item.job.id not in owed]
        return ordered

    def _policy_order(self) -> list[QueuedJob]:
        self._early()
        policy = self.state.queueing.policy
        if policy == "fifo":
            return sorted(self.items, key=_fifo_key)
        if policy == "priority":
            return sorted(self.items, key=_priority_key)
        active = self.inp.active
        queues: dict[str, list[QueuedJob]] = {}
        for item in sorted(self.items, key=_priority_key):
            queues.setdefault(item.team, []).append(item)
        if len(queues) == 1:  # one team: its own order (as fair_order gives it)
            (queue,) = queues.values()
            return queue
        weights = {}
        for team in queues:
            settings = self.state.config.team(team)
            weights[team] = settings.weight if settings is not None else 1.0
        early = self.early
        return fair_order(
            queues,
            active.alloc,
            active.capacity,
            weights,
            self.inp.past_usage,
            self.state.queueing.fair_share_half_life,
            (lambda item: None if item.job.id in early else item.total) if early else _total,
        )

    # -- step 3 and 4 ----------------------------------------------------------------------

    def run(self) -> list[Decision]:
        order = self.order()
        state = self.state
        results: list[Outcome] = []
        deferred: list[int] = []
        early = self.early
        strict = not state.queueing.backfill
        # A quota-blocked job's wait, per quota class (``QueuedJob.quota_class``), with
        # the ledger it was decided on: a later job of the class gets the same answer while
        # that ledger is unchanged, and its preemption try finds none either
        # (``Preemption`` remembers the failure for the pass; the head, once set, stays
        # set), so it waits for the same reason.
        quota_waits: dict[int, tuple[QuotaLedger, int, Outcome]] = {}
        for i, item in enumerate(order):
            found = early.get(item.job.id) if early else None
            if found is not None:
                results.append(found)
                continue
            if quota_waits:
                known = quota_waits.get(item.quota_class)
                ledger = state.ledger
                if known is not None and known[0] is ledger and known[1] == ledger.changes:
                    results.append(known[2])
                    continue
            ledger = state.ledger
            fit = ledger.check(item.team, item.total, item.gpu_type)
            kind = fit.kind
            if kind == "borrows":
                deferred.append(i)
                results.append(self.behind)  # decided below
            elif kind == "fits-nominal":
                if strict and self.head is not None:
                    results.append(self.behind)  # as _decide says, without the call
                else:
                    results.append(self._decide(item, fit))
            else:
                changes = ledger.changes
                outcome = self._decide(item, fit)
                unchanged = state.ledger is ledger and ledger.changes == changes
                if unchanged and type(outcome) is WaitReason:
                    quota_waits[item.quota_class] = (ledger, changes, outcome)
                results.append(outcome)
        for i in deferred:
            item = order[i]
            results[i] = self._decide(
                item, state.ledger.check(item.team, item.total, item.gpu_type)
            )

        starts: dict[str, float] = {}
        if self.inp.estimate_starts:
            waiting = [
                item
                for item, result in zip(order, results, strict=True)
                if isinstance(result, WaitReason) and result.kind.for_capacity
            ]
            if waiting:
                starts = estimate_starts(state, waiting)
        decisions: list[Decision] = []
        position = 0
        for item, result in zip(order, results, strict=True):
            if isinstance(result, WaitReason):
                position += 1
                start = starts.get(item.job.id) if starts else None
                last = item.decided  # the same wait as in the last pass: reuse it
                if (
                    isinstance(last, Wait)
                    and last.position == position
                    and last.why is result
                    and last.estimated_start == start
                ):
                    decisions.append(last)
                else:
                    wait = item.decided = Wait(item.job.id, position, result, start)
                    decisions.append(wait)
            else:
                decisions.append(result)
        return decisions

    def _decide(self, item: QueuedJob, fit: QuotaFit) -> Outcome:
        """Quota, then capacity (head of line, backfill), then preemption, for one job."""
        state = self.state
        if fit.kind == "borrows" and item.team in state.holding:
            # Borrowing now would count before the beneficiary in the next pass (it is
            # not running yet) and push it over its nominal quota: it could not start.
            holder = state.holding[item.team]
            return WaitReason(
                WaitKind.QUOTA_HELD,
                f"team {item.team} holds quota for {holder}, which preempted jobs to start; "
                f"its jobs do not borrow until {holder} has started",
            )
        if fit.kind == "blocked":
            preempt = None if self.head is not None else self._preempt(item, fit, None)
            if preempt is not None:
                return preempt
            return state.active.wait_reason(WaitKind.QUOTA, fit.reason)
        if self.head is not None:
            if not state.queueing.backfill:
                return self.behind
            return self._backfill(item)
        placed = state.place(item)
        if isinstance(placed, Placement):
            return self._admit(item, placed)
        preempt = self._preempt(item, fit, placed)
        if preempt is not None:
            return preempt
        self.head = item
        if item.behind is None:
            item.behind = WaitReason(
                WaitKind.BEHIND_HEAD,
                f"queued behind {item.job.id} ({_ORDER_WORDS[state.queueing.policy]})",
            )
        self.behind = item.behind
        if state.queueing.backfill:
            self.reservation = HeadReservation(state, item, self.behind.words)
        return state.active.wait_reason(WaitKind.CAPACITY, placed.reason)

    def _admit(self, item: QueuedJob, placed: Placement) -> Admit:
        state = self.state
        state.own_index().take(placed.nodes, item.per_worker)
        state.admitted(item, placed.nodes)
        if self.reservation is not None:
            self.reservation.admitted(placed.nodes, item.per_worker)
        state.own_ledger().take(item.team, item.total, item.gpu_type)
        if item.runtime is not None:
            state.release_later(state.now + item.runtime, placed.nodes, item.per_worker)
        return Admit(item.job.id, placed.nodes)

    def _backfill(self, item: QueuedJob) -> Outcome:
        head = self.head
        assert head is not None
        behind = self.behind.words
        if item.runtime is None:
            return WaitReason(
                WaitKind.BEHIND_HEAD, f"{behind}; it has no max_runtime, so it is not backfilled"
            )
        reservation = self.reservation
        if reservation is None or reservation.start is None:
            return WaitReason(
                WaitKind.BEHIND_HEAD,
                f"{behind}; {head.job.id}'s start cannot be estimated (jobs without "
                "max_runtime hold what it needs), so nothing is backfilled past it",
            )
        if self.state.now + item.runtime <= reservation.start + EPSILON:
            placed = self.state.place(item)
        else:
            placed = reservation.place(item)
        if isinstance(placed, Placement):
            return self._admit(item, placed)
        return reservation.would_delay()

    def _preempt(self, item: QueuedJob, fit: QuotaFit, placed: NoFit | None) -> Preempt | None:
        if not self.state.queueing.preemption:
            return None
        if self.preemption is None:
            self.preemption = Preemption(self.state)
        found = self.preemption.try_for(item, fit, placed)
        return None if found is None else Preempt(item.job.id, *found)


_fifo_key = operator.attrgetter("fifo_key")
_priority_key = operator.attrgetter("priority_key")
_total = operator.attrgetter("total")
_has_dependencies = operator.attrgetter("has_dependencies")


def _dependencies(item: QueuedJob, states: Mapping[str, JobState]) -> Cancel | WaitReason | None:
    job_id = item.job.id
    waiting_for = []
    for dependency in item.job.request.depends_on:
        state = states.get(dependency)
        if state is None:
            return Cancel(job_id, f"dependency {dependency} does not exist")
        if state == JobState.FAILED:
            return Cancel(job_id, f"dependency {dependency} failed")
        if state == JobState.CANCELLED:
            return Cancel(job_id, f"dependency {dependency} was cancelled")
        if state != JobState.SUCCEEDED:
            waiting_for.append(dependency)
    if waiting_for:
        return WaitReason(WaitKind.DEPENDENCY, f"waiting for {', '.join(waiting_for)} to succeed")
    return None
