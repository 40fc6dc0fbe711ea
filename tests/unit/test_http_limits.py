"""Limits on every input, over real HTTP (uvicorn with the daemon's settings, no Ray):
bodies cut off before parsing, stalled connections closed, bounded query parameters, and
numbers that once broke the service refused with a 400, never a 500."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from dcsched.adapters.http_limits import JSON_BODY_LIMIT, GuardedH11Protocol
from tests.api_harness import TOKEN, Api, build_api, serve

TRAIN = {
    "name": "limits",
    "kind": "train",
    "team": "research",
    "resources": {"workers": 1, "cpus": 1, "gpus": 0, "memory": "1GiB"},
    "model": {"type": "mlp", "params": {"hidden": [8]}},
    "data": {"source": "sklearn:breast_cancer"},
    "train": {"epochs": 1},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Api:
    return build_api(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def url(api: Api) -> Iterator[str]:
    with serve(api.app) as base:
        yield base


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(*address(url), timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, json.loads(raw) if raw else {}


def raw_exchange(url: str, head: bytes, chunks: Iterator[bytes], budget: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers or ``budget`` bytes went out;
    return the answer and how many body bytes were sent."""
    sent = 0
    with socket.create_connection(address(url), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0] or sent >= budget:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


# -- bodies ---------------------------------------------------------------------------------


def test_a_declared_huge_body_is_413_before_it_is_read(url: str) -> None:
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    started = time.monotonic()
    answer, _ = raw_exchange(url, head, iter(()), 0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit of 1048576 bytes" in answer
    assert time.monotonic() - started < 5


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(url: str) -> None:
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b" " * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent = raw_exchange(url, head, iter([chunk] * 4096), budget=256 * 1024**2)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # the server stopped reading soon after the limit (what socket buffers hold aside)
    assert sent < 64 * JSON_BODY_LIMIT


def test_an_upload_over_max_upload_is_413_from_its_length(api: Api, url: str) -> None:
    limit = api.service.config.max_upload
    head = (
        b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(limit + 1).encode() + b"\r\n\r\n"
    )
    answer, _ = raw_exchange(url, head, iter(()), 0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_under_the_limit_still_works(url: str) -> None:
    status, body = call(url, "POST", "/v1/jobs", {"spec": TRAIN})
    assert status == 201, body
    status, body = call(url, "POST", "/v1/jobs", b'{"spec": ' + b" " * 1000 + b"1}")
    assert status == 400 and body["error"] == "invalid job spec"


def test_a_deeply_nested_body_is_400_not_500(url: str) -> None:
    deep = b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = call(url, "POST", "/v1/jobs", deep)
    assert status == 400, body
    nested = {**TRAIN, "model": {"type": "mlp", "params": {"x": json.loads("[" * 200 + "]" * 200)}}}
    status, body = call(url, "POST", "/v1/jobs", {"spec": nested})
    assert status == 400 and "nested deeper than 32 levels" in body["problems"][0]


# -- connections ----------------------------------------------------------------------------


def test_stalled_connections_do_not_hurt_others_and_are_closed(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedH11Protocol, "header_timeout_s", 1.0)
    stalled = []
    try:
        for _ in range(50):
            sock = socket.create_connection(address(url), timeout=10)
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            stalled.append(sock)
        started = time.monotonic()
        status, body = call(url, "GET", "/v1/info")
        assert status == 200 and "version" in body
        assert time.monotonic() - started < 1.0
        # the server hangs up on each of them once the head is overdue
        for sock in stalled:
            sock.settimeout(5)
            assert sock.recv(1024) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_an_oversized_request_head_is_refused(url: str) -> None:
    head = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    answer, _ = raw_exchange(url, head, iter(()), 0)
    assert answer.startswith(b"HTTP/1.1 4") or answer == b"", answer[:200]


# -- query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=1000001",
        "/v1/jobs?limit=" + "9" * 30,
        "/v1/usage?since=inf",
        "/v1/usage?since=-inf",
        "/v1/usage?since=nan",
        "/v1/usage?since=1e300",
        "/v1/usage?since=-5",
        "/v1/audit?limit=0",
        "/v1/jobs/x/logs?offset=" + "9" * 30,
        "/v1/jobs?team=" + "a" * 5000,
    ],
)
def test_query_parameters_out_of_range_are_400(url: str, path: str) -> None:
    status, body = call(url, "GET", path)
    assert status == 400, body
    assert body["error"] == "malformed request" and body["problems"], body


def test_usage_since_a_real_time_answers(url: str) -> None:
    status, body = call(url, "GET", f"/v1/usage?since={time.time() - 3600}")
    assert status == 200 and body["since"].endswith("Z")
