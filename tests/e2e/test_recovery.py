"""Reliability floor: kill -9 the server while a job runs; `dcsched up` again finds the job,
which ends in its true state with its result and model recorded.

This test uses the embedded path: `dcsched up` with no Ray address starts its own local
Ray head, which must outlive the killed server; `dcsched down` ends both.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, cli_env, free_port, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_server_mid_run_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    env["DCSCHED_PORT"] = str(free_port())
    for key in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(key, None)
    up = run_cli("up", env=env, timeout=300)
    assert up.returncode == 0, up.stderr + up.stdout
    head = json.loads((home / "ray" / "head.json").read_text())
    try:
        spec = tmp_path / "job.yaml"
        spec.write_text(
            (EXAMPLES / "train-mlp.yaml").read_text().replace("epochs: 30", "epochs: 400")
        )
        job_id = run_cli("submit", str(spec), env=env).stdout.strip()
        assert job_id
        deadline = time.monotonic() + 120
        while (
            json.loads(run_cli("status", job_id, "-o", "json", env=env).stdout)["state"]
            != "RUNNING"
        ):
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.3)

        server_pid = int((home / "server.pid").read_text())
        os.kill(server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run_cli("list", env=env).returncode == 1  # the server is really gone
        assert _alive(head["pid"]), "the Ray head must outlive the server"

        up_again = run_cli("up", env=env, timeout=300)
        assert up_again.returncode == 0, up_again.stderr
        assert json.loads((home / "ray" / "head.json").read_text())["pid"] == head["pid"]
        listed = json.loads(run_cli("list", "-o", "json", env=env).stdout)
        assert job_id in {j["id"] for j in listed}

        done = run_cli("wait", job_id, "--timeout", "240", env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        job = json.loads(run_cli("status", job_id, "-o", "json", env=env).stdout)
        assert job["state"] == "SUCCEEDED"
        assert job["result"]["metrics"]["accuracy"] > 0.9
        assert job["result"]["model"] == {"name": "mlp-breast-cancer", "version": 1}
        model = json.loads(
            run_cli("models", "show", "mlp-breast-cancer:1", "-o", "json", env=env).stdout
        )
        assert model["job_id"] == job_id
        assert Path(model["path"]).is_dir()
    finally:
        down = run_cli("down", env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 60
    while _alive(head["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(head["pid"]), "`dcsched down` stops the Ray head it started"
