"""Helpers shared by the benchmarks: machine description, a throwaway dcsched home with a
running server, and percentile arithmetic. Each benchmark prints JSON lines."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@contextmanager
def dcsched_server(port: int = 18799) -> Iterator[dict[str, str]]:
    """A fresh DCSCHED_HOME with `dcsched up` (embedded local Ray); `down` at the end."""
    with tempfile.TemporaryDirectory(prefix="dcsched-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DCSCHED_", "RAY_"))}
        env.update({"DCSCHED_HOME": home, "DCSCHED_PORT": str(port)})
        cli(env, "up")
        try:
            yield env
        finally:
            cli(env, "down", check=False)
