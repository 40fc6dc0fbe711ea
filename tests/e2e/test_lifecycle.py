"""Cancel in every live state frees the resources; a run that fails is FAILED with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, SESSION_CPUS, Server, await_condition

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

BASE = (EXAMPLES / "train-mlp.yaml").read_text()


def long_spec(tmp_path: Path, name: str, cpus: int) -> Path:
    text = (
        BASE.replace("name: mlp-breast-cancer", f"name: {name}")
        .replace("cpus: 1", f"cpus: {cpus}")
        .replace("epochs: 30", "epochs: 100000")
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def free_cpus(server: Server) -> float:
    return sum(n["available"]["cpus"] for n in server.cli_json("nodes"))


def test_cancel_running_and_pending_jobs_frees_resources(server: Server, tmp_path: Path) -> None:
    hog = server.cli("submit", str(long_spec(tmp_path, "hog", SESSION_CPUS))).stdout.strip()
    waiter = server.cli("submit", str(long_spec(tmp_path, "waiter", 1))).stdout.strip()
    try:
        # Running, and training: its progress (epoch 1 or later) reaches the server.
        server.wait_for_job(
            hog, lambda j: j["state"] == "RUNNING" and (j["progress"] or {}).get("epoch", 0) >= 1
        )
        pending = server.wait_for_job(
            waiter, lambda j: j["state"] == "PENDING" and "not enough CPUs" in (j["reason"] or "")
        )
        assert pending["position"] == 1
        assert "needs 1 CPUs, 0 GPUs, 1GiB on one node" in pending["reason"]
        listed = server.cli("list")
        assert "#1 in queue: needs 1 CPUs" in listed.stdout

        done = server.cli("cancel", waiter)
        assert done.returncode == 0 and "CANCELLED" in done.stdout
        done = server.cli("cancel", hog)
        assert done.returncode == 0 and "CANCELLED" in done.stdout
        job = server.cli_json("status", hog)
        assert job["state"] == "CANCELLED" and job["reason"] == "cancelled by user"
        again = server.cli("cancel", hog)
        assert again.returncode == 1 and "already ended as CANCELLED" in again.stderr

    finally:  # never leave the shared cluster busy, whatever failed above
        server.cancel_live_jobs()

    await_condition(
        f"all {SESSION_CPUS} CPUs free again",
        lambda: free_cpus(server) == SESSION_CPUS,
        timeout=30,
        interval=0.5,
    )


def test_run_that_fails_is_failed_with_its_reason(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    # The header passes the check at submit; the rows fail when the job reads them.
    rows = "".join(f"{i},{'red' if i % 2 else 'blue'},{i % 2}\n" for i in range(20))
    data.write_text("size,colour,target\n" + rows)
    spec = tmp_path / "csv.yaml"
    spec.write_text((EXAMPLES / "train-csv.yaml").read_text())
    job_id = server.cli("submit", str(spec)).stdout.strip()
    data.write_text("broken\n")  # the upload was taken at submit: later edits change nothing
    done = server.cli("wait", job_id, "--timeout", "120")
    assert done.returncode == 1
    job = server.cli_json("status", job_id)
    assert job["state"] == "FAILED"
    assert "not numeric: colour" in job["reason"]
