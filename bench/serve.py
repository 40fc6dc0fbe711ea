"""Online serving: `dcsched serve` (2 replicas behind HAProxy) against the seed's
deployment (a Flask app under `gunicorn -w 3 -k gevent`, bench/seed/app.py), the same
model, the same load, in one run.

Both serve the same saved model: an `mlp` (30-64-32-1, breast cancer) trained here
through dcsched. The load is wrk's (Debian package `wrk`): 2 threads, 8 connections,
--duration seconds, each request `POST /predict` with one float vector of 30 features.
The two deployments are measured in turn, --rounds times, alternating which goes first,
so that the machine's noise falls on both alike; the summary gives the median of the
rounds for each (req/s, p50, p99, errors) and the ratios. Floor (issue #14): dcsched's
throughput >= the seed's at a p99 no worse than the seed's.

Needs: `pip install -e '.[bench]'` (flask, gunicorn, gevent), haproxy and wrk
(`make system-deps`). Usage: python bench/serve.py [--rounds N] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cli, emit, machine, median, server_on

from dcsched.processes import free_port

SEED_DIR = Path(__file__).resolve().parent / "seed"
TRAIN = {
    "name": "bench-mlp",
    "kind": "train",
    "team": "bench",
    "resources": {"workers": 1, "cpus": 1, "memory": "1GiB"},
    "model": {"type": "mlp", "params": {"hidden": [64, 32]}},
    "data": {"source": "sklearn:breast_cancer", "seed": 0},
    "train": {"epochs": 10},
}


def _features() -> list[float]:
    """One real row of the data (a tumour's 30 measurements), as a client would send."""
    from sklearn.datasets import load_breast_cancer

    return [float(v) for v in load_breast_cancer().data[3]]


FEATURES = _features()


def wrk(url: str, script: Path, duration: int) -> dict[str, Any]:
    done = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", "-s", str(script), url + "/predict"],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    out = done.stdout
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "errors": errors,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def predict_ok(url: str) -> bool:
    body = json.dumps({"features": FEATURES}).encode()
    request = urllib.request.Request(
        url + "/predict", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def await_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predict_ok(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer /predict within {timeout}s")
        time.sleep(0.5)


def start_seed(model_dir: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk; `make system-deps`)")
    env = {**os.environ, "SEED_MODEL_DIR": model_dir}
    argv = [sys.executable, "-m", "gunicorn", "-w", "3", "-k", "gevent"]
    argv += ["-b", f"127.0.0.1:{port}", "--chdir", str(SEED_DIR), "app:app"]
    from dcsched.processes import spawn_detached

    return spawn_detached(argv, log, env)


@contextmanager
def local_ray(home: Path) -> Iterator[str]:
    """A local Ray head (dcsched's launcher: token auth, explicit ports, 8 logical CPUs so
    both replicas and the training job fit), stopped by PID; yields its GCS address."""
    from dcsched.adapters import ray_head
    from dcsched.paths import Paths

    paths = Paths(home / "ray-home")
    head = ray_head.start(paths, num_cpus=8, num_gpus=0)
    os.environ.update(ray_head.ray_env(head.token_path))
    try:
        yield head.gcs_address
    finally:
        ray_head.stop(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per round")
    args = parser.parse_args()
    emit({"bench": "serve", "machine": machine()})
    with (
        tempfile.TemporaryDirectory(prefix="dcsched-bench-serve-") as tmp,
        local_ray(Path(tmp)) as address,
        server_on(address) as env,
    ):
        work = Path(tmp)
        spec = work / "train.json"
        spec.write_text(json.dumps(TRAIN))
        # (the CLI reads YAML; JSON is YAML)
        cli(env, "submit", str(spec), "--wait")
        model = json.loads(cli(env, "models", "show", "bench-mlp:1", "-o", "json").stdout)
        url = cli(
            env, "serve", "bench-mlp:1", "--name", "bench", "--team", "bench",
            "--replicas", "2", "--cpus", "1", "--memory", "512MiB",
        ).stdout.strip()  # fmt: skip
        seed_port = free_port()
        seed = start_seed(str(model["path"]), seed_port, work / "gunicorn.log")
        seed_url = f"http://127.0.0.1:{seed_port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                status = json.loads(cli(env, "serve", "status", "bench", "-o", "json").stdout)
                if status["ready"] == 2:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the deployment did not become ready: {status}")
                time.sleep(0.5)
            await_ready(url)
            await_ready(seed_url)
            script = work / "post.lua"
            body = json.dumps({"features": FEATURES})
            script.write_text(
                'wrk.method = "POST"\n'
                f"wrk.body = {json.dumps(body)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
            targets = {"seed": seed_url, "dcsched": url}
            results: dict[str, list[dict[str, Any]]] = {"seed": [], "dcsched": []}
            for target in targets.values():  # warm-up: connections, caches, JITs
                wrk(target, script, 2)
            for round_ in range(args.rounds):
                order = ["seed", "dcsched"] if round_ % 2 == 0 else ["dcsched", "seed"]
                for name in order:
                    result = wrk(targets[name], script, args.duration)
                    results[name].append(result)
                    emit({"bench": "serve", "round": round_ + 1, "server": name, **result})
            replicas = json.loads(cli(env, "serve", "status", "bench", "-o", "json").stdout)
        finally:
            os.killpg(seed.pid, signal.SIGTERM)
            seed.wait(timeout=30)
            cli(env, "serve", "stop", "bench", check=False)
    summary: dict[str, Any] = {"bench": "serve", "summary": True, "load": "wrk -t2 -c8"}
    for name, rounds in results.items():
        summary[name] = {
            key: round(median([r[key] for r in rounds]), 3)
            for key in ("req_per_s", "p50_ms", "p99_ms")
        }
        summary[name]["errors"] = sum(r["errors"] for r in rounds)
        summary[name]["requests"] = sum(r["requests"] for r in rounds)
    summary["seed"]["deployment"] = "Flask, gunicorn -w 3 -k gevent"
    summary["dcsched"]["deployment"] = (
        f"dcsched serve, {len(replicas['members'])} replicas behind HAProxy"
    )
    seed_s, ours = summary["seed"], summary["dcsched"]
    summary["throughput_ratio"] = round(ours["req_per_s"] / seed_s["req_per_s"], 2)
    summary["p99_ratio"] = round(ours["p99_ms"] / seed_s["p99_ms"], 2)
    summary["floor_met"] = bool(
        ours["req_per_s"] >= seed_s["req_per_s"] and ours["p99_ms"] <= seed_s["p99_ms"]
    )
    summary["loadavg_1m_end"] = machine()["loadavg_1m"]
    summary["rounds"] = args.rounds
    summary["duration_s"] = args.duration
    emit(summary)


if __name__ == "__main__":
    main()
