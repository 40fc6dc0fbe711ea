"""Access control without a server: secret files, roles, the principals and audit tables,
and what the server creates under its home whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcsched.adapters import ray_head
from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.auth import (
    Call,
    Denied,
    Principal,
    Role,
    action_of,
    authorize,
    check_new_principal,
    new_token,
    token_hash,
)
from dcsched.daemon import ServerError, ensure_api_token, ensure_home
from dcsched.paths import Paths
from dcsched.ports import AuditEntry, PrincipalExists
from dcsched.secretfile import SecretFileError, create_secret, read_secret


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- secret files ------------------------------------------------------------------------------


def test_the_api_token_is_created_whole_and_private(tmp_path: Path, permissive_umask: None) -> None:
    paths = Paths(tmp_path / "home")
    token = ensure_api_token(paths)
    assert len(token) >= 43
    assert paths.token.read_text() == token + "\n"
    assert mode(paths.token) == 0o600 and mode(paths.home) == 0o700
    assert ensure_api_token(paths) == token  # kept across starts
    assert [p.name for p in paths.home.iterdir()] == ["token"]  # no temp file left


@pytest.mark.parametrize("content", ["", "\n", "   ", "short-token\n", "é" * 60])
def test_an_empty_short_or_garbled_api_token_is_refused_at_start(
    tmp_path: Path, content: str
) -> None:
    paths = Paths(tmp_path)
    paths.token.write_text(content)
    with pytest.raises(ServerError) as caught:
        ensure_api_token(paths)
    message = str(caught.value)
    assert str(paths.token) in message and "delete" in message
    assert "dcsched tokens create" in message
    if content.strip():
        assert content.strip() not in message  # never echo a secret


def test_a_second_creator_never_overwrites_the_first(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    assert create_secret(target, "a" * 50)
    assert not create_secret(target, "b" * 50)
    assert read_secret(target, 40, "fix it") == "a" * 50


def test_a_secret_readable_by_others_is_made_private(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("x" * 64)
    target.chmod(0o644)
    assert read_secret(target, 64, "fix") == "x" * 64
    assert mode(target) == 0o600


@pytest.mark.parametrize("content", ["", "abc"])
def test_an_empty_or_short_ray_token_is_refused(tmp_path: Path, content: str) -> None:
    paths = Paths(tmp_path)
    paths.ray.mkdir()
    (paths.ray / "auth_token").write_text(content)
    with pytest.raises(RuntimeError, match=r"the Ray token: .*dcsched down"):
        ray_head.ensure_token(paths)


def test_the_ray_token_is_created_whole_and_private(tmp_path: Path, permissive_umask: None) -> None:
    token = ray_head.ensure_token(Paths(tmp_path))
    assert len(token.read_text().strip()) == 64 and mode(token) == 0o600
    with pytest.raises(SecretFileError):
        read_secret(token, 65, "fix")


def test_the_local_ray_head_is_told_to_bind_loopback() -> None:
    source = Path(ray_head.__file__).read_text()
    assert '"--node-ip-address=127.0.0.1"' in source
    assert ray_head.ray_env("t")["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_the_home_and_the_store_are_private_whatever_the_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    paths = Paths(tmp_path / "home")
    ensure_home(paths)
    store = SQLiteStore(paths.db, paths.models)
    store.add_audit(AuditEntry(1.0, "admin", "submit", "x", "127.0.0.1", "ok"))
    files = [paths.db, paths.db.with_name("dcsched.db-wal"), paths.db.with_name("dcsched.db-shm")]
    assert all(f.exists() for f in files)
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(paths.home) == 0o700
    store.close()


def test_an_existing_open_home_is_made_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    ensure_home(Paths(home))
    assert mode(home) == 0o700


# -- roles -------------------------------------------------------------------------------------

ALICE = Principal("alice", Role.MEMBER, "research")
VIEWER = Principal("dash", Role.VIEWER)
PROM = Principal("prometheus", Role.METRICS)
ADMIN = Principal("admin", Role.ADMIN)


def allowed(who: Principal, call: Call) -> bool:
    try:
        authorize(who, call)
    except Denied:
        return False
    return True


@pytest.mark.parametrize(
    ("who", "call", "expected"),
    [
        (ALICE, Call("POST", "/v1/jobs", spec_team="research"), True),
        (ALICE, Call("POST", "/v1/jobs", spec_team="vision"), False),
        (ALICE, Call("POST", "/v1/jobs", spec_team=None), False),
        (ALICE, Call("POST", "/v1/jobs/j1/cancel", job_team="research"), True),
        (ALICE, Call("POST", "/v1/jobs/j1/cancel", job_team="vision"), False),
        (ALICE, Call("POST", "/v1/jobs/nope/cancel", job_team=None), True),  # the route 404s
        (ALICE, Call("GET", "/v1/jobs"), True),  # the read rule: every team's jobs
        (ALICE, Call("GET", "/v1/jobs/j1"), True),
        (ALICE, Call("GET", "/v1/jobs/j1/logs", job_team="research"), True),
        (ALICE, Call("GET", "/v1/jobs/j1/logs", job_team="vision"), False),
        (ALICE, Call("GET", "/metrics"), True),
        (ALICE, Call("POST", "/v1/uploads"), True),
        (VIEWER, Call("POST", "/v1/uploads"), False),
        (PROM, Call("POST", "/v1/uploads"), False),
        (ALICE, Call("PUT", "/v1/config"), False),
        (ALICE, Call("GET", "/v1/audit"), False),
        (ALICE, Call("GET", "/v1/tokens"), False),
        (ALICE, Call("POST", "/v1/tokens"), False),
        (VIEWER, Call("GET", "/v1/jobs/j1/logs", job_team="vision"), True),
        (VIEWER, Call("GET", "/v1/audit"), True),
        (VIEWER, Call("GET", "/v1/tokens"), False),
        (VIEWER, Call("POST", "/v1/jobs", spec_team="research"), False),
        (VIEWER, Call("POST", "/v1/jobs/j1/cancel", job_team="research"), False),
        (VIEWER, Call("PUT", "/v1/config"), False),
        (PROM, Call("GET", "/metrics"), True),
        (PROM, Call("GET", "/v1/jobs"), False),
        (PROM, Call("GET", "/openapi.json"), False),
        (PROM, Call("POST", "/v1/jobs", spec_team="research"), False),
        (ADMIN, Call("PUT", "/v1/config"), True),
        (ADMIN, Call("DELETE", "/v1/tokens/alice"), True),
        (ADMIN, Call("POST", "/v1/jobs", spec_team="anyone"), True),
    ],
)
def test_who_may_do_what(who: Principal, call: Call, expected: bool) -> None:
    assert allowed(who, call) is expected


def test_a_member_submitting_for_another_team_is_told_why() -> None:
    with pytest.raises(Denied, match=r"member of team research .* not for 'vision'"):
        authorize(ALICE, Call("POST", "/v1/jobs", spec_team="vision"))


def test_actions_of_state_changing_calls() -> None:
    assert action_of("POST", "/v1/jobs") == "submit"
    assert action_of("POST", "/v1/jobs/a/cancel") == "cancel"
    assert action_of("PUT", "/v1/config") == "config.apply"
    assert action_of("POST", "/v1/uploads") == "upload"
    assert action_of("POST", "/v1/tokens") == "token.create"
    assert action_of("DELETE", "/v1/tokens/x") == "token.revoke"
    assert action_of("GET", "/v1/jobs") is None
    assert action_of("PATCH", "/v1/whatever") == "patch /v1/whatever"


def test_token_requests_are_checked() -> None:
    assert check_new_principal("alice", "member", "research") == []
    assert check_new_principal("prometheus", "metrics", None) == []
    assert any("needs a team" in p for p in check_new_principal("bob", "member", None))
    assert any("bootstrap" in p for p in check_new_principal("admin", "viewer", None))
    assert any("role" in p for p in check_new_principal("bob", "root", None))
    assert any("name" in p for p in check_new_principal("Bob Smith", "viewer", None))


# -- the store ---------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_revoked_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "dcsched.db", tmp_path / "models")
    token = new_token()
    store.add_principal("alice", "member", "research", token_hash(token.encode()), 10.0)
    found = store.principal_by_hash(token_hash(token.encode()))
    assert found is not None and (found.name, found.role, found.team) == (
        "alice",
        "member",
        "research",
    )
    with pytest.raises(PrincipalExists):
        store.add_principal("alice", "viewer", None, token_hash(b"other"), 11.0)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("dcsched.db*"))
    assert token.encode() not in raw and token_hash(token.encode()).encode() in raw
    revoked = store.revoke_principal("alice", 12.0)
    assert revoked is not None and revoked.revoked_at == 12.0
    assert store.principal_by_hash(token_hash(token.encode())) is None
    assert store.revoke_principal("alice", 13.0) is None
    # the name is free again; the revoked row stays for the record
    store.add_principal("alice", "member", "research", token_hash(b"new"), 14.0)
    assert [p.name for p in store.principals()] == ["alice"]
    assert len(store.principals(include_revoked=True)) == 2


def test_the_audit_log_keeps_entries_newest_first(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "dcsched.db", tmp_path / "models")
    for i in range(5):
        store.add_audit(AuditEntry(float(i), "alice", "submit", f"research/j{i}", "10.0.0.1", "ok"))
    entries = store.audit(limit=3)
    assert [e.object for e in entries] == ["research/j4", "research/j3", "research/j2"]
    assert entries[0] == AuditEntry(4.0, "alice", "submit", "research/j4", "10.0.0.1", "ok")


def test_unlisted_teams_are_refused_once_a_team_is_listed() -> None:
    from dcsched.core.config import load_config_yaml

    assert load_config_yaml("placement: spread").team("anyone") is not None  # none listed
    listed = load_config_yaml("teams: [{name: research}]")
    assert listed.team("research") is not None and listed.team("nobody") is None
    opened = load_config_yaml("unlisted_teams: allow\nteams: [{name: research}]")
    assert opened.team("nobody") is not None
