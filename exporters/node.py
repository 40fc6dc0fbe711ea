"""The node exporter: this node's GPUs (NVML), host (psutil) and dcsched jobs' processes,
read at scrape time, as the series of docs/metrics.md ("Node exporter").

One ``NodeExporter`` is a prometheus_client collector with its own ``CollectorRegistry``
(``serve`` puts it on HTTP) and also answers ``snapshot()``: the same reading as a plain
``NodeUsage`` value, for the scheduler (placement by load, ``dcsched top``).

Invariants:
- Nothing here crashes a scrape. Without NVML (no library, no driver, ``nvmlInit`` fails)
  the GPU series are absent and ``dcsched_gpu_collector_up`` is 0; ``nvmlInit`` is tried
  again at most every ``init_retry_s``. An NVML error on one GPU, or on one field of one
  GPU, drops only that value (or that GPU when even its UUID cannot be read); see
  ``dcsched.exporters.gpu``.
- Every reading (a scrape or a ``snapshot()``) is one pass under a lock. "Since the
  previous scrape" (the CPU ratio, NVML's process samples) means since the previous
  reading of this exporter, whoever asked for it.
- XID events are drained from NVML's event set at each reading, without waiting; the
  counts start at zero when the exporter starts.

Words: a job's *GPU share* on a GPU is the sum of its processes' SM percentages in NVML's
process samples taken since the previous reading (each process's samples averaged),
as a ratio capped at 1. *Unattributed* GPU memory belongs to processes of no dcsched job,
or to processes this exporter cannot see (another PID namespace).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dcsched.exporters.exposition import ExporterError, MetricsServer, serve_registry
from dcsched.exporters.gpu import GpuReader, GpuReading
from dcsched.exporters.host import HostReader, HostReading
from dcsched.exporters.nvml import GpuLibrary, PyNvml
from dcsched.exporters.procs import JobKey, JobProcesses, ProcessTable

__all__ = ["ExporterError", "MetricsServer", "NodeExporter", "NodeUsage", "serve"]

INIT_RETRY_S = 60.0
GPU_LABELS = ["node", "gpu", "uuid", "model"]
JOB_GPU_LABELS = ["node", "gpu", "job_id", "team"]  # `job` belongs to Prometheus
JOB_LABELS = ["node", "job_id", "team"]

# name, help, unit of the per-GPU gauges (GpuReading.values keys are the names' middles).
GPU_GAUGES = (
    ("utilization_ratio", "SM busy ratio over NVML's last sample period"),
    ("memory_used_bytes", "Framebuffer memory used"),
    ("memory_total_bytes", "Framebuffer memory total"),
    ("temperature_celsius", "GPU core temperature"),
    ("power_watts", "Power draw"),
    ("sm_clock_hertz", "SM clock"),
)


# -- readings ----------------------------------------------------------------------------


@dataclass
class JobGpu:
    memory_used_bytes: int | None = None
    utilization_ratio: float | None = None


@dataclass
class Reading:
    measured_at: float
    gpus: list[GpuReading] | None  # None: the GPU collector is down
    host: HostReading
    jobs: dict[JobKey, JobProcesses]
    job_gpus: dict[tuple[JobKey, int], JobGpu]
    unattributed: dict[int, int]  # gpu -> bytes
    durations: dict[str, float]


# -- the snapshot for the scheduler ------------------------------------------------------


@dataclass(frozen=True)
class GpuUsage:
    index: int
    uuid: str
    model: str
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None


@dataclass(frozen=True)
class JobUsage:
    job: str
    team: str
    gpus: list[int]  # indices of the GPUs where its processes hold memory or run
    gpu_memory_used_bytes: int
    gpu_utilization_ratio: float | None  # mean share over its GPUs; None: no samples
    cpu_seconds: float
    memory_rss_bytes: int


@dataclass(frozen=True)
class NodeUsage:
    """What one node measures, for the scheduler. ``None`` fields: NVML would not say."""

    node: str
    measured_at: float  # unix seconds
    cpu_utilization_ratio: float
    cpus: int
    memory_used_bytes: int
    memory_total_bytes: int
    gpu_collector_up: bool
    gpus: list[GpuUsage]
    jobs: list[JobUsage]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: numbers, strings, booleans, lists and null only."""
        return asdict(self)


# -- the exporter -------------------------------------------------------------------------


class NodeExporter(Collector):
    """The node's collector. ``gpus`` defaults to the real NVML (``PyNvml``); tests and
    the benchmark pass ``dcsched.exporters.nvml_fake.FakeNvml``."""

    def __init__(
        self,
        node: str | None = None,
        gpus: GpuLibrary | None = None,
        *,
        processes: ProcessTable | None = None,
        init_retry_s: float = INIT_RETRY_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.node = node or socket.gethostname()
        self._gpus = GpuReader(PyNvml() if gpus is None else gpus, init_retry_s, monotonic)
        self._host = HostReader()
        self._processes = processes if processes is not None else ProcessTable()
        self._clock = clock
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    @property
    def gpu_collector_up(self) -> bool:
        return self._gpus.ready

    def close(self) -> None:
        with self._lock:
            self._gpus.close()
            self._processes.close()

    def read(self) -> Reading:
        """One reading of everything (what a scrape and ``snapshot()`` both start from)."""
        with self._lock:
            durations: dict[str, float] = {}
            started = time.perf_counter()
            jobs = self._processes.scan()
            pid_of_job = self._processes.pid_of_job
            durations["jobs"] = time.perf_counter() - started
            started = time.perf_counter()
            gpus = self._gpus.read()
            durations["gpu"] = time.perf_counter() - started
            started = time.perf_counter()
            host = self._host.read()
            durations["host"] = time.perf_counter() - started
            started = time.perf_counter()
            job_gpus, unattributed = _join(gpus or [], pid_of_job)
            durations["jobs"] += time.perf_counter() - started
            return Reading(self._clock(), gpus, host, jobs, job_gpus, unattributed, durations)

    def snapshot(self) -> NodeUsage:
        return usage_of(self.node, self.read())

    # -- Collector ------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """The families, without reading anything (the registry checks names with it)."""
        return list(_families(self.node, None))

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.node, self.read())


def _join(
    gpus: list[GpuReading], pid_of_job: dict[int, JobKey]
) -> tuple[dict[tuple[JobKey, int], JobGpu], dict[int, int]]:
    """GPU processes and samples, attributed to jobs."""
    job_gpus: dict[tuple[JobKey, int], JobGpu] = {}
    unattributed: dict[int, int] = {}
    for gpu in gpus:
        if gpu.processes is not None:
            unattributed[gpu.index] = 0
            for proc in gpu.processes:
                job = pid_of_job.get(proc.pid)
                if job is None:
                    unattributed[gpu.index] += proc.used_memory_bytes or 0
                    continue
                entry = job_gpus.setdefault((job, gpu.index), JobGpu(memory_used_bytes=0))
                entry.memory_used_bytes = (entry.memory_used_bytes or 0) + (
                    proc.used_memory_bytes or 0
                )
        if gpu.shares is not None:
            shares: dict[JobKey, float] = {}
            for pid, share in gpu.shares.items():
                job = pid_of_job.get(pid)
                if job is not None:
                    shares[job] = shares.get(job, 0.0) + share
            for job in {job for job, index in job_gpus if index == gpu.index} | set(shares):
                default = JobGpu(memory_used_bytes=0 if gpu.processes is not None else None)
                entry = job_gpus.setdefault((job, gpu.index), default)
                entry.utilization_ratio = min(1.0, shares.get(job, 0.0))
    return job_gpus, unattributed


def usage_of(node: str, reading: Reading) -> NodeUsage:
    host = reading.host
    gpus = [
        GpuUsage(
            index=g.index,
            uuid=g.uuid,
            model=g.model,
            utilization_ratio=g.values.get("utilization_ratio"),
            memory_used_bytes=_int_or_none(g.values.get("memory_used_bytes")),
            memory_total_bytes=_int_or_none(g.values.get("memory_total_bytes")),
            temperature_celsius=g.values.get("temperature_celsius"),
            power_watts=g.values.get("power_watts"),
        )
        for g in reading.gpus or []
    ]
    jobs = []
    for key, procs in sorted(reading.jobs.items()):
        on_gpus = sorted(index for job, index in reading.job_gpus if job == key)
        entries = [reading.job_gpus[(key, index)] for index in on_gpus]
        shares = [e.utilization_ratio for e in entries if e.utilization_ratio is not None]
        jobs.append(
            JobUsage(
                job=key[0],
                team=key[1],
                gpus=on_gpus,
                gpu_memory_used_bytes=sum(e.memory_used_bytes or 0 for e in entries),
                gpu_utilization_ratio=sum(shares) / len(shares) if shares else None,
                cpu_seconds=procs.cpu_seconds,
                memory_rss_bytes=procs.rss_bytes,
            )
        )
    return NodeUsage(
        node=node,
        measured_at=reading.measured_at,
        cpu_utilization_ratio=host.cpu_utilization_ratio,
        cpus=host.cpus,
        memory_used_bytes=host.memory_used_bytes,
        memory_total_bytes=host.memory_total_bytes,
        gpu_collector_up=reading.gpus is not None,
        gpus=gpus,
        jobs=jobs,
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _families(node: str, reading: Reading | None) -> Iterator[Metric]:
    """The series of docs/metrics.md from one reading (``None``: empty families, for
    ``describe``). GPU families are left out while the GPU collector is down."""
    up = GaugeMetricFamily(
        "dcsched_gpu_collector_up",
        "1 if NVML initialised and was read at this scrape, else 0",
        labels=["node"],
    )
    gpus = reading.gpus if reading is not None else []
    if reading is not None:
        up.add_metric([node], 1.0 if gpus is not None else 0.0)
    yield up
    if gpus is not None:
        yield from _gpu_families(node, gpus, reading)
    yield from _host_families(node, reading.host if reading is not None else None)
    job_cpu = CounterMetricFamily(
        "dcsched_job_cpu_seconds",
        "CPU time of the job's processes on this node (exited ones keep counting)",
        labels=JOB_LABELS,
    )
    job_rss = GaugeMetricFamily(
        "dcsched_job_memory_rss_bytes",
        "Resident memory of the job's live processes on this node",
        labels=JOB_LABELS,
    )
    duration = GaugeMetricFamily(
        "dcsched_exporter_scrape_duration_seconds",
        "How long each collector of the node exporter took at this scrape",
        labels=["node", "collector"],
    )
    if reading is not None:
        for (job, team), procs in sorted(reading.jobs.items()):
            job_cpu.add_metric([node, job, team], procs.cpu_seconds)
            job_rss.add_metric([node, job, team], procs.rss_bytes)
        for collector, seconds in sorted(reading.durations.items()):
            duration.add_metric([node, collector], seconds)
    yield job_cpu
    yield job_rss
    yield duration


def _gpu_families(node: str, gpus: list[GpuReading], reading: Reading | None) -> Iterator[Metric]:
    gauges = {
        key: GaugeMetricFamily(f"dcsched_gpu_{key}", text, labels=GPU_LABELS)
        for key, text in GPU_GAUGES
    }
    energy = CounterMetricFamily(
        "dcsched_gpu_energy_joules", "Energy since the driver loaded", labels=GPU_LABELS
    )
    ecc = CounterMetricFamily(
        "dcsched_gpu_ecc_errors", "Volatile ECC errors", labels=[*GPU_LABELS, "type"]
    )
    xid = CounterMetricFamily(
        "dcsched_gpu_xid_errors", "XID events seen since the exporter started", labels=GPU_LABELS
    )
    last_xid = GaugeMetricFamily(
        "dcsched_gpu_last_xid", "Code of the last XID event (0: none)", labels=GPU_LABELS
    )
    for gpu in gpus:
        labels = [node, str(gpu.index), gpu.uuid, gpu.model]
        for key, family in gauges.items():
            if key in gpu.values:
                family.add_metric(labels, gpu.values[key])
        if "energy_joules" in gpu.values:
            energy.add_metric(labels, gpu.values["energy_joules"])
        for kind, count in sorted(gpu.ecc.items()):
            ecc.add_metric([*labels, kind], count)
        xid.add_metric(labels, gpu.xid_errors)
        last_xid.add_metric(labels, gpu.last_xid)
    yield from gauges.values()
    yield energy
    yield ecc
    yield xid
    yield last_xid
    job_memory = GaugeMetricFamily(
        "dcsched_job_gpu_memory_used_bytes",
        "GPU memory of the job's processes on that GPU",
        labels=JOB_GPU_LABELS,
    )
    job_util = GaugeMetricFamily(
        "dcsched_job_gpu_utilization_ratio",
        "The job's SM share on that GPU (NVML process samples)",
        labels=JOB_GPU_LABELS,
    )
    unattributed = GaugeMetricFamily(
        "dcsched_gpu_unattributed_memory_used_bytes",
        "GPU memory of processes that belong to no dcsched job",
        labels=["node", "gpu"],
    )
    if reading is not None:
        for ((job, team), index), entry in sorted(reading.job_gpus.items()):
            labels = [node, str(index), job, team]
            if entry.memory_used_bytes is not None:
                job_memory.add_metric(labels, entry.memory_used_bytes)
            if entry.utilization_ratio is not None:
                job_util.add_metric(labels, entry.utilization_ratio)
        for index, used in sorted(reading.unattributed.items()):
            unattributed.add_metric([node, str(index)], used)
    yield job_memory
    yield job_util
    yield unattributed


def _host_families(node: str, host: HostReading | None) -> Iterator[Metric]:
    gauges = (
        (
            "dcsched_node_cpu_utilization_ratio",
            "All CPUs, since the previous scrape",
            "cpu_utilization_ratio",
        ),
        ("dcsched_node_cpus", "Logical CPUs", "cpus"),
        (
            "dcsched_node_memory_used_bytes",
            "Memory in use (total - available)",
            "memory_used_bytes",
        ),
        ("dcsched_node_memory_total_bytes", "Memory total", "memory_total_bytes"),
    )
    counters = (
        ("dcsched_node_disk_read_bytes", "Bytes read, all disks", "disk_read_bytes"),
        ("dcsched_node_disk_written_bytes", "Bytes written, all disks", "disk_written_bytes"),
        (
            "dcsched_node_network_receive_bytes",
            "Bytes received, all interfaces but loopback",
            "network_receive_bytes",
        ),
        (
            "dcsched_node_network_transmit_bytes",
            "Bytes sent, all interfaces but loopback",
            "network_transmit_bytes",
        ),
    )
    for name, text, attribute in gauges:
        gauge = GaugeMetricFamily(name, text, labels=["node"])
        value = getattr(host, attribute) if host is not None else None
        if value is not None:
            gauge.add_metric([node], value)
        yield gauge
    for name, text, attribute in counters:
        counter = CounterMetricFamily(name, text, labels=["node"])
        value = getattr(host, attribute) if host is not None else None
        if value is not None:
            counter.add_metric([node], value)
        yield counter


# -- HTTP ---------------------------------------------------------------------------------


def serve(host: str, port: int, exporter: NodeExporter) -> tuple[MetricsServer, int]:
    """Serve the exporter's registry on ``http://host:port/metrics`` in a daemon thread
    (``dcsched.exporters.exposition``); port 0 picks a free one. Returns the running
    server and its port. Raises ``ExporterError`` when the address cannot be bound."""
    server = serve_registry(host, port, exporter.registry)
    return server, server.port
