"""Many short jobs through the real dcsched server on a local multi-node Ray cluster
(`ray.cluster_utils.Cluster`), beside raw Ray Jobs of the same command on the same
cluster, in the same run.

Each job is `kind: run` of `sleep 1` holding 1 CPU: through dcsched, submitted with the
HTTP API (`dcsched.client.Client.submit`, a spec dict, no working_dir: no upload), held in
dcsched's queue and admitted into a placement group; raw, `JobSubmissionClient.submit_job`
(what `ray job submit` calls) of the entrypoint `sleep 1` with 1 CPU as entrypoint
resources, queued by Ray itself. The jobs are sent in --rounds batches per path,
alternating (dcsched, raw, raw, dcsched, ...) so machine noise hits both alike; within a
batch every job is submitted at once. Each batch starts on a quiet cluster: before it,
the bench waits until the previous batch's Ray jobs, their supervisor actors and drivers,
its placement groups and the worker processes it added are gone (Ray's state API; the
worker count back to what it was before the first batch), and reports that wait. A thread
polls the job list every --poll seconds while jobs are submitted and run (the same way for
both paths): a job counts as RUNNING when first seen RUNNING or ended, and finished when
first seen ended.

Per path: jobs finished per second (finished jobs over the time from each batch's first
submission to its last finish, summed over batches), submit->RUNNING p50/p99,
submit->finished p50/p99, and the ratios dcsched/raw. Prints one JSON line per path and
one comparing them.

Usage: python bench/live_admission.py [--jobs N] [--nodes N] [--cpus-per-node N]
(issue #9 asks for N = 500; say which N you ran.)
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, emit, machine, ray_cluster, server_on, stats

ENDED = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}
SPEC: dict[str, Any] = {
    "name": "sleep",
    "kind": "run",
    "team": "bench",
    "resources": {"workers": 1, "cpus": 1, "gpus": 0, "memory": "64MiB"},
    "run": {"command": ["sleep", "1"]},
}


class Batch:
    """Submit ``count`` jobs with ``submit()`` (returns an id) while a thread polls
    ``states()`` ((id, state) pairs) every ``poll_s`` until all have ended."""

    def __init__(
        self,
        submit: Callable[[], str],
        states: Callable[[], Iterable[tuple[str, str]]],
        count: int,
        poll_s: float,
        timeout_s: float,
    ):
        self.submitted: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.final: dict[str, str] = {}
        self._states, self._poll_s, self._count = states, poll_s, count
        self._lock = threading.Lock()
        self._done = threading.Event()
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        for _ in range(count):
            started = time.monotonic()
            job_id = submit()
            with self._lock:
                self.submitted[job_id] = started
        if not self._done.wait(timeout_s):
            raise RuntimeError(f"{len(self.ended)} of {count} jobs ended in {timeout_s:g}s")
        poller.join()

    def _poll(self) -> None:
        while True:
            seen = list(self._states())
            now = time.monotonic()
            with self._lock:
                for job_id, state in seen:
                    if job_id not in self.submitted:
                        continue
                    if job_id not in self.running and (state == "RUNNING" or state in ENDED):
                        self.running[job_id] = now
                    if job_id not in self.ended and state in ENDED:
                        self.ended[job_id] = now
                        self.final[job_id] = state
                if len(self.ended) == self._count:
                    self._done.set()
                    return
            time.sleep(self._poll_s)


def cluster_load(dashboard: str) -> dict[str, int]:
    """What runs on the cluster now: live actors (a Ray job's supervisor is one), placement
    groups not removed, live drivers and live worker processes."""
    from ray.util.state import list_actors, list_placement_groups, list_workers

    # Filtered here: the API server's filters count the rows they drop as "missing output".
    options: dict[str, Any] = {"limit": 10_000, "raise_on_missing_output": False}
    workers = [w for w in list_workers(dashboard, **options) if w.is_alive]
    return {
        "actors": sum(a.state != "DEAD" for a in list_actors(dashboard, **options)),
        "placement_groups": sum(
            g.state != "REMOVED" for g in list_placement_groups(dashboard, **options)
        ),
        "drivers": sum(w.worker_type == "DRIVER" for w in workers),
        "workers": sum(w.worker_type == "WORKER" for w in workers),
    }


def await_quiet(dashboard: str, baseline: dict[str, int], timeout_s: float) -> dict[str, Any]:
    """Until nothing runs beyond ``baseline`` (the load before the first batch); returns
    how long that took, and whether it got there within ``timeout_s`` (if not, what was
    left: the next batch then starts anyway, and the output says so)."""
    started = time.monotonic()
    while True:
        load = cluster_load(dashboard)
        over = {k: v - baseline[k] for k, v in load.items() if v > baseline[k]}
        waited = round(time.monotonic() - started, 2)
        if not over:
            return {"quiet": True, "waited_s": waited}
        if waited > timeout_s:
            return {"quiet": False, "waited_s": waited, "left_over_baseline": over}
        time.sleep(0.5)


def dcsched_batch(env: dict[str, str], count: int, poll_s: float, timeout_s: float) -> Batch:
    submitter, poller = client_for(env), client_for(env)

    def states() -> Iterable[tuple[str, str]]:
        return ((j["id"], j["state"]) for j in poller.list_jobs(limit=1_000_000))

    return Batch(lambda: str(submitter.submit(SPEC)["id"]), states, count, poll_s, timeout_s)


def raw_batch(dashboard: str, count: int, poll_s: float, timeout_s: float) -> Batch:
    from ray.job_submission import JobSubmissionClient

    submitter, poller = JobSubmissionClient(dashboard), JobSubmissionClient(dashboard)

    def submit() -> str:
        return str(
            submitter.submit_job(
                entrypoint="sleep 1",
                submission_id=f"raw-{secrets.token_hex(6)}",
                entrypoint_num_cpus=1,
            )
        )

    def states() -> Iterable[tuple[str, str]]:
        return ((str(i.submission_id), str(i.status.value)) for i in poller.list_jobs())

    return Batch(submit, states, count, poll_s, timeout_s)


def summarize(path: str, batches: list[Batch]) -> dict[str, Any]:
    to_running = [b.running[j] - b.submitted[j] for b in batches for j in b.submitted]
    to_end = [b.ended[j] - b.submitted[j] for b in batches for j in b.submitted]
    spans = [max(b.ended.values()) - min(b.submitted.values()) for b in batches]
    finished = sum(len(b.ended) for b in batches)
    return {
        "benchmark": "live_admission",
        "path": path,
        "jobs": sum(len(b.submitted) for b in batches),
        "succeeded": sum(s == "SUCCEEDED" for b in batches for s in b.final.values()),
        "batches": len(batches),
        "wall_s": round(sum(spans), 2),
        "jobs_per_s": round(finished / sum(spans), 3),
        "submit_to_running_s": stats(to_running),
        "submit_to_finished_s": stats(to_end),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500, help="jobs per path")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="batches per path")
    parser.add_argument("--poll", type=float, default=0.25, help="job list poll interval (s)")
    parser.add_argument("--timeout", type=float, default=1800, help="per batch (s)")
    parser.add_argument(
        "--quiet-timeout", type=float, default=300, help="most seconds to wait for a quiet cluster"
    )
    args = parser.parse_args()
    sizes = [args.jobs // args.rounds + (i < args.jobs % args.rounds) for i in range(args.rounds)]
    ours: list[Batch] = []
    theirs: list[Batch] = []
    waits: dict[str, list[dict[str, Any]]] = {"dcsched": [], "raw": []}
    began = time.monotonic()
    with (
        ray_cluster(args.nodes, args.cpus_per_node) as (address, dashboard),
        server_on(address) as env,
    ):
        baseline = cluster_load(dashboard)  # the dcsched server's own driver included
        for index, size in enumerate(sizes):
            for path in ("dcsched", "raw") if index % 2 == 0 else ("raw", "dcsched"):
                waits[path].append(await_quiet(dashboard, baseline, args.quiet_timeout))
                if path == "dcsched":
                    ours.append(dcsched_batch(env, size, args.poll, args.timeout))
                else:
                    theirs.append(raw_batch(dashboard, size, args.poll, args.timeout))
    common = {"nodes": args.nodes, "cpu_slots": args.nodes * args.cpus_per_node}
    ours_summary, raw_summary = summarize("dcsched", ours), summarize("raw ray job", theirs)
    for summary, path in ((ours_summary, "dcsched"), (raw_summary, "raw")):
        emit({**summary, **common, "command": "sleep 1", "quiet_before_each_batch": waits[path]})
    emit(
        {
            "benchmark": "live_admission",
            "path": "dcsched / raw",
            "jobs_per_s_ratio": round(ours_summary["jobs_per_s"] / raw_summary["jobs_per_s"], 3),
            "submit_to_running_p99_ratio": round(
                ours_summary["submit_to_running_s"]["p99"]
                / raw_summary["submit_to_running_s"]["p99"],
                3,
            ),
            "submit_to_running_p50_ratio": round(
                ours_summary["submit_to_running_s"]["p50"]
                / raw_summary["submit_to_running_s"]["p50"],
                3,
            ),
            "total_wall_s": round(time.monotonic() - began, 1),
            **common,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
