"""The warm runner: ``python -m dcsched.training.zygote SOCKET``, one per machine, that
has torch, scikit-learn, the built-in plugins and ``dcsched.training.runner`` imported,
and forks one training process per request of ``dcsched.training.warm`` (a train job's
Ray Job entrypoint). See that module for why and for what stays as it was.

Protocol, over a Unix socket (``SOCKET``, mode 0600 in a 0700 folder of this user): the
entrypoint sends one request (4-byte length, then JSON ``{"run_dir", "env", "cwd",
"umask"}``) with its stdin, stdout and stderr attached (SCM_RIGHTS); the runner forks and answers
``started PID``, then ``exit CODE`` when the process ends (CODE: -N for signal N). If
the entrypoint's connection closes first, the training process is killed (SIGKILL):
nothing outlives its Ray Job.

The forked process gets its own session, the entrypoint's descriptors as 0/1/2, its
environment and working directory, default signal handlers, and dies with the runner
(PR_SET_PDEATHSIG). The runner forks only from its single thread and never runs torch
itself, so no thread pool or lock is copied half-held.

Attribution: the node exporter (``dcsched.exporters.procs``) reads a process's job from
``/proc/PID/environ``, which shows the environment the process was *exec'd* with, not
``os.environ``. The runner is exec'd with ``DCSCHED_WARM_SLOT=<placeholder>``; a forked
process overwrites those bytes, in its own copy of that memory, with
``DCSCHED_JOB_ID=<job>\\0DCSCHED_TEAM=<team>`` (padded with NULs), so the exporter sees
it as the job's process. Linux only, like the fork server itself.

Lifetime: detached (double fork, its own session), so stopping the Ray Job that started
it does not stop it; it exits after ``DCSCHED_WARM_IDLE_S`` (default 120) seconds with
no training process and no request, and removes its socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from dcsched.training.warm import (
    HEADER,
    JOB_VARIABLES,
    SLOT_SIZE,
    SLOT_VARIABLE,
    START_TIMEOUT_S,
)

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def preload() -> None:
    """Import what a training process needs, so that a fork starts ready."""
    import dcsched.training.data
    import dcsched.training.runner  # noqa: F401
    from dcsched.plugins.registry import discover, load_record

    for record in discover():
        if record.distribution in ("dcsched", ""):  # the built-ins; others load on demand
            with contextlib.suppress(Exception):
                load_record(record)
    with contextlib.suppress(ImportError):
        import torch
        import torch._dynamo  # noqa: F401 -- every optimizer imports it on first use
    with contextlib.suppress(ImportError):
        import sklearn.datasets
        import sklearn.model_selection
        import sklearn.preprocessing  # noqa: F401


def slot_address() -> tuple[int, int] | None:
    """Where this process's exec'd environment holds the slot (address, length)."""
    libc = ctypes.CDLL(None)
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    prefix = f"{SLOT_VARIABLE}=".encode()
    index = 0
    while environ[index]:
        address = int(environ[index])
        text = ctypes.string_at(address)
        if text.startswith(prefix) and len(text) == len(prefix) + SLOT_SIZE:
            return address, len(text)
        index += 1
    return None


def fill_slot(slot: tuple[int, int] | None, env: dict[str, str]) -> None:
    """Write the job's variables into the slot (see the module docstring)."""
    if slot is None:
        return
    address, size = slot
    text = "\0".join(f"{name}={env[name]}" for name in JOB_VARIABLES if name in env).encode()
    if len(text) >= size:
        return  # too long to fit: the process stays unattributed rather than garbled
    ctypes.memmove(address, text + b"\0" * (size - len(text)), size)


def _child(request: dict[str, Any], fds: list[int], slot: tuple[int, int] | None) -> int:
    """In the forked process: become the job's training process and run it."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    env = {str(k): str(v) for k, v in request["env"].items()}
    os.environ.clear()
    os.environ.update(env)
    fill_slot(slot, env)
    with contextlib.suppress(OSError):
        os.chdir(request.get("cwd") or "/")
    # The entrypoint's umask, not the runner's: the runner may have been started by a job
    # of another server (one runner per machine), and a private home must stay private.
    os.umask(int(request.get("umask", 0o077)) & 0o777)
    logging.root.handlers.clear()  # the runner logs to its stdout, not the runner's log
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from dcsched.training import runner

    return runner.main([str(request["run_dir"])])


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(10.0)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    buffer = bytearray(data)
    try:
        while len(buffer) < HEADER.size:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the request ended early")
            buffer += chunk
        (size,) = HEADER.unpack_from(buffer)
        if size > MAX_REQUEST_BYTES:
            raise ConnectionError(f"a request of {size} bytes")
        while len(buffer) < HEADER.size + size:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the request ended early")
            buffer += chunk
        request = json.loads(bytes(buffer[HEADER.size : HEADER.size + size]))
        if len(fds) != 3 or not isinstance(request, dict) or "run_dir" not in request:
            raise ConnectionError("not a warm-run request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


class Runner:
    def __init__(self, path: Path, idle_s: float):
        self.path = path
        self.idle_s = idle_s
        self.slot = slot_address()
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, socket.socket | None] = {}
        self.connections: dict[socket.socket, int | None] = {}
        self._inode = 0
        self._pipe = (-1, -1)

    def serve(self) -> None:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)  # ignored: ends by idling out
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        listener.bind(str(staging))
        os.chmod(staging, 0o600)
        listener.listen(64)
        self._inode = os.stat(staging).st_ino
        self._pipe = (wake_read, wake_write)
        os.rename(staging, self.path)  # published only now that the imports are done
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        self.selector.register(wake_read, selectors.EVENT_READ, "wake")
        try:
            while True:
                idle = not self.children and not self.connections
                events = self.selector.select(self.idle_s if idle else None)
                if not events and idle:
                    return
                for key, _ in events:
                    if key.data == "listen":
                        conn, _ = listener.accept()
                        self.connections[conn] = None
                        self.selector.register(conn, selectors.EVENT_READ, "conn")
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while os.read(wake_read, 512):
                                pass
                        self._reap()
                    else:
                        self._readable(key.fileobj, listener)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):  # unless another runner has replaced it
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            listener.close()

    def _readable(self, conn: socket.socket, listener: socket.socket) -> None:
        pid = self.connections.get(conn)
        if pid is not None:  # a running child's entrypoint: closed (or chatter)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                logger.warning("entrypoint of pid %s went away; killing it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._drop(conn)
            return
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            logger.warning("refused a request: %s", exc)
            self._drop(conn)
            return
        pid = os.fork()
        if pid == 0:  # the training process
            code = 1
            try:
                self.selector.close()
                listener.close()
                for fd in self._pipe:
                    os.close(fd)
                for other in list(self.connections):
                    other.close()
                code = _child(request, fds, self.slot)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.connections[conn] = pid
        try:
            conn.sendall(f"started {pid}\n".encode())
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            conn = self.children.pop(pid)
            if conn is None:  # its entrypoint is gone
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {code}\n".encode())
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        pid = self.connections.pop(conn, None)
        if pid is not None and pid in self.children:
            self.children[pid] = None  # still to be reaped; nobody waits for its code
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()


def await_ready(runner: int, path: Path, timeout_s: float = START_TIMEOUT_S) -> int:
    """The starter's exit status: 0 once the runner (its child ``runner``) listens at
    ``path``, 1 if the runner died first or ``timeout_s`` passed: so a trial whose runner
    cannot start (a broken install, say) trains cold at once rather than waiting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ended, _ = os.waitpid(runner, os.WNOHANG)
        if ended == runner:
            return 1
        if path.exists():
            return 0
        time.sleep(0.05)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.training.zygote SOCKET", file=sys.stderr)
        return 2
    runner = os.fork()
    if runner != 0:  # the starter: it exits once the runner listens, or has died
        return await_ready(runner, Path(args[0]))
    os.setsid()
    os.chdir("/")  # hold no folder of the job (or Ray session) that started it
    path = Path(args[0]).resolve()
    logging.basicConfig(
        filename=path.with_suffix(".log"),
        level=logging.INFO,
        format="%(asctime)s %(process)d %(message)s",
    )
    try:
        preload()
    except BaseException:
        logger.exception("warm runner failed to import what training needs; exiting")
        raise
    names = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    # Forks copy only the calling thread: a native helper thread (jemalloc's) is fine.
    logger.info("warm runner ready at %s; threads: %s", path, ", ".join(sorted(names)))
    Runner(Path(args[0]), float(os.environ.get("DCSCHED_WARM_IDLE_S", "120"))).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
