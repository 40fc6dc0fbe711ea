"""End to end: the CLI drives a real server that runs a real training job on real Ray."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, Server

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

CLASSIFIER_METRICS = {"accuracy", "precision", "recall", "f1", "log_loss"}


def test_example_trains_registers_a_model_and_shows_in_ray(server: Server) -> None:
    submitted = server.cli("submit", str(EXAMPLES / "train-mlp.yaml"), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"mlp-breast-cancer-[0-9a-f]{8}", job_id)

    job = server.cli_json("status", job_id)
    assert job["state"] == "SUCCEEDED"
    for field in (
        "id",
        "name",
        "kind",
        "team",
        "state",
        "priority",
        "resources",
        "submitted_at",
        "started_at",
        "finished_at",
        "nodes",
        "reason",
        "result",
    ):
        assert field in job
    metrics = job["result"]["metrics"]
    assert set(metrics) >= CLASSIFIER_METRICS
    assert metrics["accuracy"] > 0.9
    assert job["result"]["model"] == {"name": "mlp-breast-cancer", "version": 1}
    assert [e["to_state"] for e in job["events"]] == ["PENDING", "ADMITTED", "RUNNING", "SUCCEEDED"]
    assert len(job["nodes"]) == 1

    # The run is a Ray Job whose submission id is the dcsched job id.
    info = json.loads(server.cli("status", job_id, "-o", "json").stdout)
    assert info["id"] == job_id
    ray_info = _ray_job(server, job_id)
    assert ray_info["status"] == "SUCCEEDED"
    assert ray_info["metadata"]["dcsched_team"] == "research"
    logs = server.cli("logs", job_id)
    assert logs.returncode == 0 and "epoch 30" in logs.stdout.lower()

    # Training the same name again registers version 2.
    again = server.cli("submit", str(EXAMPLES / "train-mlp.yaml"), "--wait")
    assert again.returncode == 0, again.stderr
    model = server.cli_json("models", "show", "mlp-breast-cancer")
    versions = model["versions"] if isinstance(model, dict) else model
    assert [v["version"] for v in versions] == [1, 2]
    first = server.cli_json("models", "show", "mlp-breast-cancer:1")
    assert first["job_id"] == job_id and first["checksum"].startswith("sha256:")
    assert first["plugin"] == "mlp" and first["metrics"]["accuracy"] == metrics["accuracy"]

    listed = server.cli_json("list")
    assert {j["id"] for j in listed} >= {job_id, again.stdout.strip()}
    table = server.cli("list")
    assert job_id in table.stdout and "SUCCEEDED" in table.stdout

    status, body = server.api("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'dcsched_jobs{kind="train",state="SUCCEEDED",team="research"} 2.0' in text
    assert 'dcsched_job_submissions_total{kind="train",team="research"} 2.0' in text
    assert 'dcsched_job_queue_wait_seconds_count{kind="train",team="research"} 2.0' in text
    assert "dcsched_job_run_seconds_bucket" in text


def _ray_job(server: Server, job_id: str) -> dict:
    info = json.loads(server.api("GET", "/v1/info")[1])
    request = urllib.request.Request(f"{info['ray_dashboard_url']}/api/jobs/{job_id}")
    token_path = server.env.get("RAY_AUTH_TOKEN_PATH")
    assert token_path, "the session Ray head uses token auth"
    token = Path(token_path).read_text().strip()
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_csv_job_with_relative_path(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "csv.yaml"
    (tmp_path / "data.csv").write_bytes((EXAMPLES / "data.csv").read_bytes())
    spec.write_text((EXAMPLES / "train-csv.yaml").read_text())
    done = server.cli("submit", str(spec), "--wait")
    assert done.returncode == 0, done.stderr
    job = server.cli_json("status", done.stdout.strip())
    assert job["state"] == "SUCCEEDED"
    digest = hashlib.sha256((tmp_path / "data.csv").read_bytes()).hexdigest()
    assert job["spec"]["data"]["source"] == f"csv:upload:sha256:{digest}"  # sent with the job
    assert job["result"]["metrics"]["accuracy"] > 0.8


def test_nodes_and_plugins(server: Server) -> None:
    nodes = server.cli_json("nodes")
    assert len(nodes) == 1 and nodes[0]["alive"] and nodes[0]["total"]["cpus"] == 8
    plugins = server.cli_json("plugins", "list")
    assert "mlp" in {p["name"] for p in plugins}
    assert "mlp" in server.cli("plugins", "list").stdout


def test_openapi_is_served_behind_the_token(server: Server) -> None:
    status, body = server.api("GET", "/openapi.json")
    assert status == 200 and "/v1/jobs" in json.loads(body)["paths"]
    assert server.api("GET", "/openapi.json", token="wrong")[0] == 401
