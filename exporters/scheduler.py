"""Scheduler metrics for the server's ``/metrics``.

Counters and histograms are fed by the service's job events; the per-state job gauge is
read from the store at scrape time, so it is right even after a restart. The registry is
injected (tests build a fresh ``CollectorRegistry``).

Series and labels (bounded: team and kind come from validated specs, state from the
lifecycle):
- dcsched_jobs{state,team,kind}                      gauge, jobs in each state
- dcsched_job_submissions_total{team,kind}           counter
- dcsched_job_queue_wait_seconds{team,kind}          histogram, submit -> start
- dcsched_job_run_seconds{team,kind,state}           histogram, start -> end
- dcsched_allocated_gpu_seconds_total{team}          counter, from the allocation history
- dcsched_allocated_cpu_seconds_total{team}          counter
- dcsched_preemptions_total{team}                    counter, victims by team
- dcsched_admission_pass_duration_seconds            histogram, one pass of the core
and, read from the service at scrape time (``SchedulerStateCollector``): queues, quotas,
fair share, node capacity and per running job allocation and training progress.
docs/metrics.md lists every series with its labels and the worst-case cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.config import ClusterConfig
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RUN_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
RESOURCES = (("cpus", "cpus"), ("gpus", "gpus"), ("memory_bytes", "memory"))


class _JobsByState(Collector):
    def __init__(self, counts: Callable[[], dict[tuple[str, str, str], int]]):
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dcsched_jobs", "Jobs known to dcsched by state", labels=["state", "team", "kind"]
        )
        for (state, team, kind), count in sorted(self._counts().items()):
            family.add_metric([state, team, kind], count)
        yield family


class _AllocatedSeconds(Collector):
    """Allocated GPU- and CPU-seconds per team since the store began, computed from the
    jobs' allocation history at scrape time (so it survives restarts and only grows)."""

    def __init__(self, allocated_by_team: Callable[[], dict[str, Resources]]):
        self._allocated = allocated_by_team

    def collect(self) -> Iterator[CounterMetricFamily]:
        gpu = CounterMetricFamily(
            "dcsched_allocated_gpu_seconds", "GPU-seconds allocated to jobs", labels=["team"]
        )
        cpu = CounterMetricFamily(
            "dcsched_allocated_cpu_seconds", "CPU-seconds allocated to jobs", labels=["team"]
        )
        for team, total in sorted(self._allocated().items()):
            gpu.add_metric([team], total.gpus)
            cpu.add_metric([team], total.cpus)
        yield gpu
        yield cpu


class SchedulerMetrics:
    """Implements the service's JobEvents and registers the series above."""

    def __init__(
        self,
        registry: CollectorRegistry,
        job_counts: Callable[[], dict[tuple[str, str, str], int]],
        allocated_by_team: Callable[[], dict[str, Resources]] | None = None,
    ):
        self.registry = registry
        self.submissions = Counter(
            "dcsched_job_submissions",
            "Jobs accepted by the API",
            ["team", "kind"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "dcsched_job_queue_wait_seconds",
            "Time from submission to the start of the run",
            ["team", "kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.run_time = Histogram(
            "dcsched_job_run_seconds",
            "Time from the start of the run to its end",
            ["team", "kind", "state"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.preemptions = Counter(
            "dcsched_preemptions",
            "Runs preempted to make room for other jobs, by the preempted job's team",
            ["team"],
            registry=registry,
        )
        self.admission_pass_time = Histogram(
            "dcsched_admission_pass_duration_seconds",
            "Time one scheduling pass of the policy core took",
            buckets=PASS_BUCKETS,
            registry=registry,
        )
        registry.register(_JobsByState(job_counts))
        if allocated_by_team is not None:
            registry.register(_AllocatedSeconds(allocated_by_team))

    def submitted(self, job: Job) -> None:
        self.submissions.labels(job.team, job.kind).inc()

    def started(self, job: Job, queue_wait_s: float) -> None:
        self.queue_wait.labels(job.team, job.kind).observe(max(0.0, queue_wait_s))

    def finished(self, job: Job, run_s: float | None) -> None:
        if run_s is not None:
            self.run_time.labels(job.team, job.kind, job.state.value).observe(max(0.0, run_s))

    def preempted(self, job: Job) -> None:
        self.preemptions.labels(job.team).inc()

    def admission_pass(self, seconds: float, pending: int) -> None:
        self.admission_pass_time.observe(seconds)


class SchedulerState(Protocol):
    """What the state collector reads from the scheduling service."""

    @property
    def config(self) -> ClusterConfig: ...

    def teams_view(
        self, active: list[Job] | None = None, pending: list[Job] | None = None
    ) -> list[dict[str, Any]]: ...

    def jobs_in(self, states: Sequence[JobState]) -> list[Job]: ...

    def cluster_snapshot(self, active: list[Job] | None = None) -> ClusterSnapshot: ...

    def run_progress(self, job: Job) -> dict[str, Any] | None: ...

    def now(self) -> float: ...

    def ray_status(self) -> dict[str, Any]: ...


class SchedulerStateCollector(Collector):
    """Queues, quotas, fair share, node capacity and running jobs, read at scrape time.

    Per-job series exist only while the job runs, so job ids never pile up as labels.
    """

    def __init__(self, state: SchedulerState):
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state
        now = state.now()
        pending = state.jobs_in([JobState.PENDING])
        running = state.jobs_in([JobState.ADMITTED, JobState.RUNNING])
        teams = state.teams_view(running, pending)
        team_names = sorted({t["name"] for t in teams} | {j.team for j in pending})
        yield from _queue_families(pending, team_names, now)
        cluster = state.cluster_snapshot(running)
        yield from _team_families(teams, state.config, cluster)
        yield from _node_families(cluster)
        yield from _job_families(running, state)
        ray_up = GaugeMetricFamily(
            "dcsched_ray_up",
            "1 while the server reaches Ray's cluster; 0 while it is unreachable (jobs stay "
            "queued and nothing is admitted)",
        )
        ray_up.add_metric([], 1.0 if state.ray_status()["reachable"] else 0.0)
        yield ray_up


def _queue_families(
    pending: list[Job], teams: list[str], now: float
) -> Iterator[GaugeMetricFamily]:
    length = GaugeMetricFamily("dcsched_queue_length", "PENDING jobs", labels=["team"])
    oldest = GaugeMetricFamily(
        "dcsched_queue_oldest_pending_age_seconds",
        "Age of the oldest PENDING job (0 when none)",
        labels=["team"],
    )
    gpus = GaugeMetricFamily(
        "dcsched_queue_pending_gpus", "GPUs asked for by PENDING jobs", labels=["team"]
    )
    by_team: dict[str, list[Job]] = {team: [] for team in teams}
    for job in pending:
        by_team.setdefault(job.team, []).append(job)
    for team, mine in sorted(by_team.items()):
        length.add_metric([team], len(mine))
        first = min((job.submitted_at for job in mine), default=None)
        oldest.add_metric([team], 0.0 if first is None else max(0.0, now - first))
        gpus.add_metric([team], sum(job.request.resources.total().gpus for job in mine))
    yield length
    yield oldest
    yield gpus


def _team_families(
    teams: list[dict[str, Any]],
    config: ClusterConfig,
    cluster: ClusterSnapshot,
) -> Iterator[GaugeMetricFamily]:
    labels = ["team", "resource"]
    nominal = GaugeMetricFamily(
        "dcsched_team_quota_nominal", "Nominal quota (absent: unlimited)", labels=labels
    )
    used = GaugeMetricFamily(
        "dcsched_team_quota_used", "Held by the team's admitted and running jobs", labels=labels
    )
    borrowed = GaugeMetricFamily(
        "dcsched_team_quota_borrowed", "Held above the nominal quota (borrowed)", labels=labels
    )
    weight = GaugeMetricFamily(
        "dcsched_team_fair_share_weight", "Weight under the fair policy", labels=["team"]
    )
    share = GaugeMetricFamily(
        "dcsched_team_dominant_share_ratio",
        "The team's dominant share: its largest share of any cluster resource held now "
        "(unweighted, no past usage; not the fair order's share)",
        labels=["team"],
    )
    total = cluster.total()
    for team in teams:
        name = team["name"]
        quota = team["quota"] or {}
        for label, key in RESOURCES:
            if quota.get(key) is not None:
                nominal.add_metric([name, label], float(quota[key]))
            used.add_metric([name, label], float(team["used"][key]))
            if team["borrowed"] is not None:
                borrowed.add_metric([name, label], float(team["borrowed"][key]))
        configured = config.team(name)
        weight.add_metric([name], configured.weight if configured else 1.0)
        held = Resources(**team["used"])
        share.add_metric([name], _dominant_share(held, total))
    yield nominal
    yield used
    yield borrowed
    yield weight
    yield share


def _dominant_share(held: Resources, total: Resources) -> float:
    shares = [
        held.cpus / total.cpus if total.cpus else 0.0,
        held.gpus / total.gpus if total.gpus else 0.0,
        held.memory / total.memory if total.memory else 0.0,
    ]
    return max(shares)


def _node_families(cluster: ClusterSnapshot) -> Iterator[GaugeMetricFamily]:
    capacity = GaugeMetricFamily(
        "dcsched_cluster_node_capacity",
        "What Ray reports the node has",
        labels=["node", "resource"],
    )
    free = GaugeMetricFamily(
        "dcsched_cluster_node_free", "Not reserved by anyone", labels=["node", "resource"]
    )
    for node in cluster.alive_nodes():
        for label, key in RESOURCES:
            capacity.add_metric([node.id, label], float(getattr(node.total, key)))
            free.add_metric([node.id, label], float(getattr(node.available, key)))
    yield capacity
    yield free


def _job_families(running: list[Job], state: SchedulerState) -> Iterator[GaugeMetricFamily]:
    labels = ["job_id", "team"]
    gpus = GaugeMetricFamily(
        "dcsched_job_allocated_gpus", "GPUs reserved for a running job", labels=labels
    )
    cpus = GaugeMetricFamily(
        "dcsched_job_allocated_cpus", "CPUs reserved for a running job", labels=labels
    )
    epoch = GaugeMetricFamily(
        "dcsched_job_training_epoch", "Last finished epoch of a running job", labels=labels
    )
    loss = GaugeMetricFamily("dcsched_job_training_loss", "Its training loss", labels=labels)
    speed = GaugeMetricFamily(
        "dcsched_job_training_samples_per_second", "Its training throughput", labels=labels
    )
    rows_done = GaugeMetricFamily(
        "dcsched_job_inference_rows_done", "Rows a running infer job has scored", labels=labels
    )
    rows_all = GaugeMetricFamily(
        "dcsched_job_inference_rows", "Rows a running infer job scores in all", labels=labels
    )
    rows_speed = GaugeMetricFamily(
        "dcsched_job_inference_rows_per_second",
        "A running infer job's scoring throughput (all workers)",
        labels=labels,
    )
    for job in running:
        key = [job.id, job.team]
        total = job.request.resources.total()
        gpus.add_metric(key, total.gpus)
        cpus.add_metric(key, total.cpus)
        if job.state is not JobState.RUNNING:
            continue
        progress = state.run_progress(job) or {}
        for family, field in (
            (epoch, "epoch"),
            (loss, "loss"),
            (speed, "samples_per_s"),
            (rows_done, "rows_done"),
            (rows_all, "rows_total"),
            (rows_speed, "rows_per_s"),
        ):
            value = progress.get(field)
            if isinstance(value, int | float):
                family.add_metric(key, float(value))
    yield gpus
    yield cpus
    yield epoch
    yield loss
    yield speed
    yield rows_done
    yield rows_all
    yield rows_speed
