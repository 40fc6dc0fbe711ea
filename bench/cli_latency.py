"""`dcsched list -o json` as a whole process (interpreter start to exit) against a real
server whose store holds 1,000 jobs, beside the bare interpreter start in the same run.
Prints one JSON line per command. Floor (issue #2): p50 under 0.3 s for the 1,000-job list.

Usage: python bench/cli_latency.py [--runs N] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cli, emit, machine, median, percentile

FLOOR_S = 0.3


def fill_store(home: Path, count: int) -> None:
    """Jobs in their final states, with results, written through the real store."""
    from dcsched.adapters.sqlite_store import SQLiteStore
    from dcsched.core.job import Job
    from dcsched.core.lifecycle import JobState
    from dcsched.kinds import load_job_spec_yaml as load_spec_yaml

    store = SQLiteStore(home / "dcsched.db", home / "models")
    from dcsched.kinds import split

    request, kind, payload = split(
        load_spec_yaml((REPO / "examples" / "train-mlp.yaml").read_text())
    )
    now = time.time() - count
    for i in range(count):
        job_id = f"mlp-breast-cancer-{i:08x}"
        store.add_job(Job(job_id, request, JobState.PENDING, now + i, kind=kind, payload=payload))
        if i % 5 == 4:
            store.transition(job_id, JobState.CANCELLED, now + i + 0.5, "cancelled by user")
            continue
        store.transition(job_id, JobState.ADMITTED, now + i + 0.1, nodes=["n" * 56])
        store.transition(job_id, JobState.RUNNING, now + i + 0.2)
        result = {"metrics": {"accuracy": 0.95, "f1": 0.96, "log_loss": 0.1}, "task": "binary"}
        store.transition(job_id, JobState.SUCCEEDED, now + i + 0.9, result=result)
    store.close()


def time_command(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True)
        samples.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr.decode()}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    dcsched = str(Path(sys.executable).with_name("dcsched"))
    with tempfile.TemporaryDirectory(prefix="dcsched-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSCHED_", "RAY_"))}
        env.update({"DCSCHED_HOME": home, "DCSCHED_PORT": "18798"})
        fill_store(Path(home), args.jobs)
        cli(env, "up")
        try:
            commands = {
                "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
                f"dcsched list -o json --limit {args.jobs}": [
                    dcsched,
                    "list",
                    "-o",
                    "json",
                    "--limit",
                    str(args.jobs),
                ],
                "dcsched list (table, default limit)": [dcsched, "list"],
            }
            for name, argv in commands.items():
                time_command(argv, env, 2)  # warm the page cache and bytecode
                samples = time_command(argv, env, args.runs)
                record = {
                    "benchmark": "cli_latency",
                    "command": name,
                    "jobs_in_store": args.jobs,
                    "runs": args.runs,
                    "p50_s": round(median(samples), 4),
                    "p90_s": round(percentile(samples, 0.9), 4),
                    "machine": machine(),
                }
                if name.startswith("dcsched list -o json"):
                    record["floor_p50_s"] = FLOOR_S
                    record["meets_floor"] = median(samples) < FLOOR_S
                emit(record)
        finally:
            cli(env, "down", check=False)


if __name__ == "__main__":
    main()
