"""The node exporter against the NVML stand-in (FakeNvml: this machine has no GPU) and
real processes: the jobs' processes are real ``sleep``/python children carrying
DCSCHED_JOB_ID and DCSCHED_TEAM, which the fake NVML reports as its GPU processes.

Scrapes go through the exporter's own registry or over real HTTP on 127.0.0.1; the text
is checked by ``promtool check metrics`` and against the table in docs/metrics.md.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dcsched.exporters.exposition import render
from dcsched.exporters.node import ExporterError, NodeExporter, _families, serve
from dcsched.exporters.nvml import ERROR_GPU_IS_LOST, ERROR_NOT_SUPPORTED, PyNvml
from dcsched.exporters.nvml_fake import FIELDS, GIB, FakeNvml, FakeProcess
from dcsched.exporters.procs import ENV_RETRIES, ProcessTable
from tests.conftest import REPO

NODE = "node-a"
Spawn = Callable[..., subprocess.Popen[bytes]]

BURN_THEN_SLEEP = (
    "import time\n"
    "end = time.process_time() + {seconds}\n"
    "while time.process_time() < end: pass\n"
    "time.sleep({sleep})\n"
)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts real child processes, with a dcsched job's environment when asked; stops
    them by PID at the end."""
    children: list[subprocess.Popen[bytes]] = []

    def start(
        job: str | None = None, team: str | None = None, argv: tuple[str, ...] = ("sleep", "300")
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
        if job is not None:
            env["DCSCHED_JOB_ID"] = job
        if team is not None:
            env["DCSCHED_TEAM"] = team
        child = subprocess.Popen(list(argv), env=env)
        children.append(child)
        wait_exec(child.pid)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def wait_exec(pid: int) -> None:
    """Until the child runs its program: between fork and exec the kernel shows an empty
    command line and environment (the exporter copes; exact counts here would not)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not exec")


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process, read from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def network_receive_bytes() -> int:
    """Bytes received by every interface but loopback, from /proc/net/dev."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        nic, counters = line.split(":", 1)
        if nic.strip() != "lo":
            total += int(counters.split()[0])
    return total


def value(exporter: NodeExporter, name: str, **labels: str) -> float | None:
    return exporter.registry.get_sample_value(name, {"node": NODE, **labels})


def sample_names(exporter: NodeExporter) -> set[str]:
    return {s.name for family in exporter.registry.collect() for s in family.samples}


def gpu_labels(fake: FakeNvml, index: int) -> dict[str, str]:
    gpu = fake.gpus[index]
    return {"gpu": str(index), "uuid": gpu.uuid, "model": gpu.name}


@pytest.fixture
def cluster(spawn: Spawn) -> tuple[FakeNvml, dict[str, list[int]]]:
    """Four fake GPUs; job-a (team vision) has three processes, job-b (team nlp) two,
    and one process belongs to no job. Placement on the GPUs is spelled out below."""
    pids = {
        "job-a": [spawn("job-a", "vision").pid for _ in range(3)],
        "job-b": [spawn("job-b", "nlp").pid for _ in range(2)],
        "none": [spawn().pid],
    }
    fake = FakeNvml.with_gpus(4)
    a, b, other = pids["job-a"], pids["job-b"], pids["none"][0]
    fake.procs = [
        FakeProcess(a[0], 0, 2 * GIB, 40.0),
        FakeProcess(a[1], 0, 1 * GIB, 20.0),
        FakeProcess(a[2], 1, 3 * GIB, 70.0),
        FakeProcess(b[0], 2, 4 * GIB, 90.0),
        FakeProcess(b[1], 3, 1 * GIB, 0.0),
        FakeProcess(other, 3, 5 * GIB, 50.0),
    ]
    for gpu in fake.gpus:
        gpu.memory_used_bytes = sum(
            p.used_memory_bytes or 0 for p in fake.procs if p.gpu == gpu.index
        )
    return fake, pids


def test_gpu_series_and_jobs_attributed_by_their_environment(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, _ = cluster
    fake.gpus[2].utilization_percent = 95.0
    fake.gpus[2].temperature_celsius = 83.0
    fake.gpus[1].ecc_corrected, fake.gpus[1].ecc_uncorrected = 7, 1
    exporter = NodeExporter(NODE, fake)

    assert value(exporter, "dcsched_gpu_collector_up") == 1.0
    g2 = gpu_labels(fake, 2)
    assert value(exporter, "dcsched_gpu_utilization_ratio", **g2) == pytest.approx(0.95)
    assert value(exporter, "dcsched_gpu_temperature_celsius", **g2) == 83.0
    assert value(exporter, "dcsched_gpu_memory_used_bytes", **g2) == 4 * GIB
    assert value(exporter, "dcsched_gpu_memory_total_bytes", **g2) == 80 * GIB
    assert value(exporter, "dcsched_gpu_power_watts", **g2) == 250.0
    assert value(exporter, "dcsched_gpu_energy_joules_total", **g2) == 1_000_000.0
    assert value(exporter, "dcsched_gpu_sm_clock_hertz", **g2) == 1.41e9
    g1 = gpu_labels(fake, 1)
    assert value(exporter, "dcsched_gpu_ecc_errors_total", **g1, type="corrected") == 7
    assert value(exporter, "dcsched_gpu_ecc_errors_total", **g1, type="uncorrected") == 1

    a = {"job_id": "job-a", "team": "vision"}
    b = {"job_id": "job-b", "team": "nlp"}
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="0", **a) == 3 * GIB
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="1", **a) == 3 * GIB
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="2", **b) == 4 * GIB
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="3", **b) == 1 * GIB
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="2", **a) is None
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="0", **a) == pytest.approx(0.6)
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="2", **b) == pytest.approx(0.9)
    # job-b's process on GPU 3 sent no samples: it is there, with a share of 0.
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="3", **b) == 0.0
    assert value(exporter, "dcsched_gpu_unattributed_memory_used_bytes", gpu="3") == 5 * GIB
    assert value(exporter, "dcsched_gpu_unattributed_memory_used_bytes", gpu="0") == 0.0

    # CPU and memory of the jobs' real processes; the process of no job is in no job.
    pids = cluster[1]
    for job, key in ((a, "job-a"), (b, "job-b")):
        # The sum over the job's processes, as /proc says before and after the scrape.
        low = sum(proc_cpu_seconds(pid) for pid in pids[key])
        cpu = value(exporter, "dcsched_job_cpu_seconds_total", **job)
        assert cpu is not None and low <= cpu <= sum(proc_cpu_seconds(p) for p in pids[key])
        assert value(exporter, "dcsched_job_memory_rss_bytes", **job) > 0
    jobs = {
        (s.labels["job_id"], s.labels["team"])
        for f in exporter.registry.collect()
        for s in f.samples
        if s.name == "dcsched_job_memory_rss_bytes"
    }
    assert ("job-a", "vision") in jobs and ("job-b", "nlp") in jobs


def test_a_job_with_processes_in_two_teams_env_is_two_series(spawn: Spawn) -> None:
    spawn("job-x", "t1")
    spawn("job-x", "t2")
    spawn("job-only", None)  # half a job's environment: not attributed
    exporter = NodeExporter(NODE, FakeNvml(available=False))
    assert value(exporter, "dcsched_job_memory_rss_bytes", job_id="job-x", team="t1") > 0
    assert value(exporter, "dcsched_job_memory_rss_bytes", job_id="job-x", team="t2") > 0
    names = {
        s.labels.get("job_id")
        for f in exporter.registry.collect()
        for s in f.samples
        if s.name == "dcsched_job_memory_rss_bytes"
    }
    assert "job-only" not in names


def test_without_nvml_gpu_series_are_absent_and_nothing_crashes(spawn: Spawn) -> None:
    spawn("job-a", "vision")
    fake = FakeNvml(available=False)
    exporter = NodeExporter(NODE, fake)
    assert value(exporter, "dcsched_gpu_collector_up") == 0.0
    names = sample_names(exporter)
    assert not {n for n in names if n.startswith("dcsched_gpu_")} - {"dcsched_gpu_collector_up"}
    assert not {n for n in names if n.startswith("dcsched_job_gpu_")}
    assert value(exporter, "dcsched_node_cpus") == os.cpu_count()
    assert value(exporter, "dcsched_node_memory_total_bytes") > 0
    low = network_receive_bytes()
    received = value(exporter, "dcsched_node_network_receive_bytes_total")
    assert received is not None and low <= received <= network_receive_bytes()
    assert value(exporter, "dcsched_job_memory_rss_bytes", job_id="job-a", team="vision") > 0
    snapshot = exporter.snapshot()
    assert snapshot.gpu_collector_up is False and snapshot.gpus == []


def test_the_real_nvml_here_gives_up_or_real_gpus() -> None:
    """The default library is the real NVML: on this machine (no GPU) it fails to
    initialise and the exporter says so with collector_up 0; on a GPU machine it reads
    every GPU (tests/gpu checks the values)."""
    probe = PyNvml()
    try:
        probe.init()
        count = probe.device_count()
        probe.shutdown()
    except Exception:
        count = None
    exporter = NodeExporter(NODE)
    up = value(exporter, "dcsched_gpu_collector_up")
    gpu_series = [
        s
        for f in exporter.registry.collect()
        for s in f.samples
        if s.name == "dcsched_gpu_memory_total_bytes"
    ]
    exporter.close()
    if count is None:
        assert up == 0.0 and gpu_series == []
    else:
        assert up == 1.0 and len(gpu_series) == count


def test_nvml_init_is_retried_but_not_at_every_scrape() -> None:
    fake = FakeNvml.with_gpus(1)
    fake.available = False
    now = [100.0]
    exporter = NodeExporter(NODE, fake, init_retry_s=60, monotonic=lambda: now[0])
    assert value(exporter, "dcsched_gpu_collector_up") == 0.0
    fake.available = True  # the driver comes back
    assert value(exporter, "dcsched_gpu_collector_up") == 0.0
    assert fake.calls["init"] == 1
    now[0] += 61
    assert value(exporter, "dcsched_gpu_collector_up") == 1.0
    assert fake.calls["init"] == 2
    exporter.close()
    assert fake.calls["shutdown"] == 1


def test_an_error_on_one_field_drops_only_that_value(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, _ = cluster
    fake.fail("temperature_celsius", gpu=1, code=ERROR_NOT_SUPPORTED)
    fake.fail("memory", gpu=0)
    fake.fail("ecc_errors", gpu=3, code=ERROR_NOT_SUPPORTED)
    exporter = NodeExporter(NODE, fake)
    g0, g1, g3 = gpu_labels(fake, 0), gpu_labels(fake, 1), gpu_labels(fake, 3)
    assert value(exporter, "dcsched_gpu_collector_up") == 1.0
    assert value(exporter, "dcsched_gpu_temperature_celsius", **g1) is None
    assert value(exporter, "dcsched_gpu_temperature_celsius", **g0) == 60.0
    assert value(exporter, "dcsched_gpu_power_watts", **g1) == 250.0
    assert value(exporter, "dcsched_gpu_memory_used_bytes", **g0) is None
    assert value(exporter, "dcsched_gpu_memory_total_bytes", **g0) is None
    assert value(exporter, "dcsched_gpu_memory_total_bytes", **g1) == 80 * GIB
    assert value(exporter, "dcsched_gpu_utilization_ratio", **g0) == 0.5
    assert value(exporter, "dcsched_gpu_ecc_errors_total", **g3, type="corrected") is None
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g3) == 0.0
    fake.heal()
    assert value(exporter, "dcsched_gpu_temperature_celsius", **g1) == 60.0
    assert value(exporter, "dcsched_gpu_memory_used_bytes", **g0) == 3 * GIB


def test_process_errors_drop_only_that_gpus_job_series(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, _ = cluster
    fake.fail("processes", gpu=0)
    fake.fail("process_utilization", gpu=1)
    exporter = NodeExporter(NODE, fake)
    a = {"job_id": "job-a", "team": "vision"}
    # GPU 0: no process list, so no memory per job and no unattributed memory; the
    # samples still give job-a's share.
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="0", **a) is None
    assert value(exporter, "dcsched_gpu_unattributed_memory_used_bytes", gpu="0") is None
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="0", **a) == pytest.approx(0.6)
    # GPU 1: memory but no share.
    assert value(exporter, "dcsched_job_gpu_memory_used_bytes", gpu="1", **a) == 3 * GIB
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="1", **a) is None
    assert value(exporter, "dcsched_gpu_memory_used_bytes", **gpu_labels(fake, 0)) == 3 * GIB


def test_an_error_on_one_gpu_drops_only_that_gpu(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, _ = cluster
    for name in FIELDS:  # GPU 2 has fallen off the bus
        fake.fail(name, gpu=2, code=ERROR_GPU_IS_LOST)
    exporter = NodeExporter(NODE, fake)
    samples = [s for f in exporter.registry.collect() for s in f.samples]
    assert not [s for s in samples if s.labels.get("gpu") == "2"]
    for index in (0, 1, 3):
        assert value(exporter, "dcsched_gpu_power_watts", **gpu_labels(fake, index)) == 250.0
    assert value(exporter, "dcsched_gpu_collector_up") == 1.0
    # Identity is read once and kept: a GPU read once stays labelled the same.
    fake.heal()
    uuid_calls = fake.calls["uuid"]
    value(exporter, "dcsched_gpu_collector_up")
    value(exporter, "dcsched_gpu_collector_up")
    assert fake.calls["uuid"] == uuid_calls + 1  # GPU 2 only, once


def test_device_count_failure_means_collector_down_for_that_scrape() -> None:
    fake = FakeNvml.with_gpus(2)
    exporter = NodeExporter(NODE, fake)
    assert value(exporter, "dcsched_gpu_collector_up") == 1.0
    fake.initialised = False  # e.g. the driver was unloaded: every call fails
    assert value(exporter, "dcsched_gpu_collector_up") == 0.0
    assert not [n for n in sample_names(exporter) if n.startswith("dcsched_gpu_power")]


def test_xid_events_are_counted_per_gpu_with_the_last_code() -> None:
    fake = FakeNvml.with_gpus(3)
    exporter = NodeExporter(NODE, fake)
    g0, g1, g2 = (gpu_labels(fake, i) for i in range(3))
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g0) == 0.0
    assert value(exporter, "dcsched_gpu_last_xid", **g0) == 0.0
    fake.inject_xid(0, 13)
    fake.inject_xid(0, 79)
    fake.inject_xid(2, 48)
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g0) == 2.0
    # (each get_sample_value is a scrape: nothing new arrived in between)
    assert value(exporter, "dcsched_gpu_last_xid", **g0) == 79.0
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g1) == 0.0
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g2) == 1.0
    assert value(exporter, "dcsched_gpu_last_xid", **g2) == 48.0
    fake.inject_xid(0, 31)
    assert value(exporter, "dcsched_gpu_xid_errors_total", **g0) == 3.0
    assert value(exporter, "dcsched_gpu_last_xid", **g0) == 31.0


def test_process_samples_are_taken_since_the_previous_scrape(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, pids = cluster
    exporter = NodeExporter(NODE, fake)
    a = {"job_id": "job-a", "team": "vision"}
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="1", **a) == 0.7
    for proc in fake.procs:
        if proc.pid == pids["job-a"][2]:
            proc.sm_percent = 100.0
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="1", **a) == 1.0
    # shares are capped at 1 even when NVML's samples add up to more
    fake.procs.append(FakeProcess(pids["job-a"][0], 1, GIB, 60.0))
    assert value(exporter, "dcsched_job_gpu_utilization_ratio", gpu="1", **a) == 1.0


def test_attribution_reads_each_environment_once(spawn: Spawn) -> None:
    first = spawn("job-a", "vision")
    second = spawn()
    table = ProcessTable()
    jobs = table.scan([first.pid, second.pid])
    assert table.environ_reads == 2
    assert list(jobs) == [("job-a", "vision")] and jobs[("job-a", "vision")].pids == [first.pid]
    for _ in range(3):
        table.scan([first.pid, second.pid])
    assert table.environ_reads == 2
    third = spawn("job-b", "nlp")
    jobs = table.scan([first.pid, second.pid, third.pid])
    assert table.environ_reads == 3
    assert set(jobs) == {("job-a", "vision"), ("job-b", "nlp")}
    # Whole-node scans cost one environment read per new pid, not per pid per scrape.
    table = ProcessTable()
    table.scan()
    before = table.environ_reads
    table.scan()
    assert table.environ_reads - before < 5  # only processes born in between


def test_an_empty_environment_is_read_again_a_few_times(spawn: Spawn) -> None:
    empty = spawn(argv=("env", "-i", "sleep", "300"))
    wait_exec(empty.pid)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{empty.pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    table = ProcessTable()
    for _ in range(ENV_RETRIES + 3):
        assert table.scan([empty.pid]) == {}
    assert table.environ_reads == 1 + ENV_RETRIES


def test_a_job_process_file_stays_open_and_knows_when_its_process_is_gone(
    spawn: Spawn,
) -> None:
    child = spawn("job-a", "vision")
    table = ProcessTable(use_procfs=True)
    table.scan([child.pid])
    table.scan([child.pid])
    assert table.environ_reads == 1
    child.kill()
    child.wait()
    # Listed still (as a recycled pid would be), but its open file says it is gone.
    assert table.scan([child.pid]) == {}
    table.close()


def test_a_recycled_pid_is_read_again(spawn: Spawn) -> None:
    child = spawn("job-a", "vision")
    table = ProcessTable(use_procfs=False)  # psutil: no file kept open
    table.scan([child.pid])
    # The kernel recycles pids; the cache knows a process by (pid, start time). Make the
    # cached start time disagree with the real one, as after a recycle.
    table._entries[child.pid].start -= 1  # white-box: no way to force pid reuse here
    jobs = table.scan([child.pid])
    assert table.environ_reads == 2
    assert jobs[("job-a", "vision")].pids == [child.pid]


@pytest.mark.parametrize("use_procfs", [True, False], ids=["procfs", "psutil"])
def test_job_cpu_seconds_keep_growing_when_a_process_exits(spawn: Spawn, use_procfs: bool) -> None:
    burner = spawn(
        "job-a", "vision", (sys.executable, "-c", BURN_THEN_SLEEP.format(seconds=0.3, sleep=300))
    )
    sleeper = spawn("job-a", "vision")
    table = ProcessTable(use_procfs=use_procfs)
    pids = [burner.pid, sleeper.pid]
    deadline = time.monotonic() + 30
    cpu = 0.0
    while time.monotonic() < deadline and cpu < 0.3:
        cpu = table.scan(pids)[("job-a", "vision")].cpu_seconds
        time.sleep(0.1)
    assert cpu >= 0.3
    rss = table.scan(pids)[("job-a", "vision")].rss_bytes
    assert rss > 1024 * 1024  # a python interpreter and a sleep
    burner.kill()
    burner.wait()
    after = table.scan([sleeper.pid])[("job-a", "vision")]
    assert after.pids == [sleeper.pid]
    assert after.cpu_seconds >= cpu  # the exited process's CPU time stays in the total
    assert after.rss_bytes < rss
    sleeper.kill()
    sleeper.wait()
    assert table.scan([]) == {}


def test_cpu_ratio_is_measured_between_scrapes(spawn: Spawn) -> None:
    started = time.monotonic()
    exporter = NodeExporter(NODE, FakeNvml(available=False))
    burner = spawn(argv=(sys.executable, "-c", BURN_THEN_SLEEP.format(seconds=0.5, sleep=0)))
    burner.wait(timeout=60)  # it burnt 0.5 CPU-seconds and exited
    ratio = value(exporter, "dcsched_node_cpu_utilization_ratio")
    elapsed = time.monotonic() - started
    # At least the burner's 0.5 s over the interval's CPU time (less a tick of rounding).
    assert ratio is not None and (0.5 - 0.02) / (elapsed * os.cpu_count()) <= ratio <= 1.0
    assert value(exporter, "dcsched_node_memory_used_bytes") <= value(
        exporter, "dcsched_node_memory_total_bytes"
    )


def test_describe_reads_nothing() -> None:
    fake = FakeNvml.with_gpus(2)
    exporter = NodeExporter(NODE, fake)
    assert sum(fake.calls.values()) == 0
    assert "dcsched_gpu_power_watts" in {m.name for m in exporter.describe()}


def test_snapshot_is_plain_json(cluster: tuple[FakeNvml, dict[str, list[int]]]) -> None:
    fake, _ = cluster
    fake.fail("power_watts", gpu=3)
    snapshot = NodeExporter(NODE, fake).snapshot()
    data = json.loads(json.dumps(snapshot.as_dict()))
    assert set(data) == {
        "node",
        "measured_at",
        "cpu_utilization_ratio",
        "cpus",
        "memory_used_bytes",
        "memory_total_bytes",
        "gpu_collector_up",
        "gpus",
        "jobs",
    }
    assert data["node"] == NODE and data["gpu_collector_up"] is True
    assert abs(data["measured_at"] - time.time()) < 60
    assert [g["index"] for g in data["gpus"]] == [0, 1, 2, 3]
    assert set(data["gpus"][0]) == {
        "index",
        "uuid",
        "model",
        "utilization_ratio",
        "memory_used_bytes",
        "memory_total_bytes",
        "temperature_celsius",
        "power_watts",
    }
    assert data["gpus"][3]["power_watts"] is None and data["gpus"][2]["power_watts"] == 250.0
    jobs = {j["job"]: j for j in data["jobs"]}
    assert set(jobs["job-a"]) == {
        "job",
        "team",
        "gpus",
        "gpu_memory_used_bytes",
        "gpu_utilization_ratio",
        "cpu_seconds",
        "memory_rss_bytes",
    }
    assert jobs["job-a"]["team"] == "vision" and jobs["job-a"]["gpus"] == [0, 1]
    assert jobs["job-a"]["gpu_memory_used_bytes"] == 6 * GIB
    assert jobs["job-a"]["gpu_utilization_ratio"] == pytest.approx((0.6 + 0.7) / 2)
    assert jobs["job-b"]["gpus"] == [2, 3]
    assert jobs["job-b"]["memory_rss_bytes"] > 0


# -- the contract: docs/metrics.md and promtool ---------------------------------------------


def documented_node_series() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from the node exporter table of docs/metrics.md."""
    text = (REPO / "docs" / "metrics.md").read_text()
    section = text.split("## Node exporter", 1)[1].split("\n## ", 1)[0]
    series = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`(dcsched_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if match:
            labels = re.sub(r"\([^)]*\)", "", match.group(3))
            names = frozenset(part.strip() for part in labels.split(",") if part.strip())
            series[match.group(1)] = (match.group(2), names)
    return series


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (Debian package `prometheus`; see Makefile)"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_served_text_is_exactly_the_documented_series_and_passes_promtool(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    fake, _ = cluster
    fake.inject_xid(1, 79)
    exporter = NodeExporter(NODE, fake)
    server, port = serve("127.0.0.1", 0, exporter)
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}/metrics"
        text = scrape(server.url)
    finally:
        server.close()
    promtool_check(text)
    documented = documented_node_series()
    assert len(documented) == 25
    seen: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind, label_sets = seen.setdefault(sample.name, (family.type, set()))
            label_sets.add(frozenset(sample.labels))
    assert set(seen) == set(documented), "served and documented series differ"
    for name, (kind, labels) in documented.items():
        assert seen[name][0] == kind, name
        assert seen[name][1] == {labels}, name


def test_the_fast_text_is_what_prometheus_client_writes(
    cluster: tuple[FakeNvml, dict[str, list[int]]],
) -> None:
    """exposition.render against prometheus_client's generate_latest, on one reading
    (label values with quotes, backslashes and newlines included)."""
    fake, _ = cluster
    fake.gpus[0].name = 'odd "model"\\ with\na newline'
    reading = NodeExporter(NODE, fake).read()

    class Fixed:
        def collect(self) -> Iterator[Metric]:
            return _families(NODE, reading)

    registry = CollectorRegistry()
    registry.register(Fixed())
    ours, theirs = render(registry).decode(), generate_latest(registry).decode()

    def parsed(text: str) -> list[tuple[str, str, list[tuple[str, list[Any], float]]]]:
        return [
            (f.name, f.type, sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
            for f in text_string_to_metric_families(text)
        ]

    assert parsed(ours) == parsed(theirs)
    assert len(ours.splitlines()) == len(theirs.splitlines())
    promtool_check(ours)


def test_the_endpoint_answers_metrics_head_and_404() -> None:
    exporter = NodeExporter(NODE, FakeNvml(available=False))
    server, port = serve("127.0.0.1", 0, exporter)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        assert head.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/elsewhere")
        assert connection.getresponse().status == 404
        connection.close()
    finally:
        server.close()


def test_promtool_accepts_the_output_without_gpus(spawn: Spawn) -> None:
    spawn("job-a", "vision")
    exporter = NodeExporter(NODE, FakeNvml(available=False))
    server, _ = serve("127.0.0.1", 0, exporter)
    try:
        text = scrape(server.url)
    finally:
        server.close()
    promtool_check(text)
    assert 'dcsched_gpu_collector_up{node="node-a"} 0.0' in text


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = NodeExporter(NODE, FakeNvml(available=False))
        with pytest.raises(ExporterError, match=rf"127\.0\.0\.1:{port}: .*in use.*--port"):
            serve("127.0.0.1", port, exporter)


def test_the_exporter_module_is_not_loaded_by_the_cli_start_up() -> None:
    code = (
        "import sys, dcsched.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('psutil', 'prometheus', "
        "'pynvml', 'dcsched.exporters'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
