"""Cluster configuration, teams, quotas and usage through the CLI against a real server."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, Server

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

BASE = (EXAMPLES / "train-mlp.yaml").read_text()
CONFIG = """
queueing: {policy: priority}
placement: binpack
unlisted_teams: reject
teams:
  - name: research
    quota: {cpus: 1, memory: 4GiB}
  - name: vision
"""


def wait_state(server: Server, job_id: str, states: set[str]) -> dict:
    return server.wait_for_job(job_id, lambda j: j["state"] in states, timeout=120)


def test_a_bad_configuration_is_refused_and_changes_nothing(server: Server, tmp_path: Path) -> None:
    before = server.cli_json("config", "show")
    bad = tmp_path / "bad.yaml"
    bad.write_text("placement: sideways\nteams: [{name: Research}]\n")
    done = server.cli("config", "apply", str(bad))
    assert done.returncode == 2
    assert "placement" in done.stderr and "teams.0.name" in done.stderr
    assert server.cli_json("config", "show") == before


def test_quota_teams_and_usage(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "dcsched.yaml"
    config.write_text(CONFIG)
    done = server.cli("config", "apply", str(config))
    assert done.returncode == 0, done.stderr
    assert "2 teams" in done.stdout
    assert "unlisted_teams: reject" in server.cli("config", "show").stdout

    stranger = tmp_path / "stranger.yaml"
    stranger.write_text(BASE.replace("team: research", "team: nobody"))
    refused = server.cli("submit", str(stranger))
    assert refused.returncode == 2 and "not a team of this cluster" in refused.stderr

    long = tmp_path / "long.yaml"
    long.write_text(BASE.replace("epochs: 30", "epochs: 100000"))
    first = server.cli("submit", str(long)).stdout.strip()
    second = server.cli("submit", str(long)).stdout.strip()
    wait_state(server, first, {"RUNNING"})
    quota_words = "team research is at its CPU quota 1/1"
    waiting = server.wait_for_job(
        second, lambda j: j["state"] == "PENDING" and quota_words in (j["reason"] or "")
    )
    assert waiting["position"] == 1

    teams = {t["name"]: t for t in server.cli_json("teams")}
    assert teams["research"]["quota"]["cpus"] == 1
    assert teams["research"]["used"]["cpus"] == 1 and teams["research"]["pending"] == 1
    assert "research" in server.cli("teams").stdout

    assert server.cli("cancel", first).returncode == 0
    wait_state(server, second, {"RUNNING"})
    assert server.cli("cancel", second).returncode == 0

    report = server.cli_json("usage", "--team", "research")
    jobs = {j["id"]: j for j in report["jobs"]}
    assert jobs[first]["cpu_seconds"] > 0 and jobs[first]["gpu_seconds"] == 0
    assert report["teams"][0]["team"] == "research"
    csv_out = server.cli("usage", "-o", "csv").stdout.splitlines()
    assert csv_out[0] == "scope,team,job,cpu_seconds,gpu_seconds"
    assert any(line.startswith("job,research," + first) for line in csv_out)
    recent = server.cli_json("usage", "--since", "1s")
    window = (
        datetime.fromisoformat(recent["until"]) - datetime.fromisoformat(recent["since"])
    ).total_seconds()
    assert 1 <= window < 60, recent  # the window is the last second, as the server saw it
    # Within it a job of 1 CPU holds at most window CPU-seconds; the whole report more.
    assert all(j["cpu_seconds"] <= window + 0.01 for j in recent["jobs"]), recent
    assert jobs[first]["cpu_seconds"] > sum(
        j["cpu_seconds"] for j in recent["jobs"] if j["id"] == first
    )

    status, body = server.api("GET", "/metrics")
    assert status == 200
    line = next(
        row for row in body.decode().splitlines()
        if row.startswith('dcsched_allocated_cpu_seconds_total{team="research"}')
    )  # fmt: skip
    assert float(line.split()[-1]) > 0
    json.dumps(report)  # the report is plain JSON
