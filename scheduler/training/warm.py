"""``python -m dcsched.training.warm RUN_DIR``: a train job's Ray Job entrypoint that has
its training process forked by a warm runner (``dcsched.training.zygote``) instead of
starting a fresh interpreter that imports torch and the plugin again.

Why: a tune job's trials are short train jobs, each its own Ray Job. A fresh process
spends seconds (tens on a loaded machine) importing torch, scikit-learn and the plugin
before its first epoch; a process forked from a warm one starts training at once.

What stays as it was: the run is still the Ray Job ``<run id>`` in the job's placement
group, started by dcsched's admission like any job; this entrypoint is its driver and
lives as long as the training. The forked process writes to this entrypoint's stdout and
stderr (handed over as file descriptors), so its log is the Ray Job's log; it gets this
entrypoint's environment and working directory. Stopping the Ray Job (cancel, pruning,
preemption, max_runtime) sends this entrypoint SIGTERM, which it passes on; if this
entrypoint dies (SIGKILL), the runner kills the training at once. The exit status is the
training's. The node exporter still sees the training as the job's process (see
``dcsched.training.zygote``, "attribution").

The warm runner is one per machine, interpreter and installed dcsched version (its
socket's name says which); the first trial that finds none starts it, detached, and
waits for it. Anything wrong before the training starts (no runner, a refused socket)
falls back to the cold path: this process becomes ``dcsched.training.runner``.

Standard library only (and ``dcsched.rundir``): this process starts as fast as Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

SLOT_VARIABLE = "DCSCHED_WARM_SLOT"
"""Set (to a long placeholder) in the warm runner's environment: the room into which a
forked training process writes its job and team (see dcsched.training.zygote)."""
SLOT_SIZE = 512
JOB_VARIABLES = ("DCSCHED_JOB_ID", "DCSCHED_TEAM")
START_TIMEOUT_S = 300.0
"""How long a trial waits for a warm runner that is importing torch (it is started by
the first trial of a machine; loaded machines take tens of seconds)."""
HEADER = struct.Struct("!I")


def source_stamp() -> str:
    """What identifies the installed dcsched: the newest modification time of its Python
    files (an edited checkout gets a new warm runner; the old one idles out)."""
    import dcsched

    roots = [Path(p) for p in dcsched.__path__]
    with contextlib.suppress(ImportError):
        import importlib.util

        spec = importlib.util.find_spec("dcsched.plugins")
        if spec is not None:
            roots += [Path(p) for p in spec.submodule_search_locations or []]
    newest = 0
    stack = list(dict.fromkeys(roots))
    while stack:
        folder = stack.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    stack.append(Path(entry.path))
                elif entry.name.endswith(".py"):
                    newest = max(newest, entry.stat().st_mtime_ns)
    return str(newest)


def socket_path(python: str = sys.executable) -> Path:
    """The warm runner's socket for this user, interpreter and dcsched version."""
    key = hashlib.sha256(f"{python}\0{source_stamp()}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"dcsched-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    check_private(folder)
    return folder / f"{key}.sock"


def check_private(folder: Path) -> None:
    """Refuse (OSError, so the caller trains cold) a folder that another user could have
    made or can write: in a shared temp dir anyone may create ``dcsched-warm-<uid>``
    first, and a runner listening there would be handed our run dirs and environment."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{folder} is not a private folder of this user (owner uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):o}); not using a warm runner"
        )


def connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def runner_environment() -> dict[str, str]:
    """The warm runner's environment: this one without the job's own variables, plus the
    placeholder slot that a forked training process fills in."""
    env = {k: v for k, v in os.environ.items() if k not in JOB_VARIABLES}
    env[SLOT_VARIABLE] = "." * SLOT_SIZE
    return env


def connect_or_start(path: Path, timeout_s: float = START_TIMEOUT_S) -> socket.socket | None:
    """A connection to the warm runner, started (detached) if none answers; None if it
    cannot be had within ``timeout_s``."""
    sock = connect(path)
    if sock is not None:
        return sock
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others wait here
        sock = connect(path)
        if sock is not None:
            return sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a runner that died left its socket behind
        print(f"starting a warm runner ({path.name})", flush=True)
        starter = subprocess.Popen(
            [sys.executable, "-m", "dcsched.training.zygote", str(path)],
            env=runner_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        # The starter forks the runner (no child of ours) and exits once it listens.
        if starter.wait() != 0:
            print(f"the warm runner did not start (see {path.with_suffix('.log')})", flush=True)
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sock = connect(path)
            if sock is not None:
                return sock
            time.sleep(0.1)
    return None


def _read_line(sock: socket.socket, buffer: bytearray) -> str | None:
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def request_training(
    sock: socket.socket, run_dir: str, env: dict[str, str], cwd: str, umask: int, fds: list[int]
) -> tuple[int, bytearray] | None:
    """Have the runner fork the training of ``run_dir`` with this environment, working
    directory, umask and standard streams (``fds``: stdin, stdout, stderr); the training
    process's pid and what was read past its line, or None if the runner refused."""
    request = json.dumps({"run_dir": run_dir, "env": env, "cwd": cwd, "umask": umask})
    body = request.encode()
    socket.send_fds(sock, [HEADER.pack(len(body)) + body], fds)
    buffer = bytearray()
    line = _read_line(sock, buffer)
    if line is None or not line.startswith("started "):
        return None
    return int(line.split()[1]), buffer


def exit_status(sock: socket.socket, buffer: bytearray) -> int | None:
    """Wait for the runner to report the training's end: its exit status as a shell says
    it (128 + N when killed by signal N), or None if the runner was lost first."""
    try:
        line = _read_line(sock, buffer)
    except OSError:
        line = None
    if line is None or not line.startswith("exit "):
        return None
    code = int(line.split()[1])
    return 128 - code if code < 0 else code


LOST = "the warm runner was lost while training ran"


def run_warm(sock: socket.socket, run_dir: str) -> int | None:
    """Have the runner fork the training; its exit status, or None if it never started."""
    umask = os.umask(0o077)
    os.umask(umask)
    started = request_training(sock, run_dir, dict(os.environ), os.getcwd(), umask, [0, 1, 2])
    if started is None:
        return None
    pid, buffer = started

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = exit_status(sock, buffer)
    if code is None:
        from dcsched.rundir import RunDir

        print(f"training failed: {LOST}", file=sys.stderr)
        with contextlib.suppress(OSError):
            RunDir(Path(run_dir)).write_error(LOST)
        return 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.training.warm RUN_DIR", file=sys.stderr)
        return 2
    code = None
    try:
        sock = connect_or_start(socket_path())
        if sock is not None:
            with sock:
                code = run_warm(sock, args[0])
    except OSError as exc:
        print(f"warm runner unavailable ({exc}); starting cold", flush=True)
    if code is not None:
        return code
    print("no warm runner; training in a fresh process", flush=True)
    python = sys.executable
    os.execv(python, [python, "-m", "dcsched.training.runner", args[0]])


if __name__ == "__main__":
    sys.exit(main())
