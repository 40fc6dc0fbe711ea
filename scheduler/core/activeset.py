"""The active jobs, kept ready for admission passes between passes.

``plan`` takes the active jobs (ADMITTED and RUNNING: they hold resources) as any
sequence. Given a plain list it derives, on every pass, the quota ledger, each node's
free capacity, each team's allocation and the times held resources come back: work in
proportion to the active jobs and the nodes. A caller that runs many passes over a
slowly changing set of active jobs (the simulator runs one at every arrival and every
end) keeps one ``ActiveSet`` instead: it ``add``s each job it admits, ``remove``s each
that ends or is preempted, and hands the set itself to ``plan`` as
``SchedulingInput.active``, together with the very ``cluster`` and ``config`` objects the
set was built with. ``plan`` then copies what it changes (in proportion to the teams and
nodes, not the jobs) and decides exactly as with a list of the same jobs.

One difference of meaning: with a set, a node's free capacity is the set's cluster's
``available`` less what the set's jobs hold there. So build the set on a snapshot whose
``available`` does not count them yet (the simulator's: the empty cluster), whereas the
list path reads ``available`` as it is (the live service's snapshot counts them).

Invariants: a job is in the set at most once and holds ``per_worker`` on each of its
``nodes`` (``add`` raises, changing nothing, when a node lacks the room); each job has a
start (``started_at``, else ``admitted_at``). Everything here is pure and deterministic.

Words:
- run: an active job with what a pass needs of it (``RunningJob``).
- release: when and where a run's resources come back, by its ``max_runtime``.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.config import ClusterConfig, PriorityClass
from dcsched.core.job import Job
from dcsched.core.placement import CapacityIndex
from dcsched.core.quota import QuotaLedger, job_gpu_type
from dcsched.core.resources import Resources

_SNAP = 1e-9


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


@dataclass(order=True, slots=True)
class Release:
    at: float
    seq: int
    nodes: tuple[str, ...] = field(compare=False)
    per_worker: Resources = field(compare=False)


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

    def __init__(self, cluster: ClusterSnapshot, config: ClusterConfig) -> None:
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
        self.prepared: dict[str, tuple[Job, object]] = {}
        """Admission's per-job records of pending jobs, kept between passes (keyed by
        job id, valid while the Job value is the same object)."""
        self.never: dict[Hashable, str | None] = {}
        """Admission's "can never fit this cluster" answers per request shape."""

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

    def add(self, job: Job) -> None:
        """A job now holds ``per_worker`` on each of ``job.nodes``."""
        if job.id in self.runs:
            raise ValueError(f"job {job.id} is already active")
        start = job.started_at if job.started_at is not None else job.admitted_at
        if start is None:
            raise ValueError(f"active job {job.id} has neither started_at nor admitted_at")
        if len(job.nodes) != job.workers:
            raise ValueError(f"job {job.id} has {job.workers} workers on {len(job.nodes)} nodes")
        run = running_job(job, self.classes, start)
        self.free_index.take(run.nodes, run.per_worker)  # raises, changing nothing, if no room
        self.runs[job.id] = run
        self.by_team.setdefault(run.team, {})[job.id] = run
        self.ledger.take(run.team, run.total, run.gpu_type)
        self._add_alloc(run.team, run.total, 1.0)
        if run.preemptible:
            prios = self.preemptible_prios.setdefault(run.team, {})
            prios[run.prio] = prios.get(run.prio, 0) + 1
        self.prepared.pop(job.id, None)
        if run.end is not None:
            nodes = tuple(n for n in run.nodes if n in self.alive)
            if nodes:
                self._seq += 1
                release = Release(run.end, self._seq, nodes, run.per_worker)
                insort(self.releases, release)
                self._release_of[job.id] = release

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
        return run.job

    def forget(self, job_id: str) -> None:
        """Drop what admission remembered of a pending job that left the queue without
        becoming active (cancelled, or given up)."""
        self.prepared.pop(job_id, None)

    def _add_alloc(self, team: str, total: Resources, sign: float) -> None:
        a = self.alloc.setdefault(team, [0.0, 0.0, 0.0])
        a[0] += sign * total.cpus
        a[1] += sign * total.gpus
        a[2] += sign * total.memory
        for i in range(3):
            if abs(a[i]) < _SNAP:
                a[i] = 0.0

    # -- for plan ------------------------------------------------------------------------

    def check_input(self, cluster: ClusterSnapshot, config: ClusterConfig) -> None:
        """Raise unless a pass is asked against the cluster and config the set was built
        with (the set's ledger and capacity are only right for those)."""
        if cluster is not self.cluster or config is not self.config:
            raise ValueError(
                "an ActiveSet must be planned with the same cluster and config objects it "
                "was built with"
            )

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
