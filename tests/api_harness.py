"""The real HTTP API (``create_app``) over a real store, without Ray: an executor that runs
nothing and a fixed cluster of one node. The scheduling loop is not started, so accepted
jobs stay PENDING and no command of a spec is ever run. ``serve`` runs it under uvicorn
with the daemon's own settings (``server_config``) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from dcsched.adapters.http_api import create_app
from dcsched.adapters.http_limits import server_config
from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.job import Job
from dcsched.core.resources import Resources
from dcsched.inputs import InputStore
from dcsched.paths import Paths
from dcsched.ports import RunStatus
from dcsched.service import SchedulerService
from dcsched.tuning.controller import TuneController
from dcsched.validation import check_runnable

TOKEN = "t" * 43
GiB = 1024**3


class IdleExecutor:
    """An executor that never runs anything (the loop is not started anyway)."""

    def reserve(self, job: Job, nodes: Sequence[str]) -> None:
        pass

    def reservation_ready(self, run_id: str, timeout_s: float) -> bool:
        return False

    def start(self, job: Job, run_dir: Path) -> None:
        pass

    def status(self, run_id: str) -> RunStatus | None:
        return None

    def stop(self, run_id: str) -> None:
        pass

    def release(self, run_id: str) -> None:
        pass

    def reservations(self) -> dict[str, tuple[str, ...]]:
        return {}

    def logs(self, run_id: str) -> str:
        return ""


class OneNode:
    def snapshot(self) -> ClusterSnapshot:
        total = Resources(8, 0, 32 * GiB)
        return ClusterSnapshot((NodeState("node-1", "127.0.0.1", True, total, total),))


@dataclass
class Api:
    app: FastAPI
    service: SchedulerService
    store: SQLiteStore


def build_api(home: Path) -> Api:
    paths = Paths(home)
    home.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(paths.db, paths.models)
    service_ref: list[SchedulerService] = []
    inputs = InputStore(
        paths.uploads,
        data_roots=lambda: service_ref[0].config.data_roots,
        max_upload=lambda: service_ref[0].config.max_upload,
    )
    service = SchedulerService(
        store=store,
        executor=IdleExecutor(),
        cluster=OneNode(),
        paths=paths,
        check_runnable=lambda spec: check_runnable(spec, inputs),
    )
    service_ref.append(service)
    info: dict[str, Any] = {"api_url": "http://127.0.0.1"}
    tuning = TuneController(service, home)  # its routes answer; no study runs a trial
    app = create_app(
        service,
        TOKEN,
        CollectorRegistry(),
        info,
        lambda: [],
        inputs=inputs,
        access=store,
        tuning=tuning,
    )
    return Api(app, service, store)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn with the daemon's settings; yield its URL."""
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
