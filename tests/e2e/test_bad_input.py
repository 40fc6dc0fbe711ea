"""Bad input gets a clear error, exit code 2, and creates no job; wrong tokens change nothing."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import EXAMPLES, Server

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

BASE = (EXAMPLES / "train-mlp.yaml").read_text()

CASES = {
    "yaml-does-not-parse": ("name: [oops", "not valid YAML"),
    "empty-file": ("", "empty"),
    "list-not-mapping": ("- name: x\n", "mapping"),
    "unknown-field": (BASE + "colour: blue\n", "colour: unknown field"),
    "unknown-kind": (BASE.replace("kind: train", "kind: juggle"), "unknown kind 'juggle'"),
    "unknown-plugin": (BASE.replace("type: mlp", "type: transformer-xxl"), "transformer-xxl"),
    "bad-plugin-params": (BASE.replace("hidden: [64, 32]", "hidden: [-4]"), "hidden"),
    "zero-workers": (BASE.replace("workers: 1", "workers: 0"), "resources.workers"),
    "negative-cpus": (BASE.replace("cpus: 1", "cpus: -1"), "resources.cpus"),
    "zero-cpus": (BASE.replace("cpus: 1", "cpus: 0"), "resources.cpus"),
    "negative-gpus": (BASE.replace("gpus: 0", "gpus: -2"), "resources.gpus"),
    "memory-lots": (BASE.replace("memory: 1GiB", "memory: lots"), "not a size"),
    "unknown-priority": (BASE.replace("priority: normal", "priority: urgent"), "urgent"),
    "csv-missing": (
        BASE.replace(
            "source: sklearn:breast_cancer", "source: csv:/nonexistent/data.csv\n  target: y"
        ),
        "/nonexistent/data.csv",
    ),
    "too-big-for-cluster": (
        BASE.replace("cpus: 1", "cpus: 1000"),
        "the request can never run here",
    ),
    "too-many-gpus": (BASE.replace("gpus: 0", "gpus: 4"), "GPUs"),
    "gang-bigger-than-cluster": (
        BASE.replace("workers: 1", "workers: 5").replace("cpus: 1", "cpus: 2"),
        "more than the whole cluster",
    ),
}


def _job_count(server: Server) -> int:
    return len(server.cli_json("list", "--limit", "100000"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_exits_2_and_creates_no_job(server: Server, tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    before = _job_count(server)
    done = server.cli("submit", str(spec))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert expected in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert _job_count(server) == before


def test_csv_without_its_target_column(server: Server, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE.replace("source: sklearn:breast_cancer", "source: csv:d.csv\n  target: y"))
    done = server.cli("submit", str(spec))
    assert done.returncode == 2
    assert "'y'" in done.stderr and "label" in done.stderr


def test_missing_spec_file_is_bad_input(server: Server, tmp_path: Path) -> None:
    done = server.cli("submit", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "nope.yaml" in done.stderr


def test_wrong_or_missing_token_is_refused_and_changes_nothing(server: Server) -> None:
    before = _job_count(server)
    spec = {"spec": json.loads(json.dumps(__import__("yaml").safe_load(BASE)))}
    for token in ("", "not-the-token"):
        status, body = server.api("POST", "/v1/jobs", spec, token=token)
        assert status == 401 and b"token" in body
        assert server.api("GET", "/v1/jobs", token=token)[0] == 401
        assert server.api("GET", "/metrics", token=token)[0] == 401
    assert _job_count(server) == before
    env = {**server.env, "DCSCHED_TOKEN": "wrong"}
    from tests.conftest import run_cli

    done = run_cli("list", env=env)
    assert done.returncode == 1 and "token" in done.stderr


def test_unknown_job_is_bad_input(server: Server) -> None:
    for command in (["status", "no-such-job"], ["cancel", "no-such-job"], ["wait", "no-such-job"]):
        done = server.cli(*command)
        assert done.returncode == 2 and "no-such-job" in done.stderr


def test_malformed_api_body_gets_400_not_a_crash(server: Server) -> None:
    status, body = server.api("POST", "/v1/jobs", {"not_spec": 1})
    assert status == 400 and json.loads(body)["problems"]
    status, body = server.api("POST", "/v1/jobs", {"spec": ["a", "list"]})
    assert status == 400 and "mapping" in json.loads(body)["problems"][0]
    assert server.api("GET", "/v1/info")[0] == 200


def test_the_live_server_limits_bodies_and_stalled_clients(server: Server) -> None:
    """The daemon's own settings (tests/unit/test_http_limits.py has the details)."""
    parts = urlsplit(server.url)
    where = (parts.hostname, parts.port)
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + server.token.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    stalled = [socket.create_connection(where, timeout=10) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert server.api("GET", "/v1/info")[0] == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in stalled:
            sock.close()


def test_a_year_long_runtime_is_refused_and_listing_keeps_working(server: Server) -> None:
    spec = yaml.safe_load(BASE)
    for bad in ({"max_runtime": 1e12}, {"resources": {**spec["resources"], "memory": "Infinity"}}):
        status, body = server.api("POST", "/v1/jobs", {"spec": {**spec, **bad}})
        assert status == 400, body
    status, body = server.api("GET", "/v1/jobs")
    assert status == 200 and isinstance(json.loads(body)["jobs"], list)
    assert server.api("GET", "/v1/usage?since=inf")[0] == 400
