"""The local Ray head that dcsched starts when no ``--ray-address`` is given.

It runs as its own process group (``ray start --head --block``), not as a child that
dies with the server: running jobs outlive a crash of the dcsched server, and a
restarted server finds the head again through ``$DCSCHED_HOME/ray/head.json``.
Stopping it sends SIGTERM to that process, which drains and ends every Ray process
it started; nothing is ever killed by name and ``ray stop`` is never used.

Token authentication is on, with a token of our own (``ray/auth_token``, mode 0600,
created atomically; an empty or short one is refused) so that ~/.ray is left alone. The
head binds loopback (``--node-ip-address 127.0.0.1``, dashboard on 127.0.0.1). Ports are
explicit and recorded in head.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from dcsched.paths import Paths
from dcsched.processes import free_port, pid_alive, process_matches, spawn_detached
from dcsched.secretfile import SecretFileError, create_secret, read_secret

logger = logging.getLogger(__name__)

PREFERRED_DASHBOARD_PORT = 8265


@dataclass(frozen=True)
class RayHead:
    pid: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    token_path: str
    num_cpus: float
    num_gpus: float


def ray_env(token_path: Path | str) -> dict[str, str]:
    """Environment that makes Ray clients use our head's token and reach it on loopback.

    Ray turns a loopback address (``--node-ip-address``, or the GCS address a client is
    given) into this host's outward address unless it believes it runs as a single
    machine (its macOS/Windows mode); in that mode every part of the head that binds the
    node's address binds 127.0.0.1, and clients look for it there."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


TOKEN_LENGTH = 64
"""Characters of the Ray token we create (``secrets.token_hex(32)``)."""


def check_token(token: Path) -> None:
    """Refuse a Ray token file that is empty or shorter than a full token (RuntimeError)."""
    fix = (
        "stop the Ray head (`dcsched down`), delete the file and run `dcsched up` again "
        "to create a new one"
    )
    try:
        read_secret(token, TOKEN_LENGTH, fix)
    except SecretFileError as exc:
        raise RuntimeError(f"the Ray token: {exc}") from None


def ensure_token(paths: Paths) -> Path:
    """Create the Ray token (atomically, mode 0600) if missing, and check it."""
    token = paths.ray / "auth_token"
    paths.ray.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_secret(token, secrets.token_hex(32))
    check_token(token)
    return token


def _dashboard_up(url: str) -> bool:
    """True once the dashboard answers at all (401 included: token auth is on)."""
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except Exception:  # refused, reset, timed out: not up yet
        return False


def find_running(paths: Paths) -> RayHead | None:
    """The head recorded in head.json, if its process is still alive."""
    record = paths.ray / "head.json"
    if not record.exists():
        return None
    head = RayHead(**json.loads(record.read_text()))
    # A stale head.json may name a pid that another program has by now: ours was started
    # with this home's temp dir on its command line.
    ours = pid_alive(head.pid) and process_matches(head.pid, f"--temp-dir={head.temp_dir}")
    return head if ours else None


def start(
    paths: Paths,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    timeout_s: float = 90.0,
    gcs_port: int | None = None,
    dashboard_port: int | None = None,
) -> RayHead:
    """Start (or find) the local Ray head for this DCSCHED_HOME and wait for its dashboard.
    ``gcs_port``/``dashboard_port``: where a head that replaces a lost one must listen
    (a server that knew the old one reconnects there); free ports by default."""
    running = find_running(paths)
    if running is not None:
        return running
    token = ensure_token(paths)
    # Ray's socket paths must stay short: keep its temp dir under /tmp, keyed by home.
    key = hashlib.sha256(str(paths.home.resolve()).encode()).hexdigest()[:10]
    temp_dir = Path(tempfile.gettempdir()) / f"dcsched-ray-{key}"
    gcs_port = gcs_port or free_port()
    dashboard_port = dashboard_port or free_port(PREFERRED_DASHBOARD_PORT)
    cpus = num_cpus if num_cpus is not None else float(os.cpu_count() or 1)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--port={gcs_port}",
        # Loopback only: the head, its dashboard and agents are reachable from this
        # machine alone (a multi-node cluster is joined with --ray-address instead).
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--num-cpus={cpus:g}",
        f"--temp-dir={temp_dir}",
        # Every listening port explicit, so that two heads on one machine (a test
        # suite's and a user's) never collide on Ray's fixed defaults.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus:g}")
    paths.ray.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ray_env(token)}  # loopback: see ray_env
    process = spawn_detached(cmd, paths.ray / "head.log", env)
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    head = RayHead(
        pid=process.pid,
        gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=dashboard_url,
        temp_dir=str(temp_dir),
        token_path=str(token),
        num_cpus=cpus,
        num_gpus=num_gpus or 0.0,
    )
    deadline = time.monotonic() + timeout_s
    while not _dashboard_up(dashboard_url):
        if process.poll() is not None:
            raise RuntimeError(
                f"Ray head exited with code {process.returncode}; see {paths.ray / 'head.log'}"
            )
        if time.monotonic() > deadline:
            stop_pid(process.pid)
            raise RuntimeError(f"Ray head did not start in {timeout_s:g}s; see head.log")
        time.sleep(0.5)
    (paths.ray / "head.json").write_text(json.dumps(asdict(head), indent=2))
    logger.info("started Ray head pid %s, dashboard %s", process.pid, dashboard_url)
    return head


def stop(paths: Paths, timeout_s: float = 60.0) -> bool:
    """Stop the head recorded for this home, if any. True if one was stopped."""
    head = find_running(paths)
    record = paths.ray / "head.json"
    if head is None:
        record.unlink(missing_ok=True)
        return False
    stop_pid(head.pid, timeout_s)
    record.unlink(missing_ok=True)
    return True


def stop_pid(pid: int, timeout_s: float = 60.0) -> None:
    """SIGTERM the ``ray start --block`` process (it drains and ends its children), then
    SIGKILL its process group if it has not finished in time."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Whatever is left of the head's own process group (it was started in a new session,
    # so the group holds only its processes) is ended too.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(1.0)
