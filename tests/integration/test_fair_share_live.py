"""Weighted fair share on a real cluster: two teams with weights 2:1 flood the queue with
equal one-GPU jobs; while both have work waiting, the allocated GPU-time they receive is
within 10% of 2:1. The jobs ask for (logical) GPUs, so they run through the GPU path: a
Ray task inside the job's placement group."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, Server, start_cluster, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = """
queueing: {policy: fair}
teams:
  - {name: alpha, weight: 2}
  - {name: beta, weight: 1}
"""
JOBS_PER_TEAM = 6


@pytest.fixture(scope="module")
def gpu_cluster(ray_head: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cluster: Any = start_cluster([{"num_cpus": 6, "num_gpus": 3}])
    home = tmp_path_factory.mktemp("fair-home")
    server = start_server(home, cluster.address, CONFIG)
    try:
        yield server
    finally:
        server.stop()
        cluster.shutdown()


def test_weights_2_to_1_give_gpu_time_2_to_1(gpu_cluster: Server, tmp_path: Path) -> None:
    server = gpu_cluster
    started = time.time()
    specs = {}
    for team in ("alpha", "beta"):
        text = (
            (EXAMPLES / "train-mlp.yaml")
            .read_text()
            .replace("team: research", f"team: {team}")
            # A model name belongs to the team that registered it first.
            .replace("name: mlp-breast-cancer", f"name: {team}-mlp")
            .replace("gpus: 0", "gpus: 1")
            .replace("memory: 1GiB", "memory: 64MiB")
            .replace("epochs: 30", "epochs: 300")
        )
        specs[team] = tmp_path / f"{team}.yaml"
        specs[team].write_text(text)
    # Both teams flood the queue together (submissions interleaved, so neither team gets
    # the idle cluster to itself before the other has asked).
    for _ in range(JOBS_PER_TEAM):
        for team in ("alpha", "beta"):
            assert server.cli("submit", str(specs[team])).returncode == 0
    # Measure while both teams still have jobs waiting: alpha (2 of the 3 GPUs) drains
    # first; stop when its queue is empty.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        pending = {t["name"]: t["pending"] for t in server.cli_json("teams")}  # type: ignore[union-attr]
        if pending.get("alpha", 0) == 0:
            break
        time.sleep(1)
    else:
        raise AssertionError("alpha's queue never drained")
    since = datetime.fromtimestamp(started, UTC).isoformat()
    report: Any = server.cli_json("usage", "--since", since)
    gpu = {row["team"]: row["gpu_seconds"] for row in report["teams"]}
    failed = [j for j in server.cli_json("list") if j["state"] == "FAILED"]  # type: ignore[union-attr]
    assert not failed, failed
    ratio = gpu["alpha"] / gpu["beta"]
    assert 1.8 <= ratio <= 2.2, (ratio, gpu)
