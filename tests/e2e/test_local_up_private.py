"""`dcsched up` with its own local Ray head, started under a permissive umask: every
listening socket of the server and of the head's process tree is on loopback, and every
file under the home is private to the service account."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLES, REPO, cli_env, free_port, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for process in processes:
        try:
            name = " ".join(process.cmdline())[:120] or process.name()
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((name, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_local_up_binds_loopback_and_keeps_its_files_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    port = free_port()

    def permissive() -> None:
        os.umask(0)

    up = subprocess.run(
        [*_cli(), "up", "--port", str(port), "--exporter-port", "0", "--timeout", "240"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        preexec_fn=permissive,
    )
    try:
        assert up.returncode == 0, up.stderr + (home / "server.log").read_text()
        spec = tmp_path / "job.yaml"
        spec.write_text(
            (EXAMPLES / "train-mlp.yaml").read_text().replace("epochs: 30", "epochs: 1")
        )
        submitted = run_cli("submit", str(spec), "--wait", env=env, timeout=300)
        assert submitted.returncode == 0, submitted.stderr

        server_pid = int((home / "server.pid").read_text())
        head_pid = json.loads((home / "ray" / "head.json").read_text())["pid"]
        sockets = listening(tree(server_pid) + tree(head_pid))
        assert any(p == port for _, _, p in sockets)  # the API itself was seen
        assert len(sockets) >= 5  # GCS, raylet, dashboard, agents ...
        exposed = [s for s in sockets if not is_loopback(s[1])]
        assert exposed == [], exposed

        loose = []
        for path in [home, *home.rglob("*")]:
            if path.is_symlink() or not path.exists():
                continue
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                loose.append((str(path.relative_to(home)), oct(mode)))
        assert loose == [], loose
        names = {p.name for p in home.iterdir()}
        assert {"token", "dcsched.db", "server.log", "runs", "models", "ray"} <= names
    finally:
        run_cli("down", env=env, timeout=180)


def _cli() -> list[str]:
    return [sys.executable, "-m", "dcsched.cli"]
