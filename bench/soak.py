"""Soak: many cheap jobs from concurrent clients, with random cancels, against a live
dcsched server on a 4-node `ray.cluster_utils.Cluster`, bounded in time (issue #10, 4).

--clients threads each submit jobs through the HTTP API (`dcsched.client.Client.submit`,
spec dicts, no uploads) until --jobs have been submitted in all: mostly `kind: run` of
`true` or `sleep 0.5` holding --job-cpus CPUs, a --train-share of tiny `kind: train` jobs
(mlp, breast cancer, 1 epoch: each costs a torch import), priorities mixed; a
--cancel-share of the accepted jobs are cancelled 0 to 3 s after their submission,
whatever state they are then in. The clients keep at most --backlog jobs unfinished in
all (a closed loop: the queue stays bounded, the run measures what the cluster sustains).

Measured throughout, from a separate process (so this process's threads do not inflate
it): `GET /v1/jobs?limit=200` and `GET /v1/jobs/{id}` (a job of that list) latencies,
p50/p99 per --bucket ended jobs (and per phase: submitting, draining); the server
process's RSS (psutil, every second): after --warmup-jobs ended jobs, at the end, and the
slope per 1,000 jobs after the warm-up.

Bounded: submission stops at the latest when the time left is a reserve of the
--duration-s; jobs then get time to end by themselves, and those still unfinished after
that are cancelled (counted as `drain_cancelled`); then the checks run and everything is
stopped (server by SIGTERM, cluster through `Cluster.shutdown`, both by PID). A watchdog
(SIGALRM) ends the run if it overruns its bound by more than 60 s.

Checks at the end, from the API (the whole job list; every accepted job's detail with
its history, as time allows) and from the store (the server's SQLite file, opened
read-only): every accepted job is there once, in a final state (SUCCEEDED, FAILED,
CANCELLED), with exactly one event into a final state, its last event; no job the clients
did not submit; no answer 5xx. The last line gives pass/fail per criterion against the
issue's targets (p99 of list and status under 100 ms in every bucket, RSS flat after the
first 1,000 jobs: within 10% at the end).

Usage: python bench/soak.py [--jobs 10000] [--clients 8] [--duration-s 3600] ...
On a 2-core machine run it smaller (e.g. --jobs 300 --duration-s 600) and say so.
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import client_for, emit, machine, percentile, ray_cluster, server_on, stats

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE = "PENDING,ADMITTED,RUNNING"
LATENCY_GOAL_S = 0.100
RSS_GROWTH_GOAL = 0.10
ISSUE_JOBS, ISSUE_CLIENTS = 10_000, 8
PHASES = ("setup", "submit", "drain", "check")


def run_spec(command: list[str], cpus: float, priority: str) -> dict[str, Any]:
    return {
        "name": "soak-" + command[0],
        "kind": "run",
        "team": "soak",
        "priority": priority,
        "resources": {"workers": 1, "cpus": cpus, "gpus": 0, "memory": "64MiB"},
        "run": {"command": command},
    }


def train_spec(cpus: float, priority: str) -> dict[str, Any]:
    return {
        "name": "soak-mlp",
        "kind": "train",
        "team": "soak",
        "priority": priority,
        "resources": {"workers": 1, "cpus": cpus, "gpus": 0, "memory": "256MiB"},
        "model": {"type": "mlp", "params": {"hidden": [8]}},
        "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 1},
        "train": {"epochs": 1, "batch_size": 64},
    }


# -- the latency sampler (a separate process) -----------------------------------------------


def sampler(home: str, out: str, stop: Any, ended: Any, phase: Any, interval_s: float) -> None:
    """Until ``stop``: list the newest 200 jobs, then one of them; write (what, phase,
    ended jobs, seconds, HTTP status) per call to ``out`` as JSON lines."""
    from dcsched.client import ApiError, Client
    from dcsched.paths import Paths

    client = Client.from_env(Paths(Path(home)), environ={})
    rows: list[tuple[str, int, int, float, int]] = []
    rng = random.Random(7)
    jobs: list[dict[str, Any]] = []
    while not stop.is_set():
        for what in ("list", "status"):
            began = time.perf_counter()
            status = 200
            try:
                if what == "list":
                    jobs = client.list_jobs(limit=200)
                elif jobs:
                    client.get_job(rng.choice(jobs)["id"])
                else:
                    continue
            except ApiError as exc:
                status = exc.status
            except Exception:  # unreachable, timeout: counted, not fatal
                status = 0
            rows.append((what, phase.value, ended.value, time.perf_counter() - began, status))
        stop.wait(interval_s)
    Path(out).write_text("\n".join(json.dumps(r) for r in rows))


# -- the clients ----------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, env: dict[str, str], ended: Any):
        self.args, self.env = args, env
        self.lock = threading.Lock()
        self.tickets = args.jobs
        self.accepted: dict[str, tuple[int, str, float]] = {}  # id -> (client, kind, at)
        self.order: list[str] = []
        self.submit_errors: Counter[str] = Counter()
        self.cancels: Counter[str] = Counter()  # outcome -> count
        self.http_5xx: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.shared_ended = ended
        self.ended = 0  # jobs accepted and no longer unfinished, as of the last poll
        self.stop_submitting = threading.Event()
        self.stop_all = threading.Event()
        self.active_at_poll = 0
        self.accepted_at_poll = 0
        self.submit_s: list[float] = []
        self.duplicate_ids: list[str] = []  # ids the server gave twice

    def outstanding(self) -> int:
        with self.lock:
            return self.active_at_poll + len(self.accepted) - self.accepted_at_poll

    def ticket(self) -> bool:
        with self.lock:
            if self.tickets <= 0 or self.stop_submitting.is_set():
                return False
            self.tickets -= 1
            return True

    def client(self, index: int) -> None:
        from dcsched.client import ApiError

        rng = random.Random(self.args.seed * 1000 + index)
        api = client_for(self.env)
        cancels: list[tuple[float, str]] = []
        cpus = self.args.job_cpus
        while not self.stop_all.is_set():
            self._due_cancels(api, cancels, time.monotonic())
            if self.stop_submitting.is_set() or self.tickets <= 0:
                if not cancels:
                    return
                time.sleep(0.05)
                continue
            if self.outstanding() >= self.args.backlog:
                time.sleep(0.05)
                continue
            if not self.ticket():
                continue
            roll = rng.random()
            priority = rng.choices(("low", "normal", "high"), (1, 8, 1))[0]
            if roll < self.args.train_share:
                kind, spec = "train", train_spec(cpus, priority)
            elif roll < self.args.train_share + (1 - self.args.train_share) / 2:
                kind, spec = "run true", run_spec(["true"], cpus, priority)
            else:
                kind, spec = "run sleep", run_spec(["sleep", "0.5"], cpus, priority)
            began = time.monotonic()
            try:
                job_id = str(api.submit(spec)["id"])
            except ApiError as exc:
                with self.lock:
                    self.submit_errors[f"{exc.status} {exc.message}"[:200]] += 1
                if exc.status >= 500:
                    self.http_5xx.append(f"submit: {exc.status} {exc.message}"[:300])
                continue
            except Exception as exc:  # no answer: the job may exist; the checks will say
                with self.lock:
                    self.submit_errors[f"no answer: {exc}"[:200]] += 1
                continue
            now = time.monotonic()
            with self.lock:
                if job_id in self.accepted:
                    self.duplicate_ids.append(job_id)
                self.accepted[job_id] = (index, kind, now)
                self.order.append(job_id)
                self.kinds[kind] += 1
                self.submit_s.append(now - began)
            if rng.random() < self.args.cancel_share:
                heapq.heappush(cancels, (now + rng.uniform(0, 3), job_id))

    def _due_cancels(self, api: Any, cancels: list[tuple[float, str]], now: float) -> None:
        while cancels and (cancels[0][0] <= now or self.stop_submitting.is_set()):
            _, job_id = heapq.heappop(cancels)
            outcome = self.cancel(api, job_id)
            with self.lock:
                self.cancels[outcome] += 1

    def cancel(self, api: Any, job_id: str) -> str:
        """Cancel; the outcome: 'cancelled', 'already ended' (409) or the error."""
        from dcsched.client import ApiError

        try:
            api.cancel(job_id)
            return "cancelled"
        except ApiError as exc:
            if exc.status >= 500:
                self.http_5xx.append(f"cancel {job_id}: {exc.status} {exc.message}"[:300])
            return "already ended" if exc.status == 409 else f"{exc.status} {exc.message}"[:120]
        except Exception as exc:
            return f"no answer: {exc}"[:120]

    def poll(self) -> None:
        """Every second: how many jobs are unfinished (the backlog the clients respect)."""
        api = client_for(self.env)
        while not self.stop_all.is_set():
            with self.lock:
                before = len(self.accepted)
            try:
                active = len(api.list_jobs(state=ACTIVE, limit=100_000))
            except Exception as exc:
                if getattr(exc, "status", 0) >= 500:
                    self.http_5xx.append(f"list active: {exc}"[:300])
                with self.lock:  # unknown: hold the clients back
                    self.active_at_poll, self.accepted_at_poll = self.args.backlog, before
                self.stop_all.wait(1.0)
                continue
            with self.lock:
                self.active_at_poll, self.accepted_at_poll = active, before
                self.ended = max(self.ended, before - active)
                self.shared_ended.value = self.ended
            self.stop_all.wait(1.0)


class RssSampler(threading.Thread):
    """Every second: (seconds since start, ended jobs, server RSS in bytes)."""

    def __init__(self, pid: int, soak: Soak, began: float):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.soak, self.began = soak, began
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                rss = self.process.memory_info().rss
            except Exception:
                return
            self.samples.append((time.monotonic() - self.began, self.soak.ended, rss))
            self.halt.wait(1.0)


# -- checks -----------------------------------------------------------------------------------


def check_api(soak: Soak, deadline: float) -> dict[str, Any]:
    from dcsched.client import ApiError

    api = client_for(soak.env)
    listed = api.list_jobs(limit=100_000)
    ids = [j["id"] for j in listed]
    states = {j["id"]: j["state"] for j in listed}
    accepted = set(soak.accepted)
    result: dict[str, Any] = {
        "listed": len(ids),
        "duplicated_in_list": len(ids) - len(set(ids)),
        "missing": sorted(accepted - set(ids))[:20],
        "missing_count": len(accepted - set(ids)),
        "not_submitted": sorted(set(ids) - accepted)[:20],
        "not_final": sorted(i for i in accepted if states.get(i) not in FINAL)[:20],
        "final_states": dict(Counter(states[i] for i in accepted if i in states)),
    }
    # every job's detail, newest first, as long as the time allows
    checked, bad = 0, []
    for job_id in reversed(soak.order):
        if time.monotonic() > deadline:
            break
        try:
            detail = api.get_job(job_id)
        except ApiError as exc:
            bad.append(f"{job_id}: {exc.status} {exc.message}"[:200])
            if exc.status >= 500:
                soak.http_5xx.append(f"status {job_id}: {exc.status}"[:300])
            continue
        finals = [e for e in detail["events"] if e["to_state"] in FINAL]
        if (
            len(finals) != 1
            or detail["events"][-1]["to_state"] != detail["state"]
            or detail["state"] not in FINAL
        ):
            bad.append(f"{job_id}: state {detail['state']}, final events {len(finals)}")
        checked += 1
    result.update(details_checked=checked, details_bad=bad[:20], details_bad_count=len(bad))
    return result


def check_store(db: Path, soak: Soak) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        jobs = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
        finals: Counter[str] = Counter()
        last: dict[str, str] = {}
        after_final: set[str] = set()
        for job_id, to_state in conn.execute(
            "SELECT job_id, to_state FROM job_events ORDER BY seq"
        ):
            if job_id in finals:
                after_final.add(job_id)  # any event after the final one
            if to_state in FINAL:
                finals[job_id] += 1
            last[job_id] = to_state
    finally:
        conn.close()
    accepted = set(soak.accepted)
    return {
        "jobs_in_store": len(jobs),
        "missing": len(accepted - set(jobs)),
        "not_submitted": len(set(jobs) - accepted),
        "not_final": sum(jobs.get(i) not in FINAL for i in accepted),
        "final_events_not_one": sum(finals[i] != 1 for i in accepted),
        "events_after_final": len(after_final),
        "last_event_not_state": sum(last.get(i) != jobs.get(i) for i in accepted),
        "examples": sorted(i for i in accepted if finals[i] != 1 or jobs.get(i) not in FINAL)[:20],
    }


# -- reporting --------------------------------------------------------------------------------


def _segment_order(item: tuple[tuple[str, str], list[float]]) -> tuple[int, str]:
    (label, what), _ = item
    if label.startswith("ended "):
        return int(label.split()[1].split("-")[0]), what
    return 1 << 40, label + what


def latency_report(
    rows: list[list[Any]], bucket: int
) -> tuple[list[dict[str, Any]], bool, dict[str, int]]:
    """p50/p99 (ms) per bucket of ended jobs and per phase, for list and status; whether
    every bucket's p99 is under the goal; the calls that did not answer 200."""
    groups: dict[tuple[str, str], list[float]] = {}
    errors: Counter[str] = Counter()
    for what, phase, ended, seconds, status in rows:
        if PHASES[phase] not in ("submit", "drain"):
            continue
        if status != 200:
            errors[f"{what} {status}"] += 1
            continue
        low = (ended // bucket) * bucket
        for label in (f"ended {low}-{low + bucket}", f"phase {PHASES[phase]}"):
            groups.setdefault((label, what), []).append(seconds * 1000)
    records, ok = [], True
    for (label, what), values in sorted(groups.items(), key=_segment_order):
        summary = stats(values, 1)
        if label.startswith("ended"):
            ok = ok and summary["p99"] < LATENCY_GOAL_S * 1000
        records.append({"segment": label, "call": what, "samples": len(values), "ms": summary})
    return records, ok and not errors, dict(errors)


def slope_mib_per_1000(samples: list[tuple[float, int, int]], after: int) -> float | None:
    points = [(a, r / 2**20) for _, a, r in samples if a >= after]
    if len(points) < 3 or points[-1][0] == points[0][0]:
        return None
    mx = sum(a for a, _ in points) / len(points)
    my = sum(r for _, r in points) / len(points)
    var = sum((a - mx) ** 2 for a, _ in points)
    if var == 0:
        return None
    return round(sum((a - mx) * (r - my) for a, r in points) / var * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=ISSUE_JOBS)
    parser.add_argument("--clients", type=int, default=ISSUE_CLIENTS)
    parser.add_argument("--duration-s", type=float, default=3600, help="hard bound, all in")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=float, default=2)
    parser.add_argument("--job-cpus", type=float, default=0.1)
    parser.add_argument("--train-share", type=float, default=0.02)
    parser.add_argument("--cancel-share", type=float, default=0.10)
    parser.add_argument("--backlog", type=int, default=400, help="most unfinished jobs")
    parser.add_argument("--bucket", type=int, default=0, help="latencies per N jobs")
    parser.add_argument("--warmup-jobs", type=int, default=0, help="RSS baseline after N jobs")
    parser.add_argument("--sample-interval", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.bucket = args.bucket or max(1, min(1000, args.jobs // 10))
    args.warmup_jobs = args.warmup_jobs or max(1, min(1000, args.jobs // 10))
    began = time.monotonic()
    deadline = began + args.duration_s
    reserve = min(max(0.3 * args.duration_s, 90.0), 900.0)

    def overrun(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the soak overran its bound of {args.duration_s:g}s")

    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(int(args.duration_s + 60))
    emit({"benchmark": "soak", "machine": machine(), "args": vars(args)})

    ctx = multiprocessing.get_context("spawn")
    stop, ended_value, phase = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
    with (
        tempfile.TemporaryDirectory(prefix="dcsched-soak-") as tmp,
        ray_cluster(args.nodes, args.cpus_per_node) as (address, _dashboard),
        server_on(address) as env,
    ):
        home = Path(env["DCSCHED_HOME"])
        pid = int(json.loads((home / "server.json").read_text())["pid"])
        soak = Soak(args, env, ended_value)
        rss = RssSampler(pid, soak, began)
        rss.start()
        out = str(Path(tmp) / "latency.jsonl")
        probe = ctx.Process(
            target=sampler,
            args=(str(home), out, stop, ended_value, phase, args.sample_interval),
        )
        probe.start()
        setup_s = time.monotonic() - began
        phase.value = PHASES.index("submit")
        threads = [threading.Thread(target=soak.poll, daemon=True)]
        threads += [
            threading.Thread(target=soak.client, args=(i,), daemon=True)
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        submit_began = time.monotonic()
        last_report = 0
        while any(t.is_alive() for t in threads[1:]) and time.monotonic() < deadline - reserve:
            time.sleep(1)
            if soak.ended >= last_report + args.bucket:
                last_report = soak.ended // args.bucket * args.bucket
                emit(
                    {
                        "progress": "submit",
                        "elapsed_s": round(time.monotonic() - began, 1),
                        "accepted": len(soak.accepted),
                        "ended": soak.ended,
                        "unfinished": soak.outstanding(),
                        "server_rss_mib": round(rss.samples[-1][2] / 2**20, 1),
                    }
                )
        soak.stop_submitting.set()
        for thread in threads[1:]:
            thread.join(timeout=30)
        submit_s = time.monotonic() - submit_began
        phase.value = PHASES.index("drain")
        api = client_for(env)
        drain_end = deadline - reserve / 2
        unfinished = api.list_jobs(state=ACTIVE, limit=100_000)
        while unfinished and time.monotonic() < drain_end:
            time.sleep(1)
            unfinished = api.list_jobs(state=ACTIVE, limit=100_000)
        drained_s = time.monotonic() - submit_began
        drain_cancelled = Counter(soak.cancel(api, j["id"]) for j in unfinished)
        settle_end = deadline - reserve / 4
        while unfinished and time.monotonic() < settle_end:
            time.sleep(0.5)
            unfinished = api.list_jobs(state=ACTIVE, limit=100_000)
        soak.stop_all.set()
        phase.value = PHASES.index("check")
        stop.set()
        probe.join(timeout=30)
        if probe.is_alive():
            probe.terminate()
            probe.join()
        rss.halt.set()
        rss.join(timeout=5)
        api_check = check_api(soak, deadline - reserve / 8)
        store_check = check_store(home / "dcsched.db", soak)
        rows = [json.loads(line) for line in Path(out).read_text().splitlines() if line]

    signal.alarm(0)
    total = len(soak.accepted)
    latencies, latency_ok, latency_errors = latency_report(rows, args.bucket)
    for record in latencies:
        emit({"benchmark": "soak", "latency": record})
    warm = next((s for s in rss.samples if s[1] >= args.warmup_jobs), None)
    end = rss.samples[-1] if rss.samples else None
    rss_record = {
        "samples": len(rss.samples),
        "after_warmup_jobs": args.warmup_jobs,
        "mib_at_start": round(rss.samples[0][2] / 2**20, 1) if rss.samples else None,
        "mib_after_warmup": round(warm[2] / 2**20, 1) if warm else None,
        "mib_at_end": round(end[2] / 2**20, 1) if end else None,
        "mib_max": round(max(s[2] for s in rss.samples) / 2**20, 1) if rss.samples else None,
        "slope_mib_per_1000_jobs": slope_mib_per_1000(rss.samples, args.warmup_jobs),
    }
    rss_ok = bool(warm and end and end[2] <= warm[2] * (1 + RSS_GROWTH_GOAL))
    emit({"benchmark": "soak", "server_rss": rss_record})
    finals = api_check["final_states"]
    emit(
        {
            "benchmark": "soak",
            "jobs_requested": args.jobs,
            "jobs_accepted": total,
            "clients": args.clients,
            "kinds": dict(soak.kinds),
            "submit_errors": dict(soak.submit_errors),
            "random_cancels": dict(soak.cancels),
            "drain_cancelled": dict(drain_cancelled),
            "final_states": finals,
            "setup_s": round(setup_s, 1),
            "submit_phase_s": round(submit_s, 1),
            "until_all_ended_s": round(drained_s, 1),
            "jobs_ended_per_s": round(total / drained_s, 3) if drained_s else None,
            "submit_ms": stats([s * 1000 for s in soak.submit_s], 1) if soak.submit_s else None,
            "nodes": args.nodes,
            "cpu_slots": args.nodes * args.cpus_per_node,
            "api_check": api_check,
            "store_check": store_check,
            "duplicate_ids": soak.duplicate_ids[:20],
            "http_5xx": soak.http_5xx[:20],
            "probe_errors": latency_errors,
            "loadavg_1m_at_end": machine()["loadavg_1m"],
        }
    )
    exactly_once = (
        not api_check["not_final"]
        and api_check["details_bad_count"] == 0
        and store_check["not_final"] == 0
        and store_check["final_events_not_one"] == 0
        and store_check["events_after_final"] == 0
        and store_check["last_event_not_state"] == 0
    )
    criteria = {
        "every_job_final_exactly_once": exactly_once,
        "no_job_lost": api_check["missing_count"] == 0 and store_check["missing"] == 0,
        "no_job_duplicated": not soak.duplicate_ids
        and api_check["duplicated_in_list"] == 0
        and not api_check["not_submitted"]
        and store_check["not_submitted"] == 0,
        "no_5xx": not soak.http_5xx,
        "p99_list_status_under_100ms_throughout": latency_ok,
        "server_rss_flat_after_warmup": rss_ok,
        "within_time_bound": time.monotonic() - began <= args.duration_s,
        "all_requested_jobs_submitted": total == args.jobs,
        "at_issue_size": args.jobs >= ISSUE_JOBS and args.clients >= ISSUE_CLIENTS,
    }
    all_list = [r[3] * 1000 for r in rows if r[0] == "list" and r[4] == 200 and r[1] in (1, 2)]
    all_status = [r[3] * 1000 for r in rows if r[0] == "status" and r[4] == 200 and r[1] in (1, 2)]
    emit(
        {
            "benchmark": "soak",
            "result": "pass" if all(criteria.values()) else "fail",
            "criteria": criteria,
            "jobs": total,
            "clients": args.clients,
            "wall_s": round(time.monotonic() - began, 1),
            "list_ms_p99": round(percentile(all_list, 0.99), 1) if all_list else None,
            "status_ms_p99": round(percentile(all_status, 0.99), 1) if all_status else None,
            "rss_mib_after_warmup": rss_record["mib_after_warmup"],
            "rss_mib_at_end": rss_record["mib_at_end"],
        }
    )


if __name__ == "__main__":
    main()
