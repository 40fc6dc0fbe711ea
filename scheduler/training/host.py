"""The trial host: one Ray actor per node that starts a tune job's trials without a Ray Job
of their own.

Why: a trial is a short ``train`` run (seconds). As its own Ray Job it waits 1.7 s (a quiet
machine) to 3.3 s (a loaded one) for Ray's job supervisor, a fresh worker process, before
its entrypoint even starts: most of a short trial, and the reason a study took 0.72x Ray
Tune's time (``bench/tune.py``). Ray Tune runs its trials in long-lived actors; dcsched does
the same for trials only, and keeps everything else a trial is:
- it is still a dcsched job, admitted like any other (quota, priority, placement,
  preemption), holding its own placement group ``dcsched-<run id>`` while it runs;
- its training process is forked by the node's warm runner (``dcsched.training.warm``)
  exactly as a trial's Ray Job entrypoint has it forked, with the job's variables
  (``DCSCHED_JOB_ID``, ``DCSCHED_TEAM``: the node exporter attributes the process), the
  server's umask, and the run directory as its working directory;
- its output goes to ``logs/driver-<run id>.log`` in its run directory, which ``dcsched
  logs`` shows; stopping it (cancel, pruning, preemption, max_runtime) sends it SIGTERM
  (SIGKILL after a grace period), and its checkpoint lets a preempted trial resume;
- the host is a detached actor named ``dcsched-trial-host-<node id>`` in the ``dcsched``
  namespace, so a restarted server finds it and its runs; if the host dies, the warm
  runner kills its trainings (their socket closes) and the server requeues the trials
  (Ray no longer knows the run).

What a trial gives up: it is not a Ray Job, so the Ray dashboard lists the host actor
(one per node) instead of one job per trial. A host with no run for ``idle_s`` exits.

``TrialHost`` is a plain class; the executor makes it an actor (``ray.remote``) so this
module imports no Ray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcsched.rundir import RunDir
from dcsched.training import warm

HOST_NAME_PREFIX = "dcsched-trial-host-"
STOP_GRACE_S = 10.0
"""How long a stopped trial has after SIGTERM before it is killed."""
KEEP_ENDED_S = 3600.0
"""How long the host remembers how a run ended (the server reads it at its next pass; a
server down for longer finds the run unknown and requeues the trial, which resumes from
its checkpoint)."""


def host_name(node_id: str) -> str:
    return f"{HOST_NAME_PREFIX}{node_id}"


@dataclass
class _Run:
    run_dir: str
    pid: int | None
    """None until the training process is forked."""
    code: int | None = None
    stopped: bool = False
    message: str = ""
    ended_at: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)


class TrialHost:
    """Starts, watches and stops the trial runs of one node (see the module docstring)."""

    def __init__(self, idle_s: float = 600.0):
        self.idle_s = idle_s
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._last_busy = time.monotonic()
        threading.Thread(target=self._exit_when_idle, name="idle", daemon=True).start()

    # -- calls -----------------------------------------------------------------------------

    def start(self, run_id: str, run_dir: str, env: dict[str, str], umask: int) -> None:
        """Start the training of ``run_dir`` as run ``run_id`` (nothing if the host knows
        it already). Returns at once: the training is forked in the background (the
        first one of a node may wait for the warm runner to import torch)."""
        with self._lock:
            if run_id in self._runs and self._runs[run_id].code is None:
                return
            run = self._runs[run_id] = _Run(run_dir, None)
            self._last_busy = time.monotonic()
        environment = {**os.environ, **env}
        threading.Thread(
            target=self._launch, args=(run_id, run, environment, umask), daemon=True
        ).start()

    def status(self, run_id: str) -> tuple[str, str] | None:
        """``(phase, message)`` of a run this host started (phases as Ray's job status:
        RUNNING, SUCCEEDED, FAILED, STOPPED), or None if it knows no such run."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return None
        if run.code is None:
            return ("PENDING", "") if run.pid is None else ("RUNNING", "")
        if run.stopped:
            return "STOPPED", "stopped by dcsched"
        if run.code == 0:
            return "SUCCEEDED", ""
        return "FAILED", run.message or f"the training exited with status {run.code}"

    def stop(self, run_id: str, wait_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the run's training; SIGKILL if it has not ended after ``wait_s``."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.code is not None:
                return
            run.stopped = True  # a run still being forked is killed once it is
            pid = run.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not run.ended.wait(wait_s) and run.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            run.ended.wait(wait_s)

    # -- inside ----------------------------------------------------------------------------

    def _launch(self, run_id: str, run: _Run, env: dict[str, str], umask: int) -> None:
        try:
            log_path = RunDir(Path(run.run_dir)).driver_log(run_id)
            old_umask = os.umask(umask & 0o777)
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(log_path, "ab", buffering=0)  # noqa: SIM115 (closed below)
            finally:
                os.umask(old_umask)
            with log, open(os.devnull, "rb") as stdin:
                self._fork(run, env, umask, [stdin.fileno(), log.fileno(), log.fileno()])
        except Exception as exc:
            run.message = f"the trial host could not start the training: {exc}"
            self._ended(run, 1)
            return
        with self._lock:
            stopped = run.stopped
        if stopped and run.pid is not None:  # stopped while it was being forked
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGTERM)

    def _fork(self, run: _Run, env: dict[str, str], umask: int, fds: list[int]) -> None:
        sock = None
        with contextlib.suppress(OSError):
            sock = warm.connect_or_start(warm.socket_path())
        if sock is not None:
            try:
                started = warm.request_training(sock, run.run_dir, env, run.run_dir, umask, fds)
            except OSError:
                started = None
            if started is not None:
                run.pid, buffer = started
                threading.Thread(
                    target=self._watch_warm, args=(run, sock, buffer), daemon=True
                ).start()
                return
            sock.close()
        # No warm runner: a fresh interpreter, as the cold Ray Job entrypoint would.
        process = subprocess.Popen(
            [sys.executable, "-m", "dcsched.training.runner", run.run_dir],
            env=env,
            cwd=run.run_dir,
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            umask=umask & 0o777,
            start_new_session=True,
            close_fds=True,
        )
        run.pid = process.pid
        threading.Thread(target=self._watch_process, args=(run, process), daemon=True).start()

    def _watch_warm(self, run: _Run, sock: socket.socket, buffer: bytearray) -> None:
        with sock:
            code = warm.exit_status(sock, buffer)
        if code is None:
            run.message = f"training failed: {warm.LOST}"
            with contextlib.suppress(OSError):
                RunDir(Path(run.run_dir)).write_error(warm.LOST)
            code = 1
        self._ended(run, code)

    def _watch_process(self, run: _Run, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        self._ended(run, 128 - code if code < 0 else code)

    def _ended(self, run: _Run, code: int) -> None:
        with self._lock:
            run.code = code
            run.ended_at = self._last_busy = time.monotonic()
        run.ended.set()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(min(30.0, self.idle_s))
            with self._lock:
                forgotten = time.monotonic() - KEEP_ENDED_S
                for run_id, run in list(self._runs.items()):
                    if run.ended_at is not None and run.ended_at < forgotten:
                        del self._runs[run_id]
                busy = any(run.code is None for run in self._runs.values())
                idle_for = time.monotonic() - self._last_busy
            if not busy and idle_for > self.idle_s:
                os._exit(0)
