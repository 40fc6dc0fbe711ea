"""`make demo`: start a local Ray and the dcsched server, run the example jobs (two training
jobs, a 2-worker DDP `kind: run` gang and a small tuning study), then score patients with
the trained model (a 2-worker `kind: infer` job), fetch its predictions, serve the model
and call `/predict` once, and say where to look.

Runs the CLI as a user would (each step a `dcsched` command) against DCSCHED_HOME, which the
Makefile points at ./.dcsched-demo so the demo leaves the rest of the machine alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE_JOBS = ["train-mlp.yaml", "train-csv.yaml", "run-ddp.yaml", "tune-mlp.yaml"]


def dcsched(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dcsched.cli", *args]
    print(f"$ dcsched {' '.join(args)}", flush=True)
    done = subprocess.run(command, text=True, capture_output=capture)
    if done.returncode != 0:
        if capture:
            sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"demo step failed: dcsched {' '.join(args)} (exit {done.returncode})")
    return done


def main() -> None:
    started = time.monotonic()
    home = os.environ.get("DCSCHED_HOME", str(Path.home() / ".dcsched"))
    dcsched("up")
    info = json.loads(Path(home, "server.json").read_text())
    job_ids = []
    for name in EXAMPLE_JOBS:
        job_id = dcsched("submit", str(HERE / name), capture=True).stdout.strip()
        print(job_id, flush=True)
        job_ids.append(job_id)
    for job_id in job_ids:
        dcsched("wait", job_id, "--timeout", "600")
    for job_id in job_ids:
        dcsched("status", job_id)
    dcsched("logs", job_ids[2], "--rank", "0")  # the DDP gang's rank 0
    dcsched("trials", job_ids[3])  # the tuning study's trials
    # Batch inference with the model train-mlp.yaml registered (it exists only now).
    infer_id = dcsched("submit", str(HERE / "infer-mlp.yaml"), capture=True).stdout.strip()
    dcsched("wait", infer_id, "--timeout", "240")
    dcsched("status", infer_id)
    predictions = str(Path(home) / "predictions.parquet")
    dcsched("results", infer_id, "--out", predictions)
    dcsched("models", "list")
    dcsched("list")
    sys.path.insert(0, str(HERE))
    from serve_demo import serve_and_predict  # the demo ends by serving its model

    from dcsched.serving.haproxy import HAProxyError, haproxy_binary

    try:
        haproxy_binary()
    except HAProxyError as exc:
        serve_url = f"(not served: {exc})"
        print(f"skipping the serving step: {exc}", flush=True)
    else:
        serve_url, _ = serve_and_predict()
        serve_url += "/predict"
    elapsed = time.monotonic() - started
    print(
        f"""
Demo finished in {elapsed:.0f}s. Where to look:
  Ray dashboard (jobs, logs):  {info["ray_dashboard_url"]}
  dcsched API:                 {info["api_url"]}   (bearer token in {home}/token)
  dcsched metrics:             {info["metrics_url"]}
  Node exporter targets:       {info.get("exporters_file_sd") or "-"}  (Prometheus file_sd)
  Serving (dcsched serve list): {serve_url}   (stop: dcsched serve stop demo-mlp)
  Models and runs:             {home}/models, {home}/runs
  Predictions (infer job):     {predictions}

Use the CLI against this demo:   export DCSCHED_HOME={home}; .venv/bin/dcsched list
Live view of nodes, jobs, queue: .venv/bin/dcsched top
Stop the server and local Ray:   make demo-down
"""
    )


if __name__ == "__main__":
    main()
