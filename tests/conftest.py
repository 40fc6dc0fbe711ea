"""Shared fixtures: one real Ray head for the whole session, and real dcsched servers.

The Ray head is started by dcsched's own launcher (``ray start --head --block`` in its
own process group, token auth on, explicit ports, its own temp dir) with more logical
CPUs than this machine has, and stopped by PID at the end. Nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dcsched.paths import Paths
from dcsched.processes import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SESSION_CPUS = 8
SESSION_GPUS = 1

# Tests set Ray's auth mode explicitly; the session head uses token auth.
os.environ["RAY_AUTH_MODE"] = "token"


def await_condition(what: str, check: Any, timeout: float = 60, interval: float = 0.2) -> Any:
    """Calls ``check()`` until it returns something true and returns that; fails naming
    ``what`` and the last value seen when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last {last!r}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from dcsched.adapters import ray_head as launcher

    paths = Paths(tmp_path_factory.mktemp("ray-home"))
    # One logical GPU, so that GPU allocation is exercised (tests/e2e/test_dashboards_live.py).
    head = launcher.start(paths, num_cpus=SESSION_CPUS, num_gpus=SESSION_GPUS)
    os.environ.update(launcher.ray_env(head.token_path))
    try:
        yield head
    finally:
        launcher.stop(paths)


@dataclass
class Server:
    home: Path
    url: str
    token: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, timeout=timeout)

    def cli_json(self, *args: str) -> object:
        done = self.cli(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def api(self, method: str, path: str, body: object = None, token: str | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_for_job(self, job_id: str, predicate: Any, timeout: float = 180) -> dict:
        """Poll `dcsched status` until ``predicate(job)`` holds; return that job."""
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.cli_json("status", job_id)  # type: ignore[assignment]
            if predicate(job):
                return job
            time.sleep(0.5)
        raise AssertionError(f"{job_id}: condition not met; last seen {job}")

    def cancel_live_jobs(self) -> None:
        """Tests share one Ray cluster: a module's jobs must not outlive its server."""
        status, body = self.api("GET", "/v1/jobs?state=PENDING,ADMITTED,RUNNING")
        if status != 200:
            return
        for job in json.loads(body)["jobs"]:
            self.api("POST", f"/v1/jobs/{job['id']}/cancel")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.cancel_live_jobs()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    env["DCSCHED_HOME"] = str(home)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcsched.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def start_server(
    home: Path,
    ray_address: str,
    config: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """`dcsched server` on a free port against ``ray_address``, as `dcsched up` starts it
    (``dcsched.daemon.launch_server``); node exporters on loopback with free ports."""
    from dcsched.daemon import ServerError, launch_server

    env = {**cli_env(home), **(extra_env or {})}
    if config is not None:
        (home / "dcsched.yaml").write_text(config)
    args = ["--port", str(free_port()), "--ray-address", ray_address]
    # Node exporters run as Ray actors; several Ray nodes share this host.
    args += ["--exporter-port", "0", "--exporter-host", "127.0.0.1"]
    try:
        process, record = launch_server(Paths(home), args, env, timeout=120)
    except ServerError as exc:
        raise RuntimeError(f"server did not start: {exc}") from None
    token = (home / "token").read_text().strip()
    return Server(home, record["url"], token, process, env)


def start_cluster(workers: list[dict[str, object]]) -> object:
    """Several Ray nodes on this machine (``dcsched.adapters.local_cluster``), with the
    session head's token auth."""
    from dcsched.adapters import local_cluster

    return local_cluster.start(workers)


def dashboard_url(cluster: object) -> str:
    from dcsched.adapters import local_cluster

    return local_cluster.dashboard_url(cluster)


@pytest.fixture(scope="session")
def worker_pair(ray_head: object) -> Iterator[Any]:
    """Two worker nodes of 2 CPUs under a CPU-less head: one cluster shared by the live
    modules that need two such nodes and nothing more (faults, tuning) instead of a start
    and a shutdown each. Each module runs its own servers against it and ends its jobs
    before it finishes. (tests/integration/test_run_jobs_live.py keeps a cluster of its
    own: on this one after the faults module, its gangs' drivers could not find their
    placement groups by name; the cause is not found yet.)"""
    cluster: Any = start_cluster([{"num_cpus": 2}, {"num_cpus": 2}])
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(ray_head: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("dcsched-home")
    srv = start_server(home, ray_head.gcs_address)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()
