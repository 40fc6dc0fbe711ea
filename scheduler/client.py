"""A small HTTP client for the dcsched API, used by the CLI.

Standard library only (a socket and ``json``): the CLI's start-up path must stay
free of ray, torch, pydantic, httpx and yaml, so nothing heavy is imported here.

Finding the server: ``DCSCHED_URL`` if set, else the ``url`` field of
``$DCSCHED_HOME/server.json`` (written by ``dcsched server`` / ``dcsched up``).
The bearer token: ``DCSCHED_TOKEN`` if set (a token from ``dcsched tokens create``), else
the file ``$DCSCHED_HOME/token`` (the admin's bootstrap token, readable on the server's
account only).

Errors, in words the CLI can print as they are:
- ``ServerUnreachable``: no server is known, or it does not answer (names the URL and how
  to start one);
- ``ApiError(status, message, problems)``: the server answered with an HTTP error; the
  body ``{"error": str, "problems": [str, ...]}`` is parsed into ``message`` and
  ``problems``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

from dcsched import __version__
from dcsched.paths import Paths

DEFAULT_TIMEOUT_S = 30.0


class ServerUnreachable(Exception):
    """No dcsched server is known or it does not answer."""


class ApiError(Exception):
    """An HTTP error answer of the API: its status, one line of message and the problems
    (the body ``{"error": message, "problems": [...]}``). The one class on both sides: the
    server's routes raise it to answer so (``dcsched.adapters.http_api``), and the client
    raises it when the server answered so."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        self.status = status
        self.message = message
        self.problems = list(problems or [])
        super().__init__(message)


@dataclass(frozen=True)
class Client:
    """Calls the dcsched API at ``url``; every method returns decoded JSON."""

    url: str
    token: str | None
    token_source: str = "the DCSCHED_TOKEN environment variable"
    timeout: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(
        cls,
        paths: Paths | None = None,
        environ: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Client:
        """Find the server and the token as the module docstring describes."""
        paths = paths or Paths.from_env()
        env = os.environ if environ is None else environ
        url = env.get("DCSCHED_URL") or _url_from_server_json(paths)
        token = env.get("DCSCHED_TOKEN")
        source = "the DCSCHED_TOKEN environment variable"
        if not token:
            source = str(paths.token)
            try:
                token = paths.token.read_text().strip() or None
            except FileNotFoundError:
                token = None
            except OSError as exc:
                raise ServerUnreachable(f"cannot read the API token {paths.token}: {exc}") from None
        return cls(url=url.rstrip("/"), token=token, token_source=source, timeout=timeout)

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return _mapping(self.request("POST", "/v1/jobs", body={"spec": dict(spec)}))

    def list_jobs(
        self, state: str | None = None, team: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        query = {"state": state, "team": team, "limit": limit}
        return _items(self.request("GET", "/v1/jobs", query=query), "jobs")

    def get_job(self, job_id: str) -> dict[str, Any]:
        return _mapping(self.request("GET", f"/v1/jobs/{_seg(job_id)}"))

    def job_logs(self, job_id: str, offset: int = 0, rank: int | None = None) -> dict[str, Any]:
        path = f"/v1/jobs/{_seg(job_id)}/logs"
        return _mapping(self.request("GET", path, query={"offset": offset, "rank": rank}))

    def job_results(self, job_id: str, out: str) -> int:
        """Stream an infer job's output into the file ``out`` (written under a temporary
        name, renamed when whole); return its size in bytes."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerUnreachable(f"the server URL {self.url!r} is not an http(s) URL")
        target = parts.path.rstrip("/") + f"/v1/jobs/{_seg(job_id)}/results"
        headers = {"User-Agent": f"dcsched-cli/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        tmp = f"{out}.partial"
        try:
            with open(tmp, "wb") as sink:
                status, reason, error_body = _download(
                    parts.scheme, parts.hostname, parts.port, target, headers, sink, self.timeout
                )
            if status >= 400:
                raise _api_error(status, reason, error_body, self.url)
            size = os.path.getsize(tmp)
            os.replace(tmp, out)
            return size
        except (TimeoutError, OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ServerUnreachable(f"downloading from {self.url} failed ({why})") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def upload(self, data: bytes) -> dict[str, Any]:
        """Send a file's bytes; the answer's ``ref`` names them in a spec."""
        return _mapping(self.request("POST", "/v1/uploads", body=data))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _mapping(self.request("POST", f"/v1/jobs/{_seg(job_id)}/cancel"))

    def trials(self, job_id: str) -> dict[str, Any]:
        """A tune job's study: ``summary`` and every trial."""
        return _mapping(self.request("GET", f"/v1/jobs/{_seg(job_id)}/trials"))

    def plot(self, job_id: str, name: str) -> bytes:
        """A tune job's plot (``history``, ``importances``, ``intermediate``) as PNG bytes."""
        path = f"/v1/jobs/{_seg(job_id)}/plots/{_seg(name)}"
        return bytes(self.request("GET", path, raw_body=True))

    # -- cluster, models, plugins ----------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/v1/nodes"), "nodes")

    def nodes_and_ray(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The nodes as last seen, and whether the server reaches Ray now."""
        body = _mapping(self.request("GET", "/v1/nodes"))
        ray = body.get("ray")
        return _items(body, "nodes"), ray if isinstance(ray, dict) else {}

    def models(self) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/v1/models"), "models")

    def model(self, name: str) -> dict[str, Any]:
        return _mapping(self.request("GET", f"/v1/models/{_seg(name)}"))

    def model_version(self, name: str, version: int) -> dict[str, Any]:
        return _mapping(self.request("GET", f"/v1/models/{_seg(name)}/versions/{version}"))

    def plugins(self) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/v1/plugins"), "plugins")

    def get_config(self) -> dict[str, Any]:
        return _mapping(self.request("GET", "/v1/config"))

    def put_config(self, text: str) -> dict[str, Any]:
        return _mapping(self.request("PUT", "/v1/config", body={"text": text}))

    def teams(self) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/v1/teams"), "teams")

    def usage(self, team: str | None = None, since: float | None = None) -> dict[str, Any]:
        return _mapping(self.request("GET", "/v1/usage", query={"team": team, "since": since}))

    def info(self) -> dict[str, Any]:
        return _mapping(self.request("GET", "/v1/info"))

    # -- tokens and audit (admin; the audit log also for viewers) --------------------------

    def create_token(self, name: str, role: str, team: str | None) -> dict[str, Any]:
        body = {"name": name, "role": role, "team": team}
        return _mapping(self.request("POST", "/v1/tokens", body=body))

    def tokens(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        query = {"include_revoked": "true" if include_revoked else None}
        return _items(self.request("GET", "/v1/tokens", query=query), "tokens")

    def revoke_token(self, name: str) -> dict[str, Any]:
        return _mapping(self.request("DELETE", f"/v1/tokens/{_seg(name)}"))

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return _items(self.request("GET", "/v1/audit", query={"limit": limit}), "entries")

    # -- transport -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: object = None,
        raw_body: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON body or raise ApiError/ServerUnreachable."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerUnreachable(
                f"the server URL {self.url!r} is not an http(s) URL; check DCSCHED_URL "
                "or server.json"
            )
        target = parts.path.rstrip("/") + path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urlencode(pairs)
        headers = {"Accept": "application/json", "User-Agent": f"dcsched-cli/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if isinstance(body, bytes):
            data = body
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            port = parts.port
        except ValueError:
            raise ServerUnreachable(f"the server URL {self.url!r} has an invalid port") from None
        try:
            if parts.scheme == "https":
                status, reason, raw = _https(
                    parts.hostname, port, method, target, headers, data, self.timeout
                )
            else:
                status, reason, raw = _plain_http(
                    parts.hostname, port or 80, method, target, headers, data, self.timeout
                )
        except TimeoutError:
            raise ServerUnreachable(
                f"the dcsched server at {self.url} did not answer within {self.timeout:g}s"
            ) from None
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ServerUnreachable(
                f"cannot reach the dcsched server at {self.url} ({why}); start it with `dcsched up`"
            ) from None
        if status >= 400:
            raise _api_error(status, reason, raw, self.url)
        if raw_body:  # a file (a plot's PNG): the bytes as sent
            return raw
        if not raw:
            return {}
        try:
            return orjson.loads(raw)
        except ValueError:
            raise ApiError(
                status, f"the server at {self.url} answered with something that is not JSON"
            ) from None


def _plain_http(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str],
    data: bytes | None,
    timeout: float,
) -> tuple[int, str, bytes]:
    """One HTTP/1.1 exchange over a plain socket (``Connection: close``).

    The CLI's start-up budget is small and ``http.client`` alone costs ~50 ms to import
    (it pulls in the email package); this covers what the dcsched API sends: a status
    line, headers, and a body framed by Content-Length, chunks, or the connection's end.
    Malformed responses raise ValueError.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(data) if data else 0}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("incomplete HTTP response")
    code, reason, fields = _response_head(head)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = _unchunk(body)
    elif "content-length" in fields:
        length = int(fields["content-length"])
        if len(body) < length:
            raise ValueError("the response ended early")
        body = body[:length]
    return code, reason, body


def _response_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """The status code, reason and header fields (names lower-cased) of an HTTP response
    head; ValueError if it is not one."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(code), reason, fields


def _download(
    scheme: str,
    host: str,
    port: int | None,
    target: str,
    headers: dict[str, str],
    sink: Any,
    timeout: float,
) -> tuple[int, str, bytes]:
    """GET ``target``, the body of a success streamed into ``sink``; returns (status,
    reason, the body of an error). Over a plain socket for http (see _plain_http)."""
    if scheme == "https":
        import http.client

        connection = http.client.HTTPSConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            if response.status >= 400:
                return response.status, response.reason, response.read()
            while chunk := response.read(1 << 20):
                sink.write(chunk)
            return response.status, response.reason, b""
        finally:
            connection.close()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port or 80}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, port or 80), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ValueError("incomplete HTTP response")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        code, reason, fields = _response_head(head)
        chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        length = int(fields["content-length"]) if "content-length" in fields else None
        if code >= 400 or chunked:
            while chunk := sock.recv(1 << 16):
                body += chunk
            if chunked:
                body = _unchunk(body)
            if code >= 400:
                return code, reason, body
            sink.write(body)
            return code, reason, b""
        received = len(body)
        sink.write(body)
        while length is None or received < length:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            sink.write(chunk)
            received += len(chunk)
        if length is not None and received < length:
            raise ValueError("the download ended early")
        return code, reason, b""


def _unchunk(body: bytes) -> bytes:
    out: list[bytes] = []
    position = 0
    while True:
        line_end = body.index(b"\r\n", position)
        size = int(body[position:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        out.append(body[start : start + size])
        position = start + size + 2


def _https(
    host: str,
    port: int | None,
    method: str,
    target: str,
    headers: dict[str, str],
    data: bytes | None,
    timeout: float,
) -> tuple[int, str, bytes]:
    """TLS goes through the standard library's client (imported only when needed)."""
    import http.client

    connection = http.client.HTTPSConnection(host, port, timeout=timeout)
    try:
        connection.request(method, target, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, response.reason, response.read()
    except http.client.HTTPException as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()


def _url_from_server_json(paths: Paths) -> str:
    where = paths.server_json
    try:
        info = json.loads(where.read_text())
    except FileNotFoundError:
        raise ServerUnreachable(
            f"no dcsched server is known: {where} is missing; start the server with "
            "`dcsched up` (or set DCSCHED_URL)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ServerUnreachable(
            f"cannot read {where} ({exc}); restart the server with `dcsched up`"
        ) from None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url:
        raise ServerUnreachable(f"{where} has no server url; restart the server with `dcsched up`")
    return url


def _api_error(status: int, reason: str, raw: bytes, url: str) -> ApiError:
    """Build an ApiError from an error body, tolerating bodies that are not ours."""
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    message: str | None = None
    problems: list[str] = []
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, str):
            message = error
        found = payload.get("problems")
        if isinstance(found, list):
            problems = [str(p) for p in found]
        detail = payload.get("detail")  # a framework's own error shape, e.g. FastAPI's 422
        if message is None and isinstance(detail, str):
            message = detail
        elif message is None and isinstance(detail, list):
            message = "invalid request"
            problems = problems or [_describe_detail(d) for d in detail]
    if message is None:
        message = f"HTTP {status} {reason} from {url} (is a dcsched server listening there?)"
    return ApiError(status, message, problems)


def _describe_detail(item: object) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
        return f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item))
    return str(item)


def _seg(value: str) -> str:
    """One path segment, quoted so an id cannot change the route."""
    return quote(value, safe="")


def _mapping(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(200, "the server answered with an unexpected shape (not an object)")
    return payload


def _items(payload: Any, key: str) -> list[dict[str, Any]]:
    items = _mapping(payload).get(key)
    if not isinstance(items, list):
        raise ApiError(200, f"the server's answer has no {key!r} list")
    return items
