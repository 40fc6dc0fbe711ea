"""The DDP example (examples/ddp/train_ddp.py, plain torch.distributed, gloo on CPU) as a
`kind: run` gang through a real dcsched server at 1, 2 and 4 workers (1 CPU each,
OMP_NUM_THREADS=1), beside the same script under plain `torchrun --standalone
--nproc-per-node N` (no Ray) in the same run, alternating which goes first.

dcsched jobs are submitted as `dcsched submit` does (the spec dict of examples/run-ddp.yaml
with its workers changed; the CLI's own upload_inputs zips and uploads working_dir), so
each dcsched wall time includes the upload, queueing, the placement group, Ray shipping
the working_dir and starting one actor per rank. Wall time: submit call to SUCCEEDED seen
by polling every 0.1 s; torchrun: process start to exit. Final loss: the script's "final
loss X" line (rank 0), from `dcsched logs` and from torchrun's output; same seed, same
sharding, so both paths should print the same loss at each world size.

The local Ray head gets 4 logical CPUs (this machine may have fewer cores: at 4 workers
the ranks share them, as they do under torchrun). Prints one JSON line per world size.

Usage: python bench/ddp.py [--workers 1,2,4] [--repeats N] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, client_for, dcsched_server, emit, machine, median

EXAMPLE = REPO / "examples" / "run-ddp.yaml"
SCRIPT_DIR = REPO / "examples" / "ddp"
FINAL_LOSS = re.compile(r"final loss ([0-9.eE+-]+|nan)")
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED"}


def final_loss(text: str) -> float:
    found = FINAL_LOSS.findall(text)
    if not found:
        raise RuntimeError("no 'final loss' line in the output:\n" + text[-2000:])
    return float(found[-1])


def spec_for(workers: int, epochs: int) -> dict[str, Any]:
    from dcsched.core.spec import load_yaml_mapping

    spec = dict(load_yaml_mapping(EXAMPLE.read_text()))
    spec["resources"] = {**spec["resources"], "workers": workers}
    spec["run"] = {**spec["run"], "command": ["python", "train_ddp.py", "--epochs", str(epochs)]}
    spec.pop("max_runtime", None)
    return spec


def through_dcsched(client: Any, workers: int, epochs: int) -> tuple[float, float]:
    from dcsched.cli.jobs import upload_inputs

    started = time.perf_counter()
    spec = upload_inputs(spec_for(workers, epochs), EXAMPLE.parent, client)
    job_id = client.submit(spec)["id"]
    while (state := client.get_job(job_id)["state"]) not in ENDED:
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    if state != "SUCCEEDED":
        raise RuntimeError(f"job {job_id} ended {state}: {client.get_job(job_id).get('reason')}")
    logs, offset = "", 0
    while True:  # every rank's output, as `dcsched logs` pages it
        page = client.job_logs(job_id, offset)
        logs += page.get("logs") or ""
        if page.get("done") or int(page.get("offset", offset)) == offset:
            break
        offset = int(page["offset"])
    return elapsed, final_loss(logs)


def through_torchrun(workers: int, epochs: int) -> tuple[float, float]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += [f"--nproc-per-node={workers}", "train_ddp.py", "--epochs", str(epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=SCRIPT_DIR, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed, final_loss(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="world sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path and size")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]
    from dcsched.processes import free_port

    results: dict[int, dict[str, list[tuple[float, float]]]] = {}
    with dcsched_server(port=free_port(), num_cpus=max(sizes)) as env:
        client = client_for(env)
        through_dcsched(client, 1, 1)  # warm-up: the first job starts Ray's worker pool
        for index in range(args.repeats):
            for workers in sizes:
                runs = results.setdefault(workers, {"dcsched": [], "torchrun": []})
                order = ("dcsched", "torchrun") if index % 2 == 0 else ("torchrun", "dcsched")
                for path in order:
                    if path == "dcsched":
                        runs[path].append(through_dcsched(client, workers, args.epochs))
                    else:
                        runs[path].append(through_torchrun(workers, args.epochs))
    for workers, runs in results.items():
        ours = [wall for wall, _ in runs["dcsched"]]
        theirs = [wall for wall, _ in runs["torchrun"]]
        emit(
            {
                "benchmark": "ddp",
                "workers": workers,
                "epochs": args.epochs,
                "repeats": args.repeats,
                "dcsched_wall_s": round(median(ours), 3),
                "torchrun_wall_s": round(median(theirs), 3),
                "overhead_s": round(median(ours) - median(theirs), 3),
                "dcsched_all_s": [round(x, 3) for x in ours],
                "torchrun_all_s": [round(x, 3) for x in theirs],
                "dcsched_final_loss": [loss for _, loss in runs["dcsched"]],
                "torchrun_final_loss": [loss for _, loss in runs["torchrun"]],
                "machine": machine(),
            }
        )


if __name__ == "__main__":
    main()
