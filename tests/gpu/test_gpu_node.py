"""GPU-only checks of the node exporter against the real NVML (see tests/gpu/README.md).

Skipped, with the reason, on machines where NVML does not initialise (no NVIDIA GPU or
driver), such as the development machine; there the exporter is tested with the NVML
stand-in (tests/unit/test_node_exporter.py). On a GPU machine:

1. every GPU's series come from the real NVML, served over HTTP and accepted by promtool;
2. a CUDA process carrying a dcsched job's environment is attributed: GPU memory and a
   non-zero SM share under that job;
3. a CUDA training job submitted through dcsched (`dcsched up` on its own Ray head, which
   detects the GPUs; a spec with `gpus: 1`) shows non-zero GPU memory and utilisation
   under its job id and team while it runs;
4. a serving replica with `--gpus 1` loads its model on CUDA (Ray set its
   CUDA_VISIBLE_DEVICES), answers /predict through HAProxy and shows GPU memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcsched.exporters.node import NodeExporter, NodeUsage, serve
from dcsched.exporters.nvml import NvmlError, PyNvml
from tests.conftest import free_port, run_cli
from tests.unit.test_node_exporter import promtool_check, scrape


def _probe() -> tuple[int, str]:
    library = PyNvml()
    try:
        library.init()
        count = library.device_count()
        library.shutdown()
    except NvmlError as exc:
        return 0, f"no NVIDIA GPU here: NVML did not initialise ({exc})"
    if count == 0:
        return 0, "no NVIDIA GPU here: NVML initialised but reports no device"
    return count, ""


GPU_COUNT, NO_GPU = _probe()
pytestmark = pytest.mark.skipif(GPU_COUNT == 0, reason=NO_GPU or "no GPU")

NODE = "gpu-node"
TEAM = "gpu-check"
# A CUDA process that holds memory and keeps the SMs busy until killed.
BUSY_CUDA = """
import torch
x = torch.randn(8192, 8192, device="cuda")
while True:
    y = x @ x
    torch.cuda.synchronize()
"""


def require_cuda_torch() -> None:
    import torch

    assert torch.cuda.is_available(), (
        "NVML sees a GPU but torch in this environment cannot use it (a CPU build of "
        "torch?). Install a CUDA build into .venv, e.g. pip install torch --index-url "
        "https://download.pytorch.org/whl/cu124"
    )


def job_on_node(usage: NodeUsage, job: str) -> dict[str, object] | None:
    for entry in usage.as_dict()["jobs"]:
        if entry["job"] == job:
            return dict(entry)
    return None


def wait_for_job_use(exporter: NodeExporter, job: str, timeout_s: float) -> dict[str, object]:
    """Reads until the job shows GPU memory and a non-zero share; returns that reading's
    entry (the best seen, for the failure message, when it never does)."""
    best: dict[str, object] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = job_on_node(exporter.snapshot(), job)
        if entry is not None:
            best = entry
            memory = float(entry["gpu_memory_used_bytes"])  # type: ignore[arg-type]
            share = entry["gpu_utilization_ratio"]
            if memory > 0 and share is not None and float(share) > 0:  # type: ignore[arg-type]
                return entry
        time.sleep(1.0)
    raise AssertionError(f"job {job} never showed GPU memory and utilisation: {best}")


def test_real_nvml_series_for_every_gpu() -> None:
    exporter = NodeExporter(NODE)
    server, _ = serve("127.0.0.1", 0, exporter)
    try:
        text = scrape(server.url)
        usage = exporter.snapshot()
    finally:
        server.close()
        exporter.close()
    promtool_check(text)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert [s.value for s in samples if s.name == "dcsched_gpu_collector_up"] == [1.0]
    assert usage.gpu_collector_up and len(usage.gpus) == GPU_COUNT
    for gpu in usage.gpus:
        assert gpu.uuid.startswith(("GPU-", "MIG-")) and gpu.model
        assert gpu.memory_total_bytes and gpu.memory_total_bytes > 2**30
        assert gpu.memory_used_bytes is not None
        assert gpu.memory_used_bytes <= gpu.memory_total_bytes
        assert gpu.utilization_ratio is not None and 0.0 <= gpu.utilization_ratio <= 1.0
        assert gpu.temperature_celsius is not None and 0 < gpu.temperature_celsius < 120
        assert gpu.power_watts is not None and gpu.power_watts > 0
        labels = {"node": NODE, "gpu": str(gpu.index), "uuid": gpu.uuid, "model": gpu.model}
        for series in ("dcsched_gpu_sm_clock_hertz", "dcsched_gpu_xid_errors_total"):
            assert any(s.name == series and s.labels == labels for s in samples), series


def test_a_cuda_process_is_attributed_to_its_job() -> None:
    require_cuda_torch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    env.update({"DCSCHED_JOB_ID": "gpu-check-process", "DCSCHED_TEAM": TEAM})
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    busy = subprocess.Popen([sys.executable, "-c", BUSY_CUDA], env=env)
    exporter = NodeExporter(NODE)
    try:
        entry = wait_for_job_use(exporter, "gpu-check-process", timeout_s=120)
        assert busy.poll() is None, "the CUDA process died"
    finally:
        busy.kill()
        busy.wait()
        exporter.close()
    assert entry["team"] == TEAM and len(entry["gpus"]) == 1  # type: ignore[arg-type]
    assert float(entry["gpu_memory_used_bytes"]) > 2**28  # type: ignore[arg-type]


@pytest.fixture
def dcsched_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`dcsched up` in a fresh home with its own Ray head (Ray detects the GPUs), and
    `dcsched down` (which stops that head by its PID) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSCHED_", "RAY_"))}
    env.update({"DCSCHED_HOME": str(tmp_path / "home"), "DCSCHED_PORT": str(free_port())})
    env["DCSCHED_EXPORTER_PORT"] = str(free_port())
    up = dcsched(env, "up", timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        yield env
    finally:
        dcsched(env, "down", timeout=120)


def dcsched(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=timeout)


def write_training_data(path: Path, rows: int = 20_000, features: int = 64) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    y = (x[:, :8].sum(axis=1) > 0).astype(int)
    header = ",".join([*(f"f{i}" for i in range(features)), "label"])
    lines = [
        header,
        *(",".join([*map("{:.5f}".format, r), str(t)]) for r, t in zip(x, y, strict=True)),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_a_cuda_training_job_through_dcsched_shows_its_gpu_use(
    dcsched_home: dict[str, str], tmp_path: Path
) -> None:
    require_cuda_torch()
    data = tmp_path / "train.csv"
    write_training_data(data)
    spec = {
        "name": "gpu-check-train",
        "kind": "train",
        "team": TEAM,
        "resources": {"workers": 1, "cpus": 1, "gpus": 1, "memory": "4GiB"},
        "model": {"type": "mlp", "params": {"hidden": [2048, 2048, 2048]}},
        "data": {"source": f"csv:{data}", "target": "label", "test_size": 0.2, "seed": 0},
        "train": {"epochs": 3000, "batch_size": 1024, "optimizer": "adam", "lr": 0.001},
    }
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(json.dumps(spec))  # JSON is YAML
    submitted = dcsched(dcsched_home, "submit", str(spec_file))
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    exporter = NodeExporter(NODE)
    try:
        entry = wait_for_job_use(exporter, job, timeout_s=240)
        status = dcsched(dcsched_home, "status", job, "-o", "json")
    finally:
        exporter.close()
        dcsched(dcsched_home, "cancel", job)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "RUNNING"
    assert entry["team"] == TEAM
    assert entry["gpus"], entry


def test_a_gpu_serving_replica_loads_its_model_on_cuda_and_answers(
    dcsched_home: dict[str, str], tmp_path: Path
) -> None:
    """`dcsched serve --gpus 1`: the replica runs in its placement group, Ray sets
    CUDA_VISIBLE_DEVICES, the model is on CUDA, /predict answers through HAProxy, and the
    exporter sees the replica's GPU memory under its job id."""
    require_cuda_torch()
    train = {
        "name": "gpu-serve-model",
        "kind": "train",
        "team": TEAM,
        "resources": {"cpus": 1, "memory": "1GiB"},
        "model": {"type": "mlp", "params": {"hidden": [64, 32]}},
        "data": {"source": "sklearn:breast_cancer", "seed": 1},
        "train": {"epochs": 3},
    }
    spec_file = tmp_path / "train.yaml"
    spec_file.write_text(json.dumps(train))
    trained = dcsched(dcsched_home, "submit", str(spec_file), "--wait", timeout=600)
    assert trained.returncode == 0, trained.stderr
    created = dcsched(
        dcsched_home, "serve", "gpu-serve-model", "--name", "gpu-serve", "--team", TEAM,
        "--replicas", "1", "--cpus", "1", "--gpus", "1", "--memory", "1GiB",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    url = created.stdout.strip()
    exporter = NodeExporter(NODE)
    try:
        deadline = time.monotonic() + 300
        members: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            status = dcsched(dcsched_home, "serve", "status", "gpu-serve", "-o", "json")
            members = json.loads(status.stdout)["members"] if status.returncode == 0 else []
            if members and str(members[0]["balancer"]).startswith("UP"):
                break
            time.sleep(1.0)
        assert members and str(members[0]["balancer"]).startswith("UP"), members
        job = str(members[0]["job"])
        home = Path(dcsched_home["DCSCHED_HOME"])
        endpoint = json.loads((home / "runs" / job / "endpoint.json").read_text())
        assert endpoint["device"] == "cuda" and endpoint["cuda_visible_devices"], endpoint
        import urllib.request

        request = urllib.request.Request(
            url + "/predict",
            data=json.dumps({"features": [float(i) for i in range(30)]}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer["prediction"]["label"] in (0, 1), answer
        entry = job_on_node(exporter.snapshot(), job)
        deadline = time.monotonic() + 60
        while (entry is None or not float(entry["gpu_memory_used_bytes"])) and (  # type: ignore[arg-type]
            time.monotonic() < deadline
        ):
            time.sleep(1.0)
            entry = job_on_node(exporter.snapshot(), job)
        assert entry is not None and float(entry["gpu_memory_used_bytes"]) > 0, entry  # type: ignore[arg-type]
    finally:
        exporter.close()
        dcsched(dcsched_home, "serve", "stop", "gpu-serve")
