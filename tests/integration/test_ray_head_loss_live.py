"""The Ray head lost and back: the server outlives it, says so everywhere, keeps queueing,
and reconnects when a head listens at the same address again; a run the new cluster no
longer knows is requeued and resumes from its checkpoint.

This test has a Ray head of its own (the session's is shared with other tests and must
not be killed). Its GCS process is SIGKILLed: it is a descendant of the head this test
started, found by walking that process tree, never by name across the machine."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from dcsched.adapters import ray_head as launcher
from dcsched.paths import Paths
from tests.conftest import Server, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 60  # 0.25 s each: ~15 s of work, checkpointed at every step

RESUMABLE = f"""\
import os, time
path = os.path.join(os.environ["DCSCHED_CHECKPOINT_DIR"], "step")
step = int(open(path).read()) if os.path.exists(path) else 0
if step:
    print(f"resumed at step {{step}}", flush=True)
while step < {STEPS}:
    step += 1
    open(path + ".tmp", "w").write(str(step))
    os.replace(path + ".tmp", path)
    time.sleep(0.25)
print("finished", flush=True)
"""


def await_true(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g}s")


def gcs_process(head_pid: int) -> psutil.Process:
    children = psutil.Process(head_pid).children(recursive=True)
    found = [p for p in children if "gcs_server" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline()[:2] for p in children]
    return found[0]


def ray_reachable(server: Server) -> bool:
    status, body = server.api("GET", "/v1/info")
    assert status == 200, body
    return bool(json.loads(body)["ray"]["reachable"])


def ray_up_metric(server: Server) -> float:
    request = urllib.request.Request(server.url + "/metrics")
    request.add_header("Authorization", f"Bearer {server.token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("dcsched_ray_up ")]
    assert len(lines) == 1, lines
    return float(lines[0].split()[1])


def submit(server: Server, name: str, command: list[str]) -> str:
    spec = {
        "name": name,
        "kind": "run",
        "team": "ops",
        "resources": {"cpus": 1, "memory": "64MiB"},
        "run": {"command": command},
    }
    status, body = server.api("POST", "/v1/jobs", {"spec": spec})
    assert status == 201, body
    return str(json.loads(body)["id"])


def test_the_server_survives_the_ray_head_and_picks_up_when_it_returns(
    ray_head: object, tmp_path: Path
) -> None:
    head_paths = Paths(tmp_path / "ray-home")
    head = launcher.start(head_paths, num_cpus=2, num_gpus=0)
    gcs_port = int(head.gcs_address.rsplit(":", 1)[1])
    dashboard_port = int(head.dashboard_url.rsplit(":", 1)[1])
    (tmp_path / "home").mkdir()
    server: Server | None = None
    try:
        server = start_server(
            tmp_path / "home", head.gcs_address, extra_env=launcher.ray_env(head.token_path)
        )
        script = tmp_path / "resumable.py"
        script.write_text(RESUMABLE)
        first = submit(server, "long", ["python", str(script)])
        checkpoint = server.home / "runs" / first / "checkpoint" / "step"
        await_true(
            lambda: checkpoint.exists() and int(checkpoint.read_text() or 0) >= 4,
            120,
            "the run checkpointed a few steps",
        )
        assert ray_reachable(server) and ray_up_metric(server) == 1.0

        # The head's GCS dies.
        gcs_process(head.pid).kill()
        await_true(lambda: not ray_reachable(server), 120, "the server says Ray is unreachable")
        assert server.process.poll() is None
        assert ray_up_metric(server) == 0.0
        # The rest of the old head goes too (its raylet cannot live without its GCS).
        launcher.stop_pid(head.pid, timeout_s=30)
        (head_paths.ray / "head.json").unlink(missing_ok=True)

        # While Ray is away: jobs are accepted and queued, reads say why nothing moves.
        second = submit(server, "queued", ["python", "-c", "print('second ran')"])
        nodes = server.cli("nodes")
        assert nodes.returncode == 0, nodes.stderr
        assert "Ray unreachable" in nodes.stderr
        shown = server.cli("status", first)
        assert shown.returncode == 0 and "unreachable" in shown.stdout, shown.stdout
        detail: Any = server.cli_json("status", second)
        assert detail["state"] == "PENDING" and detail["ray"]["reachable"] is False
        time.sleep(5)  # passes run meanwhile: they must change nothing
        assert server.cli_json("status", first)["state"] in ("RUNNING", "ADMITTED")  # type: ignore[index]
        assert server.process.poll() is None

        # A head returns at the same address: the server reconnects by itself.
        launcher.start(
            head_paths, num_cpus=2, num_gpus=0, gcs_port=gcs_port, dashboard_port=dashboard_port
        )
        await_true(lambda: ray_reachable(server), 180, "the server reconnects to Ray")
        assert ray_up_metric(server) == 1.0

        done = server.wait_for_job(first, lambda j: j["state"] == "SUCCEEDED", timeout=240)
        reasons = " ".join(str(e.get("reason")) for e in done["events"])
        assert "requeued" in reasons, done["events"]
        logs = server.cli("logs", first)
        assert "resumed at step" in logs.stdout, logs.stdout[-2000:]
        server.wait_for_job(second, lambda j: j["state"] == "SUCCEEDED", timeout=240)
        assert server.process.poll() is None
    finally:
        if server is not None:
            server.stop()
        # The head this test started (the first or its replacement): by its pid file.
        launcher.stop(head_paths)
