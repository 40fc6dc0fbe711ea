"""Tuning on a real two-node Ray cluster through the real server: trials admitted under the
team's quota (checked from the event history and Ray's placement groups), the study
surviving ``kill -9`` of the server, and a trial preempted by a higher-priority job."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, dashboard_url, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = """
teams:
  - name: research
    quota: {cpus: 2, memory: 8GiB}
  - name: prod
priority_classes:
  - {name: low, value: 0, preemptible: true}
  - {name: normal, value: 100, preemptible: true}
  - {name: high, value: 1000, preemptible: false}
"""


EPOCHS = 300
"""Of each trial of the preemption test. A warm trial runs an epoch of this model in 25-100 ms
(two trials at once on this 2-core machine), so 40 epochs (1-4 s) let a loaded machine finish
one trial before the high-priority job's pass, which then took the freed node and preempted
nothing; 300 make a trial last tens of seconds."""


@pytest.fixture(scope="module")
def cluster(worker_pair: Any) -> Any:
    """Two nodes of 2 CPUs (the suite's shared pair)."""
    return worker_pair


def tune_spec(name: str, trials: int, parallel: int, **extra: Any) -> dict[str, Any]:
    tune = {
        "trials": trials,
        "parallel": parallel,
        "metric": "val_f1",
        "algorithm": "tpe",
        "pruner": extra.pop("pruner", "asha"),
        "seed": 1,
        "search_space": {
            "params.hidden": {"choice": [[8], [16, 8]]},
            "train.lr": {"loguniform": [1e-3, 1e-1]},
            "train.batch_size": {"choice": [32, 64]},
        },
    }
    return {
        "name": name,
        "kind": "tune",
        "team": "research",
        "resources": {"cpus": extra.pop("cpus", 1), "memory": "256MiB"},
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:breast_cancer", "seed": 42},
        "train": {"epochs": extra.pop("epochs", 3)},
        "tune": tune,
        **extra,
    }


def submit(server: Server, spec: dict[str, Any]) -> str:
    status, body = server.api("POST", "/v1/jobs", {"spec": spec})
    assert status == 201, body
    return str(json.loads(body)["id"])


def get(server: Server, path: str) -> Any:
    status, body = server.api("GET", path)
    assert status == 200, body
    return json.loads(body)


def trial_jobs(server: Server, tune_id: str) -> list[dict[str, Any]]:
    jobs = get(server, "/v1/jobs?limit=1000")["jobs"]
    return [j for j in jobs if j["id"].startswith(tune_id + "-trial-")]


def placement_groups(cluster: Any, server: Server) -> list[dict[str, Any]]:
    """Ray's placement groups, from the dashboard's state API."""
    token = Path(server.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{dashboard_url(cluster)}/api/v0/placement_groups?limit=1000")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        data: Any = json.loads(response.read())
    while isinstance(data, dict):  # {"data": {"result": {"result": [...]}}}
        data = data.get("data", data.get("result"))
    assert isinstance(data, list), data
    return data


def ray_job_ids(cluster: Any, server: Server) -> set[str]:
    """The submission ids of the cluster's Ray Jobs, from the dashboard's job API."""
    token = Path(server.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{dashboard_url(cluster)}/api/jobs/")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        jobs: Any = json.loads(response.read())
    return {str(job.get("submission_id")) for job in jobs}


def most_at_once(server: Server, job_ids: list[str]) -> int:
    """The most of these jobs that held resources at one moment, from their events."""
    marks: list[tuple[str, int]] = []
    for job_id in job_ids:
        held = False
        for event in get(server, f"/v1/jobs/{job_id}")["events"]:
            holds = event["to_state"] in ("ADMITTED", "RUNNING")
            if holds and not held:
                marks.append((event["at"], 1))
            elif held and not holds:
                marks.append((event["at"], -1))
            held = holds
    count = peak = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # ends before starts
        count += step
        peak = max(peak, count)
    return peak


def wait_tune(server: Server, tune_id: str, timeout: float, watch: Any = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get(server, f"/v1/jobs/{tune_id}")
        if watch is not None:
            watch()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        assert time.monotonic() < deadline, f"the study did not end; last seen {job}"
        time.sleep(0.5)


def test_trials_run_under_the_team_quota_and_the_best_model_is_registered(
    cluster: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = start_server(home, cluster.address, CONFIG)
    try:
        tune_id = submit(server, tune_spec("quota-tune", trials=12, parallel=3))
        prefix = f"dcsched-{tune_id}-trial-"
        seen: list[int] = []
        scraped: list[str] = []

        def watch() -> None:
            status, body = server.api("GET", "/metrics")
            assert status == 200
            scraped.extend(
                line
                for line in body.decode().splitlines()
                if line.startswith("dcsched_tune_") and tune_id in line
            )
            groups = placement_groups(cluster, server)
            seen.append(
                sum(
                    1
                    for g in groups
                    if str(g.get("name", "")).startswith(prefix) and g.get("state") == "CREATED"
                )
            )

        job = wait_tune(server, tune_id, timeout=900, watch=watch)
        assert job["state"] == "SUCCEEDED", job
        assert job["kind"] == "tune" and not job["nodes"]
        trials = trial_jobs(server, tune_id)
        assert len(trials) == 12
        assert {t["kind"] for t in trials} == {"train"}
        # Never more than the quota's two trials held resources at once (the study asked
        # for three): from the server's event history, and from Ray's placement groups.
        assert most_at_once(server, [t["id"] for t in trials]) == 2
        assert seen and max(seen) <= 2, seen
        summary = job["tuning"]
        assert summary["done"] + summary["pruned"] == 12 and summary["failed"] == 0, summary
        assert summary["best"]["value"] == max(
            t["value"]
            for t in get(server, f"/v1/jobs/{tune_id}/trials")["trials"]
            if t["state"] == "COMPLETE"
        )
        # One model, the study's, from its best trial; no trial registered its own.
        models = [m["name"] for m in get(server, "/v1/models")["models"]]
        assert models == ["quota-tune"], models
        version = get(server, "/v1/models/quota-tune")["versions"][0]
        # Trials were ranked on their validation rows; the registered version keeps the
        # best trial's test figures beside them.
        assert version["metrics"]["val_f1"] == pytest.approx(summary["best"]["value"])
        assert 0.5 < version["metrics"]["f1"] <= 1.0
        best = get(server, f"/v1/jobs/{job['result']['best_job']}")
        assert best["result"]["validation_on"] == "validation"
        n_split = [best["result"][f"n_{part}"] for part in ("train", "validation", "test")]
        assert n_split == [341, 114, 114]
        assert version["params"]["tuned"] == summary["best"]["params"]
        # The CLI: status, trials as CSV, plots into a folder the user names.
        shown = server.cli("status", tune_id)
        assert shown.returncode == 0, shown.stderr
        assert "TRIALS" in shown.stdout and "of 12" in shown.stdout, shown.stdout
        listed = server.cli("trials", tune_id, "-o", "csv")
        assert listed.returncode == 0, listed.stderr
        rows = list(csv.DictReader(io.StringIO(listed.stdout)))
        assert sorted(int(r["number"]) for r in rows) == list(range(12))
        plots = tmp_path / "plots"
        drawn = server.cli("trials", tune_id, "--plot", str(plots))
        assert drawn.returncode == 0, drawn.stderr
        for name in ("history", "importances", "intermediate"):
            assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # The trials ran on their nodes' trial hosts, not as Ray Jobs of their own, and a
        # trial's output is its own log (dcsched.training.host).
        assert not ray_job_ids(cluster, server).intersection(t["id"] for t in trials)
        finished = next(t for t in trials if t["state"] == "SUCCEEDED")
        logs = server.cli("logs", finished["id"])
        assert logs.returncode == 0, logs.stderr
        assert "done in" in logs.stdout, logs.stdout[-2000:]
        # /metrics showed the study's trials by state and its best value while it ran.
        assert any(line.startswith("dcsched_tune_trials{") for line in scraped), scraped[-5:]
        assert any(line.startswith("dcsched_tune_best_value{") for line in scraped)
    finally:
        server.stop()


def test_the_study_survives_kill_9_of_the_server(cluster: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = start_server(home, cluster.address, CONFIG)
    # 40 epochs: a trial of 3 lasts a fraction of a second once warm, and the whole study
    # could end before the kill below.
    spec = tune_spec("crash-tune", trials=6, parallel=2, pruner="none", epochs=40)
    tune_id = submit(server, spec)
    deadline = time.monotonic() + 300
    while (summary := get(server, f"/v1/jobs/{tune_id}/trials")["summary"])["done"] < 2:
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.5)
    assert summary["done"] < 6, summary  # the kill lands mid-study
    server.process.kill()  # kill -9, mid-study: trials are running in Ray
    server.process.wait()
    restarted = start_server(home, cluster.address)
    try:
        job = wait_tune(restarted, tune_id, timeout=600)
        assert job["state"] == "SUCCEEDED", job
        trials = trial_jobs(restarted, tune_id)
        numbers = sorted(int(t["id"].rsplit("-", 1)[1]) for t in trials)
        assert numbers == list(range(6))  # exactly `trials`, no duplicates
        study = get(restarted, f"/v1/jobs/{tune_id}/trials")
        assert sorted(t["number"] for t in study["trials"]) == list(range(6))
        assert {t["state"] for t in study["trials"]} == {"COMPLETE"}
        assert job["tuning"]["done"] == 6
    finally:
        restarted.stop()


def test_a_preempted_trial_resumes_and_the_study_completes(cluster: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = start_server(home, cluster.address, CONFIG)
    try:
        # Two trials of two CPUs fill both nodes (team prod has no quota).
        spec = tune_spec("preempt-tune", trials=2, parallel=2, pruner="none", epochs=EPOCHS)
        spec.update(priority="low", team="prod")
        spec["resources"]["cpus"] = 2
        spec["tune"]["search_space"] = {"train.lr": {"loguniform": [1e-3, 1e-2]}}
        spec["train"]["batch_size"] = 8
        tune_id = submit(server, spec)
        deadline = time.monotonic() + 300
        while True:
            # Both trials hold a node and are training: the high-priority job can only get
            # a node by preempting one of them.
            running = [t for t in trial_jobs(server, tune_id) if t["state"] == "RUNNING"]
            epochs = [(t.get("progress") or {}).get("epoch", 0) for t in running]
            if len(epochs) == 2 and min(epochs) >= 2:
                break
            assert time.monotonic() < deadline, "no trial got going"
            time.sleep(0.5)
        # A high-priority job of the same team (preemption stays within a team) needing
        # two CPUs: only a trial's node can make room.
        high = submit(
            server,
            {
                "name": "urgent",
                "kind": "run",
                "team": "prod",
                "priority": "high",
                "resources": {"cpus": 2, "memory": "64MiB"},
                "run": {"command": ["sleep", "2"]},
            },
        )
        done = server.wait_for_job(high, lambda j: j["state"] == "SUCCEEDED", timeout=300)
        assert done["state"] == "SUCCEEDED"
        job = wait_tune(server, tune_id, timeout=900)
        assert job["state"] == "SUCCEEDED", job
        preempted = []
        histories = {}
        for trial in trial_jobs(server, tune_id):
            events = get(server, f"/v1/jobs/{trial['id']}")["events"]
            histories[trial["id"]] = [(e["to_state"], e["reason"]) for e in events]
            if any((e["reason"] or "").startswith("preempted") for e in events):
                preempted.append(get(server, f"/v1/jobs/{trial['id']}"))
        assert preempted, f"no trial was preempted: {histories}"
        for trial in preempted:
            assert trial["state"] == "SUCCEEDED" and trial["attempt"] >= 2, trial
            # It resumed from its checkpoint: the second run did not start at epoch 1.
            progress = (home / "runs" / trial["id"] / "progress.jsonl").read_text().splitlines()
            epochs = [json.loads(line)["epoch"] for line in progress]
            assert epochs == list(range(1, EPOCHS + 1)), epochs
        assert job["tuning"]["done"] == 2
        assert len(trial_jobs(server, tune_id)) == 2
    finally:
        server.stop()
