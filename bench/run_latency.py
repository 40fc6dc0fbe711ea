"""What dcsched adds to starting a command: a `kind: run` job of `true` (1 worker, 1 CPU)
through a real dcsched server, against raw Ray Jobs of the same entrypoint (`true`, 1 CPU
as entrypoint resources) on the same Ray head, in the same run, one job at a time,
alternating dcsched and raw (the order within each pair flips every pair, so that machine
noise and warm worker pools hit both alike).

Both paths are submitted and watched from this process the same way: dcsched through its
HTTP API (`dcsched.client.Client.submit` with a spec dict, no working_dir, so no upload),
raw Ray through `JobSubmissionClient.submit_job` (the call `ray job submit` makes, minus
the CLI's interpreter start); each job's state is polled every --poll seconds and a job
counts as RUNNING when first seen RUNNING or ended. Reports submit->RUNNING and
submit->SUCCEEDED p50/p99 per path, their ratios and the paired differences; for dcsched
also where the time goes (queue and reservation before its Ray job is submitted, as Ray
records the submission). Goal (issue #9): dcsched p50 within 1.2x of raw Ray.

Usage: python bench/run_latency.py [--runs N] [--poll S]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, dcsched_server, emit, machine, median, ray_head_record, stats

GOAL_RATIO = 1.2
ENDED = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}
SPEC: dict[str, Any] = {
    "name": "true",
    "kind": "run",
    "team": "bench",
    "resources": {"workers": 1, "cpus": 1, "gpus": 0, "memory": "64MiB"},
    "run": {"command": ["true"]},
}


def watch(state_of: Any, poll_s: float, timeout_s: float = 120) -> tuple[float, float, str]:
    """Poll ``state_of()`` until the job ends; (seconds to RUNNING, to the end, final state)
    from now, RUNNING counting when first seen RUNNING or ended."""
    started = time.perf_counter()
    running = None
    while time.perf_counter() - started < timeout_s:
        state = state_of()
        now = time.perf_counter() - started
        if running is None and (state == "RUNNING" or state in ENDED):
            running = now
        if state in ENDED:
            return running, now, state  # type: ignore[return-value]
        time.sleep(poll_s)
    raise RuntimeError(f"job still {state} after {timeout_s}s")


def dcsched_job(client: Any, ray: Any, poll_s: float) -> dict[str, float]:
    submitted_wall = time.time()
    started = time.perf_counter()
    job = client.submit(SPEC)
    submit_s = time.perf_counter() - started
    running, ended, state = watch(lambda: client.get_job(job["id"])["state"], poll_s)
    if state != "SUCCEEDED":
        raise RuntimeError(f"dcsched job {job['id']} ended {state}: {client.get_job(job['id'])}")
    info = ray.get_job_info(job["id"])  # its Ray job (first run: submission id = job id)
    return {
        "submit_call": submit_s,
        "running": submit_s + running,
        "succeeded": submit_s + ended,
        "to_ray_submit": info.start_time / 1000 - submitted_wall,
    }


def raw_job(ray: Any, poll_s: float) -> dict[str, float]:
    started = time.perf_counter()
    run_id = ray.submit_job(
        entrypoint="true", submission_id=f"raw-{secrets.token_hex(6)}", entrypoint_num_cpus=1
    )
    submit_s = time.perf_counter() - started
    running, ended, state = watch(lambda: str(ray.get_job_status(run_id).value), poll_s)
    if state != "SUCCEEDED":
        raise RuntimeError(f"raw Ray job {run_id} ended {state}")
    return {"submit_call": submit_s, "running": submit_s + running, "succeeded": submit_s + ended}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="jobs per path")
    parser.add_argument("--poll", type=float, default=0.02, help="state poll interval (s)")
    args = parser.parse_args()
    from dcsched.processes import free_port

    with dcsched_server(port=free_port()) as env:
        from ray.job_submission import JobSubmissionClient

        ray = JobSubmissionClient(ray_head_record(env)["dashboard_url"])
        client = client_for(env)
        # Warm-up, not counted: the first job on a fresh head starts Ray's worker pool.
        dcsched_job(client, ray, args.poll)
        raw_job(ray, args.poll)
        through: list[dict[str, float]] = []
        raw: list[dict[str, float]] = []
        for index in range(args.runs):
            if index % 2 == 0:
                through.append(dcsched_job(client, ray, args.poll))
                raw.append(raw_job(ray, args.poll))
            else:
                raw.append(raw_job(ray, args.poll))
                through.append(dcsched_job(client, ray, args.poll))
    record: dict[str, Any] = {"benchmark": "run_latency", "runs": args.runs, "poll_s": args.poll}
    for key in ("running", "succeeded"):
        ours = [r[key] for r in through]
        theirs = [r[key] for r in raw]
        diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
        record[f"dcsched_submit_to_{key}_s"] = stats(ours)
        record[f"raw_submit_to_{key}_s"] = stats(theirs)
        record[f"{key}_p50_ratio"] = round(median(ours) / median(theirs), 3)
        record[f"{key}_paired_diff_s"] = stats(diffs)
    record["dcsched_submit_call_s"] = stats([r["submit_call"] for r in through])
    record["raw_submit_call_s"] = stats([r["submit_call"] for r in raw])
    record["dcsched_submit_to_ray_submit_s"] = stats([r["to_ray_submit"] for r in through])
    record["goal_p50_ratio"] = GOAL_RATIO
    for key in ("running", "succeeded"):
        record[f"meets_goal_{key}"] = record[f"{key}_p50_ratio"] <= GOAL_RATIO
    record["machine"] = machine()
    emit(record)


if __name__ == "__main__":
    main()
