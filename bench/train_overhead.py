"""What dcsched adds to a training job: examples/train-mlp.yaml submitted through a real
server on a local Ray (submit -> SUCCEEDED, seen through the API), against the same
plugin and data trained as a plain Python process (`python -m dcsched.training.runner`),
in the same run, alternating, several times. Prints one JSON line.

Floor (issue #2): overhead under 3 s. Usage: python bench/train_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cli, dcsched_server, emit, machine, median

SPEC = REPO / "examples" / "train-mlp.yaml"
FLOOR_S = 3.0


def plain_run() -> float:
    from dcsched.kinds import load_job_spec_yaml as load_spec_yaml

    with tempfile.TemporaryDirectory() as run_dir:
        spec = load_spec_yaml(SPEC.read_text())
        Path(run_dir, "spec.json").write_text(spec.model_dump_json())
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dcsched.training.runner", run_dir],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def dcsched_run(env: dict[str, str]) -> float:
    from dcsched.client import Client
    from dcsched.core.spec import load_yaml_mapping
    from dcsched.paths import Paths

    client = Client.from_env(Paths(Path(env["DCSCHED_HOME"])))
    document = load_yaml_mapping(SPEC.read_text())
    started = time.perf_counter()
    job = client.submit(document)
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
    args = parser.parse_args()
    with dcsched_server() as env:
        dcsched_run(env)  # warm-up: the first job on a fresh Ray starts its worker pool
        plain_run()
        plain, through = [], []
        for _ in range(args.runs):
            plain.append(plain_run())
            through.append(dcsched_run(env))
        jobs = json.loads(cli(env, "list", "-o", "json").stdout)
    overhead = median(through) - median(plain)
    emit(
        {
            "benchmark": "train_overhead",
            "runs": args.runs,
            "plain_wall_s": round(median(plain), 3),
            "dcsched_wall_s": round(median(through), 3),
            "overhead_s": round(overhead, 3),
            "plain_all_s": [round(x, 3) for x in plain],
            "dcsched_all_s": [round(x, 3) for x in through],
            "floor_overhead_s": FLOOR_S,
            "meets_floor": overhead < FLOOR_S,
            "jobs_succeeded": sum(j["state"] == "SUCCEEDED" for j in jobs),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
