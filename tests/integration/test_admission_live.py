"""Admission rules on a real multi-node Ray cluster with logical GPUs of two types, driven
through the real server and CLI: reclaiming borrowed quota by preemption, per-GPU-type
quotas, EASY backfill judged from max_runtime, and dependencies (a dependent starts after
its dependency succeeds and is cancelled, with the reason, when it fails)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, Server, start_cluster, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GPU_TYPE = "dcsched.io/gpu-type"
BASE = (EXAMPLES / "train-mlp.yaml").read_text().replace("memory: 1GiB", "memory: 64MiB")


@pytest.fixture(scope="module")
def live(
    ray_head: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Server]]:
    cluster: Any = start_cluster(
        [
            {"num_cpus": 3, "num_gpus": 2, "labels": {GPU_TYPE: "a100"}},
            {"num_cpus": 3, "num_gpus": 2, "labels": {GPU_TYPE: "v100"}},
        ]
    )
    server = start_server(tmp_path_factory.mktemp("admission-home"), cluster.address)
    try:
        yield cluster, server
    finally:
        server.stop()
        cluster.shutdown()


@pytest.fixture
def server(live: tuple[Any, Server]) -> Iterator[Server]:
    _, srv = live
    yield srv
    srv.cancel_live_jobs()


def apply(server: Server, tmp_path: Path, text: str) -> None:
    path = tmp_path / "dcsched.yaml"
    path.write_text(text)
    done = server.cli("config", "apply", str(path))
    assert done.returncode == 0, done.stderr


def submit(
    server: Server,
    tmp_path: Path,
    name: str,
    team: str = "research",
    gpus: int = 0,
    epochs: int = 100_000,
    gpu_type: str | None = None,
    **fields: str,
) -> str:
    text = (
        BASE.replace("name: mlp-breast-cancer", f"name: {name}")
        .replace("team: research", f"team: {team}")
        .replace("gpus: 0", f"gpus: {gpus}")
        .replace("epochs: 30", f"epochs: {epochs}")
    )
    if gpu_type:
        text += f'node_selector: {{"{GPU_TYPE}": "{gpu_type}"}}\n'
    for key, value in fields.items():
        text += f"{key}: {value}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    done = server.cli("submit", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def running(server: Server, job_id: str) -> dict:
    return server.wait_for_job(job_id, lambda j: j["state"] == "RUNNING")


def reason_of(server: Server, job_id: str, contains: str) -> dict:
    return server.wait_for_job(
        job_id,
        lambda j: j["state"] == "PENDING" and contains in (j["reason"] or ""),
        timeout=60,
    )


def test_a_team_under_its_quota_reclaims_what_another_team_borrowed(
    server: Server, tmp_path: Path
) -> None:
    apply(
        server,
        tmp_path,
        """
queueing: {policy: fifo, preemption: true}
teams:
  - {name: research, cohort: ml, quota: {gpus: 2}}
  - {name: vision, cohort: ml, quota: {gpus: 2}}
""",
    )
    lenders = [submit(server, tmp_path, f"vision-{i}", team="vision", gpus=1) for i in range(3)]
    for job_id in lenders:
        running(server, job_id)
    borrowed = server.cli_json("teams")
    vision = next(t for t in borrowed if t["name"] == "vision")  # type: ignore[union-attr]
    assert vision["used"]["gpus"] == 3 and vision["borrowed"]["gpus"] == 1

    first = submit(server, tmp_path, "research-0", gpus=1)
    running(server, first)  # the fourth GPU was free: no preemption needed
    second = submit(server, tmp_path, "research-1", gpus=1)
    running(server, second)  # only by reclaiming vision's borrowed GPU

    states = {j: server.cli_json("status", j) for j in lenders}
    victims = [j for j, job in states.items() if job["state"] != "RUNNING"]  # type: ignore[index]
    assert len(victims) == 1, states
    victim = states[victims[0]]
    requeue = [e for e in victim["events"] if e["to_state"] == "PENDING" and e["reason"]]  # type: ignore[index]
    assert "preempted" in requeue[-1]["reason"] and second in requeue[-1]["reason"]
    # Back in the queue, not failed; it waits because its team is at its quota again.
    waiting = reason_of(server, victims[0], "quota")
    assert "vision" in waiting["reason"], waiting["reason"]


def test_gpu_type_quota_holds_even_where_that_type_is_free(server: Server, tmp_path: Path) -> None:
    apply(
        server,
        tmp_path,
        """
queueing: {policy: fifo, preemption: false}
teams:
  - {name: research, quota: {gpus: 4, gpu_types: {a100: 1}}}
""",
    )
    first = submit(server, tmp_path, "a100-first", gpus=1, gpu_type="a100")
    job = running(server, first)
    second = submit(server, tmp_path, "a100-second", gpus=1, gpu_type="a100")
    waiting = reason_of(server, second, "a100")
    assert "quota" in waiting["reason"], waiting["reason"]
    nodes = {n["id"]: n for n in server.cli_json("nodes")}  # type: ignore[union-attr]
    assert nodes[job["nodes"][0]]["available"]["gpus"] == 1  # the a100 node has room
    other = submit(server, tmp_path, "v100", gpus=1, gpu_type="v100")
    placed = running(server, other)
    assert nodes[placed["nodes"][0]]["labels"][GPU_TYPE] == "v100"
    assert server.cli_json("status", second)["state"] == "PENDING"  # type: ignore[index]


def test_backfill_starts_a_short_job_that_cannot_delay_the_blocked_head(
    server: Server, tmp_path: Path
) -> None:
    apply(
        server,
        tmp_path,
        """
queueing: {policy: fifo, backfill: true, preemption: false}
teams:
  - {name: research}
""",
    )
    holder = submit(server, tmp_path, "holder", gpus=1, gpu_type="a100", max_runtime="10m")
    running(server, holder)
    head = submit(server, tmp_path, "head", gpus=2, gpu_type="a100", max_runtime="10m")
    too_long = submit(server, tmp_path, "too-long", gpus=1, gpu_type="a100", max_runtime="1h")
    short = submit(server, tmp_path, "short", gpus=1, gpu_type="a100", max_runtime="2m")

    started = running(server, short)  # backfilled past `head` and `too-long`
    assert started["attempt"] == 1
    head_job = server.cli_json("status", head)
    assert head_job["state"] == "PENDING"  # type: ignore[index]
    assert head_job["position"] == 1 and head_job["estimated_start"]  # type: ignore[index]
    late = server.cli_json("status", too_long)
    assert late["state"] == "PENDING", late  # type: ignore[index]
    listing = server.cli("list", "--state", "PENDING")
    assert head in listing.stdout and too_long in listing.stdout


def test_dependencies_wait_for_success_and_a_failed_dependency_cancels(
    server: Server, tmp_path: Path
) -> None:
    apply(server, tmp_path, "queueing: {policy: fifo}\nteams:\n  - {name: research}\n")
    first = submit(server, tmp_path, "first", epochs=30)
    then = submit(server, tmp_path, "then", epochs=3, depends_on=f"[{first}]")
    reason_of(server, then, first)  # waits, and says for what
    done = server.cli("wait", then, "--timeout", "240")
    assert done.returncode == 0, done.stderr
    first_job, then_job = server.cli_json("status", first), server.cli_json("status", then)
    assert then_job["started_at"] >= first_job["finished_at"]  # type: ignore[index]

    doomed = submit(server, tmp_path, "doomed", max_runtime="3s")
    after = submit(server, tmp_path, "after-doomed", epochs=3, depends_on=f"[{doomed}]")
    failed = server.wait_for_job(doomed, lambda j: j["state"] == "FAILED", timeout=120)
    assert "max_runtime" in failed["reason"]
    cancelled = server.wait_for_job(after, lambda j: j["state"] == "CANCELLED", timeout=60)
    assert doomed in cancelled["reason"] and "FAILED" in cancelled["reason"].upper()
