"""Policies on a real multi-node Ray cluster, driven through the real server and CLI:
placement policies put jobs where they say (checked against where Ray ran them), and a
preemption really frees the resources and the victim resumes from its checkpoint."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, Server, dashboard_url, start_cluster, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BASE = (EXAMPLES / "train-mlp.yaml").read_text()
CONFIG = """
placement: {placement}
priority_classes:
  - {{name: low, value: 0, preemptible: true}}
  - {{name: normal, value: 100, preemptible: true}}
  - {{name: high, value: 1000, preemptible: false}}
"""


@pytest.fixture(scope="module")
def live(
    ray_head: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Server]]:
    cluster: Any = start_cluster(
        [{"num_cpus": 2, "labels": {"dcsched.io/rack": f"r{index}"}} for index in range(3)]
    )
    home = tmp_path_factory.mktemp("live-home")
    server = start_server(home, cluster.address, CONFIG.format(placement="spread"))
    try:
        yield cluster, server
    finally:
        server.stop()
        cluster.shutdown()


def spec_file(tmp_path: Path, name: str, **fields: str) -> Path:
    text = BASE.replace("name: mlp-breast-cancer", f"name: {name}").replace(
        "memory: 1GiB", "memory: 64MiB"
    )
    for key, value in fields.items():
        if key == "cpus":
            text = text.replace("cpus: 1", f"cpus: {value}")
        elif key == "epochs":
            text = text.replace("epochs: 30", f"epochs: {value}")
        else:
            text += f"{key}: {value}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def ray_driver_node(cluster: Any, server: Server, run_id: str) -> str:
    token = Path(server.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{dashboard_url(cluster)}/api/jobs/{run_id}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["driver_node_id"])


def apply(server: Server, tmp_path: Path, placement: str) -> None:
    path = tmp_path / "dcsched.yaml"
    path.write_text(CONFIG.format(placement=placement))
    done = server.cli("config", "apply", str(path))
    assert done.returncode == 0, done.stderr


def test_spread_and_binpack_place_jobs_where_they_decide(live: Any, tmp_path: Path) -> None:
    cluster, server = live
    for placement, expected_nodes in (("spread", 3), ("binpack", 2)):
        apply(server, tmp_path, placement)
        ids = [
            server.cli(
                "submit", str(spec_file(tmp_path, f"{placement}-{i}", epochs="100000"))
            ).stdout.strip()
            for i in range(3)
        ]
        jobs = [server.wait_for_job(j, lambda job: job["state"] == "RUNNING") for j in ids]
        nodes = [job["nodes"][0] for job in jobs]
        # spread: one job per node; binpack: fill a 2-CPU node before the next one.
        assert len(set(nodes)) == expected_nodes, (placement, nodes)
        for job in jobs:  # the Ray job really runs where dcsched decided
            assert ray_driver_node(cluster, server, job["id"]) == job["nodes"][0]
        for job_id in ids:
            assert server.cli("cancel", job_id).returncode == 0


def test_preemption_frees_resources_and_the_victim_resumes(live: Any, tmp_path: Path) -> None:
    cluster, server = live
    apply(server, tmp_path, "binpack")
    rack = '{"dcsched.io/rack": "r0"}'
    victim = server.cli(
        "submit",
        str(
            spec_file(
                tmp_path, "victim", cpus="2", epochs="3000", priority="low", node_selector=rack
            )
        ),
    ).stdout.strip()
    server.wait_for_job(
        victim,
        lambda j: j["state"] == "RUNNING" and (j["progress"] or {}).get("epoch", 0) >= 3,
    )
    urgent = server.cli(
        "submit",
        str(spec_file(tmp_path, "urgent", cpus="2", priority="high", node_selector=rack).__str__()),
    ).stdout.strip()
    preempted = server.wait_for_job(victim, lambda j: j["state"] != "RUNNING")
    assert preempted["state"] in ("PENDING", "ADMITTED")
    events = preempted["events"]
    requeue = next(e for e in events if e["from_state"] == "RUNNING" and e["to_state"] == "PENDING")
    assert "preempted" in requeue["reason"] and urgent in requeue["reason"]
    done = server.cli("wait", urgent, "--timeout", "180")
    assert done.returncode == 0, done.stderr

    resumed = server.wait_for_job(victim, lambda j: j["state"] == "RUNNING" and j["attempt"] == 2)
    preempted_at = requeue["at"]
    progress_file = server.home / "runs" / victim / "progress.jsonl"
    deadline = time.monotonic() + 120
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in progress_file.read_text().splitlines()]
        second_run = [p for p in lines if _iso(p["at"]) > preempted_at]
        if second_run:
            break
        time.sleep(0.5)
    first_run = [p for p in lines if _iso(p["at"]) <= preempted_at]
    assert first_run and second_run, lines[:5]
    # The second run started after the first run's last checkpoint, not from epoch 1.
    assert second_run[0]["epoch"] > 1
    assert second_run[0]["epoch"] <= first_run[-1]["epoch"] + 1
    # Ray copies the driver's output into the job log as it comes; give it a moment.
    logs = ""
    deadline = time.monotonic() + 60
    while "resuming from" not in logs and time.monotonic() < deadline:
        logs = server.cli("logs", victim).stdout
        time.sleep(0.5)
    assert "resuming from" in logs, logs[-2000:]
    assert ray_driver_node(cluster, server, f"{victim}-run2") == resumed["nodes"][0]
    assert server.cli("cancel", victim).returncode == 0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_node_runs_an_exporter_that_attributes_a_running_job(
    live: Any, tmp_path: Path
) -> None:
    _, server = live
    sd_file = server.home / "prometheus" / "exporters.json"
    deadline = time.monotonic() + 120
    groups: list[dict] = []
    while time.monotonic() < deadline:
        if sd_file.exists():
            groups = json.loads(sd_file.read_text())
            if len(groups) == 4:  # the head and 3 workers
                break
        time.sleep(1)
    assert len(groups) == 4, groups
    nodes = server.cli_json("nodes")
    assert {g["labels"]["node"] for g in groups} == {n["id"] for n in nodes}  # type: ignore[union-attr]
    for node in nodes:  # type: ignore[union-attr]
        assert node["usage"] is not None and node["usage"]["gpu_collector_up"] is False
        assert 0 <= node["utilization"] <= 1

    job_id = server.cli("submit", str(spec_file(tmp_path, "watched", epochs="100000"))).stdout
    job_id = job_id.strip()
    job = server.wait_for_job(job_id, lambda j: j["state"] == "RUNNING" and j["progress"])
    target = next(g for g in groups if g["labels"]["node"] == job["nodes"][0])
    url = f"http://{target['targets'][0]}/metrics"
    labels = (("job_id", job_id), ("node", job["nodes"][0]), ("team", "research"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = scrape(url)
        if samples.get(("dcsched_job_cpu_seconds_total", labels), 0) > 0:
            break
        time.sleep(1)
    assert samples[("dcsched_job_cpu_seconds_total", labels)] > 0, sorted(samples)[:20]
    assert samples[("dcsched_job_memory_rss_bytes", labels)] > 0
    assert samples[("dcsched_gpu_collector_up", (("node", job["nodes"][0]),))] == 0
    # The same job on the server's /metrics: what it was allocated, how far it got.
    status, body = server.api("GET", "/metrics")
    assert status == 200
    text = body.decode()
    assert f'dcsched_job_allocated_cpus{{job_id="{job_id}",team="research"}} 1.0' in text
    assert f'dcsched_job_training_epoch{{job_id="{job_id}",team="research"}}' in text
    # ... and in `dcsched top`, allocated beside measured.
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        frame = server.cli("top", "--once")
        assert frame.returncode == 0, frame.stderr
        line = next(x for x in frame.stdout.splitlines() if x.startswith(job_id))
        if line.split()[7] != "-":  # CPU-S USED, reported once the fleet has refreshed
            break
        time.sleep(2)
    assert float(line.split()[7]) > 0, line
    assert server.cli("cancel", job_id).returncode == 0
    status, body = server.api("GET", "/metrics")
    assert f'job_id="{job_id}"' not in body.decode()


def _iso(unix: float) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
