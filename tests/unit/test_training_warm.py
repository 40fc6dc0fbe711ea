"""The warm runner (``dcsched.training.zygote``) and its entrypoint
(``python -m dcsched.training.warm RUN_DIR``), with real processes and a real socket:
the first run starts the runner, later runs are forked from it; the training's output is
the entrypoint's, its exit status too; SIGTERM to the entrypoint stops the training,
SIGKILL of the entrypoint gets it killed; the node exporter attributes the forked
process to its job; the runner idles out and removes its socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcsched.exporters.procs import _ProcFs, attribution

SPEC: dict[str, Any] = {
    "name": "warm",
    "kind": "train",
    "team": "research",
    "resources": {"cpus": 1, "memory": "512MiB"},
    "model": {"type": "mlp", "params": {"hidden": [16]}},
    "data": {"source": "sklearn:breast_cancer", "test_size": 0.2, "seed": 42},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
}
WARM = [sys.executable, "-m", "dcsched.training.warm"]


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """The entrypoint's environment, with a socket folder of its own (a short path: Unix
    socket names are limited to 107 bytes) and a runner that idles out after 3 s."""
    with tempfile.TemporaryDirectory(prefix="dcw-", dir="/tmp") as folder:
        environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")},
            "TMPDIR": folder,
            "DCSCHED_WARM_IDLE_S": "3",
            "DCSCHED_JOB_ID": "job-1",
            "DCSCHED_TEAM": "research",
            "PYTHONUNBUFFERED": "1",
        }
        yield environ
        sockets = lambda: list(Path(folder).glob("dcsched-warm-*/*.sock"))  # noqa: E731
        deadline = time.monotonic() + 60
        while sockets() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sockets(), "the warm runner did not idle out"


def run_dir(tmp_path: Path, name: str, **train: Any) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    spec = json.loads(json.dumps(SPEC))
    spec["train"].update(train)
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder


def warm(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WARM, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )


def job_processes(job: str) -> list[int]:
    """Pids the node exporter attributes to ``job``."""
    reader = _ProcFs()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            key = attribution(reader.environ(int(name)))
            if key is not None and key[0] == job:
                found.append(int(name))
    return found


def test_runs_are_forked_from_one_warm_runner(tmp_path: Path, env: dict[str, str]) -> None:
    first = warm(run_dir(tmp_path, "a"), env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "starting a warm runner" in first.stdout
    assert "epoch 3/3" in first.stdout  # the training's log is the entrypoint's output
    second = warm(run_dir(tmp_path, "b", lr=0.05), env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting a warm runner" not in second.stdout
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["epochs_run"] == 3 and (tmp_path / "b" / "model").is_dir()
    # Forked: the process began after the imports, so it reached main at once.
    assert result["timings"]["main"] - result["timings"]["process"] < 1.0

    bad = run_dir(tmp_path, "bad")
    spec = json.loads((bad / "spec.json").read_text())
    spec["model"]["type"] = "no-such-plugin"
    (bad / "spec.json").write_text(json.dumps(spec))
    failed = warm(bad, env)
    assert failed.returncode == 1
    assert "no-such-plugin" in (bad / "error.txt").read_text()


def test_sigterm_stops_the_training_and_sigkill_gets_it_killed(
    tmp_path: Path, env: dict[str, str]
) -> None:
    for signum, job in ((signal.SIGTERM, "job-term"), (signal.SIGKILL, "job-kill")):
        folder = run_dir(tmp_path, job, epochs=100000)
        entry = subprocess.Popen(
            [*WARM, str(folder)],
            env={**env, "DCSCHED_JOB_ID": job},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (folder / "progress.jsonl").exists():
            assert entry.poll() is None, entry.stdout.read() if entry.stdout else ""
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        # The exporter sees the forked training process as the job's (not the runner).
        trainers = [p for p in job_processes(job) if p != entry.pid]
        assert len(trainers) == 1
        entry.send_signal(signum)
        code = entry.wait(timeout=30)
        assert code == (128 + signal.SIGTERM if signum == signal.SIGTERM else -signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{trainers[0]}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job_processes(job) == []
        assert entry.stdout is not None
        entry.stdout.close()


def test_the_slot_carries_the_job_into_proc_environ() -> None:
    code = (
        "from pathlib import Path\n"
        "from dcsched.training.zygote import fill_slot, slot_address\n"
        "fill_slot(slot_address(), {'DCSCHED_JOB_ID': 'j-42', 'DCSCHED_TEAM': 'vision'})\n"
        "print(Path('/proc/self/environ').read_bytes().count(b'DCSCHED_JOB_ID=j-42'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCSCHED_")}
    env["DCSCHED_WARM_SLOT"] = "." * 512
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "1"
    # Read back as the exporter reads any process.
    child = subprocess.Popen(
        [sys.executable, "-c", code.replace("print(", "import time; time.sleep(5) or print(")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        key = None
        while key is None and time.monotonic() < deadline:
            key = attribution(_ProcFs().environ(child.pid))
            time.sleep(0.05)
        assert key == ("j-42", "vision")
    finally:
        child.kill()
        child.wait()


def test_a_warm_folder_that_others_can_write_is_refused(tmp_path: Path) -> None:
    from dcsched.training.warm import check_private

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_private(private)  # ours, 0700: accepted
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="not a private folder"):
        check_private(shared)
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(PermissionError, match="not a private folder"):
        check_private(link)


def test_the_starter_reports_a_runner_that_dies_before_it_listens(tmp_path: Path) -> None:
    from dcsched.training.zygote import await_ready

    path = tmp_path / "runner.sock"
    dying = os.fork()
    if dying == 0:
        os._exit(3)  # a runner whose imports failed
    began = time.monotonic()
    assert await_ready(dying, path, timeout_s=60) == 1
    assert time.monotonic() - began < 30  # told at once, not after the timeout

    listening = os.fork()
    if listening == 0:
        path.write_text("")  # stands for the published socket
        time.sleep(1)
        os._exit(0)
    assert await_ready(listening, path, timeout_s=60) == 0
    os.waitpid(listening, 0)


def test_the_training_gets_its_entrypoints_umask_not_the_runners(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """One runner serves every job of the machine: a runner started by a job with umask
    022 must not make the files of a private home (umask 077) world-readable."""

    def with_umask(mask: int) -> Any:
        return lambda: os.umask(mask)

    first = subprocess.run(
        [*WARM, str(run_dir(tmp_path, "open"))],
        env=env, capture_output=True, text=True, timeout=300, preexec_fn=with_umask(0o022),
    )  # fmt: skip
    assert first.returncode == 0 and "starting a warm runner" in first.stdout, first.stderr
    private = run_dir(tmp_path, "private")
    second = subprocess.run(
        [*WARM, str(private)],
        env=env, capture_output=True, text=True, timeout=300, preexec_fn=with_umask(0o077),
    )  # fmt: skip
    assert second.returncode == 0 and "starting a warm runner" not in second.stdout
    written = [p for p in (private / "model").rglob("*")] + [private / "result.json"]
    assert written
    assert all(p.stat().st_mode & 0o077 == 0 for p in written), [
        (str(p), oct(p.stat().st_mode)) for p in written
    ]
