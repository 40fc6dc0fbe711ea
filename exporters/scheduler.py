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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dcsched.core.job import Job
from dcsched.core.resources import Resources

WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RUN_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600)


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
