"""HAProxy as each deployment's load balancer: its configuration, process and runtime API.

One HAProxy process per deployment (Debian package ``haproxy``), so that starting or
stopping one deployment never disturbs another's connections. Its frontend binds the
deployment's entry URL; its backend holds ``SLOTS`` server slots (``server-template``),
all in maintenance at first. dcsched points a slot at a replica and brings it up through
the runtime API (``set server be/rN addr ... port ...``, ``state ready|drain|maint``) on
the admin socket, so replicas come and go without a reload and without dropping a
connection; the configuration file is rewritten at every change too, with each slot's
current address, so a restarted HAProxy comes back with the same servers.

Health: ``GET /v2/health/ready`` every 500 ms (200 ms while changing state), one failure
after an error marks a replica down (``observe layer4`` + ``on-error mark-down``).
Requests are retried on another replica when a connection fails or a replica closes
without answering (``retry-on conn-failure empty-response``, ``option redispatch``):
the request bodies are small and ``/predict`` is idempotent, so a replica that dies
costs, at most, the requests it was answering.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dcsched.processes import spawn_detached

logger = logging.getLogger(__name__)

SLOTS = 32
"""Server slots per deployment: replicas plus the ones a rolling update adds."""
BACKEND = "replicas"


class HAProxyError(RuntimeError):
    pass


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if found is None:
        raise HAProxyError(
            "HAProxy is not installed; dcsched serve needs it as the load balancer "
            "(Debian/Ubuntu: apt-get install haproxy; `make system-deps` does it)"
        )
    return found


@dataclass(frozen=True)
class Slot:
    number: int
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"r{self.number}"


def render_config(
    name: str, bind_host: str, port: int, socket_path: Path, slots: dict[int, Slot]
) -> str:
    """The whole configuration of one deployment's HAProxy."""
    servers = []
    for number in range(1, SLOTS + 1):
        slot = slots.get(number)
        if slot is None:
            servers.append(f"    server r{number} 127.0.0.1:9 check disabled")
        else:
            servers.append(f"    server r{number} {slot.host}:{slot.port} check")
    return "\n".join(
        [
            f"# dcsched deployment {name}: written by dcsched; edits are overwritten.",
            "global",
            "    maxconn 4096",
            "    nbthread 1",
            f"    stats socket {socket_path} mode 600 level admin",
            "    log stderr format short local0 warning",
            "",
            "defaults",
            "    mode http",
            "    log global",
            "    timeout connect 1s",
            "    timeout client 120s",
            "    timeout server 30s",
            "    timeout http-keep-alive 120s",
            "    timeout queue 10s",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout",
            "    option http-buffer-request",
            "",
            "frontend entry",
            f"    bind {bind_host}:{port}",
            "    option idle-close-on-response",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance leastconn",
            "    http-reuse always",
            "    option httpchk GET /v2/health/ready",
            "    http-check expect status 200",
            "    default-server inter 500ms fastinter 200ms downinter 500ms rise 1 fall 2 "
            "observe layer4 error-limit 1 on-error mark-down",
            *servers,
            "",
        ]
    )


class Balancer:
    """One deployment's HAProxy: its files live in ``directory``."""

    def __init__(self, name: str, directory: Path, bind_host: str, port: int):
        self.name, self.directory = name, Path(directory)
        self.bind_host, self.port = bind_host, port
        self.config_path = self.directory / "haproxy.cfg"
        self.pid_path = self.directory / "haproxy.pid"
        self.socket_path = self.directory / "admin.sock"
        self.log_path = self.directory / "haproxy.log"

    @property
    def url(self) -> str:
        host = self.bind_host if self.bind_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def write_config(self, slots: dict[int, Slot]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = render_config(self.name, self.bind_host, self.port, self.socket_path, slots)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or not cmdline[0].endswith(b"haproxy"):
            return None
        if str(self.config_path).encode() not in cmdline:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, slots: dict[int, Slot]) -> None:
        """Start HAProxy (or keep the one already running for this deployment)."""
        self.write_config(slots)
        if self.running():
            return
        binary = haproxy_binary()
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise HAProxyError(f"HAProxy refused the configuration: {check.stderr.strip()[:500]}")
        self.socket_path.unlink(missing_ok=True)
        argv = [binary, "-D", "-f", str(self.config_path), "-p", str(self.pid_path)]
        code = spawn_detached(argv, self.log_path).wait(timeout=30)
        if code != 0:
            raise HAProxyError(
                f"HAProxy for deployment {self.name} did not start (exit {code}); "
                f"see {self.log_path} (is port {self.port} taken?)"
            )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if time.monotonic() > deadline:
                raise HAProxyError(f"HAProxy for {self.name} opened no admin socket")
            time.sleep(0.02)
        logger.info("HAProxy for deployment %s on %s", self.name, self.url)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGUSR1)  # soft stop: finish what it holds, then exit
        deadline = time.monotonic() + 10
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGTERM)

    # -- runtime API ---------------------------------------------------------------------

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def set_server(self, slot: Slot) -> None:
        """Point a slot at a replica and bring it up (health checks decide when it serves)."""
        server = f"{BACKEND}/{slot.name}"
        answer = self.command(
            f"set server {server} addr {slot.host} port {slot.port}; "
            f"set server {server} state ready; set server {server} health up"
        )
        if "No such" in answer or "Require" in answer:
            raise HAProxyError(f"HAProxy refused to set {server}: {answer.strip()[:200]}")

    def drain(self, number: int) -> None:
        self.command(f"set server {BACKEND}/r{number} state drain")

    def disable(self, number: int) -> None:
        self.command(f"set server {BACKEND}/r{number} state maint")

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend, by server name (``BACKEND`` for the total)
        and ``FRONTEND``: status, scur, qcur, rate, req_rate, stot, hrsp_5xx, ..."""
        text = self.command("show stat")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        rows: dict[str, dict[str, str]] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") in (BACKEND, "entry"):
                rows[row.get("svname", "")] = row
        return rows


def stop_all(directory: Path) -> list[str]:
    """Stop every deployment's HAProxy under ``directory`` (``dcsched down``); each is
    found by its pid file and checked to be HAProxy running that deployment's config."""
    stopped = []
    for config in sorted(Path(directory).glob("*/haproxy.cfg")):
        balancer = Balancer(config.parent.name, config.parent, "127.0.0.1", 0)
        if balancer.running():
            balancer.stop()
            stopped.append(balancer.name)
    return stopped
