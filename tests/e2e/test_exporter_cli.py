"""`dcsched exporter` as a real process: served over HTTP on 127.0.0.1, scraped, checked
by promtool, stopped by its PID with SIGTERM. No Ray and no GPU needed: on this machine
NVML is absent, so the GPU series are too; a job's real process is attributed to it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, await_condition, free_port
from tests.unit.test_node_exporter import BURN_THEN_SLEEP, promtool_check, wait_exec

pytestmark = [pytest.mark.e2e]

JOB = "exporter-e2e-job"
TEAM = "e2e-team"
BURN_S = 0.3  # CPU seconds the job's process burns before it sleeps


def exporter_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}


@pytest.fixture
def job_process() -> Iterator[subprocess.Popen[bytes]]:
    env = {**exporter_env(), "DCSCHED_JOB_ID": JOB, "DCSCHED_TEAM": TEAM}
    code = BURN_THEN_SLEEP.format(seconds=BURN_S, sleep=300)
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    wait_exec(child.pid)
    await_condition(
        f"the job's process to burn {BURN_S}s of CPU",
        lambda: cpu_seconds(child.pid) >= BURN_S,
        timeout=60,
    )
    yield child
    child.kill()
    child.wait()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_exporter(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Starts `dcsched exporter`; returns it and its first line of output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dcsched.cli", "exporter", *args],
        env=env or exporter_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # the exporter prints where it serves, then waits
    if not line:
        process.wait(timeout=30)
        raise AssertionError(f"exporter exited {process.returncode}: {process.stderr.read()}")
    return process, line


def stop(process: subprocess.Popen[str]) -> str:
    os.kill(process.pid, signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def test_the_exporter_serves_until_sigterm(job_process: subprocess.Popen[bytes]) -> None:
    port = free_port()
    process, line = start_exporter("--port", str(port), "--node-name", "e2e-node")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert url in line and "e2e-node" in line
        first = scrape(url)
        text = scrape(url)
    finally:
        out = stop(process)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    assert "stopped" in out
    promtool_check(text)
    up = re.search(r'^dcsched_gpu_collector_up\{node="e2e-node"\} (\S+)$', text, re.M)
    assert up is not None
    if "NVML up" in line:  # a machine with a GPU
        assert float(up.group(1)) == 1.0 and "dcsched_gpu_memory_total_bytes{" in text
    else:
        assert float(up.group(1)) == 0.0
        assert "dcsched_gpu_memory_total_bytes{" not in text
    samples = samples_of(text)
    labels = (("job_id", JOB), ("node", "e2e-node"), ("team", TEAM))
    assert samples[("dcsched_job_memory_rss_bytes", labels)] > 0
    # The job's process burnt BURN_S seconds before the scrapes, and no more than it has now.
    before = samples_of(first)[("dcsched_job_cpu_seconds_total", labels)]
    burnt = samples[("dcsched_job_cpu_seconds_total", labels)]
    assert BURN_S <= before <= burnt <= cpu_seconds(job_process.pid), (before, burnt)
    assert samples[("dcsched_node_cpus", (("node", "e2e-node"),))] == os.cpu_count()


def test_the_port_comes_from_the_environment_and_a_busy_one_is_an_error() -> None:
    port = free_port()
    env = {**exporter_env(), "DCSCHED_EXPORTER_PORT": str(port)}
    first, line = start_exporter(env=env)
    try:
        assert f"http://127.0.0.1:{port}/metrics" in line
        assert socket.gethostname() in line  # the default node name
        second = subprocess.run(
            [sys.executable, "-m", "dcsched.cli", "exporter"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,  # a busy port is an error at once, not a hang (TimeoutExpired)
            cwd=REPO,
        )
    finally:
        stop(first)
    assert second.returncode == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in second.stderr
    assert "Traceback" not in second.stderr
