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
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port
from tests.unit.test_node_exporter import promtool_check, wait_exec

pytestmark = [pytest.mark.e2e]

JOB = "exporter-e2e-job"
TEAM = "e2e-team"


def exporter_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}


@pytest.fixture
def job_process() -> Iterator[subprocess.Popen[bytes]]:
    env = {**exporter_env(), "DCSCHED_JOB_ID": JOB, "DCSCHED_TEAM": TEAM}
    child = subprocess.Popen(["sleep", "300"], env=env)
    wait_exec(child.pid)
    yield child
    child.kill()
    child.wait()


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
        text = scrape(url)
        text = scrape(url)  # the second scrape has a CPU ratio over a real interval
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
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("job_id", JOB), ("node", "e2e-node"), ("team", TEAM))
    assert samples[("dcsched_job_memory_rss_bytes", labels)] > 0
    assert samples[("dcsched_job_cpu_seconds_total", labels)] >= 0
    assert samples[("dcsched_node_cpus", (("node", "e2e-node"),))] == os.cpu_count()


def test_the_port_comes_from_the_environment_and_a_busy_one_is_an_error() -> None:
    port = free_port()
    env = {**exporter_env(), "DCSCHED_EXPORTER_PORT": str(port)}
    first, line = start_exporter(env=env)
    try:
        assert f"http://127.0.0.1:{port}/metrics" in line
        assert socket.gethostname() in line  # the default node name
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "dcsched.cli", "exporter"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert time.monotonic() - started < 60
    finally:
        stop(first)
    assert second.returncode == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in second.stderr
    assert "Traceback" not in second.stderr
