"""Run one rank's command as a child process: its output to the rank's log file and to
our stdout, stopped as a whole process group, and killed if we die.

Standard library only (imported by the single-worker launcher before anything else).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_GRACE_S = 5.0
"""After SIGTERM, how long a rank's process group has before SIGKILL."""

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL if the process that started it dies (a killed Ray
    worker must not leave the user's command running)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def argv_of(command: Sequence[str] | str) -> list[str]:
    """A list runs as is; a string runs through /bin/sh -c."""
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment plus ``extra``, with this interpreter's folder first on PATH, so
    that ``python`` in a command is the Python dcsched runs on."""
    env = {**os.environ, **extra}
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class RankProcess:
    """One rank's command; ``wait`` returns its exit status (negative: killed by a signal)."""

    def __init__(
        self,
        command: Sequence[str] | str,
        env: Mapping[str, str],
        log_path: Path,
        cwd: str | None = None,
        echo: bool = True,
    ):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab", buffering=0)
        self._echo = echo
        self._stopping = threading.Event()
        self.process = subprocess.Popen(
            argv_of(command),
            env=child_environment(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._pump = threading.Thread(target=self._copy_output, daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._log.write(line)
            if self._echo:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()

    def wait(self) -> int:
        code = self.process.wait()
        self._pump.join(timeout=5)
        self._log.close()
        return code

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the rank's process group, SIGKILL it after ``grace_s``."""
        if self.process.poll() is not None or self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


def describe_exit(rank: int, code: int, log_path: Path, lines: int = 10) -> str:
    """ "rank R exited with code C" (or "was killed by SIGX") and its log's last lines."""
    from dcsched.rundir import tail_lines

    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"rank {rank} was killed by {name}"
    else:
        what = f"rank {rank} exited with code {code}"
    tail = [line for line in tail_lines(log_path, 8192)[-lines:] if line.strip()]
    if not tail:
        return what
    return what + "; its last lines:\n" + "\n".join(tail)
