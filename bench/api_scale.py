"""The server's own part of the soak (issue #10, 4) at the issue's scale: read latencies
and memory of a live dcsched server whose store holds 10,000 jobs, compared in the same
run with the same server holding 1,000.

What is real: a `ray.cluster_utils.Cluster` of --nodes nodes, `dcsched server` on it
(``_common.server_on``), its SQLite store, the HTTP API and its clients
(``dcsched.client.Client``). What is not live: the ended jobs were not run on Ray. Before
the server starts, each size's store is filled through the store class the server uses
(``dcsched.adapters.sqlite_store.SQLiteStore``: ``add_job`` then ``transition`` through
ADMITTED and RUNNING to SUCCEEDED, FAILED or CANCELLED, as the service records them, with
times spread over the past week) and each started job gets its run directory as a run
leaves it (spec.json; train jobs also progress.jsonl and result.json; failed ones
error.txt). Mostly `kind: run`, a quarter `kind: train`, 4 teams. Then, through the API:
a configuration with a team `queue` whose quota is 0.1 CPU, one job of that team
(`sleep 3600`, 0.1 CPU, so one Ray job) that holds the quota, and --pending more of that
team that wait behind it (PENDING, with positions and reasons).

Measured: --clients processes (not threads: this process's GIL must not slow them) call,
in turn, ``GET /v1/jobs?limit=200`` (`dcsched list`), ``GET /v1/jobs?state=PENDING``
(`dcsched list --state pending`), ``GET /v1/jobs?team=T&limit=200`` (`dcsched list
--team T`) and ``GET /v1/jobs/{id}`` (`dcsched status ID`, a random job of the store),
waiting --think-s between calls, for --duration-s after --warmup-s. Per store size: p50,
p99 and max per call, the calls answered per second, and the server's RSS (psutil) when
the server is up, after the warm-up, at the end and at its highest.

Usage: python bench/api_scale.py [--jobs 10000] [--baseline-jobs 1000] [--clients 8]
Prints JSON lines; the first says what machine it ran on and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, emit, machine, ray_cluster, server_on, stats
from soak import run_spec, train_spec

TEAMS = ("vision", "speech", "ranking", "research")
NODES = ("node-a", "node-b", "node-c", "node-d")
CALLS = ("list", "list_pending", "list_team", "status")
LATENCY_GOAL_MS = 100.0
QUEUE_CONFIG = """\
queueing: {policy: POLICY}
unlisted_teams: allow
teams:
  - {name: queue, quota: {cpus: 0.1}}
"""


# -- filling a store ------------------------------------------------------------------------


def populate(paths: Any, jobs: int, seed: int) -> dict[str, Any]:
    """Fill the store under ``paths`` with ``jobs`` ended jobs and their run directories
    (see the module docstring); returns counts and the seconds it took."""
    from dcsched.adapters.sqlite_store import SQLiteStore
    from dcsched.core.job import Job
    from dcsched.core.lifecycle import JobState
    from dcsched.kinds import parse_job_spec, split
    from dcsched.rundir import RunDir

    began = time.perf_counter()
    store = SQLiteStore(paths.db, paths.models)
    rng = random.Random(seed)
    first = time.time() - 7 * 86400
    step = (7 * 86400 - 3600) / max(1, jobs)
    counts: dict[str, int] = {}
    for index in range(jobs):
        priority = rng.choices(("low", "normal", "high"), (1, 8, 1))[0]
        if rng.random() < 0.25:
            document = train_spec(1, priority)
        else:
            command = rng.choice((["true"], ["sleep", "30"], ["python", "train.py"]))
            document = run_spec(command, rng.choice((0.5, 1, 2)), priority)
        document["team"] = rng.choice(TEAMS)
        request, kind, payload = split(parse_job_spec(document))
        at = first + index * step
        job = Job(
            id=f"{document['name']}-{index:05d}{rng.getrandbits(16):04x}",
            request=request,
            state=JobState.PENDING,
            submitted_at=at,
            kind=kind,
            payload=payload,
        )
        store.add_job(job)
        outcome = rng.choices(("SUCCEEDED", "FAILED", "CANCELLED", "CANCELLED"), (80, 10, 5, 5))
        outcome_key = outcome[0]
        if outcome_key == "CANCELLED" and rng.random() < 0.5:  # cancelled while waiting
            store.transition(job.id, JobState.CANCELLED, at + 5, "cancelled by user")
            counts["CANCELLED"] = counts.get("CANCELLED", 0) + 1
            continue
        node = rng.choice(NODES)
        store.transition(job.id, JobState.ADMITTED, at + 1, None, nodes=[node])
        store.transition(job.id, JobState.RUNNING, at + 2)
        files = RunDir(paths.run_dir(job.id))
        files.write_spec(document)
        result: dict[str, Any] | None = None
        if kind == "train":
            lines = [
                {"epoch": epoch, "loss": round(1 / epoch, 4), "samples_per_s": 900.0}
                for epoch in range(1, 6)
            ]
            files.progress.write_text("".join(json.dumps(line) + "\n" for line in lines))
            result = {
                "task": "classification",
                "metrics": {"accuracy": 0.95, "f1": 0.94},
                "plugin": "mlp",
                "params": {"hidden": [8]},
                "epochs": 5,
                "progress": lines[-1],
            }
        end = at + 2 + rng.uniform(1, 600)
        if outcome_key == "SUCCEEDED":
            if result is not None:
                files.write_result(result)
            store.transition(job.id, JobState.SUCCEEDED, end, None, result=result or {})
        elif outcome_key == "FAILED":
            files.write_error("the command exited with status 1")
            store.transition(job.id, JobState.FAILED, end, "the command exited with status 1")
        else:
            store.transition(job.id, JobState.CANCELLED, end, "cancelled by user")
        counts[outcome_key] = counts.get(outcome_key, 0) + 1
    store.close()
    return {"jobs": jobs, "states": counts, "fill_s": round(time.perf_counter() - began, 1)}


# -- the clients (separate processes) ---------------------------------------------------------


def client_loop(
    home: str,
    ids: list[str],
    index: int,
    warmup_s: float,
    duration_s: float,
    think_s: float,
    out: str,
) -> None:
    """Call the API in turn (CALLS) for warmup_s + duration_s; write (call, seconds,
    status) of each call after the warm-up to ``out`` as JSON lines."""
    from dcsched.client import ApiError, Client
    from dcsched.paths import Paths

    client = Client.from_env(Paths(Path(home)), environ={})
    rng = random.Random(index)
    rows: list[tuple[str, float, int]] = []
    began = time.monotonic()
    measure_from = began + warmup_s
    end = measure_from + duration_s
    turn = index  # clients start at different calls
    while (now := time.monotonic()) < end:
        what = CALLS[turn % len(CALLS)]
        turn += 1
        start = time.perf_counter()
        status = 200
        try:
            if what == "list":
                client.list_jobs(limit=200)
            elif what == "list_pending":
                client.list_jobs(state="PENDING")
            elif what == "list_team":
                client.list_jobs(team=rng.choice(TEAMS), limit=200)
            else:
                client.get_job(rng.choice(ids))
        except ApiError as exc:
            status = exc.status
        except Exception:  # unreachable or timed out: counted
            status = 0
        if now >= measure_from:
            rows.append((what, time.perf_counter() - start, status))
        time.sleep(think_s)
    Path(out).write_text("\n".join(json.dumps(row) for row in rows))


class RssSampler(threading.Thread):
    """The server's RSS (bytes) every half second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            except Exception:
                return
            self.halt.wait(0.5)

    def at(self, when: float) -> int | None:
        """The first sample at or after ``when``."""
        return next((rss for at, rss in self.samples if at >= when), None)


def mib(value: int | None) -> float | None:
    return round(value / 2**20, 1) if value is not None else None


def measure(size: int, address: str, args: argparse.Namespace) -> dict[str, Any]:
    """One store size: fill, start the server, queue the pending jobs, run the clients."""
    filled: dict[str, Any] = {}

    def prepare(paths: Any) -> None:
        filled.update(populate(paths, size, args.seed))

    with server_on(address, prepare=prepare) as env, tempfile.TemporaryDirectory() as tmp:
        home = Path(env["DCSCHED_HOME"])
        pid = int(json.loads((home / "server.json").read_text())["pid"])
        rss = RssSampler(pid)
        rss.start()
        api = client_for(env)
        api.put_config(QUEUE_CONFIG.replace("POLICY", args.policy))
        blocker = run_spec(["sleep", "3600"], 0.1, "normal")
        blocker.update(team="queue", max_runtime="2h")
        queued = [str(api.submit(blocker)["id"])]
        waiting = {**run_spec(["true"], 0.1, "normal"), "team": "queue"}
        queued += [str(api.submit(waiting)["id"]) for _ in range(args.pending)]
        ids = [job["id"] for job in api.list_jobs(limit=100_000)]
        pending = len(api.list_jobs(state="PENDING"))
        ctx = multiprocessing.get_context("spawn")
        outs = [str(Path(tmp) / f"client-{i}.jsonl") for i in range(args.clients)]
        started = time.monotonic()
        load_before = machine()["loadavg_1m"]
        workers = [
            ctx.Process(
                target=client_loop,
                args=(str(home), ids, i, args.warmup_s, args.duration_s, args.think_s, outs[i]),
            )
            for i in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        profiler = None
        if args.py_spy:
            time.sleep(args.warmup_s)
            py_spy = str(Path(sys.executable).parent / "py-spy")
            profile = str(Path(args.py_spy) / f"server-{size}.txt")
            seconds = str(int(args.duration_s))
            profiler = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--nonblocking",
                    "-p",
                    str(pid),
                    "-r",
                    "50",
                    "-f",
                    "raw",
                    "-d",
                    seconds,
                    "-o",
                    profile,
                ],
                stdout=subprocess.DEVNULL,
            )
        for worker in workers:
            worker.join(timeout=args.warmup_s + args.duration_s + 120)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        ended = time.monotonic()
        if profiler is not None:
            profiler.wait(timeout=60)
        rss.halt.set()
        rss.join(timeout=5)
        # the waiting jobs first, the running one (a Ray job stop) last
        for job_id in reversed(queued):
            with contextlib.suppress(Exception):
                api.cancel(job_id)
        rows = [
            json.loads(line)
            for out in outs
            if Path(out).exists()
            for line in Path(out).read_text().splitlines()
            if line
        ]
    by_call: dict[str, Any] = {}
    for what in CALLS:
        ok = [r[1] * 1000 for r in rows if r[0] == what and r[2] == 200]
        by_call[what] = {
            "calls": len(ok),
            "errors": sum(1 for r in rows if r[0] == what and r[2] != 200),
            "ms": stats(ok, 1) if ok else None,
        }
    measured = [r for r in rows if r[2] == 200]
    return {
        "store_jobs": size + len(queued),
        "ended_jobs": size,
        "pending_jobs": pending,
        "fill": filled,
        "clients": args.clients,
        "think_s": args.think_s,
        "duration_s": args.duration_s,
        "calls_per_s": round(len(measured) / args.duration_s, 1),
        "by_call": by_call,
        "p99_under_100ms": all(
            v["ms"] is not None and v["ms"]["p99"] < LATENCY_GOAL_MS and not v["errors"]
            for v in by_call.values()
        ),
        "server_rss_mib": {
            "server_up": mib(rss.samples[0][1]) if rss.samples else None,
            "after_warmup": mib(rss.at(started + args.warmup_s)),
            "end": mib(rss.samples[-1][1]) if rss.samples else None,
            "max": mib(max(r for _, r in rss.samples)) if rss.samples else None,
        },
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": machine()["loadavg_1m"],
        "clients_s": round(ended - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000, help="ended jobs in the store")
    parser.add_argument("--baseline-jobs", type=int, default=1_000)
    parser.add_argument("--pending", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--think-s", type=float, default=0.1, help="each client's pause")
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=float, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--policy", default="fair", help="queueing policy (fair reads the usage history)"
    )
    parser.add_argument("--py-spy", default="", help="folder: profile the server (raw stacks)")
    args = parser.parse_args()
    emit({"benchmark": "api_scale", "machine": machine(), "args": vars(args)})
    results = []
    with ray_cluster(args.nodes, args.cpus_per_node) as (address, _dashboard):
        for size in (args.baseline_jobs, args.jobs):
            result = measure(size, address, args)
            results.append(result)
            emit({"benchmark": "api_scale", **result})
    base, full = results
    emit(
        {
            "benchmark": "api_scale",
            "summary": {
                what: {
                    f"p99_ms_{base['ended_jobs']}": (base["by_call"][what]["ms"] or {}).get("p99"),
                    f"p99_ms_{full['ended_jobs']}": (full["by_call"][what]["ms"] or {}).get("p99"),
                }
                for what in CALLS
            },
            "rss_mib_end": {
                str(base["ended_jobs"]): base["server_rss_mib"]["end"],
                str(full["ended_jobs"]): full["server_rss_mib"]["end"],
            },
            "p99_under_100ms_at_full_size": full["p99_under_100ms"],
        }
    )


if __name__ == "__main__":
    main()
