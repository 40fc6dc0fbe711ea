"""Small helpers about local processes and ports, shared by the server daemon and the
local Ray head launcher. We only ever signal PIDs we started and recorded."""

from __future__ import annotations

import os
import socket


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie child of ours counts as dead (and is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: it exists, so it runs
        return True
    return waited != pid


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
