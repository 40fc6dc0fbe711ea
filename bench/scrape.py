"""Scrape time of dcsched's two metrics endpoints, over real HTTP on 127.0.0.1, each
beside a baseline served the same way in the same run. Prints one JSON line per target.

- node: the node exporter (``dcsched.exporters.node``) with the NVML stand-in
  (``FakeNvml``: this machine has no GPU) reporting 8 GPUs and 64 GPU processes. The
  64 pids are real ``sleep`` processes started here with DCSCHED_JOB_ID/DCSCHED_TEAM in
  their environment (8 jobs of 8 processes, 4 teams), so the real attribution path runs
  (a /proc scan of the whole machine each scrape). Job j's processes are on GPU j (one
  job per GPU, as dcsched allocates them).
  Baseline: a bare prometheus_client registry with one gauge, on the same server
  (``dcsched.exporters.exposition``, what ``node.serve`` runs). Each is served from a
  process of its own (forked), as Prometheus would see it; the serving process's CPU
  time per scrape is reported too (less sensitive to a busy machine than wall time).
  Floor (issue #5): p99 under 20 ms.
- server: ``dcsched up`` (embedded local Ray) on a store holding 10,000 finished jobs
  (written as bench/cli_latency.py does), its ``/metrics`` with the bearer token.
  Baseline: the same server's ``/v1/info``. Floor: p99 under 100 ms.
  Starts Ray: run it alone on a shared machine (``flock /tmp/dcsched-ray.lock ...``).

Usage: python bench/scrape.py [--part node|server|all] [--scrapes N] [--jobs N]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cli, emit, machine, median, percentile
from cli_latency import fill_store

NODE_FLOOR_MS = 20.0
SERVER_FLOOR_MS = 100.0
GPUS = 8
JOBS_ON_NODE = 8
PROCESSES_PER_JOB = 8
WARMUP = 5


def time_scrapes(
    host: str, port: int, path: str, count: int, headers: dict[str, str] | None = None
) -> tuple[list[float], int]:
    """Milliseconds per scrape (connect, request, whole body read); the body's size."""
    samples = []
    size = 0
    for i in range(WARMUP + count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection(host, port, timeout=60)
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        if i >= WARMUP:
            samples.append(elapsed)
        size = len(body)
    return samples, size


def record(target: str, samples: list[float], size: int, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": "scrape",
        "target": target,
        "scrapes": len(samples),
        "p50_ms": round(median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(max(samples), 2),
        "body_bytes": size,
        **extra,
        "machine": machine(),
    }


def series_count(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def _node_exporter(pids: list[int]) -> Any:
    """The served side: the node exporter over FakeNvml (built in the serving process)."""
    from dcsched.exporters.node import NodeExporter
    from dcsched.exporters.nvml_fake import FakeNvml

    fake = FakeNvml.with_gpus(GPUS, pids, sm_percent=10.0)
    # Job j's 8 processes are on GPU j: dcsched allocates a GPU to one job at a time.
    for i, proc in enumerate(fake.procs):
        proc.gpu = i // PROCESSES_PER_JOB
    for gpu in fake.gpus:
        gpu.memory_used_bytes = sum(
            p.used_memory_bytes or 0 for p in fake.procs if p.gpu == gpu.index
        )
    return NodeExporter("bench-node", fake).registry


def _baseline(pids: list[int]) -> Any:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("bench_baseline", "One gauge", registry=registry).set(1)
    return registry


def _serve(make: Callable[[list[int]], Any], pids: list[int], conn: Connection) -> None:
    """Child process: serve ``make(pids)`` on 127.0.0.1, send the port, wait for "stop"."""
    from dcsched.exporters.exposition import serve_registry  # what node.serve() runs

    server = serve_registry("127.0.0.1", 0, make(pids))
    cpu_before = time.process_time()
    conn.send(server.port)
    conn.recv()
    conn.send(time.process_time() - cpu_before)  # CPU seconds the serving took
    server.close()


def scrape_served(
    make: Callable[[list[int]], Any], pids: list[int], scrapes: int
) -> tuple[list[float], int, bytes, float]:
    """Serves ``make(pids)`` from a process of its own (as Prometheus would scrape it:
    the scraper does not share the exporter's interpreter) and scrapes it."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(make, pids, child))
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the served process did not start")
        port = parent.recv()
        samples, size = time_scrapes("127.0.0.1", port, "/metrics", scrapes)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read()
        connection.close()
    finally:
        parent.send("stop")
        cpu_s = parent.recv() if parent.poll(30) else float("nan")
        process.join(timeout=30)
    # CPU time of the serving process per request (the warm-up and the last one count)
    return samples, size, text, cpu_s * 1000 / (WARMUP + scrapes + 1)


def node_part(scrapes: int) -> None:
    children = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    try:
        for job in range(JOBS_ON_NODE):
            env = {
                **base_env,
                "DCSCHED_JOB_ID": f"bench-job-{job}",
                "DCSCHED_TEAM": f"team-{job % 4}",
            }
            for _ in range(PROCESSES_PER_JOB):
                children.append(subprocess.Popen(["sleep", "3600"], env=env))
        pids = [child.pid for child in children]
        samples, size, text, cpu_ms = scrape_served(_node_exporter, pids, scrapes)
        # Other dcsched jobs running on this machine show too; ours must all be there.
        rss_lines = [line for line in text.splitlines() if b"dcsched_job_memory_rss_bytes{" in line]
        missing = [
            job
            for job in range(JOBS_ON_NODE)
            if not any(f'job_id="bench-job-{job}"'.encode() in line for line in rss_lines)
        ]
        if missing:
            raise RuntimeError(f"jobs missing from the output: {missing}")
        emit(
            record(
                "node exporter /metrics (FakeNvml: 8 GPUs, 64 processes of 8 jobs)",
                samples,
                size,
                cpu_ms_per_scrape=round(cpu_ms, 2),
                series=series_count(text),
                jobs_on_machine=len(rss_lines),
                processes_on_machine=sum(1 for n in os.listdir("/proc") if n.isdigit()),
                floor_p99_ms=NODE_FLOOR_MS,
                meets_floor=percentile(samples, 0.99) < NODE_FLOOR_MS,
            )
        )
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
    samples, size, _, cpu_ms = scrape_served(_baseline, [], scrapes)
    emit(
        record(
            "baseline: one gauge, same HTTP server",
            samples,
            size,
            cpu_ms_per_scrape=round(cpu_ms, 2),
        )
    )


def server_part(scrapes: int, jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dcsched-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSCHED_", "RAY_"))}
        port = 18797
        env.update({"DCSCHED_HOME": home, "DCSCHED_PORT": str(port)})
        started = time.perf_counter()
        fill_store(Path(home), jobs)
        fill_s = time.perf_counter() - started
        cli(env, "up")
        try:
            token = (Path(home) / "token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            timed: dict[str, Callable[[], tuple[list[float], int]]] = {
                "/metrics": lambda: time_scrapes("127.0.0.1", port, "/metrics", scrapes, headers),
                "/v1/info": lambda: time_scrapes("127.0.0.1", port, "/v1/info", scrapes, headers),
            }
            for path, run in timed.items():
                samples, size = run()
                extra: dict[str, Any] = {"jobs_in_store": jobs, "store_fill_s": round(fill_s, 1)}
                if path == "/metrics":
                    target = f"server /metrics, {jobs:,} jobs in the store"
                    extra["floor_p99_ms"] = SERVER_FLOOR_MS
                    extra["meets_floor"] = percentile(samples, 0.99) < SERVER_FLOOR_MS
                else:
                    target = "baseline: the same server's /v1/info"
                emit(record(target, samples, size, **extra))
        finally:
            cli(env, "down", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["node", "server", "all"], default="all")
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--server-scrapes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    if args.part in ("node", "all"):
        node_part(args.scrapes)
    if args.part in ("server", "all"):
        server_part(args.server_scrapes, args.jobs)


if __name__ == "__main__":
    main()
