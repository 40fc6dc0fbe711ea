"""Batch inference throughput: rows/s of the same model on the same rows, in one run, by

- plain: a plain PyTorch loop in one process (torch at 1 thread): read the Parquet input
  with pyarrow, standardise with the model's saved scaler, forward in batches under
  ``torch.no_grad``, write the output Parquet; the network rebuilt by hand from the saved
  weights (no dcsched code on the path);
- dcsched-1, dcsched-2: a `kind: infer` job with 1 and 2 workers (1 CPU each) through a
  real dcsched server on a local Ray head (input under a data root, output Parquet);
- raydata-1, raydata-2: Ray Data ``read_parquet -> map_batches(predictor class,
  concurrency=N, num_cpus=1) -> write_parquet`` on the same Ray head.

The model: the built-in mlp with hidden [64, 32] (the seed's 30-64-32-1 MLP) trained by a
dcsched train job on breast_cancer; the rows: N rows resampled from breast_cancer with
noise (default 1,000,000), in a Parquet file.

Two figures per path: end_to_end_rows_per_s (rows / wall time: for dcsched, submit to
SUCCEEDED; for Ray Data, the pipeline's execution without ray.init; for plain, the whole
process's work) and steady_rows_per_s (rows / the span of the predict loop alone: for
dcsched its own result.json's span from the first rank's first batch to the last rank's
last; for Ray Data the span between the first batch's start and the last batch's end,
stamped inside the UDF). steady_rows_per_s_per_worker: the mean over workers of each
worker's rows over its own predict loop (ranks start at different times; this leaves the
skew out). Goal (issue 14): dcsched per
worker >= 0.9x plain, and above Ray Data. One run per path; JSON lines.

Usage: python bench/infer.py [--rows N] [--batch-size B]   (Ray Data: pip install '.[bench]')
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, dcsched_server, emit, machine

TRAIN = {
    "name": "bench-mlp",
    "kind": "train",
    "team": "bench",
    "resources": {"workers": 1, "cpus": 1, "memory": "1GiB"},
    "model": {"type": "mlp", "params": {"hidden": [64, 32]}},
    "data": {"source": "sklearn:breast_cancer", "seed": 0},
    "train": {"epochs": 5, "batch_size": 64},
}


def make_rows(path: Path, n: int) -> list[str]:
    """N rows resampled from breast_cancer (+1% noise) as Parquet; the feature names."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    rng = np.random.default_rng(0)
    picked = raw.data[rng.integers(0, len(raw.data), n)]
    rows = picked * (1 + 0.01 * rng.standard_normal(picked.shape))
    names = [str(name) for name in raw.feature_names]
    table = pa.table({name: rows[:, i] for i, name in enumerate(names)})
    pq.write_table(table, path, row_group_size=131_072)
    return names


def wait(client: Any, job_id: str, poll_s: float = 0.05) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get_job(job_id)
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(poll_s)


# -- plain ----------------------------------------------------------------------------------


def plain_loop(model_dir: Path, rows_path: Path, out: Path, batch: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from torch import nn

    torch.set_num_threads(1)
    began = time.perf_counter()
    scaler = json.loads((model_dir / "preprocessing.json").read_text())
    names = scaler["feature_names"]
    state = torch.load(model_dir / "weights.pt", weights_only=True)
    net = nn.Sequential(
        nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    net.load_state_dict(state)
    net.eval()
    table = pq.read_table(rows_path, columns=names)
    x = np.column_stack([table.column(n).to_numpy() for n in names])
    mean, scale = np.asarray(scaler["mean"]), np.asarray(scaler["scale"])
    positive = np.empty(len(x))
    loop_began = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(x), batch):
            chunk = ((x[first : first + batch] - mean) / scale).astype(np.float32)
            logits = net(torch.from_numpy(chunk))[:, 0].double()
            positive[first : first + len(chunk)] = torch.sigmoid(logits).numpy()
    loop_s = time.perf_counter() - loop_began
    pq.write_table(
        pa.table(
            {
                "row_id": np.arange(len(x)),
                "prediction": (positive >= 0.5).astype(np.int64),
                "probability_0": 1 - positive,
                "probability_1": positive,
            }
        ),
        out,
    )
    total_s = time.perf_counter() - began
    return {"seconds": total_s, "predict_seconds": loop_s, "rows": len(x), "positive": positive}


# -- Ray Data -------------------------------------------------------------------------------


class Predictor:
    """Ray Data's callable class: the same hand-built network and scaler as ``plain``."""

    def __init__(self, model_dir: str):
        import torch
        from torch import nn

        torch.set_num_threads(1)
        scaler = json.loads((Path(model_dir) / "preprocessing.json").read_text())
        self.names = scaler["feature_names"]
        self.mean, self.scale = np.asarray(scaler["mean"]), np.asarray(scaler["scale"])
        self.net = nn.Sequential(
            nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )
        state = torch.load(Path(model_dir) / "weights.pt", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        t0 = time.time()
        x = np.column_stack([batch[n] for n in self.names])
        chunk = ((x - self.mean) / self.scale).astype(np.float32)
        with torch.no_grad():
            positive = torch.sigmoid(self.net(torch.from_numpy(chunk))[:, 0].double()).numpy()
        n = len(positive)
        return {
            "prediction": (positive >= 0.5).astype(np.int64),
            "probability_0": 1 - positive,
            "probability_1": positive,
            "t0": np.full(n, t0),
            "t1": np.full(n, time.time()),
            "pid": np.full(n, os.getpid()),
        }


def ray_data(
    gcs: str, model_dir: Path, rows_path: Path, out: Path, batch: int, workers: int
) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import ray

    ray.init(
        address=gcs, logging_level=logging.WARNING, log_to_driver=False, ignore_reinit_error=True
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    began = time.perf_counter()
    ds = ray.data.read_parquet(str(rows_path), override_num_blocks=8 * workers).map_batches(
        Predictor,
        fn_constructor_args=(str(model_dir),),
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    ds.write_parquet(str(out))
    seconds = time.perf_counter() - began
    stamps = pq.read_table(str(out), columns=["t0", "t1", "pid"])
    t0, t1 = stamps.column("t0").to_numpy(), stamps.column("t1").to_numpy()
    pid = stamps.column("pid").to_numpy()
    rates = []
    for actor in np.unique(pid):
        mine = pid == actor
        rates.append(int(mine.sum()) / float(t1[mine].max() - t0[mine].min()))
    return {
        "seconds": seconds,
        "predict_seconds": float(t1.max() - t0.min()),
        "rows": len(t0),
        "per_worker": float(np.mean(rates)),
        "actors": len(rates),
    }


def figures(
    path: str, workers: int, rows: int, seconds: float, predict_s: float, per_worker: float
) -> dict[str, Any]:
    steady = rows / predict_s
    return {
        "path": path,
        "workers": workers,
        "rows": rows,
        "seconds": round(seconds, 3),
        "end_to_end_rows_per_s": round(rows / seconds, 1),
        "predict_seconds": round(predict_s, 3),
        "steady_rows_per_s": round(steady, 1),
        "steady_rows_per_s_per_worker": round(per_worker, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--skip-ray-data", action="store_true")
    args = parser.parse_args()
    emit({"bench": "infer", "machine": machine(), "rows": args.rows, "batch_size": args.batch_size})
    with tempfile.TemporaryDirectory(prefix="dcsched-bench-infer-") as tmp:
        data = Path(tmp)
        rows_path = data / "rows.parquet"
        make_rows(rows_path, args.rows)
        from dcsched.processes import free_port

        with dcsched_server(port=free_port(), num_cpus=4) as env:
            client = client_for(env)
            client.put_config(f"data_roots: [{json.dumps(str(data))}]\n")
            trained = wait(client, client.submit(TRAIN)["id"])
            assert trained["state"] == "SUCCEEDED", trained
            model_dir = Path(env["DCSCHED_HOME"]) / "models" / "bench-mlp" / "1"
            results: dict[str, dict[str, Any]] = {}

            plain = plain_loop(model_dir, rows_path, data / "plain.parquet", args.batch_size)
            loop_rate = plain["rows"] / plain["predict_seconds"]
            results["plain"] = figures(
                "plain", 1, plain["rows"], plain["seconds"], plain["predict_seconds"], loop_rate
            )
            emit(results["plain"])

            for workers in (1, 2):
                spec = {
                    "name": f"bench-infer-{workers}",
                    "kind": "infer",
                    "team": "bench",
                    "resources": {"workers": workers, "cpus": 1, "memory": "2GiB"},
                    "infer": {
                        "model": "bench-mlp:1",
                        "input": str(rows_path),
                        "output": "out.parquet",
                        "batch_size": args.batch_size,
                    },
                }
                began = time.perf_counter()
                job = wait(client, client.submit(spec)["id"], poll_s=0.02)
                seconds = time.perf_counter() - began
                assert job["state"] == "SUCCEEDED", job
                result = job["result"]
                name = f"dcsched-{workers}"
                results[name] = figures(
                    name,
                    workers,
                    result["rows"],
                    seconds,
                    result["predict_seconds"],
                    result["rows_per_s_per_worker_predicting"],
                )
                results[name]["job_seconds_inside"] = result["seconds"]
                emit(results[name])
                if workers == 2:  # the same answers as the plain loop
                    import pyarrow.parquet as pq

                    out = Path(env["DCSCHED_HOME"]) / "runs" / job["id"] / "artifacts"
                    got = pq.read_table(out / "out.parquet").column("probability_1").to_numpy()
                    diff = float(np.max(np.abs(got - plain["positive"])))
                    emit({"check": "dcsched-2 vs plain", "max_abs_probability_diff": diff})

            if not args.skip_ray_data:
                from _common import ray_head_record

                gcs = ray_head_record(env)["gcs_address"]
                for workers in (1, 2):
                    out_dir = data / f"raydata-{workers}"
                    found = ray_data(gcs, model_dir, rows_path, out_dir, args.batch_size, workers)
                    name = f"raydata-{workers}"
                    results[name] = figures(
                        name,
                        workers,
                        found["rows"],
                        found["seconds"],
                        found["predict_seconds"],
                        found["per_worker"],
                    )
                    results[name]["actors_that_scored"] = found["actors"]
                    emit(results[name])
                import ray

                # Before the head goes: a driver whose GCS is gone exits (code 1) ~60 s later.
                ray.shutdown()

    plain_worker = results["plain"]["steady_rows_per_s_per_worker"]
    summary: dict[str, Any] = {"summary": True, "goal": "dcsched per worker >= 0.9x plain"}
    for name, figure in results.items():
        if name != "plain":
            summary[f"{name}_per_worker_vs_plain"] = round(
                figure["steady_rows_per_s_per_worker"] / plain_worker, 3
            )
    for workers in (1, 2):
        if f"raydata-{workers}" in results:
            dc, rd = results[f"dcsched-{workers}"], results[f"raydata-{workers}"]
            summary[f"dcsched_vs_raydata_{workers}_steady"] = round(
                dc["steady_rows_per_s"] / rd["steady_rows_per_s"], 3
            )
            summary[f"dcsched_vs_raydata_{workers}_end_to_end"] = round(
                dc["end_to_end_rows_per_s"] / rd["end_to_end_rows_per_s"], 3
            )
    emit(summary)


if __name__ == "__main__":
    main()
