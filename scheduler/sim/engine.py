"""The replay: a virtual clock, a simulated executor, and the core's own admission passes.

Events are arrivals and ends (and, with a pass interval, deferred passes), taken in time
order (ties: ends, then arrivals, then passes; then by sequence). After the events of an
instant, each partition they touched runs an admission pass: ``core.admission.plan`` over
its pending jobs, its active jobs (an ``ActiveSet``), its nodes and its configuration,
exactly as the live service calls it. The decisions are applied as the service applies
them, with a perfect executor:

- ``Admit``: the job starts at once on the chosen nodes and ends after its remaining run
  time, times its slowdown when its gang spans more than one node, or when it reaches a
  ``max_runtime`` the trace gave (then it FAILED, as the live server stops it).
- ``Preempt``: the victims stop at once and go back to the queue; they keep their
  progress (they resume from where they stopped, as a checkpoint every moment would
  let them) and count a preemption. Another pass follows at the same instant, in
  which the preemptor comes first (``SchedulingInput.preemptors``, kept as the service
  keeps them), so the room its victims freed is its own.
- ``Cancel`` (a failed dependency) and jobs that can never start are reported as
  unschedulable, with the core's reason. A job is checked when it arrives: a pass of
  the core with that job alone on its empty partition must admit it; else it never could.
- ``Wait``: nothing happens; the job waits for a later pass.

Partitions (each a set of nodes with its own queue and passes): one, over all nodes,
unless ``options.partition``: then the nodes of each team that has node types of its own
form that team's partition (as if it ran a dcsched of its own), and the other teams share
the remaining nodes. Partitioning drops quotas and cohorts (a team's own nodes are its
quota), so capacity alone decides and the queue is strict: a job that does not fit
blocks those behind it.

Lookahead: a pass sees the first ``lookahead`` pending jobs of each team, in the team's
own queue order (fifo: submit time; priority and fair: class, then submit time), and
every preemptor still owed its room. Jobs further back wait until they come within
reach, like SLURM's queue depth limits. When a
team with more jobs had its whole window started, another pass follows at the same
instant, so without backfill the decisions equal those of an unlimited pass as long as
no team has more than ``lookahead`` jobs waiting ahead of one that could start.

Pass interval: 0 runs a pass at every instant with events (the live service wakes at
every submission and polls every 0.1 s). A positive interval runs at most one pass per
partition per interval (a scheduling cycle, as Gavel's rounds or Pollux's 60 s): much
faster on long traces, at the cost of up to one interval of extra wait.

Determinism: no wall clock, no randomness; every tie breaks by time, kind, then id.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from dcsched.core.activeset import ActiveSet
from dcsched.core.admission import (
    Admit,
    Cancel,
    Preempt,
    SchedulingInput,
    Wait,
    plan,
    preemptors_after,
)
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.config import ClusterConfig, PlacementPolicy, QueueingPolicy, Quota
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import EPSILON, Resources
from dcsched.core.spec import SchedulingRequest, describe_validation_error
from dcsched.sim.estimates import DecayedUsage, RuntimePredictor
from dcsched.sim.trace import TraceJob, shape

_END, _ARRIVAL, _PASS = 0, 1, 2
_MAX_PASSES_PER_INSTANT = 100_000


class SimError(ValueError):
    """The simulation cannot run as asked (a cluster without nodes, bad options)."""


@dataclass(frozen=True)
class SimOptions:
    """What a run changes of the cluster file's policies, and how it replays."""

    policy: QueueingPolicy | None = None
    placement: PlacementPolicy | None = None
    backfill: bool | None = None
    preemption: bool | None = None
    borrowing: bool | None = None
    """False drops every cohort (no lending, no borrowing); None keeps the file's."""
    partition: bool = False
    load_factor: float = 1.0
    slowdown: float = 1.0
    """Default multi-node slowdown, for jobs whose trace row gives none."""
    lookahead: int = 32
    pass_interval: float = 0.0
    predictor: bool = True
    predictor_quantile: float = 0.5

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class JobRecord:
    """What happened to one job of the trace."""

    trace: TraceJob
    team: str
    gpus: float
    """All workers' GPUs together."""
    workers: int
    submit: float
    partition: str = ""
    start: float | None = None
    end: float | None = None
    run_s: float = 0.0
    nodes: int = 0
    preemptions: int = 0
    state: str = "PENDING"
    reason: str = ""
    remaining: float = 0.0
    """Seconds of undisturbed run time still to do."""
    run_start: float = 0.0
    run_factor: float = 1.0
    run_token: int = 0


@dataclass
class _Partition:
    name: str
    config: ClusterConfig
    cluster: ClusterSnapshot
    active: ActiveSet
    usage: DecayedUsage
    policy: str
    queues: dict[str, list[tuple[object, ...]]] = field(default_factory=dict)
    pending: dict[str, Job] = field(default_factory=dict)
    can_run: dict[tuple[object, ...], str | None] = field(default_factory=dict)
    never: dict[int, str | None] = field(default_factory=dict)
    """``can_run``'s answer per spec (by identity: the simulation keeps its specs)."""
    class_values: dict[str, int] = field(default_factory=dict)
    preemptors: frozenset[str] = frozenset()
    """Pending jobs that preempted and wait for their room (``SchedulingInput``)."""
    next_pass: float = -math.inf
    pass_due: bool = False


@dataclass
class SimResult:
    records: list[JobRecord]
    options: SimOptions
    total_gpus: float
    total_nodes: int
    passes: int
    gpu_timeline: list[tuple[float, float]]
    """(time, GPUs allocated from then on), at each change."""
    partitions: list[str]


def expand_nodes(config: ClusterConfig) -> list[tuple[NodeState, str | None]]:
    """Every node of the configuration's node types, with the team it is dedicated to."""
    nodes = []
    for node_type in config.nodes:
        total = Resources(node_type.cpus, node_type.gpus, node_type.memory)
        labels = node_type.node_labels()
        width = max(4, len(str(node_type.count - 1)))
        for i in range(node_type.count):
            node = NodeState(f"{node_type.type}-{i:0{width}d}", "sim", True, total, total, labels)
            nodes.append((node, node_type.team))
    return nodes


def effective_config(config: ClusterConfig, options: SimOptions) -> ClusterConfig:
    queueing = config.queueing.model_copy(
        update={
            k: v
            for k, v in (
                ("policy", options.policy),
                ("backfill", options.backfill),
                ("preemption", options.preemption),
            )
            if v is not None
        }
    )
    update: dict[str, object] = {"queueing": queueing}
    if options.placement is not None:
        update["placement"] = options.placement
    if options.partition:
        # A team's own nodes are its quota: capacity alone decides, so the queue is strict
        # (a job that does not fit blocks the ones behind it) as in Helios's per-VC replay.
        update["teams"] = tuple(
            t.model_copy(update={"cohort": None, "quota": Quota()}) for t in config.teams
        )
    elif options.borrowing is False:
        update["teams"] = tuple(t.model_copy(update={"cohort": None}) for t in config.teams)
    return config.model_copy(update=update)


class Simulation:
    def __init__(
        self,
        jobs: Sequence[TraceJob],
        config: ClusterConfig,
        options: SimOptions | None = None,
    ) -> None:
        self.options = options = options or SimOptions()
        if options.load_factor <= 0:
            raise SimError(f"--load-factor must be positive, not {options.load_factor:g}")
        if options.slowdown < 1:
            raise SimError(f"--slowdown must be at least 1, not {options.slowdown:g}")
        if options.lookahead < 1:
            raise SimError(f"--lookahead must be at least 1, not {options.lookahead}")
        if options.pass_interval < 0:
            raise SimError("--pass-interval must not be negative")
        if options.partition and options.borrowing:
            raise SimError("--partition gives each team its own nodes: it cannot borrow")
        if not config.nodes:
            raise SimError(
                "the cluster file lists no nodes; add a `nodes:` section "
                "(for example [{type: dgx, count: 4, gpus: 8, cpus: 64, memory: 512GiB}])"
            )
        self.config = effective_config(config, options)
        nodes = expand_nodes(self.config)
        self.total_gpus = sum(n.total.gpus for n, _ in nodes)
        self.total_nodes = len(nodes)
        self.node_gpus = max(n.total.gpus for n, _ in nodes)
        self.partitions: dict[str, _Partition] = {}
        self.partition_of_team: dict[str, str] = {}
        groups: dict[str, list[NodeState]] = {}
        for node, team in nodes:
            key = team if options.partition and team is not None else ""
            groups.setdefault(key, []).append(node)
            if key:
                self.partition_of_team[team or ""] = key
        groups.setdefault("", [])
        for name in sorted(groups):
            cluster = ClusterSnapshot(tuple(groups[name]))
            self.partitions[name] = _Partition(
                name=name,
                config=self.config,
                cluster=cluster,
                active=ActiveSet(cluster, self.config),
                usage=DecayedUsage(self.config.queueing.fair_share_half_life),
                policy=self.config.queueing.policy,
            )
        self.predictor = RuntimePredictor(options.predictor_quantile)
        self._specs: dict[tuple[object, ...], SchedulingRequest | str] = {}
        self._predicted: dict[tuple[int, float], SchedulingRequest] = {}
        """Specs with a predicted max_runtime, per (spec in ``_specs``, prediction)."""
        self.records: list[JobRecord] = []
        self._by_id: dict[str, JobRecord] = {}
        first = min((j.submit for j in jobs), default=0.0)
        for tj in sorted(jobs, key=lambda j: (j.submit, j.id)):
            workers, _, gpus, _ = shape(tj, self.node_gpus)
            record = JobRecord(
                trace=tj,
                team=tj.team,
                gpus=gpus * workers,
                workers=workers,
                submit=(tj.submit - first) / options.load_factor,
                remaining=tj.duration,
            )
            if tj.id in self._by_id:
                raise SimError(f"job id {tj.id!r} appears twice in the trace")
            self.records.append(record)
            self._by_id[tj.id] = record
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self.passes = 0
        self._gpus_now = 0.0
        self.gpu_timeline: list[tuple[float, float]] = []

    # -- events ------------------------------------------------------------------------

    def _push(self, at: float, kind: int, key: str, token: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, key, token))

    def run(self, progress: Callable[[int], None] | None = None) -> SimResult:
        for record in self.records:
            self._push(record.submit, _ARRIVAL, record.trace.id)
        done = 0
        while self._events:
            now = self._events[0][0]
            touched: set[str] = set()
            while self._events and self._events[0][0] == now:
                _, kind, _, key, token = heapq.heappop(self._events)
                if kind == _ARRIVAL:
                    partition = self._arrive(self._by_id[key], now)
                    if partition is not None:
                        touched.add(partition)
                    else:
                        done += 1
                elif kind == _END:
                    record = self._by_id[key]
                    if record.run_token == token and record.state == "RUNNING":
                        self._end(record, now)
                        touched.add(record.partition)
                        done += 1
                else:
                    self.partitions[key].pass_due = False
                    touched.add(key)
            for name in sorted(touched):
                self._maybe_pass(self.partitions[name], now)
            if progress is not None:
                progress(done)
                done = 0
        self._give_up()
        return SimResult(
            records=self.records,
            options=self.options,
            total_gpus=self.total_gpus,
            total_nodes=self.total_nodes,
            passes=self.passes,
            gpu_timeline=self.gpu_timeline,
            partitions=[d for d in self.partitions if self.partitions[d].cluster.nodes],
        )

    def _maybe_pass(self, partition: _Partition, now: float) -> None:
        interval = self.options.pass_interval
        if interval > 0 and now < partition.next_pass:
            if not partition.pass_due:
                partition.pass_due = True
                self._push(partition.next_pass, _PASS, partition.name)
            return
        if not partition.pending:
            return
        self._passes(partition, now)
        partition.next_pass = now + interval

    # -- arrivals and ends -------------------------------------------------------------

    def _arrive(self, record: JobRecord, now: float) -> str | None:
        """Queue the job in its partition; None when it can never run (reported)."""
        tj = record.trace
        partition = self.partitions[self.partition_of_team.get(tj.team, "")]
        record.partition = partition.name
        spec = self._spec(tj)
        if isinstance(spec, str):
            self._unschedulable(record, spec)
            return None
        never = self._never(partition, spec, tj.id, record.submit)
        if never is not None:
            self._unschedulable(record, never)
            return None
        request = spec
        if tj.max_runtime is None and self.options.predictor:
            estimate = self.predictor.estimate(tj.team, record.gpus)
            if estimate is not None:
                predicted = self._predicted.get((id(spec), estimate))
                if predicted is None:
                    predicted = spec.model_copy(update={"max_runtime": estimate})
                    self._predicted[(id(spec), estimate)] = predicted
                request = predicted
        job = Job(tj.id, request, JobState.PENDING, submitted_at=record.submit, kind="sim")
        self._enqueue(partition, job)
        return partition.name

    def _unschedulable(self, record: JobRecord, reason: str) -> None:
        record.state = "UNSCHEDULABLE"
        record.reason = reason

    def _spec(self, tj: TraceJob) -> SchedulingRequest | str:
        workers, cpus, gpus, memory = shape(tj, self.node_gpus)
        key = (tj.team, workers, cpus, gpus, memory, tj.gpu_type, tj.priority, tj.preemptible)
        found = self._specs.get(key)
        if found is None:
            if self.config.priority_class(tj.priority) is None:
                known = ", ".join(c.name for c in self.config.priority_classes)
                found = f"unknown priority class {tj.priority!r}; known: {known}"
            else:
                try:
                    found = SchedulingRequest.model_validate(
                        {
                            "name": "sim",
                            "team": tj.team,
                            "priority": tj.priority,
                            "resources": {
                                "workers": workers,
                                "cpus": cpus,
                                "gpus": gpus,
                                "memory": memory,
                            },
                            "max_runtime": tj.max_runtime,
                            "node_selector": {"dcsched.io/gpu-type": tj.gpu_type}
                            if tj.gpu_type
                            else {},
                            "preemptible": tj.preemptible,
                        }
                    )
                except ValidationError as exc:
                    found = f"not a valid job: {'; '.join(describe_validation_error(exc))}"
            self._specs[key] = found
        return found

    def _never(
        self, partition: _Partition, spec: SchedulingRequest, job_id: str, submitted_at: float
    ) -> str | None:
        """Why a job of ``spec`` (one of ``_specs``, kept alive there) could never start in
        its partition, by the core's own pass with the job alone on the empty partition; None if
        it could. Remembered per spec."""
        if id(spec) in partition.never:
            return partition.never[id(spec)]
        reason = partition.never[id(spec)] = self._never_once(partition, spec, job_id, submitted_at)
        return reason

    def _never_once(
        self, partition: _Partition, spec: SchedulingRequest, job_id: str, submitted_at: float
    ) -> str | None:
        job = Job(job_id, spec, JobState.PENDING, submitted_at=submitted_at, kind="sim")
        key = (spec.team, spec.resources, tuple(sorted(spec.node_selector.items())), spec.priority)
        if key not in partition.can_run:
            (decision,) = plan(
                SchedulingInput(
                    pending=[job],
                    active=ActiveSet(partition.cluster, partition.config),
                    now=0.0,
                    estimate_starts=False,
                )
            )
            if isinstance(decision, Admit):
                partition.can_run[key] = None
            elif isinstance(decision, Wait | Cancel):
                partition.can_run[key] = decision.reason
            else:  # pragma: no cover - nothing to preempt on an empty partition
                partition.can_run[key] = None
        reason = partition.can_run[key]
        if reason is not None and not partition.cluster.nodes:
            return f"no nodes serve team {spec.team} (with --partition, only its own would)"
        return reason

    def _queue_key(self, partition: _Partition, job: Job) -> tuple[object, ...]:
        """The job's place in its team's queue, the job last (the id before it is unique,
        so jobs are never compared)."""
        if partition.policy == "fifo":
            return (job.submitted_at, job.id, job)
        value = partition.class_values.get(job.priority)
        if value is None:
            cls = partition.config.priority_class(job.priority)
            value = partition.class_values[job.priority] = cls.value if cls else 0
        return (-value, job.submitted_at, job.id, job)

    def _enqueue(self, partition: _Partition, job: Job) -> None:
        partition.pending[job.id] = job
        insort(partition.queues.setdefault(job.team, []), self._queue_key(partition, job))

    def _dequeue(self, partition: _Partition, job: Job) -> None:
        del partition.pending[job.id]
        queue = partition.queues[job.team]
        del queue[bisect_left(queue, self._queue_key(partition, job))]

    def _start(self, partition: _Partition, job: Job, nodes: tuple[str, ...], now: float) -> None:
        record = self._by_id[job.id]
        self._dequeue(partition, job)
        running = Job(
            job.id,
            job.request,
            JobState.RUNNING,
            job.submitted_at,
            admitted_at=now,
            started_at=now,
            nodes=nodes,
            attempt=job.attempt + 1,
            kind=job.kind,
        )
        partition.active.add(running)
        spread = len(set(nodes))
        factor = 1.0
        if spread > 1:
            factor = record.trace.slowdown or self.options.slowdown
        record.run_factor = factor
        record.run_start = now
        record.nodes = spread
        record.state = "RUNNING"
        if record.start is None:
            record.start = now
        run_time = record.remaining * factor
        limit = record.trace.max_runtime
        record.run_token += 1
        end = now + (run_time if limit is None else min(run_time, limit))
        self._push(end, _END, job.id, record.run_token)
        if partition.policy == "fair":
            partition.usage.start(job.team, partition.active.runs[job.id].total, now)
        self._allocate(now, record.gpus)

    def _stop(self, partition: _Partition, record: JobRecord, now: float) -> Job:
        held = partition.active.runs[record.trace.id].total  # the job's whole gang
        job = partition.active.remove(record.trace.id)
        elapsed = now - record.run_start
        record.run_s += elapsed
        record.remaining = max(0.0, record.remaining - elapsed / record.run_factor)
        if partition.policy == "fair":
            partition.usage.stop(job.team, held, record.run_start, now)
        self._allocate(now, -record.gpus)
        return job

    def _end(self, record: JobRecord, now: float) -> None:
        partition = self.partitions[record.partition]
        self._stop(partition, record, now)
        record.end = now
        if record.remaining > EPSILON:
            limit = record.trace.max_runtime or 0.0
            record.state = "FAILED"
            record.reason = f"exceeded its max_runtime of {limit:g}s"
        else:
            record.state = "SUCCEEDED"
        self.predictor.observe(record.team, record.gpus, record.run_s)

    def _allocate(self, now: float, gpus: float) -> None:
        self._gpus_now = round(self._gpus_now + gpus, 9)
        if self.gpu_timeline and self.gpu_timeline[-1][0] == now:
            self.gpu_timeline[-1] = (now, self._gpus_now)
        else:
            self.gpu_timeline.append((now, self._gpus_now))

    # -- passes ------------------------------------------------------------------------

    def _window(self, partition: _Partition) -> tuple[list[Job], dict[str, list[Job]]]:
        """The first ``lookahead`` pending jobs of each team and the preemptors owed their
        room, and per team cut short, its jobs among them."""
        limit = self.options.lookahead
        jobs: list[Job] = []
        truncated: dict[str, list[Job]] = {}
        for team in sorted(partition.queues):
            queue = partition.queues[team]
            window: list[Job] = [key[-1] for key in queue[:limit]]  # type: ignore[misc]
            if len(queue) > limit:
                truncated[team] = window
            jobs.extend(window)
        if partition.preemptors:
            seen = {job.id for job in jobs}
            for i in sorted(partition.preemptors - seen):
                job = partition.pending[i]
                jobs.append(job)
                if job.team in truncated:
                    truncated[job.team] = [*truncated[job.team], job]
        return jobs, truncated

    def _passes(self, partition: _Partition, now: float) -> None:
        for _ in range(_MAX_PASSES_PER_INSTANT):
            pending, truncated = self._window(partition)
            if not pending:
                return
            self.passes += 1
            fair = partition.policy == "fair"
            decisions = plan(
                SchedulingInput(
                    pending=pending,
                    active=partition.active,
                    now=now,
                    past_usage=partition.usage.usage(now) if fair else {},
                    estimate_starts=False,
                    preemptors=partition.preemptors,
                )
            )
            # Each decided job is still in ``partition.pending`` when its decision is applied
            # (victims requeued by a Preempt are not among this pass's jobs).
            queued = partition.pending
            preempted = False
            for decision in decisions:
                if type(decision) is Wait:
                    continue
                if isinstance(decision, Admit):
                    self._start(partition, queued[decision.job_id], decision.nodes, now)
                elif isinstance(decision, Preempt):
                    for victim in decision.victims:
                        self._preempt(partition, victim, decision.reason, now)
                    preempted = True
                elif isinstance(decision, Cancel):
                    job = queued[decision.job_id]
                    self._dequeue(partition, job)
                    partition.active.forget(job.id)
                    record = self._by_id[job.id]
                    record.state, record.reason = "UNSCHEDULABLE", decision.reason
                else:  # pragma: no cover - plan gives only these four
                    raise TypeError(f"unknown decision {decision!r}")
            if preempted or partition.preemptors:  # else none is owed, as before
                partition.preemptors = preemptors_after(partition.preemptors, decisions)
            # Again at once after preemptions, and when a team cut short had its whole
            # window started: its next jobs come within reach. Without a preemption, a
            # job of this pass is still pending exactly when it waits.
            if preempted:
                continue
            if not any(all(job.id not in queued for job in jobs) for jobs in truncated.values()):
                return
        raise RuntimeError(  # pragma: no cover - the core guarantees progress
            f"more than {_MAX_PASSES_PER_INSTANT} passes at t={now:g}"
            f" in partition {partition.name!r}"
        )

    def _preempt(self, partition: _Partition, victim: str, reason: str, now: float) -> None:
        record = self._by_id[victim]
        job = self._stop(partition, record, now)
        record.preemptions += 1
        record.state = "PENDING"
        record.reason = reason
        self._enqueue(
            partition,
            dataclasses.replace(
                job, state=JobState.PENDING, admitted_at=None, started_at=None, nodes=()
            ),
        )

    def _give_up(self) -> None:
        """Jobs still pending when nothing is left to happen can never start."""
        for record in self.records:
            if record.state == "PENDING":
                record.state = "UNSCHEDULABLE"
                record.reason = "still waiting when nothing else was left to run or arrive" + (
                    f" (last: {record.reason})" if record.reason else ""
                )
