"""Limits the HTTP server enforces before a request reaches a route: body sizes, and how
long a connection may take to send its request's headers.

- ``BodyLimit`` (ASGI middleware): a JSON body is read, up to ``json_limit`` bytes, before
  the app sees it; a larger one is answered 413 as soon as its ``Content-Length`` says so
  or, for a chunked body without a length, as soon as the bytes counted so far pass the
  limit. Nothing beyond the limit is read, so a 1 GB body costs the server at most the
  limit in memory. Streamed routes (uploads) keep their own limit: an over-long
  ``Content-Length`` is a 413 at once, and the route counts the bytes as they come.
- ``GuardedH11Protocol`` (uvicorn's h11 protocol): a connection that has not sent a whole
  request head within ``HEADER_TIMEOUT_S`` of connecting (or of its previous response) is
  closed, so clients that open connections and stall hold no slot for long. h11 bounds the
  head's size (``h11_max_incomplete_event_size``, set by the daemon).

Words: a *streamed* route reads its body itself, chunk by chunk (``request.stream()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

JSON_BODY_LIMIT = 1024 * 1024
"""Largest body of a JSON route (a job spec, a configuration, a token request)."""
HEADER_TIMEOUT_S = 10.0
"""Longest a connection may take to send a whole request head."""
MAX_HEAD_BYTES = 32 * 1024
"""Largest request head (request line and headers)."""
MAX_CONNECTIONS = 1000
"""Past this many open connections (or running requests), new requests get 503."""

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class BodyLimit:
    """ASGI middleware: refuse request bodies over a limit with 413, before parsing."""

    def __init__(
        self,
        app: Any,
        json_limit: int = JSON_BODY_LIMIT,
        streamed: Mapping[str, Callable[[], int]] | None = None,
    ):
        """``streamed`` maps the path of each streamed route to its (current) limit."""
        self.app = app
        self.json_limit = json_limit
        self.streamed = dict(streamed or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = self.streamed.get(scope["path"])
        limit = streamed() if streamed is not None else self.json_limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, f"the request body is {declared} bytes", limit)
            return
        if streamed is not None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _too_large(send, "the request body", limit)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then defers to the real one (which
    reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return dict(await receive())

    return replay


async def _too_large(send: Send, what: str, limit: int) -> None:
    body = orjson.dumps(
        {
            "error": f"{what} is over the limit of {limit} bytes",
            "problems": [],
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections slow to send their request head."""

    header_timeout_s = HEADER_TIMEOUT_S
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_deadline = None
        # IDLE: no whole request head since the connection opened or the last response.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """The uvicorn settings of the API server, with the limits above.

    Clients never share a thread with the scheduling loop (the daemon runs it in a thread
    of its own): routes run on the event loop or in anyio's worker threads.
    """
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_keep_alive=5,
        limit_concurrency=MAX_CONNECTIONS,
    )
