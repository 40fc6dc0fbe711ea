"""`dcsched sim` against the live server: the same small trace, run for real on a
two-node Ray cluster and then replayed by the simulator, starts its jobs in the same
order and at nearly the same times.

Live: 2 worker nodes of 1 CPU, fifo, binpack, one team; 6 one-CPU `mlp` jobs submitted
at 0, 0, 0, 1, 1 and 2 s, so two run at once and the rest queue. A job's run time is
not fixed (it is whatever training takes here), so the replay takes it from the live
run: each job's *held* time, from its admission (resources reserved: what the simulator
calls its start) to its end as the server recorded it. The trace (dcsched CSV format,
submit times as actually submitted) and a cluster file with the same configuration and
the same two nodes go through `dcsched sim`; its `jobs.csv` starts are compared with the
live `admitted_at`, both in seconds from the first submission.

Tolerance: a job's live start may be later than its simulated start by up to 2 s, plus
1 s for every job end it waited for in a chain (the job that freed its slot, the one
that freed that job's slot, ...), and never earlier (10 ms for rounding). The simulator
models no delay of the live server (its executor is perfect), so the live start can only
lag, and the lag adds up along each chain of waits:

- 2 s: one admission pass. The server admits the jobs of a pass one after another and
  waits up to 2 s for each one's Ray reservation before admitting the next; the second
  of three jobs submitted together was admitted ~0.5 s after its submission here.
- 1 s per end waited for: noticing the end (the loop polls running jobs every 0.1 s),
  recording it, releasing the reservation and admitting the next job; ~0.2 s here.

Start order: with strict fifo and jobs of one size, both start the jobs in submit order;
the check guards the replay's tie-breaking and the order of the live admissions.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, Server, run_cli, start_cluster, start_server

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIG = """
queueing: {policy: fifo}
placement: binpack
teams:
  - {name: research}
"""
NODES = """
nodes:
  - {type: worker, count: 2, cpus: 1, gpus: 0, memory: 4GiB}
"""
# (submit offset in seconds, epochs): ~50 ms an epoch here, after ~20 s of start-up (two
# jobs start together on this 2-core machine: Ray job, interpreter, torch import).
TRACE = [(0.0, 100), (0.0, 20), (0.0, 60), (1.0, 10), (1.0, 80), (2.0, 40)]
BASE_TOLERANCE_S = 2.0
PER_WAIT_TOLERANCE_S = 1.0
ROUNDING_S = 0.01  # the server's times are in milliseconds


@pytest.fixture(scope="module")
def live(ray_head: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cluster: Any = start_cluster([{"num_cpus": 1}, {"num_cpus": 1}])
    try:
        server = start_server(tmp_path_factory.mktemp("sim-vs-live-home"), cluster.address, CONFIG)
        try:
            yield server
        finally:
            server.stop()
    finally:
        cluster.shutdown()


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def run_live(server: Server) -> list[dict[str, Any]]:
    """Submit the trace at its offsets, wait for every job; their final views."""
    base = yaml.safe_load((EXAMPLES / "train-mlp.yaml").read_text())
    base["resources"]["memory"] = "64MiB"
    ids = []
    began = time.monotonic()
    for index, (offset, epochs) in enumerate(TRACE):
        time.sleep(max(0.0, began + offset - time.monotonic()))
        spec = dict(base, name=f"trace-{index}", train=dict(base["train"], epochs=epochs))
        status, body = server.api("POST", "/v1/jobs", {"spec": spec})
        assert status == 201, body
        ids.append(json.loads(body)["id"])
    for job_id in ids:
        done = server.cli("wait", job_id, "--timeout", "240")
        assert done.returncode == 0, done.stderr
    jobs = [server.cli_json("status", job_id) for job_id in ids]
    for job in jobs:
        # One admission each: a requeued job would have held resources twice.
        assert job["state"] == "SUCCEEDED" and job["attempt"] == 1, job  # type: ignore[index]
    return jobs  # type: ignore[return-value]


def run_sim(server: Server, tmp_path: Path, jobs: list[dict[str, Any]]) -> dict[str, dict]:
    """The same trace in dcsched's CSV format, through `dcsched sim`; jobs.csv by id."""
    first = min(seconds(j["submitted_at"]) for j in jobs)
    trace = tmp_path / "trace.csv"
    with trace.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "team", "submit", "duration", "cpus", "memory"])
        for job in jobs:
            held = seconds(job["finished_at"]) - seconds(job["admitted_at"])
            submit = seconds(job["submitted_at"]) - first
            writer.writerow([job["name"], job["team"], f"{submit:.3f}", f"{held:.3f}", 1, "64MiB"])
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(CONFIG + NODES)
    out = tmp_path / "sim"
    done = run_cli(
        "sim",
        "--trace",
        str(trace),
        "--format",
        "dcsched",
        "--cluster",
        str(cluster_file),
        "--out",
        str(out),
        env=server.env,
    )
    assert done.returncode == 0, done.stderr
    with (out / "jobs.csv").open(newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def chain_depth(rows: dict[str, dict]) -> dict[str, int]:
    """For each job, how many job ends it waited for in a chain: 0 when it started on
    arrival, else 1 + the depth of the job whose end started it."""
    start = {i: float(r["start"]) for i, r in rows.items()}
    end = {i: float(r["end"]) for i, r in rows.items()}
    depth: dict[str, int] = {}
    for job_id in sorted(rows, key=lambda i: start[i]):
        if start[job_id] <= float(rows[job_id]["submit"]) + 1e-9:
            depth[job_id] = 0
            continue
        freed_by = [i for i in depth if abs(end[i] - start[job_id]) < 1e-6]
        assert freed_by, f"{job_id} started at {start[job_id]} with no end then: {rows}"
        depth[job_id] = 1 + max(depth[i] for i in freed_by)
    return depth


def test_sim_replays_a_live_run_with_the_same_start_order_and_times(
    live: Server, tmp_path: Path
) -> None:
    jobs = run_live(live)
    rows = run_sim(live, tmp_path, jobs)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"}, rows

    first = min(seconds(j["submitted_at"]) for j in jobs)
    live_start = {j["name"]: seconds(j["admitted_at"]) - first for j in jobs}
    sim_start = {i: float(r["start"]) for i, r in rows.items()}
    assert sorted(sim_start) == sorted(live_start)
    # Some jobs really queued: the comparison is about waits, not only arrivals.
    depth = chain_depth(rows)
    assert sum(d > 0 for d in depth.values()) >= 3, depth

    live_order = sorted(live_start, key=lambda i: live_start[i])
    sim_order = sorted(sim_start, key=lambda i: (sim_start[i], float(rows[i]["submit"])))
    table = "\n".join(
        f"{i}: submit {float(rows[i]['submit']):6.3f} held {float(rows[i]['run_s']):6.3f} "
        f"live start {live_start[i]:7.3f} sim start {sim_start[i]:7.3f} "
        f"deviation {live_start[i] - sim_start[i]:+.3f} waits {depth[i]}"
        for i in live_order
    )
    print("\n" + table)
    assert live_order == sim_order, table
    for job_id, live_at in live_start.items():
        tolerance = BASE_TOLERANCE_S + PER_WAIT_TOLERANCE_S * depth[job_id]
        lag = live_at - sim_start[job_id]
        assert -ROUNDING_S <= lag <= tolerance, (job_id, tolerance, table)
