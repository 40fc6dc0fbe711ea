"""Each built-in model type trained through dcsched against the same spec trained as a
plain Python process (``python -m dcsched.training.runner RUN_DIR``), in one run:

- plain: the runner as a plain process on this machine (no server, no Ray), with
  ``OMP_NUM_THREADS`` set to the spec's CPUs (Ray sets it in its processes; without it, a
  first run's plain gbdt spun 2 OpenMP threads on a loaded 2-core machine: 37 s of
  training against 1.5 s through dcsched);
- dcsched: ``dcsched submit SPEC --wait`` through a real server on a local Ray head (the
  CLI uploads the data file, the server admits and runs the job as a Ray job, registers
  the model), timed from the CLI call to its exit.

For each spec: wall time of both, overhead (dcsched minus plain), the training time the
runner measured in each, and the quality metric of both (the same seed, so they should
be equal within noise; ``quality_delta`` says how far apart). tiny-lm also reports the
unigram baseline's perplexity on the same split. One JSON line per spec, then a summary
line with the machine. The specs are the examples (mlp on breast cancer and on diabetes,
gbdt on breast cancer, cnn on the digits, tiny-lm on Genesis+Exodus).

Usage: python bench/plugins.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cli, dcsched_server, emit, machine

EXAMPLES = REPO / "examples"
BARS = {  # the quality targets
    "mlp-breast-cancer": ("f1", ">=", 0.95),
    "mlp-diabetes": ("r2", ">=", 0.40),
    "gbdt-breast-cancer": ("f1", ">=", 0.95),
    "cnn-digits": ("accuracy", ">=", 0.95),
    "tiny-lm-kjv": ("perplexity", "<", "unigram_perplexity"),
}


def specs() -> dict[str, dict[str, Any]]:
    """The example specs, data paths made absolute (the plain runner reads them as is)."""
    from dcsched.core.spec import load_yaml_mapping

    def example(name: str) -> dict[str, Any]:
        return dict(load_yaml_mapping((EXAMPLES / name).read_text()))

    found = {
        "mlp-breast-cancer": example("train-mlp.yaml"),
        "mlp-diabetes": example("train-mlp-diabetes.yaml"),
        "gbdt-breast-cancer": example("train-gbdt.yaml"),
        "cnn-digits": example("train-cnn.yaml"),
        "tiny-lm-kjv": example("train-tiny-lm.yaml"),
    }
    found["cnn-digits"]["data"]["source"] = f"npz:{EXAMPLES / 'digits.npz'}"
    found["tiny-lm-kjv"]["data"]["source"] = f"text:{EXAMPLES / 'tiny-lm' / 'genesis-exodus.txt'}"
    return found


def plain_run(document: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    from dcsched.kinds import parse_job_spec

    with tempfile.TemporaryDirectory() as run_dir:
        spec = parse_job_spec(document)
        Path(run_dir, "spec.json").write_text(spec.model_dump_json())
        # OpenMP (scikit-learn's trees) gets the spec's CPUs, not every core of the
        # machine (torch: the runner sets its threads itself).
        threads = str(max(1, int(document["resources"]["cpus"])))
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dcsched.training.runner", run_dir],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"plain run of {document['name']} failed: {done.stderr[-2000:]}")
        return wall, json.loads(Path(run_dir, "result.json").read_text())


def dcsched_run(env: dict[str, str], document: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.json"
        path.write_text(json.dumps(document))
        started = time.perf_counter()
        job_id = cli(env, "submit", str(path), "--wait").stdout.strip()
        wall = time.perf_counter() - started
    job = json.loads(cli(env, "status", job_id, "-o", "json").stdout)
    if job["state"] != "SUCCEEDED":
        raise RuntimeError(f"{job_id} ended {job['state']}: {job.get('reason')}")
    return wall, job["result"]


def meets(bar: tuple[str, str, Any], metrics: dict[str, float]) -> bool:
    name, op, target = bar
    value = metrics[name]
    limit = metrics[target] if isinstance(target, str) else target
    return bool(value >= limit if op == ">=" else value < limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="spec names (default: all)")
    args = parser.parse_args()
    chosen = {k: v for k, v in specs().items() if not args.only or k in args.only}
    from dcsched.processes import free_port

    records = []
    with dcsched_server(port=free_port()) as env:
        dcsched_run(env, chosen[next(iter(chosen))])  # warm-up: Ray's worker pool
        for name, document in chosen.items():
            plain_wall, plain = plain_run(document)
            live_wall, live = dcsched_run(env, document)
            metric = BARS[name][0]
            record: dict[str, Any] = {
                "benchmark": "plugins",
                "spec": name,
                "plugin": document["model"]["type"],
                "plain_wall_s": round(plain_wall, 2),
                "dcsched_wall_s": round(live_wall, 2),
                "overhead_s": round(live_wall - plain_wall, 2),
                "plain_train_s": round(plain["train_seconds"], 2),
                "dcsched_train_s": round(live["train_seconds"], 2),
                "metric": metric,
                "plain_quality": round(plain["metrics"][metric], 4),
                "dcsched_quality": round(live["metrics"][metric], 4),
                "quality_delta": round(live["metrics"][metric] - plain["metrics"][metric], 4),
                "bar": " ".join(str(part) for part in BARS[name]),
                "plain_meets_bar": meets(BARS[name], plain["metrics"]),
                "dcsched_meets_bar": meets(BARS[name], live["metrics"]),
                "dcsched_under_60s": live_wall < 60,
            }
            for side, result in (("plain", plain), ("dcsched", live)):
                if "unigram_perplexity" in result["metrics"]:
                    baseline = result["metrics"]["unigram_perplexity"]
                    record[f"{side}_unigram_perplexity"] = round(baseline, 4)
            records.append(record)
            emit(record)
    emit(
        {
            "benchmark": "plugins",
            "summary": True,
            "specs": len(records),
            "all_meet_bar": all(r["dcsched_meets_bar"] and r["plain_meets_bar"] for r in records),
            "all_under_60s": all(r["dcsched_under_60s"] for r in records),
            "max_quality_delta": max((abs(r["quality_delta"]) for r in records), default=0.0),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
