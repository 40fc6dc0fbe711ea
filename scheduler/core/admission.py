"""One admission pass: which pending jobs start now, which jobs are preempted to make room,
and why every other job waits.

``plan(SchedulingInput)`` decides against a frozen snapshot (pending jobs, the active
jobs that hold resources, the cluster's free capacity, the configuration, ``now``) and
returns one decision per pending job, in queue order:

- ``Admit(job, nodes)``: start now on these nodes (one per worker); ``borrowed`` when the
  team goes beyond its nominal quota by borrowing from its cohort.
- ``Preempt(job, victims, reason)``: evict these active jobs so that ``job`` fits; the
  job itself is admitted by a later pass once they are gone.
- ``Wait(job, position, reason, estimated_start)``: not now; ``position`` is 1-based
  among the waiting jobs in queue order.
- ``Cancel(job, reason)``: it can never start (a dependency failed or does not exist).

The pass, in order:
1. Dependencies: a job waits until every job in ``depends_on`` SUCCEEDED; a FAILED,
   CANCELLED or unknown dependency cancels it. A job that can never fit the cluster as it
   is now, or whose team is refused, waits too. Such jobs block no one.
2. Queue order (``queueing.policy``): ``fifo``: submit time, then id. ``priority``:
   priority class value (higher first), then submit time, then id. ``fair``: weighted
   dominant-resource fairness with memory of the past. A team's share is

       share(t) = max over r in {CPUs, GPUs, memory} with C_r > 0 of
                  (A_t,r + U_t,r * ln 2 / H) / C_r,   divided by weight(t)

   where C is the alive cluster's total, A the team's current allocation (its active
   jobs, plus the jobs ordered before in this pass), U its decayed past usage in
   resource-seconds (``fairshare.decayed_usage``) and H ``fair_share_half_life``;
   ``U * ln 2 / H`` is the team's exponentially weighted average allocation, so a team
   that held half the GPUs for the last few half-lives counts as holding half now.
   The order repeatedly takes the team with the lowest share (ties by name), appends its
   next job (priority class, then submit time, then id) and adds that job's resources
   to A. Jobs decided in step 1 are appended without changing the share.
3. Walk the queue. Quota (``quota.QuotaLedger``) first: a job its team's quota blocks
   waits and blocks no other job. A job that would have to borrow is decided after all
   the others, in queue order, so nominal quota goes before borrowing (and a team that
   reclaimed its quota gets it before the borrower's requeued jobs). Then capacity
   (``placement.CapacityIndex``, policy ``spec.placement`` or ``config.placement``,
   ``spec.node_selector``; gangs are all or nothing and the index never over-commits).
   The first job that does not fit is the
   head: without backfill every later job waits behind it ("queued behind J"), so a big
   job is not starved by a stream of small ones. With ``backfill`` (EASY): the head's
   reserved start T and nodes R are the earliest time and place it fits, as the active
   jobs (and those admitted in this pass) end at ``started_at`` (or ``admitted_at``) +
   ``max_runtime``; a later job starts now only if it fits now and either ends by T (by
   its own ``max_runtime``) or uses no node of R. A job without ``max_runtime`` is never
   backfilled; if T cannot be computed (some needed job has no ``max_runtime``) nothing
   is backfilled past the head.
4. Preemption (``queueing.preemption``), tried by a job that blocks on quota or
   capacity while no head blocks the queue. Candidates: (a) lower-priority jobs of its
   own team; (b) jobs of other teams of its cohort that give back what they borrowed of
   a contested resource (reclaim, any priority). Contested: the quota dimensions in
   which its cohort's pool is short of the job even with its team at most at its
   nominal quota (``QuotaLedger.reclaim_dims``; a GPU type counts as its own
   dimension), and, when it does not fit the nodes now, the resources it is short of
   there (GPUs also as its pinned type). A team is reclaimed from only if it borrowed
   a contested dimension before this pass and still does, and only its jobs charged in
   that dimension. A victim set may mix (a) and (b). Never a job whose class is not
   preemptible or whose spec says ``preemptible: false``; never a job another
   ``Preempt`` of this pass claimed; never a same-team job that, requeued, would queue
   ahead of the job it makes way for (under ``fifo``: one submitted earlier).
   The rule against livelock (Kueue's): a job may preempt only if, with its victims
   gone, it fits the nodes *and stays within its team's nominal quota* in every
   dimension. A job that would still have to borrow waits instead. So in the next
   pass the beneficiary is not deferred with the borrowers (step 3): it is decided in
   queue order ahead of its same-team victims, while a reclaimed victim, requeued, would
   borrow again and is decided after it (a victim set in which a team's victims could
   come back within its nominal quota is refused); the room freed for it is not taken
   back, and no job is preempted twice by the same job for the same room.
   Victim order: lowest priority first, then the least work lost (the most recently
   started), then jobs of teams that borrow before jobs of teams within their quota,
   then id. Victims are added in that order until the job fits; then any not needed
   are dropped, the last added first. The room the job will use is then held for it in
   this pass (quota and capacity), so no later job takes it; and no later job of its
   team borrows in this pass (in the next one that job, running, would count first and
   leave the beneficiary borrowing, unable to start).
5. Estimated starts: the waiting jobs that wait for capacity are replayed in queue order
   on a timeline where active and just-admitted jobs end by their ``max_runtime``; a job
   gets the time it would start in strict order, or None once the timeline runs out of
   known ends. Quota and dependency waits get None.

Invariants: one decision per pending job; deterministic (every tie breaks by id);
resources are never over-committed and gangs are whole; a team exceeds its nominal
quota only by borrowing within limits (see ``quota``); victims are active, preemptible
and claimed once. Speed: one ``CapacityIndex`` per pass, "cannot fit" answers cached
per (shape, selector, policy) while capacity only shrinks, quota checks O(1) per job.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dcsched.core.activeset import ActiveSet, Release, RunningJob, running_job
from dcsched.core.activeset import is_preemptible as is_preemptible  # re-exported
from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.config import ClusterConfig, PlacementPolicy
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.placement import CapacityIndex, NoFit, Placement, fits_cluster_at_all
from dcsched.core.quota import QuotaFit, QuotaLedger, job_gpu_type
from dcsched.core.resources import Resources
from dcsched.core.units import format_duration

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class Admit:
    job_id: str
    nodes: tuple[str, ...]
    borrowed: bool = False


@dataclass(frozen=True)
class Wait:
    job_id: str
    position: int
    reason: str
    estimated_start: float | None = None


@dataclass(frozen=True)
class Preempt:
    """Evict ``victims`` so that ``job_id`` fits; ``reason`` goes into each victim's
    history."""

    job_id: str
    victims: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Cancel:
    job_id: str
    reason: str


Decision = Admit | Wait | Preempt | Cancel


@dataclass(frozen=True)
class SchedulingInput:
    """Everything one pass decides against. ``active``: ADMITTED and RUNNING jobs, which
    hold their resources on ``job.nodes`` (a list, or an ``activeset.ActiveSet`` kept
    between passes: faster, same decisions); ``past_usage``: decayed resource-seconds per
    team (``fairshare.decayed_usage``), used by ``fair``; ``job_states``: the state of
    every job named in some ``depends_on`` (pending and active jobs are known anyway);
    ``estimate_starts``: whether to compute waiting jobs' estimated starts (step 5; a
    caller that never shows them, like the simulator, saves the work)."""

    pending: Sequence[Job]
    active: Sequence[Job]
    cluster: ClusterSnapshot
    config: ClusterConfig
    now: float
    past_usage: Mapping[str, Resources] = field(default_factory=dict)
    job_states: Mapping[str, JobState] = field(default_factory=dict)
    estimate_starts: bool = True


_SelectorKey = tuple[tuple[str, str], ...]
_Shape = tuple[Resources, int, str, _SelectorKey]
_ORDER_WORDS = {
    "fifo": "submit time order",
    "priority": "priority, then submit time",
    "fair": "fair-share order",
}


@dataclass(slots=True)
class _Item:
    """A pending job with what the pass needs of it, computed once."""

    job: Job
    team: str
    per_worker: Resources
    workers: int
    total: Resources
    gpu_type: str | None
    selector: Mapping[str, str] | None
    policy: PlacementPolicy
    prio: int
    runtime: float | None
    shape: _Shape
    early: Cancel | str | None = None  # decided in step 1: a Cancel, or a wait reason


# -- public --------------------------------------------------------------------------------


def plan(inp: SchedulingInput) -> list[Decision]:
    """One decision per pending job, in queue order (see the module docstring)."""
    return _Pass(inp).run()


def queue_order(inp: SchedulingInput) -> list[Job]:
    """The pending jobs in the order the pass considers them (for display)."""
    p = _Pass(inp)
    return [item.job for item in p.order()]


# -- the pass ------------------------------------------------------------------------------


class _Pass:
    def __init__(self, inp: SchedulingInput) -> None:
        self.inp = inp
        self.config = inp.config
        self.now = inp.now
        self.classes = {c.name: c for c in inp.config.priority_classes}
        self.queueing = inp.config.queueing
        self._sizes: dict[tuple[float, float, int, int], tuple[Resources, Resources]] = {}
        self.running: Collection[RunningJob]
        self.running_by_team: Mapping[str, Collection[RunningJob]]
        self.prepared = inp.active if isinstance(inp.active, ActiveSet) else None
        if self.prepared is not None:
            prepared = self.prepared
            prepared.check_input(inp.cluster, inp.config)
            self.items = [self._prepared_item(prepared, job) for job in inp.pending]
            self.running = prepared.runs.values()
            self.running_by_team = {t: runs.values() for t, runs in prepared.by_team.items()}
            self.ledger = prepared.ledger.copy()
            self.ledger_at_start = prepared.ledger  # only read
            self._never = prepared.never
        else:
            self.items = [self._item(job) for job in inp.pending]
            self.running = [self._running(job) for job in inp.active]
            by_team: dict[str, list[RunningJob]] = {}
            for run in self.running:
                by_team.setdefault(run.team, []).append(run)
            self.running_by_team = by_team
            self.ledger = QuotaLedger(inp.config, inp.active)
            self.ledger_at_start = self.ledger.copy()
            self._never = {}
        self._matching: dict[_SelectorKey, set[str]] = {}
        self._lowest: dict[str, int | None] = {}
        self._borrows: dict[str, bool] = {}

    def _prio(self, job: Job) -> int:
        cls = self.classes.get(job.priority)
        return cls.value if cls is not None else 0

    def _item(self, job: Job) -> _Item:
        spec = job.request
        request = spec.resources
        workers = request.workers
        size = (request.cpus, request.gpus, request.memory, workers)
        sizes = self._sizes.get(size)
        if sizes is None:  # one Resources per distinct request in a pass
            per_worker = request.per_worker()
            sizes = self._sizes[size] = (per_worker, per_worker.scaled(workers))
        per_worker, total = sizes
        selector = spec.node_selector or None
        policy = spec.placement or self.config.placement
        key = tuple(sorted(selector.items())) if selector else ()
        return _Item(
            job=job,
            team=spec.team,
            per_worker=per_worker,
            workers=workers,
            total=total,
            gpu_type=job_gpu_type(job),
            selector=selector,
            policy=policy,
            prio=self._prio(job),
            runtime=spec.max_runtime,
            shape=(per_worker, workers, policy, key),
        )

    def _prepared_item(self, prepared: ActiveSet, job: Job) -> _Item:
        """The job's record from an earlier pass, if the job is still the same value."""
        found = prepared.prepared.get(job.id)
        if found is not None and found[0] is job and isinstance(found[1], _Item):
            item = found[1]
            item.early = None
            return item
        item = self._item(job)
        prepared.prepared[job.id] = (job, item)
        return item

    def _running(self, job: Job) -> RunningJob:
        start = job.started_at if job.started_at is not None else job.admitted_at
        run = running_job(job, self.classes, self.now if start is None else start)
        if run.end is not None:
            run.end = max(self.now, run.end)
        return run

    # -- step 1 ----------------------------------------------------------------------------

    def _early(self) -> None:
        states: dict[str, JobState] = {}
        if any(item.job.request.depends_on for item in self.items):
            states.update(self.inp.job_states)
            for job in self.inp.active:
                states.setdefault(job.id, job.state)
            for job in self.inp.pending:
                states.setdefault(job.id, job.state)
        for item in self.items:
            item.early = self._early_one(item, states)

    def _early_one(self, item: _Item, states: Mapping[str, JobState]) -> Cancel | str | None:
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
            return f"waiting for {', '.join(waiting_for)} to succeed"
        if not self.ledger.known(item.team):
            return f"team {item.team} is not a team of this cluster (unlisted teams are refused)"
        if item.shape not in self._never:
            self._never[item.shape] = fits_cluster_at_all(
                item.per_worker, item.workers, self.inp.cluster, item.selector
            )
        never = self._never[item.shape]
        if never is not None:
            return f"cannot fit the cluster as it is now: {never}"
        return None

    # -- step 2 ----------------------------------------------------------------------------

    def order(self) -> list[_Item]:
        self._early()
        policy = self.queueing.policy
        if policy == "fifo":
            return sorted(self.items, key=lambda i: (i.job.submitted_at, i.job.id))
        if policy == "priority":
            return sorted(self.items, key=lambda i: (-i.prio, i.job.submitted_at, i.job.id))
        return self._fair_order()

    def _fair_order(self) -> list[_Item]:
        prepared = self.prepared
        capacity = prepared.capacity if prepared is not None else self.inp.cluster.total()
        caps = [
            (i, float(c)) for i, c in enumerate((capacity.cpus, capacity.gpus, capacity.memory))
        ]
        caps = [(i, c) for i, c in caps if c > 0]
        scale = _LN2 / self.queueing.fair_share_half_life
        alloc: dict[str, list[float]] = {}
        if prepared is not None:
            alloc = {team: list(a) for team, a in prepared.alloc.items()}
        else:
            for run in self.running:
                a = alloc.setdefault(run.team, [0.0, 0.0, 0.0])
                a[0] += run.total.cpus
                a[1] += run.total.gpus
                a[2] += run.total.memory
        queues: dict[str, list[_Item]] = {}
        for item in sorted(self.items, key=lambda i: (-i.prio, i.job.submitted_at, i.job.id)):
            queues.setdefault(item.team, []).append(item)
        weights: dict[str, float] = {}
        for team in queues:
            settings = self.config.team(team)
            weights[team] = settings.weight if settings is not None else 1.0
            past = self.inp.past_usage.get(team, Resources())
            a = alloc.setdefault(team, [0.0, 0.0, 0.0])
            a[0] += past.cpus * scale
            a[1] += past.gpus * scale
            a[2] += past.memory * scale

        def share(team: str) -> float:
            a = alloc[team]
            dominant = max((a[i] / c for i, c in caps), default=0.0)
            return dominant / weights[team]

        heap = [(share(team), team) for team in queues]
        heapq.heapify(heap)
        cursor = dict.fromkeys(queues, 0)
        order: list[_Item] = []
        while heap:
            _, team = heapq.heappop(heap)
            queue = queues[team]
            i = cursor[team]
            item = queue[i]
            cursor[team] = i + 1
            order.append(item)
            if item.early is None:
                a = alloc[team]
                a[0] += item.total.cpus
                a[1] += item.total.gpus
                a[2] += item.total.memory
            if i + 1 < len(queue):
                heapq.heappush(heap, (share(team), team))
        return order

    # -- step 3 and 4 ----------------------------------------------------------------------

    def run(self) -> list[Decision]:
        order = self.order()
        if self.prepared is not None:
            self.index = self.prepared.free_index.copy()
            self.alive: Collection[str] = self.prepared.alive
        else:
            self.index = CapacityIndex(self.inp.cluster.nodes)
            self.alive = {n.id for n in self.inp.cluster.alive_nodes()}
        self.nofit: dict[_Shape, str] = {}
        self.claimed: set[str] = set()
        self.extra: list[Release] = []  # this pass's admissions and reservations
        self.held_until: dict[str, float | None] = {}  # victims: freed when their taker ends
        self.head: _Item | None = None
        self.head_start: float | None = None
        self.reserved: frozenset[str] = frozenset()
        self.shadow: CapacityIndex | None = None
        self.shadow_nofit: dict[_Shape, str] = {}
        self.holding: dict[str, str] = {}  # team -> the first of its jobs that preempted
        self.preempt_failed: dict[tuple[str, _SelectorKey], list[tuple[int, Resources]]] = {}
        # Per job: a Decision, or (reason, waits for capacity) to become a Wait. Jobs
        # that would borrow are decided after all others (nominal quota goes first).
        results: list[Decision | tuple[str, bool]] = []
        deferred: list[int] = []
        for i, item in enumerate(order):
            early = item.early
            if isinstance(early, Cancel):
                results.append(early)
            elif early is not None:
                results.append((early, False))
            else:
                fit = self.ledger.check(item.team, item.total, item.gpu_type)
                if fit.kind == "borrows":
                    deferred.append(i)
                    results.append(("", False))  # decided below
                else:
                    results.append(self._decide(item, fit))
        for i in deferred:
            item = order[i]
            results[i] = self._decide(item, self.ledger.check(item.team, item.total, item.gpu_type))

        starts = self._estimates(order, results) if self.inp.estimate_starts else {}
        decisions: list[Decision] = []
        position = 0
        for item, result in zip(order, results, strict=True):
            if isinstance(result, tuple):
                position += 1
                reason, _ = result
                decisions.append(Wait(item.job.id, position, reason, starts.get(item.job.id)))
            else:
                decisions.append(result)
        return decisions

    def _decide(self, item: _Item, fit: QuotaFit) -> Decision | tuple[str, bool]:
        """Quota, then capacity (head of line, backfill), then preemption, for one job."""
        if fit.kind == "borrows" and item.team in self.holding:
            # Borrowing now would count before the beneficiary in the next pass (it is
            # not running yet) and push it over its nominal quota: it could not start.
            holder = self.holding[item.team]
            return (
                f"team {item.team} holds quota for {holder}, which preempted jobs to start; "
                f"its jobs do not borrow until {holder} has started",
                False,
            )
        if not fit.ok:
            preempt = None if self.head is not None else self._preempt(item, fit, None)
            return preempt if preempt is not None else (fit.reason, False)
        if self.head is not None:
            behind = f"queued behind {self.head.job.id} ({_ORDER_WORDS[self.queueing.policy]})"
            if not self.queueing.backfill:
                return (behind, True)
            return self._backfill(item, fit, behind)
        placed = self._place(self.index, self.nofit, item)
        if isinstance(placed, Placement):
            return self._admit(item, fit, placed)
        preempt = self._preempt(item, fit, placed)
        if preempt is not None:
            return preempt
        self.head = item
        if self.queueing.backfill:
            self._reserve_head(item)
        return (placed.reason, True)

    def _place(
        self, index: CapacityIndex, nofit: dict[_Shape, str], item: _Item
    ) -> Placement | NoFit:
        known = nofit.get(item.shape)
        if known is not None:
            return NoFit(known)
        placed = index.place(item.per_worker, item.workers, item.policy, item.selector)
        if isinstance(placed, NoFit):
            nofit[item.shape] = placed.reason
        return placed

    def _admit(self, item: _Item, fit: QuotaFit, placed: Placement) -> Admit:
        self.index.take(placed.nodes, item.per_worker)
        if self.shadow is not None:
            outside = [n for n in placed.nodes if n not in self.reserved]
            if outside:
                self.shadow.take(outside, item.per_worker)
        self.ledger.take(item.team, item.total, item.gpu_type)
        if item.runtime is not None:
            self._release_later(self.now + item.runtime, placed.nodes, item.per_worker)
        return Admit(item.job.id, placed.nodes, borrowed=fit.kind == "borrows")

    def _release_later(self, at: float, nodes: Sequence[str], per_worker: Resources) -> None:
        self.extra.append(Release(at, len(self.extra), tuple(nodes), per_worker))

    def _backfill(self, item: _Item, fit: QuotaFit, behind: str) -> Decision | tuple[str, bool]:
        head = self.head
        assert head is not None
        if item.runtime is None:
            return (f"{behind}; it has no max_runtime, so it is not backfilled", True)
        if self.head_start is None or self.shadow is None:
            return (
                f"{behind}; {head.job.id}'s start cannot be estimated (jobs without "
                "max_runtime hold what it needs), so nothing is backfilled past it",
                True,
            )
        if self.now + item.runtime <= self.head_start + 1e-9:
            placed = self._place(self.index, self.nofit, item)
        else:
            placed = self._place(self.shadow, self.shadow_nofit, item)
        if isinstance(placed, Placement):
            return self._admit(item, fit, placed)
        return (
            f"{behind}; backfilling it now would delay {head.job.id}'s reserved start "
            f"(in {format_duration(self.head_start - self.now)})",
            True,
        )

    # -- the timeline (head reservation and estimates) -----------------------------------

    def _releases(self) -> list[Release]:
        """When held resources come back: active jobs by their expected end (victims when
        the job that took their place ends), and what this pass admitted or held. A heap."""
        if self.prepared is not None and not self.claimed:
            releases = self.prepared.releases[:]  # sorted, so already a heap
            for extra in self.extra:
                heapq.heappush(releases, extra)
            return releases
        releases = list(self.extra)
        seq = len(releases)
        for run in self.running:
            end = run.end
            if run.job.id in self.claimed:
                end = self.held_until.get(run.job.id)
            if end is None:
                continue
            nodes = tuple(n for n in run.nodes if n in self.alive)
            if nodes:
                releases.append(Release(end, seq, nodes, run.per_worker))
                seq += 1
        heapq.heapify(releases)
        return releases

    def _reserve_head(self, item: _Item) -> None:
        timeline = _Timeline(self.index.copy(), self._releases(), self.now)
        found = timeline.earliest(item)
        if found is None:
            return
        self.head_start, placement = found
        self.reserved = frozenset(placement.nodes)
        shadow = self.index.copy()
        for node in sorted(self.reserved):
            free = shadow.free(node)
            if free.cpus > 0 or free.gpus > 0 or free.memory > 0:
                shadow.take([node], free)
        self.shadow = shadow

    def _estimates(
        self, order: Sequence[_Item], results: Sequence[Decision | tuple[str, bool]]
    ) -> dict[str, float]:
        waiting = [
            item
            for item, result in zip(order, results, strict=True)
            if isinstance(result, tuple) and result[1]
        ]
        if not waiting:
            return {}
        timeline = _Timeline(self.index.copy(), self._releases(), self.now)
        starts: dict[str, float] = {}
        for item in waiting:
            found = timeline.earliest(item, hold=True)
            if found is None:
                break  # strict order: nothing after it has a known start either
            starts[item.job.id] = found[0]
        return starts

    # -- preemption ------------------------------------------------------------------------

    def _preempt(self, item: _Item, fit: QuotaFit, placed: NoFit | None) -> Preempt | None:
        """Try to make room for ``item`` by preemption; ``placed`` is None when only quota
        blocks it (it fits capacity now), else why it does not fit now."""
        if not self.queueing.preemption:
            return None
        failed = self.preempt_failed.setdefault((item.team, item.shape[3]), [])
        for prio, total in failed:
            if item.prio <= prio and total.fits_in(item.total):
                return None  # a no-larger job of this team found no victims this pass
        now_fits: Placement | None = None
        if placed is None:
            found = self._place(self.index, self.nofit, item)
            if isinstance(found, NoFit):
                placed = found
            else:
                now_fits = found
        candidates = self._candidates(item, fit, placed)
        chosen = self._choose_victims(item, candidates, now_fits) if candidates else None
        if chosen is None:
            failed.append((item.prio, item.total))
            return None
        victims, placement = chosen
        return self._claim(item, victims, placement, now_fits)

    def _candidates(self, item: _Item, fit: QuotaFit, placed: NoFit | None) -> list[RunningJob]:
        """Every run that may be a victim for ``item``, in victim order."""
        contested = self._contested(item, placed)
        # Teams that borrow a contested dimension, before this pass and still (not ones
        # that borrow only by this pass's admissions: those jobs are not running yet).
        lenders: dict[str, frozenset[str]] = {}
        if contested:
            for team in self.ledger.cohort_members(item.team):
                if team == item.team:
                    continue
                now = self.ledger.borrowing(team).keys() & contested
                borrowed = frozenset(now & self.ledger_at_start.borrowing(team).keys())
                if borrowed:
                    lenders[team] = borrowed
        matching: set[str] | None = None
        if item.selector:
            key = item.shape[3]
            matching = self._matching.get(key)
            if matching is None:
                matching = self._matching[key] = {
                    n.id
                    for n in self.inp.cluster.alive_nodes()
                    if all(n.labels.get(k) == v for k, v in key)
                }
        out: list[RunningJob] = list(self._own_candidates(item, fit, matching))
        for team in sorted(lenders):
            out.extend(self._reclaim_candidates(item, fit, team, lenders[team], matching))
        out.sort(key=self._victim_rank)
        return out

    def _contested(self, item: _Item, placed: NoFit | None) -> frozenset[str]:
        """The quota dimensions the job is short of that others' borrowing can explain:
        where its cohort's pool is short even with its team within nominal quota, and
        (when it does not fit the nodes now) the resources it does not fit by."""
        dims = set(self.ledger.reclaim_dims(item.team, item.total, item.gpu_type))
        if placed is not None and self.ledger.cohort_of(item.team) is not None:
            short = []
            for kind, probe in (
                ("gpus", Resources(gpus=item.per_worker.gpus)),
                ("cpus", Resources(cpus=item.per_worker.cpus)),
                ("memory", Resources(memory=item.per_worker.memory)),
            ):
                if probe.cpus > 0 or probe.gpus > 0 or probe.memory > 0:
                    found = self.index.place(probe, item.workers, "binpack", item.selector)
                    short.append((kind, isinstance(found, NoFit)))
            kinds = [k for k, no in short if no] or [k for k, _ in short]  # else: together
            for kind in kinds:
                dims.add(kind)
                if kind == "gpus" and item.gpu_type:
                    dims.add(f"gpus:{item.gpu_type}")
        return frozenset(dims)

    def _victim_rank(self, run: RunningJob) -> tuple[int, float, int, str]:
        """Victim order: lowest priority first, then the least work lost (the most
        recently started), then runs of borrowing teams before runs of teams within
        their quota, then id."""
        borrows = self._borrows.get(run.team)
        if borrows is None:
            borrows = self._borrows[run.team] = bool(self.ledger_at_start.borrowing(run.team))
        return (run.prio, -run.start, 0 if borrows else 1, run.job.id)

    def _lowest_preemptible_prio(self, team: str) -> int | None:
        if self.prepared is not None:
            return self.prepared.lowest_preemptible_prio(team)
        if team not in self._lowest:
            prios = [r.prio for r in self.running_by_team.get(team, ()) if r.preemptible]
            self._lowest[team] = min(prios) if prios else None
        return self._lowest[team]

    def _own_candidates(
        self, item: _Item, fit: QuotaFit, matching: set[str] | None
    ) -> Iterable[RunningJob]:
        """Lower-priority runs of the job's team that, requeued, queue after it."""
        lowest = self._lowest_preemptible_prio(item.team)
        if lowest is None or lowest >= item.prio:
            return  # no run of its own team ranks below it
        for run in self.running_by_team.get(item.team, ()):
            if not run.preemptible or run.job.id in self.claimed:
                continue
            if not self._queued_after(run, item):
                continue
            if matching is not None and fit.ok and not any(n in matching for n in run.nodes):
                continue  # frees nothing the job can use
            yield run

    def _reclaim_candidates(
        self,
        item: _Item,
        fit: QuotaFit,
        team: str,
        borrowed: frozenset[str],
        matching: set[str] | None,
    ) -> Iterable[RunningJob]:
        """Runs of ``team``, which borrows the contested dimensions ``borrowed``, that hold
        some of what it borrowed there (any priority: a reclaim takes back a loan)."""
        for run in self.running_by_team.get(team, ()):
            if not run.preemptible or run.job.id in self.claimed:
                continue
            if not any(_holds(run, dim) for dim in borrowed):
                continue  # gives back nothing of what the job is short of
            if matching is not None and fit.ok and not any(n in matching for n in run.nodes):
                continue
            yield run

    def _queued_after(self, run: RunningJob, item: _Item) -> bool:
        """Whether a same-team victim has a lower priority and, were it pending, would
        queue after ``item`` (under fifo: submitted later). So a requeued victim cannot
        take back the room before the job it made way for."""
        if run.prio >= item.prio:
            return False
        if self.queueing.policy == "fifo":
            return (run.job.submitted_at, run.job.id) > (item.job.submitted_at, item.job.id)
        return True

    def _fits_without(
        self,
        item: _Item,
        victims: Sequence[RunningJob],
        now_fits: Placement | None,
        as_victims: bool = True,
    ) -> Placement | None:
        """Where the job goes with ``victims`` gone, if it then fits the nodes and stays
        within its team's nominal quota (the rule against livelock: a job that would
        borrow never preempts); ``as_victims``: and they are a valid victim set (see
        ``_victims_would_borrow``)."""
        index = self.index.copy() if now_fits is None else None
        ledger = self.ledger.copy()
        for run in victims:
            ledger.give(run.team, run.total, run.gpu_type)
            if index is not None:
                index.give(run.nodes, run.per_worker)
        if ledger.check(item.team, item.total, item.gpu_type).kind != "fits-nominal":
            return None
        if as_victims and not self._victims_would_borrow(ledger, item, victims):
            return None
        if index is None:
            return now_fits
        placed = index.place(item.per_worker, item.workers, item.policy, item.selector)
        return placed if isinstance(placed, Placement) else None

    @staticmethod
    def _victims_would_borrow(
        ledger: QuotaLedger, item: _Item, victims: Iterable[RunningJob]
    ) -> bool:
        """Whether each reclaimed victim, requeued alone, would have to borrow again (so
        the next pass decides it after the beneficiary). Only in doubt when two or more
        come from one team: one alone gives back no more than its team borrowed."""
        by_team: dict[str, list[RunningJob]] = {}
        for run in victims:
            if run.team != item.team:
                by_team.setdefault(run.team, []).append(run)
        for team, runs in by_team.items():
            if len(runs) > 1 and any(
                ledger.check(team, r.total, r.gpu_type).kind == "fits-nominal" for r in runs
            ):
                return False
        return True

    def _choose_victims(
        self, item: _Item, candidates: list[RunningJob], now_fits: Placement | None
    ) -> tuple[list[RunningJob], Placement] | None:
        if self._fits_without(item, candidates, now_fits, as_victims=False) is None:
            return None  # not even all of them make room
        # Add candidates in victim order until the job fits ...
        index = self.index.copy() if now_fits is None else None
        ledger = self.ledger.copy()
        chosen: list[RunningJob] = []
        for run in candidates:
            chosen.append(run)
            ledger.give(run.team, run.total, run.gpu_type)
            if index is not None:
                index.give(run.nodes, run.per_worker)
            if ledger.check(item.team, item.total, item.gpu_type).kind != "fits-nominal":
                continue
            if index is None:
                break
            if isinstance(
                index.place(item.per_worker, item.workers, item.policy, item.selector), Placement
            ):
                break
        # ... then drop any that turned out not to be needed, the last added first.
        for run in reversed(list(chosen)):
            if len(chosen) > 1:
                rest = [r for r in chosen if r is not run]
                if self._fits_without(item, rest, now_fits) is not None:
                    chosen = rest
        placement = self._fits_without(item, chosen, now_fits)
        if placement is None:  # pragma: no cover - the loop above ended on a fit
            return None
        return chosen, placement

    def _claim(
        self,
        item: _Item,
        victims: list[RunningJob],
        placement: Placement,
        now_fits: Placement | None,
    ) -> Preempt:
        ends = None if item.runtime is None else self.now + item.runtime
        self.holding.setdefault(item.team, item.job.id)
        for run in victims:
            self.claimed.add(run.job.id)
            self.held_until[run.job.id] = ends
            self.ledger.give(run.team, run.total, run.gpu_type)
        self.ledger.take(item.team, item.total, item.gpu_type)
        if now_fits is not None:
            self.index.take(now_fits.nodes, item.per_worker)
            if ends is not None:
                self._release_later(ends, now_fits.nodes, item.per_worker)
        else:
            # Hold for the job whatever is free now of what it will use; the rest comes
            # from its victims.
            counts: dict[str, int] = {}
            for node in placement.nodes:
                counts[node] = counts.get(node, 0) + 1
            for node, count in counts.items():
                need = item.per_worker.scaled(count)
                free = self.index.free(node)
                hold = Resources(
                    min(need.cpus, free.cpus),
                    min(need.gpus, free.gpus),
                    min(need.memory, free.memory),
                )
                if hold.cpus > 0 or hold.gpus > 0 or hold.memory > 0:
                    self.index.take([node], hold)
                    if ends is not None:
                        self._release_later(ends, [node], hold)
        return Preempt(item.job.id, tuple(r.job.id for r in victims), self._why(item, victims))

    def _why(self, item: _Item, victims: Sequence[RunningJob]) -> str:
        parts = []
        same = [r for r in victims if r.team == item.team]
        if same:
            parts.append(
                f"preempted for {item.job.id} of team {item.team}, whose priority class "
                f"{item.job.priority} outranks it"
            )
        others = sorted({r.team for r in victims if r.team != item.team})
        if others:
            parts.append(
                f"preempted: team {item.team} reclaims the quota that team "
                f"{', '.join(others)} borrowed (for job {item.job.id})"
            )
        return "; ".join(parts)


def _holds(run: RunningJob, dim: str) -> bool:
    """Whether a run is charged in a quota dimension (so preempting it gives some back)."""
    if dim == "gpus":
        return run.total.gpus > 0
    if dim.startswith("gpus:"):
        return run.total.gpus > 0 and run.gpu_type == dim[5:]
    if dim == "cpus":
        return run.total.cpus > 0
    return run.total.memory > 0


class _Timeline:
    """Free capacity going forward in time as held resources come back."""

    def __init__(self, index: CapacityIndex, releases: list[Release], now: float) -> None:
        self.index = index
        self.releases = releases  # a heap
        self.now = now
        self.nofit: dict[_Shape, str] = {}
        self.seq = len(releases) + 1_000_000
        self._advance_to(now)

    def _advance_to(self, at: float) -> None:
        released = False
        while self.releases and self.releases[0].at <= at:
            r = heapq.heappop(self.releases)
            self.index.give(r.nodes, r.per_worker)
            released = True
        if released:
            self.nofit.clear()  # capacity grew: old answers no longer hold
        self.now = max(self.now, at)

    def earliest(self, item: _Item, hold: bool = False) -> tuple[float, Placement] | None:
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
