"""What dcsched adds to a training job: examples/train-mlp.yaml submitted through a real
server on a local Ray (submit -> SUCCEEDED, seen through the API), against the same
plugin and data trained as a plain Python process (`python -m dcsched.training.runner`),
in the same run, several times, rotating the order of the three paths each round:

- plain: the runner as a plain process;
- cpu: the spec as it is (gpus: 0): dcsched trains in the Ray job's driver itself;
- gpu: the same spec with gpus: 1 on a head with logical GPUs: the driver runs the runner
  as a Ray task inside the job's placement group (dcsched.training.group_runner), as it
  does for any GPU job (no real GPU here: the task gets CUDA_VISIBLE_DEVICES and trains
  on CPU, so only the path's overhead differs).

Reports medians and the paired differences (each path minus the plain run of the same
round) with min/max. Goal (issue #9): both paths within 1.5 s of the plain process
(median paired difference). --epochs N trains N epochs instead of the spec's 30 on every
path (the overhead is a fixed cost; a shorter job makes it stand out of a noisy
machine's jitter). Usage: python bench/train_overhead.py [--runs N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cli, client_for, dcsched_server, emit, machine, median, stats

SPEC = REPO / "examples" / "train-mlp.yaml"
GOAL_S = 1.5
LOGICAL_GPUS = 1


def document(epochs: int | None, gpus: int = 0) -> dict[str, Any]:
    """examples/train-mlp.yaml with ``gpus`` per worker and, if given, ``epochs``."""
    from dcsched.core.spec import load_yaml_mapping

    spec = dict(load_yaml_mapping(SPEC.read_text()))
    spec["resources"] = {**spec["resources"], "gpus": gpus}
    if epochs is not None:
        spec["train"] = {**spec["train"], "epochs": epochs}
    return spec


def plain_run(epochs: int | None) -> float:
    from dcsched.kinds import parse_job_spec

    with tempfile.TemporaryDirectory() as run_dir:
        spec = parse_job_spec(document(epochs))
        Path(run_dir, "spec.json").write_text(spec.model_dump_json())
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dcsched.training.runner", run_dir],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def dcsched_run(env: dict[str, str], epochs: int | None, gpus: int = 0) -> float:
    client = client_for(env)
    started = time.perf_counter()
    job = client.submit(document(epochs, gpus))
    while True:
        state = client.get_job(job["id"])["state"]
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if state != "SUCCEEDED":
        raise RuntimeError(f"job {job['id']} ended {state}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the spec's")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"plain": [], "cpu": [], "gpu": []}
    from dcsched.processes import free_port

    with dcsched_server(port=free_port(), num_gpus=LOGICAL_GPUS) as env:
        paths: dict[str, Callable[[], float]] = {
            "plain": lambda: plain_run(args.epochs),
            "cpu": lambda: dcsched_run(env, args.epochs),
            "gpu": lambda: dcsched_run(env, args.epochs, gpus=1),
        }
        for run in paths.values():  # warm-up: the first jobs start Ray's worker pool
            run()
        names = list(paths)
        for index in range(args.runs):
            for name in names[index % 3 :] + names[: index % 3]:
                walls[name].append(paths[name]())
        jobs = json.loads(cli(env, "list", "-o", "json").stdout)
    record: dict[str, object] = {"benchmark": "train_overhead", "runs": args.runs}
    record["epochs"] = args.epochs or document(None)["train"]["epochs"]
    for name in ("plain", "cpu", "gpu"):
        record[f"{name}_wall_s"] = round(median(walls[name]), 3)
    for name in ("cpu", "gpu"):
        diffs = [a - b for a, b in zip(walls[name], walls["plain"], strict=True)]
        record[f"{name}_minus_plain_s"] = stats(diffs)
        record[f"{name}_meets_goal"] = median(diffs) <= GOAL_S
    record["gpu_minus_cpu_s"] = stats(
        [a - b for a, b in zip(walls["gpu"], walls["cpu"], strict=True)]
    )
    for name in ("plain", "cpu", "gpu"):
        record[f"{name}_all_s"] = [round(x, 3) for x in walls[name]]
    record.update(
        {
            "goal_overhead_s": GOAL_S,
            "logical_gpus": LOGICAL_GPUS,
            "jobs_succeeded": sum(j["state"] == "SUCCEEDED" for j in jobs),
            "machine": machine(),
        }
    )
    emit(record)


if __name__ == "__main__":
    main()
