"""Small helpers about local processes and ports, shared by the server daemon, the
local Ray head launcher, the serving load balancer, the tests and the benchmarks. We only
ever signal PIDs we started and recorded."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as dead (a child of ours is reaped; another's
    waits for its parent, which in a container's init may never come)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: it runs unless it is a zombie
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return not Path("/proc/self").exists()  # gone now, or no /proc to tell
        return "zombie" not in status.lower()
    return waited != pid


def process_matches(pid: int, *words: str) -> bool:
    """Whether ``pid`` runs and its command line holds every one of ``words``: a pid read
    from a stale file may belong to another program by now, which we must never signal."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            import psutil

            argv = psutil.Process(pid).cmdline()
        except Exception:  # gone, or not ours to read
            return False
    else:
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    line = " ".join(argv)
    return bool(argv) and all(word in line for word in words)


class HomeLocked(RuntimeError):
    """Another process holds the home's server lock."""


_held_locks: list[int] = []


def lock_home(lock_file: Path, record: str) -> None:
    """Hold an exclusive lock on ``lock_file`` for the rest of this process (released by
    the kernel when it exits, however it exits) and write ``record`` into it; HomeLocked
    with the holder's record if another process has it."""
    import fcntl

    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip()
        os.close(fd)
        raise HomeLocked(holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, record.encode())
    _held_locks.append(fd)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def spawn_detached(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (a Ctrl-C or a hang-up of the caller's terminal
    does not reach it), stdin closed, stdout and stderr appended to ``log_path``. The
    caller keeps the ``Popen`` (its pid) to stop it: nothing here signals anything."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
