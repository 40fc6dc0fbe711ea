"""The CLI client's plain-socket HTTP (dcsched.client: it avoids importing http.client on
the CLI's start-up path) against canned responses: framing by Content-Length, chunks or
the connection's end, error bodies, and what is not HTTP."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pytest

from dcsched import client

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
UNFRAMED = b"HTTP/1.1 200 OK\r\n\r\nhello"
MISSING = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such x"
NOT_HTTP = b"SSH-2.0-OpenSSH\r\n\r\n"


@pytest.fixture
def answer() -> Iterator[tuple[int, list[bytes]]]:
    """A local port that answers each connection with the next canned response."""
    responses: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1 << 16)
                conn.sendall(responses.pop(0))

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], responses
    listener.close()


@pytest.mark.parametrize("response", [OK, CHUNKED, UNFRAMED])
def test_a_body_is_read_whatever_its_framing(
    answer: tuple[int, list[bytes]], response: bytes
) -> None:
    port, responses = answer
    responses += [response, response]
    assert client._plain_http("127.0.0.1", port, "GET", "/x", {}, None, 5) == (200, "OK", b"hello")
    sink = io.BytesIO()
    assert client._download("http", "127.0.0.1", port, "/x", {}, sink, 5) == (200, "OK", b"")
    assert sink.getvalue() == b"hello"


def test_an_error_answers_its_status_reason_and_body(answer: tuple[int, list[bytes]]) -> None:
    port, responses = answer
    responses += [MISSING, MISSING]
    expected = (404, "Not Found", b"no such x")
    assert client._plain_http("127.0.0.1", port, "GET", "/x", {}, None, 5) == expected
    sink = io.BytesIO()
    assert client._download("http", "127.0.0.1", port, "/x", {}, sink, 5) == expected
    assert sink.getvalue() == b""


def test_what_is_not_http_is_refused(answer: tuple[int, list[bytes]]) -> None:
    port, responses = answer
    responses += [NOT_HTTP, NOT_HTTP]
    with pytest.raises(ValueError, match="not an HTTP response"):
        client._plain_http("127.0.0.1", port, "GET", "/x", {}, None, 5)
    with pytest.raises(ValueError, match="not an HTTP response"):
        client._download("http", "127.0.0.1", port, "/x", {}, io.BytesIO(), 5)
