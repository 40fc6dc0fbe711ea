"""The end of `make demo`: serve the demo's trained model and call /predict once.

`dcsched serve` starts a deployment of the latest `mlp-breast-cancer` (two replicas, each
a dcsched job, behind one HAProxy URL); once a replica is up, one row of the breast
cancer data goes to `POST /predict` and the answer and the URL are printed. A deployment
left by an earlier demo run is reused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

NAME = "demo-mlp"
MODEL = "mlp-breast-cancer"


def _dcsched(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ dcsched {' '.join(args)}", flush=True)
    return subprocess.run(
        [sys.executable, "-m", "dcsched.cli", *args], text=True, capture_output=True
    )


def serve_and_predict(timeout_s: float = 180) -> tuple[str, object]:
    """Deploy the demo's model (or reuse the deployment), call /predict once."""
    done = _dcsched(
        "serve", MODEL, "--name", NAME, "--team", "research", "--replicas", "2",
        "--cpus", "0.5", "--memory", "512MiB",
    )  # fmt: skip
    if done.returncode != 0 and "exists" not in done.stderr:
        sys.exit(f"demo step failed: dcsched serve ({done.stderr.strip()})")
    deadline = time.monotonic() + timeout_s
    while True:
        status = json.loads(_dcsched("serve", "status", NAME, "-o", "json").stdout)
        if status["ready"] >= 1:
            break
        if time.monotonic() > deadline:
            sys.exit(f"demo step failed: no replica of {NAME} became ready: {status}")
        time.sleep(1)
    from sklearn.datasets import load_breast_cancer

    row = [float(v) for v in load_breast_cancer().data[0]]
    request = urllib.request.Request(
        status["url"] + "/predict",
        data=json.dumps({"features": row}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    print(f"POST {status['url']}/predict -> {json.dumps(answer)}", flush=True)
    return str(status["url"]), answer
