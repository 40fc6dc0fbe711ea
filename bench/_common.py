"""Helpers shared by the benchmarks: machine description, a throwaway dcsched home with a
running server (on its own local Ray head, or on a multi-node ``ray.cluster_utils``
cluster), and percentile arithmetic. Each benchmark prints JSON lines.

Ray is always started with token auth (``RAY_AUTH_MODE`` set explicitly) and explicit
ports, and stopped by PID: never ``ray stop``, never by name."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = -1.0
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(load, 2),
    }


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "dcsched.cli", *args], env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"dcsched {' '.join(args)} failed: {done.stderr}")
    return done


def stats(values: list[float], digits: int = 3) -> dict[str, float]:
    """p50, p99, min and max of ``values``."""
    return {
        "p50": round(median(values), digits),
        "p99": round(percentile(values, 0.99), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


@contextmanager
def dcsched_server(
    port: int = 18799, num_cpus: float | None = None, num_gpus: float | None = None
) -> Iterator[dict[str, str]]:
    """A fresh DCSCHED_HOME with `dcsched up` (embedded local Ray); `down` at the end.

    ``num_cpus``/``num_gpus``: give the local head that many logical CPUs/GPUs (it is
    started first, with dcsched's own launcher, and `dcsched up` adopts it, as it adopts
    any head it finds; default: what `dcsched up` would detect).
    The caller's process gets RAY_AUTH_MODE and the head's token (for raw Ray clients)."""
    from dcsched.adapters import ray_head
    from dcsched.paths import Paths

    with tempfile.TemporaryDirectory(prefix="dcsched-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSCHED_", "RAY_"))}
        env.update({"DCSCHED_HOME": home, "DCSCHED_PORT": str(port)})
        paths = Paths(Path(home))
        try:
            if num_cpus is not None or num_gpus is not None:
                ray_head.start(paths, num_cpus=num_cpus, num_gpus=num_gpus)
            cli(env, "up")
            os.environ.update(ray_head.ray_env(ray_head.ensure_token(paths)))
            yield env
        finally:
            cli(env, "down", check=False)
            ray_head.stop(paths)  # a no-op unless `up` failed after the head started


def ray_head_record(env: dict[str, str]) -> dict[str, Any]:
    """head.json of the local Ray head under env's DCSCHED_HOME (dashboard_url, ...)."""
    return dict(json.loads((Path(env["DCSCHED_HOME"]) / "ray" / "head.json").read_text()))


@contextmanager
def ray_cluster(
    nodes: int, cpus_per_node: float, gpus_per_node: float = 0
) -> Iterator[tuple[str, str]]:
    """Several Ray nodes on this machine (``dcsched.adapters.local_cluster``, as the tests
    start them): ``nodes`` worker nodes, token auth on. Yields (GCS address, dashboard
    URL); shut down (by PID, through Cluster) at the end."""
    from dcsched.adapters import local_cluster

    with tempfile.TemporaryDirectory(prefix="dcsched-bench-ray-") as tmp:
        local_cluster.token_auth(Path(tmp))
        workers = [{"num_cpus": cpus_per_node, "num_gpus": gpus_per_node}] * nodes
        with local_cluster.running(workers) as cluster:
            yield cluster.address, local_cluster.dashboard_url(cluster)


@contextmanager
def server_on(
    ray_address: str,
    timeout_s: float = 120,
    prepare: Callable[[Any], None] | None = None,
) -> Iterator[dict[str, str]]:
    """`dcsched server --ray-address` (a fresh DCSCHED_HOME, explicit port, node exporters on
    loopback with free ports), started as `dcsched up` starts it
    (``dcsched.daemon.launch_server``); yields its CLI environment. Stopped with SIGTERM by
    PID. ``prepare`` is called with the home's ``dcsched.paths.Paths`` before the server
    starts (to fill its store, say)."""
    from dcsched.daemon import launch_server
    from dcsched.paths import Paths
    from dcsched.processes import free_port

    with tempfile.TemporaryDirectory(prefix="dcsched-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
        env.update({"DCSCHED_HOME": home, "DCSCHED_PORT": str(free_port())})
        args = ["--ray-address", ray_address, "--exporter-port", "0"]
        args += ["--exporter-host", "127.0.0.1"]
        if prepare is not None:
            prepare(Paths(Path(home)))
        process, _ = launch_server(Paths(Path(home)), args, env, timeout_s)
        try:
            yield env
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def client_for(env: dict[str, str]) -> Any:
    """A ``dcsched.client.Client`` for the server whose home env names."""
    from dcsched.client import Client
    from dcsched.paths import Paths

    return Client.from_env(Paths(Path(env["DCSCHED_HOME"])), environ={})


@contextmanager
def baseline_tree(tree: Path | None) -> Iterator[dict[str, str] | None]:
    """The environment in which ``python`` imports ``dcsched`` from another checkout
    ``tree`` (its ``scheduler/`` folder: the previous version, say ``git worktree add
    /tmp/before main``) instead of this one; None when ``tree`` is None. A benchmark runs
    its baseline measurement in a child process with it, in the same sitting as its own."""
    if tree is None:
        yield None
        return
    source = tree.resolve() / "scheduler"
    if not (source / "core" / "admission.py").is_file():
        raise SystemExit(f"--baseline {tree}: no dcsched checkout there (no scheduler/core)")
    with tempfile.TemporaryDirectory(prefix="dcsched-baseline-") as folder:
        (Path(folder) / "dcsched").symlink_to(source, target_is_directory=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH", "")) if p)
        yield env


def run_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run ``python ARGS`` (a benchmark in its worker mode) under ``env`` and return the
    last JSON line it printed."""
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))
