"""A Ray Job's driver runs under ``dcsched.runs.tee``: its output reaches both Ray's job
log (the tee's stdout) and the run's driver log, which `dcsched logs` reads by byte
range; its exit status and stop signals pass through the tee unchanged."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcsched.adapters.ray_executor import driver_log_file, teed
from dcsched.processes import pid_alive
from dcsched.rundir import RunDir
from dcsched.runs.tee import exit_status

TALKER = """\
import sys
print("to stdout")
print("to stderr", file=sys.stderr)
sys.stdout.write("no newline at the end")
sys.exit(3)
"""

STOPPABLE = """\
import os, signal, sys, time
def on_term(signum, frame):
    print(f"got signal {signum} in group {os.getpgid(0)}", flush=True)
    sys.exit(7)
signal.signal(signal.SIGTERM, on_term)
print(f"ready {os.getpid()}")  # no flush: the tee makes the driver's output unbuffered
time.sleep(60)
"""


def tee(log: Path, *command: str) -> list[str]:
    return [sys.executable, *teed(log), *command]


def test_both_sinks_get_every_byte_and_the_exit_status_passes_through(tmp_path: Path) -> None:
    log = driver_log_file(RunDir(tmp_path / "job"), "job")
    log.write_bytes(b"an earlier line\n")
    done = subprocess.run(
        tee(log, sys.executable, "-c", TALKER), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 3
    assert done.stderr == b""  # the driver's stderr is merged into its stdout, as Ray does
    lines = done.stdout.splitlines()
    assert sorted(lines) == [b"no newline at the end", b"to stderr", b"to stdout"]
    assert log.read_bytes() == b"an earlier line\n" + done.stdout  # appended, the same bytes
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_stop_signal_to_the_tee_reaches_the_driver_and_its_status_comes_back(
    tmp_path: Path,
) -> None:
    log = tmp_path / "driver.log"
    process = subprocess.Popen(
        tee(log, sys.executable, "-c", STOPPABLE), stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # streamed while the driver runs
        assert ready.startswith(b"ready ")
        driver = int(ready.split()[1])
        # The driver has a process group of its own: only the tee's forwarding reaches it.
        assert os.getpgid(driver) != os.getpgid(process.pid)
        process.send_signal(signal.SIGTERM)
        rest = process.stdout.read()
        assert process.wait(timeout=30) == 7
    finally:
        if process.poll() is None:
            process.kill()
    assert rest == f"got signal {int(signal.SIGTERM)} in group {driver}\n".encode()
    assert log.read_bytes() == ready + rest


def test_a_driver_killed_by_a_signal_exits_as_a_shell_reports_it(tmp_path: Path) -> None:
    log = tmp_path / "driver.log"
    process = subprocess.Popen(
        tee(log, sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"),
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"up\n"
    started = time.monotonic()
    process.send_signal(signal.SIGHUP)  # the driver's default action: it dies of it
    assert process.wait(timeout=30) == 128 + signal.SIGHUP
    assert time.monotonic() - started < 10
    assert log.read_bytes() == b"up\n"


def test_the_driver_is_stopped_when_the_process_that_started_the_tee_is_gone(
    tmp_path: Path,
) -> None:
    """A lost node takes the Ray worker that started the tee; the driver must not outlive it
    (a serving replica would keep answering from a node dcsched counts as gone)."""
    log = tmp_path / "driver.log"
    pids = tmp_path / "pids"
    starter = (  # the Ray worker's part: start the tee, say its pid, then wait
        "import subprocess, sys, time\n"
        f"tee = subprocess.Popen({tee(log, sys.executable, '-c', STOPPABLE)!r})\n"
        f"open({str(pids)!r}, 'w').write(str(tee.pid))\n"
        "time.sleep(120)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", starter], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and b"ready" in log.read_bytes()):
            assert time.monotonic() < deadline, "the driver did not start"
            time.sleep(0.1)
        tee_pid = int(pids.read_text())
        driver = int(log.read_bytes().split()[1])
        worker.kill()  # the worker dies without a word to its children
        worker.wait(timeout=10)
        deadline = time.monotonic() + 20
        while pid_alive(driver) or pid_alive(tee_pid):
            assert time.monotonic() < deadline, "the driver outlived the tee's parent"
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.kill()
    # Stopped as a cancel stops it: SIGTERM to its group, which it handled.
    assert f"got signal {int(signal.SIGTERM)}".encode() in log.read_bytes()


@pytest.mark.parametrize(("code", "status"), [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_exit_status(code: int, status: int) -> None:
    assert exit_status(code) == status


def test_the_driver_log_is_created_private_and_kept_when_it_exists(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = driver_log_file(RunDir(tmp_path / "job"), "job-run2")
    finally:
        os.umask(old)
    assert path == tmp_path / "job" / "logs" / "driver-job-run2.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    path.write_bytes(b"first run\n")
    assert driver_log_file(RunDir(tmp_path / "job"), "job-run2").read_bytes() == b"first run\n"
