"""The trial host (``dcsched.training.host``), as a plain object with real processes: it
has the warm runner fork a trial's training (or starts a fresh interpreter when there is
no runner), writes the output to the run's own log with the server's umask, reports the
phases the service reads (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), and stops a
run with SIGTERM. The executor's choice of which jobs it runs is checked too (a Ray actor
of it runs in every live tune test)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.adapters.ray_executor import on_trial_host
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SchedulingRequest
from dcsched.kinds.tune import is_trial_run
from dcsched.rundir import RunDir
from dcsched.training import host as host_module
from dcsched.training.host import TrialHost
from tests.unit.test_training_warm import run_dir  # the same train spec as the warm runner's

JOB_ENV = {"DCSCHED_JOB_ID": "t-1-trial-0", "DCSCHED_TEAM": "research"}


@pytest.fixture
def warm_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A socket folder of this test's own (short: Unix socket names are limited), and a
    warm runner that idles out after 3 s."""
    with tempfile.TemporaryDirectory(prefix="dch-", dir="/tmp") as folder:
        monkeypatch.setenv("TMPDIR", folder)
        monkeypatch.setenv("DCSCHED_WARM_IDLE_S", "3")
        monkeypatch.setattr(tempfile, "tempdir", None)
        yield Path(folder)
        deadline = time.monotonic() + 60
        while list(Path(folder).glob("dcsched-warm-*/*.sock")) and time.monotonic() < deadline:
            time.sleep(0.2)


def wait_for(host: TrialHost, run_id: str, phases: set[str], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        answer = host.status(run_id)
        assert answer is not None
        if answer[0] in phases:
            return answer[0]
        seen.append(answer[0])
        time.sleep(0.05)
    raise AssertionError(f"{run_id} never reached {phases}; saw {sorted(set(seen))}")


def test_a_trial_is_forked_runs_to_success_and_logs_privately(
    tmp_path: Path, warm_folder: Path
) -> None:
    host = TrialHost(idle_s=3600)
    folder = run_dir(tmp_path, "ok")
    assert host.status("t-1-trial-0") is None  # unknown until started
    host.start("t-1-trial-0", str(folder), JOB_ENV, 0o077)
    host.start("t-1-trial-0", str(folder), JOB_ENV, 0o077)  # again: the same run
    assert wait_for(host, "t-1-trial-0", {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    assert (folder / "result.json").is_file()
    log = RunDir(folder).driver_log("t-1-trial-0")
    assert log.read_text().count("done in") == 1  # the second start started nothing
    assert stat.S_IMODE(log.stat().st_mode) == 0o600  # the server's umask, not the host's
    assert list(warm_folder.glob("dcsched-warm-*/*.sock")), "it was not forked warm"


def test_stop_ends_a_running_trial_as_stopped(tmp_path: Path, warm_folder: Path) -> None:
    host = TrialHost(idle_s=3600)
    folder = run_dir(tmp_path, "long", epochs=100000)
    host.start("t-1-trial-1", str(folder), JOB_ENV, 0o077)
    wait_for(host, "t-1-trial-1", {"RUNNING"})
    progress = RunDir(folder).progress
    deadline = time.monotonic() + 240
    while not (progress.is_file() and progress.read_text()):  # it is training
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    host.stop("t-1-trial-1", wait_s=10)
    assert time.monotonic() - started < 10, "SIGTERM did not end it"
    assert host.status("t-1-trial-1") == ("STOPPED", "stopped by dcsched")
    host.stop("t-1-trial-1")  # stopping an ended run does nothing


def test_a_failing_trial_fails_and_without_a_runner_starts_cold(
    tmp_path: Path, warm_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_module.warm, "connect_or_start", lambda path: None)
    host = TrialHost(idle_s=3600)
    folder = run_dir(tmp_path, "bad")
    spec = json.loads((folder / "spec.json").read_text())
    spec["data"]["source"] = "sklearn:no_such_dataset"
    (folder / "spec.json").write_text(json.dumps(spec))
    host.start("t-1-trial-2", str(folder), JOB_ENV, 0o077)
    assert wait_for(host, "t-1-trial-2", {"SUCCEEDED", "FAILED"}) == "FAILED"
    _, message = host.status("t-1-trial-2") or ("", "")
    assert message.startswith("the training exited with status "), message
    assert not list(warm_folder.glob("dcsched-warm-*/*.sock"))  # no runner was asked
    assert os.path.getsize(RunDir(folder).driver_log("t-1-trial-2")) > 0


def _job(job_id: str, kind: str = "train", workers: int = 1, gpus: int = 0) -> Job:
    request = SchedulingRequest.model_validate(
        {
            "name": "j",
            "team": "t",
            "resources": {"workers": workers, "cpus": 1, "gpus": gpus, "memory": "1GiB"},
        }
    )
    nodes = tuple(f"n{i}" for i in range(workers))
    return Job(job_id, request, JobState.ADMITTED, 0.0, nodes=nodes, kind=kind, attempt=1)


def test_only_single_worker_cpu_trials_run_on_the_trial_host() -> None:
    assert on_trial_host(_job("study-ab12-trial-3"))
    assert not on_trial_host(_job("study-ab12-trial-3", gpus=1))  # GPUs: in the group
    assert not on_trial_host(_job("study-ab12-trial-3", workers=2))  # a gang
    assert not on_trial_host(_job("study-ab12-trial-3", kind="run"))
    assert not on_trial_host(_job("train-ab12"))  # not a trial: its own Ray Job
    assert is_trial_run("study-ab12-trial-3") and is_trial_run("study-ab12-trial-3-run2")
    assert not is_trial_run("train-ab12-run2")
