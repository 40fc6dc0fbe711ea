"""The active jobs, and the pending jobs' requests, kept ready for admission passes.

``plan`` takes its active jobs (ADMITTED and RUNNING: they hold resources) as an
``ActiveSet``: the jobs with their quota ledger, each node's free capacity, each team's
allocation and the times held resources come back, kept current as jobs are ``add``ed
and ``remove``d. A caller that runs many passes over a slowly changing set (the
simulator runs one at every arrival and every end) keeps one set; a pass copies only
what it changes, in proportion to the teams and nodes, not the jobs. A caller that
reads the active jobs afresh each time (the live service) builds one per pass.

Free capacity: a node's is its ``available`` in the set's cluster snapshot, less what
the jobs ``add``ed since hold there. Jobs given as ``held`` when the set is built are
already counted in ``available`` (the live service's snapshot counts them); the
simulator builds its set on the empty cluster and ``add``s each job it starts.

The set also keeps each pending job's ``QueuedJob`` (what a pass needs of its request,
computed once while the ``Job`` value stays the same object) and the answer to "can this
request ever fit the cluster?" per request shape.

Invariants: a job is in the set at most once and holds ``per_worker`` on each of its
``nodes`` (``add`` raises, changing nothing, when a node lacks the room); each job has a
start (``started_at``, else ``admitted_at``). Everything here is pure and deterministic.

Words:
- run: an active job with what a pass needs of it (``RunningJob``).
- queued job: a pending job with what a pass needs of it (``QueuedJob``).
- release: when and where a run's resources come back, by its ``max_runtime``.
- shape: what placement depends on (per-worker request, workers, policy, selector),
  numbered per set so that "does not fit" answers are cached per number.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import GPU_TYPE_LABEL, ClusterConfig, PlacementPolicy, PriorityClass
from dcsched.core.job import Job
from dcsched.core.placement import CapacityIndex, never_fits
from dcsched.core.quota import QuotaLedger, job_gpu_type
from dcsched.core.resources import EPSILON, Resources
from dcsched.core.spec import SchedulingRequest
from dcsched.core.waits import WaitKind, WaitReason


def is_preemptible(job: Job, classes: Mapping[str, PriorityClass]) -> bool:
    """A job may be preempted when its class allows it and its spec does not say false.
    A job of an unknown class is preemptible unless its spec says false."""
    cls = classes.get(job.priority)
    if cls is not None and not cls.preemptible:
        return False
    return job.request.preemptible is not False


@dataclass(slots=True)
class RunningJob:
    """An active job: what it holds, since when, until when (if known). ``end`` may lie
    in the past (a job that outran its ``max_runtime``): a pass treats that as now."""

    job: Job
    team: str
    per_worker: Resources
    nodes: tuple[str, ...]
    total: Resources
    gpu_type: str | None
    prio: int
    preemptible: bool
    start: float
    end: float | None


_Request = tuple[
    Resources,  # per worker
    Resources,  # total
    str | None,  # GPU type
    Mapping[str, str] | None,  # selector
    tuple[tuple[str, str], ...],  # selector key
    PlacementPolicy,
    int,  # priority value
    int,  # shape
    WaitReason | None,  # blocked
    int,  # quota class
]


@dataclass(slots=True)
class QueuedJob:
    """A pending job with what a pass needs of its request, computed once.

    ``blocked``: why it can never start as things are (its team is refused, or it can
    never fit the cluster), None if it can; dependencies are checked by each pass.
    ``behind``: the wait of the jobs queued behind this one while it is the head, and
    ``decided``: the last wait a pass gave it; both kept so that a caller that runs many
    passes (the simulator) gets the same values again rather than equal new ones."""

    job: Job
    team: str
    per_worker: Resources
    workers: int
    total: Resources
    gpu_type: str | None
    selector: Mapping[str, str] | None
    selector_key: tuple[tuple[str, str], ...]
    policy: PlacementPolicy
    prio: int
    runtime: float | None
    shape: int
    blocked: WaitReason | None
    fifo_key: tuple[float, str]
    priority_key: tuple[int, float, str]
    has_dependencies: bool
    quota_class: int
    """Equal for jobs whose requests the quota ledger and preemption cannot tell apart
    (team, total, GPU type, priority value, selector)."""
    spread_group: str | None = None
    behind: WaitReason | None = None
    decided: object = None


@dataclass(slots=True)
class Release:
    """Ordered by (at, seq): the order of the active set's sorted list and the
    timeline's heap (both compare with ``<`` only)."""

    at: float
    seq: int
    nodes: tuple[str, ...] = field(compare=False)
    per_worker: Resources = field(compare=False)

    def __lt__(self, other: Release) -> bool:
        # (self.at, self.seq) < (other.at, other.seq), without building the tuples: the
        # heap of a pass's timeline compares releases often.
        if self.at != other.at:
            return self.at < other.at
        return self.seq < other.seq


_WHOLE_LIMIT = 2.0**32
"""Whole amounts below this, as many as a node holds, add up exactly in any order."""


def _whole_release(release: Release) -> bool:
    """Whether a release's per-worker amounts are whole numbers, small enough that any
    sum of what a node holds is exact (memory is whole bytes, an int)."""
    w = release.per_worker
    return (
        float(w.gpus).is_integer()
        and 0 <= w.gpus < _WHOLE_LIMIT
        and float(w.cpus).is_integer()
        and 0 <= w.cpus < _WHOLE_LIMIT
        and isinstance(w.memory, int)
    )


def running_job(job: Job, classes: Mapping[str, PriorityClass], start: float) -> RunningJob:
    """The run of an active job that started at ``start``; ``end`` by its max_runtime."""
    per_worker = job.per_worker
    runtime = job.request.max_runtime
    cls = classes.get(job.priority)
    return RunningJob(
        job=job,
        team=job.team,
        per_worker=per_worker,
        nodes=job.nodes,
        total=per_worker.scaled(job.workers),
        gpu_type=job_gpu_type(job),
        prio=cls.value if cls is not None else 0,
        preemptible=is_preemptible(job, classes),
        start=start,
        end=None if runtime is None else start + runtime,
    )


class ActiveSet(Sequence[Job]):
    """Active jobs with their quota ledger, free capacity, per-team allocation and
    release times kept current (see the module docstring). Iterating yields the jobs in
    the order they were added; indexing is O(n) and meant for tests only."""

    def __init__(
        self, cluster: ClusterSnapshot, config: ClusterConfig, held: Iterable[Job] = ()
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.classes = {c.name: c for c in config.priority_classes}
        self.runs: dict[str, RunningJob] = {}
        self.by_team: dict[str, dict[str, RunningJob]] = {}
        self.ledger = QuotaLedger(config)
        self.free_index = CapacityIndex(cluster.nodes)
        self.alive = frozenset(n.id for n in cluster.alive_nodes())
        self.capacity = cluster.total()
        self.alloc: dict[str, list[float]] = {}
        """Per team: CPUs, GPUs and memory its active jobs hold."""
        self.preemptible_prios: dict[str, dict[int, int]] = {}
        """Per team: how many of its preemptible runs have each priority value."""
        self.releases: list[Release] = []
        """Sorted by (at, seq), hence also a heap."""
        self._release_of: dict[str, Release] = {}
        self._seq = 0
        self._due_at = -math.inf
        """``releases`` with ``at`` up to here (a prefix of ``_due_count`` of them) are due:"""
        self._due_count = 0
        self._due: dict[str, list[float]] = {}
        """per node, what the whole (``_whole_release``) due releases give back together,"""
        self._due_fractional = 0
        """and how many due releases are not whole (then ``due`` has no answer)."""
        self._queued: dict[str, QueuedJob] = {}
        self._shapes: dict[tuple[object, ...], int] = {}
        self._quota_classes: dict[tuple[object, ...], int] = {}
        self._never: dict[int, str | None] = {}
        self._empty: CapacityIndex | None = None
        self._sizes: dict[tuple[float, float, int, int], tuple[Resources, Resources]] = {}
        self._waits: dict[tuple[WaitKind, str], WaitReason] = {}
        self._requests: dict[int, tuple[SchedulingRequest, _Request]] = {}
        self._shaped: dict[
            tuple[object, ...],
            tuple[Resources, Resources, str | None, PlacementPolicy, int, WaitReason | None],
        ] = {}
        """Per request size, placement and selector: what ``_shape`` says."""
        """Per request object (by identity, kept alive here): what ``_request`` says."""
        for job in held:
            self.add(job, counted=True)

    # -- the sequence ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Job]:
        return (run.job for run in self.runs.values())

    def __contains__(self, value: object) -> bool:
        return isinstance(value, Job) and self.runs.get(value.id) is not None

    @overload
    def __getitem__(self, i: int) -> Job: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Job]: ...

    def __getitem__(self, i: int | slice) -> Job | Sequence[Job]:
        jobs = [run.job for run in self.runs.values()]
        return jobs[i]

    def get(self, job_id: str) -> Job | None:
        run = self.runs.get(job_id)
        return None if run is None else run.job

    # -- changes -------------------------------------------------------------------------

    def add(self, job: Job, counted: bool = False) -> None:
        """A job now holds ``per_worker`` on each of ``job.nodes``; ``counted``: the
        cluster snapshot's ``available`` already counts it (as the live service reads
        it: its nodes need not be alive, and a record without a start counts from its
        submission rather than stopping every pass)."""
        if job.id in self.runs:
            raise ValueError(f"job {job.id} is already active")
        start = job.started_at if job.started_at is not None else job.admitted_at
        if start is None and counted:
            start = job.submitted_at
        if start is None:
            raise ValueError(f"active job {job.id} has neither started_at nor admitted_at")
        if len(job.nodes) != job.workers and not counted:
            raise ValueError(f"job {job.id} has {job.workers} workers on {len(job.nodes)} nodes")
        known = self._requests.get(id(job.request))
        if known is not None and known[0] is job.request:  # computed when it was queued
            per_worker, total, gpu_type, _, _, _, prio, _, _, _ = known[1]
            runtime = job.request.max_runtime
            run = RunningJob(
                job=job,
                team=job.team,
                per_worker=per_worker,
                nodes=job.nodes,
                total=total,
                gpu_type=gpu_type,
                prio=prio,
                preemptible=is_preemptible(job, self.classes),
                start=start,
                end=None if runtime is None else start + runtime,
            )
        else:
            run = running_job(job, self.classes, start)
        if not counted:
            self.free_index.take(run.nodes, run.per_worker)  # raises, changing nothing
        self.runs[job.id] = run
        self.by_team.setdefault(run.team, {})[job.id] = run
        self.ledger.take(run.team, run.total, run.gpu_type)
        self._add_alloc(run.team, run.total, 1.0)
        if run.preemptible:
            prios = self.preemptible_prios.setdefault(run.team, {})
            prios[run.prio] = prios.get(run.prio, 0) + 1
        self._queued.pop(job.id, None)
        if run.end is not None:
            nodes = tuple(n for n in run.nodes if n in self.alive)
            if nodes:
                self._seq += 1
                release = Release(run.end, self._seq, nodes, run.per_worker)
                insort(self.releases, release)
                self._release_of[job.id] = release
                if release.at <= self._due_at:
                    self._due_count += 1
                    self._count_due(release, 1)

    def remove(self, job_id: str) -> Job:
        """The job no longer holds anything (it ended, or was preempted)."""
        run = self.runs.pop(job_id, None)
        if run is None:
            raise KeyError(f"job {job_id} is not active")
        team_runs = self.by_team[run.team]
        del team_runs[job_id]
        if not team_runs:
            del self.by_team[run.team]
        self.free_index.give(run.nodes, run.per_worker)
        self.ledger.give(run.team, run.total, run.gpu_type)
        self._add_alloc(run.team, run.total, -1.0)
        if run.preemptible:
            prios = self.preemptible_prios[run.team]
            prios[run.prio] -= 1
            if not prios[run.prio]:
                del prios[run.prio]
        release = self._release_of.pop(job_id, None)
        if release is not None:
            del self.releases[bisect_left(self.releases, release)]
            if release.at <= self._due_at:
                self._due_count -= 1
                self._count_due(release, -1)
        return run.job

    def group_nodes(self, team: str, group: str) -> set[str]:
        """The nodes that the team's active jobs of ``spread_group`` ``group`` run on."""
        return {
            node
            for run in self.by_team.get(team, {}).values()
            if run.job.request.spread_group == group
            for node in run.nodes
        }

    def forget(self, job_id: str) -> None:
        """Drop what admission remembered of a pending job that left the queue without
        becoming active (cancelled, or given up)."""
        self._queued.pop(job_id, None)

    def _add_alloc(self, team: str, total: Resources, sign: float) -> None:
        a = self.alloc.setdefault(team, [0.0, 0.0, 0.0])
        a[0] += sign * total.cpus
        a[1] += sign * total.gpus
        a[2] += sign * total.memory
        for i in range(3):
            if abs(a[i]) < EPSILON:
                a[i] = 0.0

    # -- for plan ------------------------------------------------------------------------

    def queued_all(self, jobs: Iterable[Job]) -> list[QueuedJob]:
        """``queued`` of each job, in order."""
        known = self._queued
        items = []
        for job in jobs:
            found = known.get(job.id)
            items.append(found if found is not None and found.job is job else self.queued(job))
        return items

    def queued(self, job: Job) -> QueuedJob:
        """The pending job's ``QueuedJob``: the one computed before while ``job`` is the
        same object, else a new one."""
        found = self._queued.get(job.id)
        if found is not None and found.job is job:
            return found
        spec = job.request
        known = self._requests.get(id(spec))
        if known is None or known[0] is not spec:
            if len(self._requests) >= 50_000:
                self._requests.clear()  # bounded: many sets keep few distinct requests
            known = self._requests[id(spec)] = (spec, self._request(spec))
        per_worker, total, gpu_type, selector, key, policy, prio, shape, blocked, quota_class = (
            known[1]
        )
        submitted, job_id = job.submitted_at, job.id
        item = QueuedJob(  # positional, in field order: a pass makes one per pending job
            job,
            spec.team,
            per_worker,
            spec.resources.workers,
            total,
            gpu_type,
            selector,
            key,
            policy,
            prio,
            spec.max_runtime,
            shape,
            blocked,
            (submitted, job_id),
            (-prio, submitted, job_id),
            bool(spec.depends_on),
            quota_class,
            spec.spread_group,
        )
        self._queued[job.id] = item
        return item

    def _request(self, spec: SchedulingRequest) -> _Request:
        """What a pass needs of a request (the same for every job of that request). The
        part that depends on its size, placement and selector only is kept per those."""
        request = spec.resources
        selector = spec.node_selector or None
        key = tuple(sorted(selector.items())) if selector else ()
        content = (request.cpus, request.gpus, request.memory, request.workers, spec.placement, key)
        shaped = self._shaped.get(content)
        if shaped is None:
            shaped = self._shaped[content] = self._shape(spec, key)
        per_worker, total, gpu_type, policy, shape, never = shaped
        cls = self.classes.get(spec.priority)
        prio = cls.value if cls is not None else 0
        blocked = never
        if not self.ledger.known(spec.team):
            blocked = WaitReason(
                WaitKind.UNKNOWN_TEAM,
                f"team {spec.team} is not a team of this cluster (unlisted teams are refused)",
            )
        quota_key = (spec.team, total, gpu_type, prio, key)
        quota_class = self._quota_classes.get(quota_key)
        if quota_class is None:
            quota_class = self._quota_classes[quota_key] = len(self._quota_classes)
        return per_worker, total, gpu_type, selector, key, policy, prio, shape, blocked, quota_class

    def _shape(
        self, spec: SchedulingRequest, key: tuple[tuple[str, str], ...]
    ) -> tuple[Resources, Resources, str | None, PlacementPolicy, int, WaitReason | None]:
        """Of a request: per-worker and total resources, GPU type, placement policy,
        shape number, and why it can never fit the cluster (None if it can)."""
        request = spec.resources
        workers = request.workers
        size = (request.cpus, request.gpus, request.memory, workers)
        sizes = self._sizes.get(size)
        if sizes is None:  # one Resources per distinct request
            per_worker = request.per_worker()
            sizes = self._sizes[size] = (per_worker, per_worker.scaled(workers))
        per_worker, total = sizes
        policy = spec.placement or self.config.placement
        shape_key = (per_worker.cpus, per_worker.gpus, per_worker.memory, workers, policy, key)
        shape = self._shapes.get(shape_key)
        if shape is None:
            shape = self._shapes[shape_key] = len(self._shapes)
        if shape not in self._never:
            if self._empty is None:  # each alive node's total: the cluster when empty
                self._empty = CapacityIndex(
                    [
                        NodeState(n.id, n.address, True, n.total, n.total, n.labels, n.utilization)
                        for n in self.cluster.alive_nodes()
                    ]
                )
            selector = spec.node_selector or None
            self._never[shape] = never_fits(self._empty, per_worker, workers, selector)
        never = self._never[shape]
        reason = None
        if never is not None:
            reason = WaitReason(
                WaitKind.NEVER_FITS, f"cannot fit the cluster as it is now: {never}"
            )
        return per_worker, total, spec.node_selector.get(GPU_TYPE_LABEL), policy, shape, reason

    def due(self, now: float) -> tuple[int, Mapping[str, Sequence[float]]] | None:
        """The releases due by ``now`` (they come back at once on a pass's timeline): how
        many they are (the first ones of ``releases``) and, per node, what they give back
        together; None if one of them is not whole (a sum of fractions depends on its
        order). Kept up to date as jobs come and go and ``now`` moves on, so a caller
        that runs many passes does not add them up again for each."""
        if now < self._due_at:  # time went back: count again from the start
            self._due_at, self._due_count, self._due, self._due_fractional = -math.inf, 0, {}, 0
        releases = self.releases
        k = self._due_count
        while k < len(releases) and releases[k].at <= now:
            self._count_due(releases[k], 1)
            k += 1
        self._due_count = k
        self._due_at = now
        if self._due_fractional:
            return None
        return k, self._due

    def _count_due(self, release: Release, sign: int) -> None:
        if not _whole_release(release):
            self._due_fractional += sign
            return
        w = release.per_worker  # as ``CapacityBase.give`` takes it
        g, c, m = sign * round(w.gpus, 9), sign * round(w.cpus, 9), sign * int(w.memory)
        due = self._due
        for node in release.nodes:
            total = due.get(node)
            if total is None:
                due[node] = [g, c, m]
            else:
                total[0] += g
                total[1] += c
                total[2] += m

    def wait_reason(self, kind: WaitKind, words: str) -> WaitReason:
        """The ``WaitReason`` of these words: the same value again while they stay the
        same (so a job that waits for the same reason in pass after pass keeps its
        ``Wait``, rather than getting an equal new one)."""
        key = (kind, words)
        found = self._waits.get(key)
        if found is None:
            if len(self._waits) >= 10_000:
                self._waits.clear()  # bounded: the words carry changing numbers
            found = self._waits[key] = WaitReason(kind, words)
        return found

    def lowest_preemptible_prio(self, team: str) -> int | None:
        """The lowest priority value among the team's preemptible runs; None if none."""
        prios = self.preemptible_prios.get(team)
        return min(prios) if prios else None

    def free_total(self) -> Resources:
        """Free capacity left over all alive nodes (for reports and tests)."""
        total = Resources()
        for node in sorted(self.alive):
            total = total + self.free_index.free(node)
        return total
