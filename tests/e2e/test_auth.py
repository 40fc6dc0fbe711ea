"""Principals against a real server: roles enforced, tokens revoked at once, every change
audited, secrets never echoed, and a non-ASCII or empty bearer token a 401."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import EXAMPLES, Server, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

BASE = (EXAMPLES / "train-mlp.yaml").read_text().replace("epochs: 30", "epochs: 1")


def spec_file(tmp_path: Path, team: str, name: str, epochs: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        BASE.replace("team: research", f"team: {team}")
        .replace("name: mlp-breast-cancer", f"name: {name}")
        .replace("epochs: 1", f"epochs: {epochs}")
    )
    return path


def cli_as(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={**server.env, "DCSCHED_TOKEN": token})


def create(server: Server, name: str, *args: str) -> str:
    done = server.cli("tokens", "create", name, *args)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("dcs_") and "shown only now" in done.stderr
    return token


def raw_request(server: Server, header: bytes) -> tuple[int, bytes]:
    """GET /v1/info with a header sent as raw bytes (urllib cannot send non-latin-1)."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
            + header
            + b"\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "header",
    [b"Bearer \xc3\xa9\xc3\xa9", b"Bearer \xff", "Bearer ünïcödé".encode(), b"Bearer ", b"Bearer"],
)
def test_non_ascii_or_empty_bearer_is_401_not_500(server: Server, header: bytes) -> None:
    status, body = raw_request(server, header)
    assert status == 401, body
    assert set(json.loads(body)) == {"error", "problems"}


def test_roles_are_enforced_and_audited(server: Server, tmp_path: Path) -> None:
    alice = create(server, "alice", "--team", "research")
    viewer = create(server, "dash", "--role", "viewer")
    prom = create(server, "prometheus", "--role", "metrics")

    # tokens list never shows a token; a second token of the same name is refused
    listed = server.cli("tokens", "list", "-o", "json")
    assert listed.returncode == 0 and alice not in listed.stdout
    names = {t["name"]: t for t in json.loads(listed.stdout)}
    assert names["alice"]["role"] == "member" and names["alice"]["team"] == "research"
    assert names["admin"]["bootstrap"] is True
    again = server.cli("tokens", "create", "alice", "--team", "research")
    assert again.returncode == 1 and "revoke it first" in again.stderr

    # a member submits for its team only, with a clear 403 otherwise
    mine = cli_as(server, alice, "submit", str(spec_file(tmp_path, "research", "alice-job")))
    assert mine.returncode == 0, mine.stderr
    own_job = mine.stdout.strip()
    other = cli_as(server, alice, "submit", str(spec_file(tmp_path, "vision", "sneaky")))
    assert other.returncode == 1
    assert "not allowed" in other.stderr and "member of team research" in other.stderr
    assert alice not in other.stderr

    # the admin submits for vision; alice sees it (read rule) but cannot cancel it or read
    # its logs
    # Long enough to be still active when the admin cancels it below (a 1-epoch job forked
    # from the warm trial runner can end within a second).
    vision = server.cli("submit", str(spec_file(tmp_path, "vision", "vision-job", 5000)))
    assert vision.returncode == 0, vision.stderr
    vision_job = vision.stdout.strip()
    seen = cli_as(server, alice, "list", "-o", "json")
    assert vision_job in seen.stdout
    status, body = server.api("POST", f"/v1/jobs/{vision_job}/cancel", token=alice)
    assert status == 403 and "team vision" in json.loads(body)["error"]
    status, _ = server.api("GET", f"/v1/jobs/{vision_job}/logs", token=alice)
    assert status == 403
    status, _ = server.api("GET", f"/v1/jobs/{own_job}/logs", token=alice)
    assert status == 200
    assert cli_as(server, alice, "cancel", own_job).returncode == 0

    # config and tokens are the admin's; the audit log is for admins and viewers
    config = tmp_path / "c.yaml"
    config.write_text("placement: spread\n")
    for token in (alice, viewer):
        refused = cli_as(server, token, "config", "apply", str(config))
        assert refused.returncode == 1 and "not allowed" in refused.stderr
    assert cli_as(server, viewer, "tokens", "list").returncode == 1
    assert cli_as(server, alice, "audit").returncode == 1
    assert cli_as(server, viewer, "audit").returncode == 0

    # a viewer reads everything and changes nothing
    assert server.api("GET", f"/v1/jobs/{vision_job}/logs", token=viewer)[0] == 200
    status, _ = server.api("POST", f"/v1/jobs/{vision_job}/cancel", token=viewer)
    assert status == 403
    status, _ = server.api("POST", "/v1/jobs", {"spec": {"team": "research"}}, token=viewer)
    assert status == 403

    # metrics reads /metrics only
    assert server.api("GET", "/metrics", token=prom)[0] == 200
    assert server.api("GET", "/v1/jobs", token=prom)[0] == 403

    # revoked: refused from the next call on, no restart
    assert server.cli("tokens", "revoke", "alice").returncode == 0
    status, body = server.api("GET", "/v1/jobs", token=alice)
    assert status == 401 and alice.encode() not in body
    gone = cli_as(server, alice, "list")
    assert gone.returncode == 1 and "refused the API token" in gone.stderr
    assert server.api("GET", "/v1/info", token="dcs_" + "x" * 43)[0] == 401

    assert server.cli("cancel", vision_job).returncode == 0

    # the audit log has every change, with principal, object, address and outcome
    entries = server.cli_json("audit", "--limit", "100")
    assert isinstance(entries, list)
    seen_rows = {(e["principal"], e["action"], e["outcome"].split(":")[0]) for e in entries}
    for row in [
        ("admin", "token.create", "ok"),
        ("alice", "submit", "ok"),
        ("alice", "submit", "denied 403"),
        ("alice", "cancel", "denied 403"),
        ("alice", "cancel", "ok"),
        ("alice", "config.apply", "denied 403"),
        ("dash", "config.apply", "denied 403"),
        ("admin", "token.create", "refused 409"),
        ("admin", "token.revoke", "ok"),
        ("admin", "cancel", "ok"),
    ]:
        assert row in seen_rows, (row, sorted(seen_rows))
    by_action = {(e["principal"], e["action"], e["outcome"]): e for e in entries}
    assert by_action[("alice", "submit", "ok")]["object"] == "research/alice-job"
    assert by_action[("alice", "cancel", "ok")]["object"] == own_job
    assert all(e["remote"] == "127.0.0.1" and e["at"] for e in entries)
    text = json.dumps(entries)
    for token in (alice, viewer, prom, server.token):
        assert token not in text
    log = (server.home / "server.log").read_text()
    for token in (alice, viewer, prom, server.token):
        assert token not in log
    db = b"".join(p.read_bytes() for p in server.home.glob("dcsched.db*"))
    for token in (alice, viewer, prom):
        assert token.encode() not in db


def test_unlisted_teams_are_refused_once_teams_are_listed(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("teams:\n  - name: research\n")
    assert server.cli("config", "apply", str(config)).returncode == 0
    try:
        done = server.cli("submit", str(spec_file(tmp_path, "nobody", "stranger")))
        assert done.returncode == 2 and "'nobody' is not a team of this cluster" in done.stderr
    finally:
        config.write_text("placement: binpack\n")
        assert server.cli("config", "apply", str(config)).returncode == 0
    entries = server.cli_json("audit", "--limit", "5")
    assert isinstance(entries, list)
    assert [e["action"] for e in entries[:3]] == ["config.apply", "submit", "config.apply"]
    assert entries[1]["outcome"].startswith("refused 400")


def test_a_malformed_submission_is_audited_as_refused(server: Server) -> None:
    status, _ = server.api("POST", "/v1/jobs", {"not_spec": 1})
    assert status == 400
    entries = server.cli_json("audit", "--limit", "1")
    assert isinstance(entries, list)
    assert (entries[0]["principal"], entries[0]["action"], entries[0]["outcome"]) == (
        "admin",
        "submit",
        "refused 400: malformed request",
    )
