"""`kind: run` jobs on a real two-node Ray cluster, through the real server and CLI: a
4-worker gang all-reduces its ranks (torch.distributed over the rendezvous environment
dcsched sets), placement decides which nodes run which ranks, one failing rank stops the
others, a preempted gang resumes from its checkpoint dir, cancel frees every bundle, a
GPU job's second run finds its reservation, and inputs are only uploads or data-root
files."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcsched.processes import pid_alive
from tests.conftest import EXAMPLES, Server, dashboard_url, start_cluster, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ALLREDUCE = """\
import os, socket, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = torch.tensor([float(dist.get_rank())])
dist.all_reduce(rank)
env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
       "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "DCSCHED_JOB_ID", "DCSCHED_RUN_ATTEMPT",
       "DCSCHED_CHECKPOINT_DIR", "CUDA_VISIBLE_DEVICES", "GREETING")}
print("ENV " + __import__("json").dumps(env), flush=True)
print(f"SUM {int(rank.item())}", flush=True)
dist.destroy_process_group()
"""

FAIL_ONE = """\
import os, sys, time
rank = int(os.environ["RANK"])
open(os.path.join(os.environ["PIDS"], f"{rank}.pid"), "w").write(str(os.getpid()))
if rank == 1:
    time.sleep(2)
    print("boom: rank 1 gives up", flush=True)
    sys.exit(3)
time.sleep(600)
"""

RESUMABLE = """\
import os, time, dcsched
path = os.path.join(os.environ["DCSCHED_CHECKPOINT_DIR"], f"step-{os.environ['RANK']}")
step = int(open(path).read()) if os.path.exists(path) else 0
if step:
    print(f"resumed at step {step}", flush=True)
while step < 40:
    step += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(path + ".tmp", path)
    dcsched.report(step=step, epoch=step, loss=1.0 / step)
    time.sleep(0.25)
print("finished", flush=True)
"""

CONFIG = """\
queueing: {policy: priority, preemption: true}
max_upload: 64KiB
data_roots: [%s]
"""


@pytest.fixture(scope="module")
def live(
    ray_head: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Server, Path]]:
    cluster: Any = start_cluster([{"num_cpus": 2}, {"num_cpus": 2, "num_gpus": 1}])
    root = tmp_path_factory.mktemp("data-root")
    home = tmp_path_factory.mktemp("run-home")
    server = start_server(home, cluster.address, config=CONFIG % root)
    try:
        yield cluster, server, root
    finally:
        server.stop()
        cluster.shutdown()


@pytest.fixture
def server(live: tuple[Any, Server, Path]) -> Iterator[Server]:
    srv = live[1]
    yield srv
    srv.cancel_live_jobs()


def write_job(folder: Path, name: str, script: str, **spec: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(script)
    document = {
        "name": name,
        "kind": "run",
        "team": "research",
        "resources": {"workers": 1, "cpus": 1, "memory": "64MiB"},
        "run": {"command": ["python", "main.py"], "working_dir": "."},
        **spec,
    }
    path = folder / "job.yaml"
    path.write_text(json.dumps(document))
    return path


def submit(server: Server, spec: Path) -> str:
    done = server.cli("submit", str(spec))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def rank_log(server: Server, job_id: str, rank: int) -> str:
    done = server.cli("logs", job_id, "--rank", str(rank))
    assert done.returncode == 0, done.stderr
    return done.stdout


def ended(job: dict[str, Any]) -> bool:
    return job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def test_a_four_worker_gang_all_reduces_its_ranks_over_two_nodes(
    server: Server, tmp_path: Path
) -> None:
    spec = write_job(
        tmp_path,
        "allreduce",
        ALLREDUCE,
        resources={"workers": 4, "cpus": 1, "memory": "64MiB"},
        run={"command": ["python", "main.py"], "working_dir": ".", "env": {"GREETING": "hi"}},
    )
    job_id = submit(server, spec)
    job = server.wait_for_job(job_id, ended, timeout=240)
    assert job["state"] == "SUCCEEDED", job
    envs = []
    for rank in range(4):
        text = rank_log(server, job_id, rank)
        assert "SUM 6" in text, text
        envs.append(json.loads(text.split("ENV ", 1)[1].splitlines()[0]))
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}
    assert {e["MASTER_PORT"] for e in envs} == {envs[0]["MASTER_PORT"]}
    assert {e["DCSCHED_JOB_ID"] for e in envs} == {job_id}
    assert {e["GREETING"] for e in envs} == {"hi"}
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {""}
    assert envs[0]["DCSCHED_CHECKPOINT_DIR"].endswith(f"runs/{job_id}/checkpoint")
    # 2 CPUs a node: ranks 0-1 on one node, 2-3 on the other, numbered as torchrun would.
    nodes = job["nodes"]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "1"]
    assert [e["GROUP_RANK"] for e in envs] == ["0", "0", "1", "1"]
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    # `dcsched logs` without --rank shows every rank's output (as Ray collected it).
    everything = server.cli("logs", job_id).stdout
    assert everything.count("SUM 6") == 4
    assert all(f"(rank {rank} pid=" in everything for rank in range(4))  # prefixed by rank


def test_placement_decides_which_nodes_run_the_ranks(server: Server, tmp_path: Path) -> None:
    """A 2-worker gang fits either node whole: binpack takes the tighter node (the one
    without a GPU, kept free for GPU jobs), spread the emptiest (the GPU node)."""
    gpu_node = next(n["id"] for n in server.cli_json("nodes") if n["total"]["gpus"])  # type: ignore[union-attr]
    chosen = {}
    for placement in ("binpack", "spread"):
        spec = write_job(
            tmp_path / placement,
            f"place-{placement}",
            "import os; print('rank', os.environ['RANK'], 'group', os.environ['GROUP_RANK'])\n",
            resources={"workers": 2, "cpus": 1, "memory": "64MiB"},
            placement=placement,
        )
        job = server.wait_for_job(submit(server, spec), ended, timeout=180)
        assert job["state"] == "SUCCEEDED", job
        assert len(set(job["nodes"])) == 1
        assert "rank 1 group 0" in rank_log(server, job["id"], 1)
        chosen[placement] = job["nodes"][0]
    assert chosen["spread"] == gpu_node != chosen["binpack"]


def test_one_failing_rank_stops_the_others_and_fails_the_job(
    server: Server, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = write_job(
        tmp_path / "job",
        "fail-one",
        FAIL_ONE,
        resources={"workers": 3, "cpus": 1, "memory": "64MiB"},
        run={"command": ["python", "main.py"], "working_dir": ".", "env": {"PIDS": str(pids)}},
    )
    job = server.wait_for_job(submit(server, spec), ended, timeout=180)
    assert job["state"] == "FAILED"
    assert "rank 1 exited with code 3" in job["reason"]
    assert "boom: rank 1 gives up" in job["reason"]
    deadline = time.monotonic() + 30
    survivors = [int(p.read_text()) for p in pids.glob("*.pid")]
    assert len(survivors) == 3
    while any(pid_alive(pid) for pid in survivors):
        assert time.monotonic() < deadline, "a rank kept running after the gang failed"
        time.sleep(0.5)


def test_a_preempted_gang_resumes_from_its_checkpoint_dir(server: Server, tmp_path: Path) -> None:
    low = write_job(
        tmp_path / "low",
        "resumable",
        RESUMABLE,
        priority="low",
        resources={"workers": 4, "cpus": 1, "memory": "64MiB"},
    )
    low_id = submit(server, low)
    server.wait_for_job(
        low_id, lambda j: (j.get("progress") or {}).get("step", 0) >= 3, timeout=180
    )
    high = write_job(tmp_path / "high", "urgent", "print('urgent done')\n", priority="high")
    high_id = submit(server, high)
    assert server.wait_for_job(high_id, ended, timeout=180)["state"] == "SUCCEEDED"
    job = server.wait_for_job(low_id, ended, timeout=240)
    assert job["state"] == "SUCCEEDED", job
    assert job["attempt"] == 2
    detail = server.cli_json("status", low_id)
    assert any("preempted" in (e["reason"] or "") for e in detail["events"])  # type: ignore[index]
    assert "resumed at step" in rank_log(server, low_id, 0)
    assert job["result"]["progress"]["step"] == 40


def test_cancel_of_a_running_gang_frees_every_bundle(server: Server, tmp_path: Path) -> None:
    spec = write_job(
        tmp_path,
        "sleepers",
        "import time; time.sleep(600)\n",
        resources={"workers": 4, "cpus": 1, "memory": "64MiB"},
    )
    job_id = submit(server, spec)
    server.wait_for_job(job_id, lambda j: j["state"] == "RUNNING", timeout=180)
    assert server.cli("cancel", job_id).returncode == 0
    deadline = time.monotonic() + 60
    while True:
        nodes = server.cli_json("nodes")
        free = [n["available"]["cpus"] == n["total"]["cpus"] for n in nodes]  # type: ignore[union-attr]
        if all(free):
            break
        assert time.monotonic() < deadline, f"bundles still held after cancel: {nodes}"
        time.sleep(0.5)


def test_a_gpu_job_preempted_runs_again_in_a_new_group_and_succeeds(
    server: Server, tmp_path: Path
) -> None:
    """Regression: the second run of a GPU job looked for the group under the job id."""
    text = (EXAMPLES / "train-mlp.yaml").read_text()
    text = text.replace("memory: 1GiB", "memory: 64MiB").replace("gpus: 0", "gpus: 1")
    low_spec = tmp_path / "gpu-low.yaml"
    low_spec.write_text(
        text.replace("priority: normal", "priority: low").replace("epochs: 30", "epochs: 150")
    )
    low_id = submit(server, low_spec)
    server.wait_for_job(
        low_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2, timeout=180
    )
    high_spec = tmp_path / "gpu-high.yaml"
    high_spec.write_text(
        text.replace("priority: normal", "priority: high").replace("epochs: 30", "epochs: 2")
    )
    high_id = submit(server, high_spec)
    assert server.wait_for_job(high_id, ended, timeout=180)["state"] == "SUCCEEDED"
    job = server.wait_for_job(low_id, ended, timeout=300)
    assert job["state"] == "SUCCEEDED", job
    assert job["attempt"] == 2


def test_a_working_dir_over_the_limit_is_refused_at_submit(server: Server, tmp_path: Path) -> None:
    spec = write_job(tmp_path, "too-big", "print(1)\n")
    (tmp_path / "weights.bin").write_bytes(os.urandom(100 * 1024))
    before = len(server.cli_json("list"))  # type: ignore[arg-type]
    done = server.cli("submit", str(spec))
    assert done.returncode == 2
    assert "upload limit of 65536 bytes" in done.stderr
    assert len(server.cli_json("list")) == before  # type: ignore[arg-type]


SECRET = "secret-content-0123456789"


@pytest.mark.parametrize(
    "where",
    ["outside", "symlink-out", "relative", "proc", "missing-upload"],
)
def test_inputs_outside_the_data_roots_are_refused_and_never_read(
    live: tuple[Any, Server, Path], tmp_path: Path, where: str
) -> None:
    _, server, root = live
    outside = tmp_path / "secret.csv"
    outside.write_text(f"{SECRET},y\n1,2\n")
    link = root / f"link-{where}.csv"
    if not link.exists():
        link.symlink_to(outside)
    source = {
        "outside": f"csv:{outside}",
        "symlink-out": f"csv:{link}",
        "relative": "csv:secret.csv",
        "proc": "csv:/proc/self/environ",
        "missing-upload": "csv:upload:sha256:" + "0" * 64,
    }[where]
    spec = {
        "name": "sneaky",
        "kind": "train",
        "team": "research",
        "model": {"type": "mlp"},
        "data": {"source": source, "target": "y"},
    }
    status, body = server.api("POST", "/v1/jobs", {"spec": spec})
    assert status == 400, body
    text = body.decode()
    assert SECRET not in text and "RAY_" not in text
    assert "data.source" in text


def test_a_file_under_a_data_root_is_read_in_place(
    live: tuple[Any, Server, Path], tmp_path: Path
) -> None:
    _, server, root = live
    data = root / "inside.csv"
    data.write_text((EXAMPLES / "data.csv").read_text())
    header = data.read_text().splitlines()[0].split(",")
    spec = {
        "name": "in-root",
        "kind": "train",
        "team": "research",
        "resources": {"memory": "64MiB"},
        "model": {"type": "mlp"},
        "data": {"source": f"csv:{data}", "target": header[-1]},
        "train": {"epochs": 2},
    }
    status, body = server.api("POST", "/v1/jobs", {"spec": spec})
    assert status == 201, body
    job = server.wait_for_job(json.loads(body)["id"], ended, timeout=180)
    assert job["state"] == "SUCCEEDED", job


def test_single_worker_run_reports_progress_and_its_failure(
    live: tuple[Any, Server, Path], server: Server, tmp_path: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    ok = write_job(
        tmp_path / "ok",
        "reporter",
        "import dcsched\nfor i in range(3): dcsched.report(step=i, epoch=i, loss=1/(i+1))\n"
        "print('done reporting')\n",
    )
    job = server.wait_for_job(submit(server, ok), ended, timeout=120)
    assert job["state"] == "SUCCEEDED", job
    assert job["result"]["progress"]["step"] == 2
    assert "done reporting" in server.cli("logs", job["id"]).stdout
    # The driver's output is teed (dcsched.runs.tee): Ray's job log, which the dashboard
    # shows, has it, and so has the driver's own log that `dcsched logs` reads by range.
    assert job["attempt"] == 1  # so its run id is its job id
    ray_log = JobSubmissionClient(dashboard_url(live[0])).get_job_logs(job["id"])
    assert "done reporting" in ray_log, ray_log
    driver_log = server.home / "runs" / job["id"] / "logs" / f"driver-{job['id']}.log"
    assert "done reporting" in driver_log.read_text()
    assert stat.S_IMODE(driver_log.stat().st_mode) == 0o600
    first, rest = (
        json.loads(server.api("GET", f"/v1/jobs/{job['id']}/logs?offset={offset}&limit=4")[1])
        for offset in (0, 4)
    )
    assert (first["offset"], rest["offset"]) == (4, 8)
    assert (first["logs"] + rest["logs"]).encode() == driver_log.read_bytes()[:8]
    bad = write_job(tmp_path / "bad", "crasher", "print('about to fail')\nraise SystemExit(7)\n")
    job = server.wait_for_job(submit(server, bad), ended, timeout=120)
    assert job["state"] == "FAILED"
    assert "rank 0 exited with code 7" in job["reason"] and "about to fail" in job["reason"]


def test_a_two_worker_train_job_trains_data_parallel_and_resumes_after_preemption(
    server: Server, tmp_path: Path
) -> None:
    text = (EXAMPLES / "train-mlp.yaml").read_text().replace("memory: 1GiB", "memory: 64MiB")
    spec = tmp_path / "ddp-train.yaml"
    spec.write_text(
        text.replace("workers: 1", "workers: 2")
        .replace("priority: normal", "priority: low")
        .replace("epochs: 30", "epochs: 60")
    )
    job_id = submit(server, spec)
    server.wait_for_job(
        job_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 3, timeout=240
    )
    blocker = write_job(
        tmp_path / "blocker",
        "blocker",
        "print('all four CPUs')\n",
        priority="high",
        resources={"workers": 4, "cpus": 1, "memory": "64MiB"},
    )
    assert server.wait_for_job(submit(server, blocker), ended, timeout=180)["state"] == "SUCCEEDED"
    job = server.wait_for_job(job_id, ended, timeout=300)
    assert job["state"] == "SUCCEEDED", job
    assert job["attempt"] == 2
    result = job["result"]
    assert result["workers"] == 2 and result["metrics"]["f1"] >= 0.93
    assert result["epochs_run"] < 60  # the second run resumed from the checkpoint
    assert result["model"]["version"] >= 1
