"""The server's link to Ray: a child process that is the Ray driver, so losing Ray never
takes the server down.

A Ray driver whose GCS goes away exits its process after about a minute (Ray's core
worker gives up reconnecting). The server must outlive that: it keeps accepting and
queueing jobs, says "Ray unreachable" everywhere a user looks, and picks up again when Ray
returns. So the server is not a driver. ``RayBridge`` starts one child process (the
*bridge*) that connects to Ray and holds the Ray side of the server: the executor
(``RayExecutor``), the cluster view (``RayClusterView``) and the node-exporter fleet. The
server calls them through ``RemoteExecutor`` / ``RemoteClusterView``, which implement the
same ports over a pipe.

When a call cannot be answered (the bridge died, or a call outlived its timeout because
the GCS stopped answering), the bridge is killed (it is our own child, by pid), every
call raises ``RayUnreachable`` at once, and a background thread starts a new bridge every
few seconds (growing to ``max_retry_s``) until one connects. The scheduling pass treats
``RayUnreachable`` as "change nothing this pass" (dcsched.service); the next pass after
Ray returns reconciles each job with what Ray says (a run that a restarted cluster no
longer knows is requeued and resumes from its checkpoint).

This module imports no Ray in the server process; the child imports it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dcsched.core.cluster import ClusterSnapshot
from dcsched.ports import RayUnreachable

logger = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 10.0
"""A cluster snapshot is a few GCS reads; this long without one means the GCS is gone."""
CALL_TIMEOUT_S = 60.0
"""Any other call (a stop waits up to 15 s for the run to end)."""


@dataclass(frozen=True)
class FleetOptions:
    """How the bridge runs the node exporters (dcsched.adapters.node_exporters)."""

    sd_file: Path
    port: int
    host: str | None


@dataclass(frozen=True)
class RayHealth:
    reachable: bool
    since: float
    """Wall-clock time of the last change."""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "since": self.since, "error": self.error}


class RemoteError(RuntimeError):
    """An exception raised by the Ray side, carried over the pipe as its type and words."""


class RayBridge:
    def __init__(
        self,
        gcs_address: str,
        dashboard_url: str,
        fleet: FleetOptions | None = None,
        connect_timeout_s: float = 90.0,
        retry_s: float = 2.0,
        max_retry_s: float = 30.0,
    ):
        self.gcs_address = gcs_address
        self.dashboard_url = dashboard_url
        self.fleet = fleet
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._pending: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._health = RayHealth(False, time.time(), "not connected yet")
        self._closed = threading.Event()
        self._reconnector: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> str:
        """Connect for the first time (raises ``RayUnreachable`` with Ray's words when it
        cannot); return the dashboard URL. Afterwards the bridge reconnects by itself."""
        self._connect()
        self._reconnector = threading.Thread(
            target=self._reconnect_forever, name="ray-bridge", daemon=True
        )
        self._reconnector.start()
        return self.dashboard_url

    def close(self) -> None:
        self._closed.set()
        self._drop("the server is stopping")

    def health(self) -> RayHealth:
        return self._health

    def pid(self) -> int | None:
        process = self._process
        return int(process.pid) if process is not None and process.pid else None

    # -- calls -------------------------------------------------------------------------

    def call(
        self,
        target: str,
        method: str,
        args: tuple[Any, ...] = (),
        kw: dict[str, Any] | None = None,
        deadline_s: float = CALL_TIMEOUT_S,
    ) -> Any:
        """``target.method(*args, **kw)`` in the bridge; raises ``RayUnreachable`` when
        there is no bridge or it does not answer within ``deadline_s``."""
        with self._lock:
            conn = self._conn
            if conn is None or not self._health.reachable:
                raise RayUnreachable(self._health.error or "Ray is not connected")
            call_id = next(self._ids)
            future: Future[Any] = Future()
            self._pending[call_id] = future
        try:
            with self._send_lock:
                conn.send((call_id, target, method, args, kw or {}))
        except (OSError, ValueError) as exc:
            self._drop(f"the Ray bridge process is gone ({exc})")
            raise RayUnreachable(self._health.error) from None
        try:
            ok, value = future.result(timeout=deadline_s)
        except FutureTimeout:
            self._drop(f"Ray did not answer {target}.{method} within {deadline_s:g}s")
            raise RayUnreachable(self._health.error) from None
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
        if ok:
            return value
        raise RemoteError(value)

    # -- inside ------------------------------------------------------------------------

    def _connect(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_bridge_main,
            args=(child_end, self.gcs_address, self.dashboard_url, self.fleet),
            name="dcsched-ray-bridge",
            daemon=True,
        )
        process.start()
        child_end.close()
        try:
            if not parent_end.poll(self.connect_timeout_s):
                raise RayUnreachable(
                    f"Ray at {self.gcs_address} did not accept a connection within "
                    f"{self.connect_timeout_s:g}s"
                )
            kind, value = parent_end.recv()
        except (EOFError, OSError):
            kind, value = "failed", "the Ray bridge process exited while connecting"
        except RayUnreachable:
            _kill(process)
            parent_end.close()
            raise
        if kind != "ready":
            _kill(process)
            parent_end.close()
            raise RayUnreachable(f"cannot connect to Ray at {self.gcs_address}: {value}")
        with self._lock:
            self.dashboard_url = str(value)
            self._process, self._conn = process, parent_end
            self._health = RayHealth(True, time.time())
        threading.Thread(
            target=self._receive, args=(parent_end,), name="ray-bridge-replies", daemon=True
        ).start()

    def _receive(self, conn: Connection) -> None:
        while True:
            try:
                call_id, ok, value = conn.recv()
            except Exception:  # EOF, or the pipe closed under us by _drop
                if self._conn is conn:
                    self._drop(
                        "the Ray bridge process exited (Ray's driver gives up when the GCS is gone)"
                    )
                return
            with self._lock:
                future = self._pending.get(call_id)
            if future is not None and not future.done():
                future.set_result((ok, value))

    def _drop(self, reason: str) -> None:
        """Forget the bridge: kill it, fail the calls waiting on it, mark Ray unreachable."""
        with self._lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
            pending = list(self._pending.values())
            self._pending.clear()
            if self._health.reachable or process is not None:
                logger.warning("Ray unreachable: %s", reason)
                self._health = RayHealth(False, time.time(), reason)
        for future in pending:
            if not future.done():
                future.set_result((False, f"RayUnreachable: {reason}"))
        if conn is not None:
            conn.close()
        if process is not None:
            _kill(process)

    def _reconnect_forever(self) -> None:
        delay = self.retry_s
        last_error = ""
        while not self._closed.wait(delay):
            if self._conn is not None:
                delay = self.retry_s
                continue
            try:
                self._connect()
            except RayUnreachable as exc:
                if str(exc) != last_error:
                    logger.warning("still cannot reach Ray: %s; retrying", exc)
                    last_error = str(exc)
                delay = min(self.max_retry_s, delay * 2)
                with self._lock:
                    self._health = replace(self._health, error=str(exc))
                continue
            logger.info("Ray reachable again at %s", self.gcs_address)
            last_error, delay = "", self.retry_s


def _kill(process: Any) -> None:
    """End our own bridge child (by its pid) and reap it."""
    if process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=5)


class RemoteExecutor:
    """The Executor port (dcsched.ports), answered by the bridge's RayExecutor."""

    def __init__(self, bridge: RayBridge):
        self._bridge = bridge

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kw: Any) -> Any:
            return self._bridge.call("executor", method, args, kw)

        return call


class RemoteClusterView:
    """The ClusterView port, answered by the bridge; node usage comes from the fleet that
    the bridge runs."""

    def __init__(self, bridge: RayBridge):
        self._bridge = bridge

    def snapshot(self) -> ClusterSnapshot:
        result: ClusterSnapshot = self._bridge.call(
            "cluster", "snapshot", deadline_s=SNAPSHOT_TIMEOUT_S
        )
        return result

    def health(self) -> RayHealth:
        return self._bridge.health()

    def usage(self) -> dict[str, dict[str, Any]]:
        """Each node's latest measured usage; empty while Ray is unreachable."""
        if self._bridge.fleet is None:
            return {}
        try:
            result: dict[str, dict[str, Any]] = self._bridge.call(
                "fleet", "usage", deadline_s=SNAPSHOT_TIMEOUT_S
            )
        except RayUnreachable:
            return {}
        return result


# -- the child ---------------------------------------------------------------------------


def _bridge_main(
    conn: Connection, gcs_address: str, dashboard_url: str, fleet_options: FleetOptions | None
) -> None:  # pragma: no cover - runs in the bridge process (covered by the live tests)
    from concurrent.futures import ThreadPoolExecutor

    from dcsched.runs.process import die_with_parent

    die_with_parent()
    logging.basicConfig(
        level=os.environ.get("DCSCHED_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s [ray-bridge]: %(message)s",
    )
    try:
        from dcsched.adapters import node_exporters, ray_executor

        reported = ray_executor.connect(gcs_address)
        url = dashboard_url or reported
        if not url:
            raise RuntimeError(
                f"the Ray cluster at {gcs_address} has no dashboard; dcsched submits Ray Jobs "
                "through it, so start Ray with --include-dashboard=true"
            )
        fleet = None
        if fleet_options is not None:
            fleet = node_exporters.ExporterFleet(
                fleet_options.sd_file, port=fleet_options.port, host=fleet_options.host
            )
        targets: dict[str, Any] = {
            "executor": ray_executor.RayExecutor(url),
            "cluster": ray_executor.RayClusterView(fleet.usage if fleet else None),
            "fleet": fleet,
        }
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    if fleet is not None:
        threading.Thread(
            target=fleet.run_forever, args=(threading.Event(),), name="exporters", daemon=True
        ).start()
    conn.send(("ready", url))
    send_lock = threading.Lock()

    def answer(call_id: int, target: str, method: str, args: Any, kw: Any) -> None:
        try:
            value = getattr(targets[target], method)(*args, **kw)
            reply = (call_id, True, value)
        except BaseException as exc:
            reply = (call_id, False, f"{type(exc).__name__}: {exc}")
        with send_lock:
            conn.send(reply)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ray-call") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            pool.submit(answer, *message)
