"""The replica server: one model version behind HTTP, lean enough to beat the seed.

``python -m dcsched.serving.replica RUN_DIR`` is a ``kind: serve`` replica's Ray job. It
reads the run's ``spec.json`` (the model's directory and plugin resolved by the server),
loads the model, listens on a free port and writes ``endpoint.json`` into the run
directory (atomically: its presence means ready), which the deployment controller puts
behind the deployment's load balancer. SIGTERM stops it gracefully: it stops accepting,
answers what it holds, and exits 0.

Why not FastAPI/uvicorn or Flask: on this 2-core machine the seed's Flask app under
``gunicorn -w 3 -k gevent`` serves ~6.7k req/s and Ray Serve ~0.2k (DESIGN.md). An
asyncio protocol over httptools (uvloop when installed) parses HTTP in C, and requests
that arrive in the same event-loop turn are scored in one call (micro-batching without a
timer, so no added latency), through the model's numpy forward pass when it has one.

Routes: ``POST /predict``; OIP v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/NAME``, ``/v2/models/NAME/ready``, ``POST /v2/models/NAME/infer``;
``GET /metrics`` (Prometheus). Bad bodies get 4xx with ``{"error": reason}``; an
unexpected failure of the model is a 500 for that batch and the replica keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, cast

import httptools
import orjson

from dcsched.serving.metrics import ReplicaMetrics
from dcsched.serving.model import ServedModel, load_model
from dcsched.serving.protocol import (
    MAX_BODY_BYTES,
    BadRequest,
    decode_oip,
    decode_predict,
    oip_outputs,
)

logger = logging.getLogger(__name__)

ENDPOINT_FILE = "endpoint.json"
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    422: b"Unprocessable Entity",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_S = 10.0
"""After a 413, how much of the refused body is read and dropped (and for how long) before
the connection closes: closing with unread data makes the kernel reset the connection,
which can destroy the 413 before the client (or HAProxy) has read it."""
_JSON = b"application/json"
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def _response(status: int, body: bytes, keep_alive: bool, content_type: bytes = _JSON) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        content_type,
        len(body),
    )
    if not keep_alive:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": message})


class Request:
    __slots__ = ("body", "conn", "keep_alive", "method", "path", "started")

    def __init__(self, conn: Connection, method: bytes, path: bytes, body: bytes, keep_alive: bool):
        self.conn, self.method, self.path, self.body = conn, method, path, body
        self.keep_alive = keep_alive
        self.started = time.perf_counter()


class _Rows:
    """A request's checked rows, and what its answer needs (single, batch or OIP id)."""

    __slots__ = ("extra", "rows")

    def __init__(self, rows: list[list[Any]], extra: Any):
        self.rows, self.extra = rows, extra


class Replica:
    """The application: routes and the micro-batching queue (one event loop)."""

    def __init__(self, model: ServedModel, metrics: ReplicaMetrics, max_body: int = MAX_BODY_BYTES):
        self.model = model
        self.metrics = metrics
        self.max_body = max_body
        self.ready = True
        self._queue: list[Request] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_path = b"/v2/models/" + model.name.encode()
        self._model_paths = {self._model_path, self._model_path + b"/versions/%d" % model.version}
        self.connections: set[Connection] = set()

    def enqueue(self, request: Request) -> None:
        self._queue.append(request)
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.flush)

    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> None:
        """Answer every queued request: the predictions of all of them in one call."""
        self._scheduled = False
        batch, self._queue = self._queue, []
        self.metrics.in_flight.set(len(batch))
        answers: dict[int, tuple[int, bytes, bytes]] = {}
        try:
            scored: list[tuple[Request, list[list[Any]], Any]] = []
            for i, request in enumerate(batch):
                try:
                    decoded = self._decode(request)
                except BadRequest as exc:
                    answers[i] = (*_error(exc.status, exc.message), _JSON)
                    continue
                if isinstance(decoded, _Rows):
                    scored.append((request, decoded.rows, (i, decoded.extra)))
                else:
                    answers[i] = decoded
            if scored:
                self._score(scored, answers)
        except Exception:  # a bug here must not leave requests unanswered
            logger.exception("answering a batch of %s requests failed", len(batch))
        now = time.perf_counter()
        for i, request in enumerate(batch):
            status, body, content_type = answers.get(i) or (
                *_error(500, "the replica failed on this request; see its log"),
                _JSON,
            )
            self.metrics.observe(status, now - request.started)
            request.conn.respond(_response(status, body, request.keep_alive, content_type))
            if not request.keep_alive:
                request.conn.close()
        self.metrics.in_flight.set(len(self._queue))

    def _score(
        self,
        scored: list[tuple[Request, list[list[Any]], Any]],
        answers: dict[int, tuple[int, bytes, bytes]],
    ) -> None:
        rows = [row for _, request_rows, _ in scored for row in request_rows]
        try:
            predictions = self.model.predict(rows)
        except BadRequest:
            if len(scored) == 1:
                predictions = None
            else:  # find whose rows the plugin refused: score each request alone
                for item in scored:
                    self._score([item], answers)
                return
        except Exception:
            logger.exception("the model failed on a batch of %s rows", len(rows))
            for _, _, (i, _) in scored:
                answers[i] = (*_error(500, "the model failed; see the replica's log"), _JSON)
            return
        if predictions is None:
            request_rows = scored[0][1]
            try:
                self.model.predict(request_rows)
            except BadRequest as exc:
                answers[scored[0][2][0]] = (*_error(exc.status, exc.message), _JSON)
            return
        first = 0
        for request, request_rows, (i, extra) in scored:
            mine = predictions[first : first + len(request_rows)]
            first += len(request_rows)
            answers[i] = (200, self._encode(request, mine, extra), _JSON)

    def _decode(self, request: Request) -> _Rows | tuple[int, bytes, bytes]:
        """Rows to score (and what the answer needs), or a finished answer."""
        method, path = request.method, request.path.partition(b"?")[0]
        if path == b"/predict":
            if method != b"POST":
                raise BadRequest(405, "POST a JSON body to /predict")
            rows, single = decode_predict(request.body, self.model.shape)
            return _Rows(rows, single)
        if path.startswith(b"/v2/models/") and path.endswith(b"/infer"):
            if path[: -len(b"/infer")] not in self._model_paths:
                raise BadRequest(404, f"this replica serves model {self.model.name!r}")
            if method != b"POST":
                raise BadRequest(405, "POST an inference request to .../infer")
            rows, request_id = decode_oip(request.body, self.model.shape)
            return _Rows(rows, ("oip", request_id))
        if method not in (b"GET", b"HEAD"):
            raise BadRequest(405 if path in _GET_PATHS else 404, f"no route {method!r} {path!r}")
        return self._get(path)

    def _get(self, path: bytes) -> tuple[int, bytes, bytes]:
        if path == b"/metrics":
            return 200, self.metrics.render(), _TEXT
        if path in (b"/v2/health/live", b"/healthz"):
            return 200, b'{"live":true}', _JSON
        if path == b"/v2/health/ready":
            status = 200 if self.ready else 503
            return status, orjson.dumps({"ready": self.ready}), _JSON
        if path == b"/v2":
            body = {"name": "dcsched-replica", "version": "1", "extensions": []}
            return 200, orjson.dumps(body), _JSON
        if path in self._model_paths:
            return 200, orjson.dumps(self.model.metadata()), _JSON
        if path in {p + b"/ready" for p in self._model_paths}:
            return 200, orjson.dumps({"name": self.model.name, "ready": self.ready}), _JSON
        raise BadRequest(
            404,
            f"no route {path.decode('latin-1')[:100]!r}; use POST /predict, the OIP v2 routes "
            f"under /v2/models/{self.model.name}, or GET /metrics",
        )

    def _encode(self, request: Request, predictions: list[Any], extra: Any) -> bytes:
        if extra is True:
            return orjson.dumps({"prediction": predictions[0]})
        if extra is False:
            return orjson.dumps({"predictions": predictions})
        _, request_id = extra
        body = {
            "model_name": self.model.name,
            "model_version": str(self.model.version),
            "outputs": oip_outputs(predictions),
        }
        if request_id is not None:
            body["id"] = request_id
        return orjson.dumps(body)


_GET_PATHS = {b"/metrics", b"/v2/health/live", b"/v2/health/ready", b"/v2", b"/healthz"}


class Connection(asyncio.Protocol):
    """One client connection: httptools parses, the replica answers in order."""

    def __init__(self, app: Replica):
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.closing = False
        self.drained = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.app.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.too_large:  # the rest of a refused body: dropped, up to a bound
            self.drained += len(data)
            if self.drained > DRAIN_BYTES:
                self.close()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.too_large:
                self._refuse(400, f"malformed HTTP request ({exc})")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body, self.size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        # Content-Length is checked by httptools; a declared body over the limit is refused
        # before it is read.
        length = getattr(self.parser, "get_content_length", None)
        declared = length() if callable(length) else None
        if declared is not None and declared > self.app.max_body:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.app.max_body:
            self._too_large()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.too_large:  # the refused body has been read to its end: close now
            self.close()
            return
        if self.closing:
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.app.enqueue(
            Request(
                self,
                self.parser.get_method(),
                self.url,
                body,
                self.parser.should_keep_alive(),
            )
        )

    def _too_large(self) -> None:
        self.too_large = True
        limit = self.app.max_body
        message = f"the body is larger than {limit} bytes; send fewer instances a request"
        started = time.perf_counter()
        self.respond(_response(413, orjson.dumps({"error": message}), keep_alive=False))
        self.app.metrics.observe(413, time.perf_counter() - started)
        # Not closed yet: the rest of the body is read and dropped first (see DRAIN_BYTES).
        asyncio.get_event_loop().call_later(DRAIN_S, self.close)

    def _refuse(self, status: int, message: str) -> None:
        started = time.perf_counter()
        body = orjson.dumps({"error": message})
        self.respond(_response(status, body, keep_alive=False))
        self.app.metrics.observe(status, time.perf_counter() - started)
        self.close()

    def respond(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def serve(
    app: Replica,
    host: str,
    port: int,
    on_ready: Any = None,
    stop: asyncio.Event | None = None,
    orphan_check_s: float | None = None,
) -> None:
    """Serve until ``stop`` is set (SIGTERM/SIGINT by default), then drain and return.
    With ``orphan_check_s``, also stop when this process's parent is gone (checked that
    often): the Ray process that ran the replica died with its node, and a replica left
    behind must not keep answering for a run that dcsched has requeued elsewhere."""
    loop = asyncio.get_running_loop()
    app._loop = loop
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    if orphan_check_s is not None:
        parent = os.getppid()

        def check_parent() -> None:
            if os.getppid() != parent:
                logger.warning("the parent process %s is gone; stopping", parent)
                stop.set()
            else:
                loop.call_later(orphan_check_s, check_parent)

        loop.call_later(orphan_check_s, check_parent)
    server = await loop.create_server(
        lambda: Connection(app), host, port, reuse_address=True, backlog=1024
    )
    bound = server.sockets[0].getsockname()
    if on_ready is not None:
        on_ready(bound[0], bound[1])
    await stop.wait()
    logger.info("stopping: no new connections; answering what is queued")
    app.ready = False
    server.close()
    deadline = time.monotonic() + 5.0
    while app.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for conn in list(app.connections):
        conn.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    from dcsched.rundir import RunDir, write_text_atomically

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dcsched.serving.replica RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("DCSCHED_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = RunDir(Path(args[0]))
    spec = run.read_spec()
    serve_section = spec["serve"]
    deployment = str(serve_section.get("deployment") or spec["name"])
    replica_id = os.environ.get("DCSCHED_JOB_ID", spec["name"])
    endpoint = run.path / ENDPOINT_FILE
    endpoint.unlink(missing_ok=True)
    try:
        model = load_model(
            str(serve_section["model_name"]),
            int(serve_section["version"]),
            str(serve_section["plugin"]),
            Path(serve_section["model_dir"]),
            gpus=float(spec.get("resources", {}).get("gpus") or 0),
        )
    except Exception as exc:
        run.write_error(f"could not load the model: {exc}")
        raise
    metrics = ReplicaMetrics(deployment, replica_id, model.name, model.version)
    app = Replica(model, metrics)
    host = os.environ.get("DCSCHED_SERVE_HOST", "127.0.0.1")

    def ready(bound_host: str, port: int) -> None:
        record = {
            "host": bound_host,
            "port": port,
            "pid": os.getpid(),
            "deployment": deployment,
            "replica": replica_id,
            "model": model.name,
            "version": model.version,
            "device": model.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_available": model.cuda_available,
            "attempt": int(os.environ.get("DCSCHED_RUN_ATTEMPT", "0") or 0),
            "started_at": time.time(),
        }
        write_text_atomically(endpoint, json.dumps(record) + "\n")
        logger.info(
            "replica %s serving %s:%s on %s:%s",
            replica_id,
            model.name,
            model.version,
            bound_host,
            port,
        )

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # plain asyncio works, a little slower
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(app, host, 0, ready, orphan_check_s=1.0))
    endpoint.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
