"""Running the dcsched server: in the foreground (``dcsched server``) or in the background
(``dcsched up`` / ``dcsched down``).

The server owns the SQLite store, the scheduling loop and the REST API. Without a Ray
address it starts (or finds) a local Ray head as a separate process group, so jobs keep
running if the server dies; ``dcsched up`` after a crash finds that head and the store,
and the service reconciles what happened meanwhile.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcsched.paths import DEFAULT_PORT, Paths
from dcsched.processes import HomeLocked, lock_home, pid_alive, process_matches, spawn_detached

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dcsched.adapters.sqlite_store import SQLiteStore
    from dcsched.core.resources import Resources
    from dcsched.exporters.scheduler import SchedulerMetrics
    from dcsched.service import SchedulerService
    from dcsched.tuning.controller import TuneController

logger = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """A problem starting or stopping the server, in words for the user."""


@dataclass(frozen=True)
class ServerOptions:
    """How to run the server; the options of ``dcsched server`` and ``dcsched up``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ray_address: str | None = None
    config_path: Path | None = None
    exporters: bool = True
    """Run a node exporter on every Ray node (dcsched.adapters.node_exporters)."""
    exporter_port: int = 9478
    exporter_host: str | None = None
    """Address the exporters bind; default each node's Ray address, or 127.0.0.1 when the
    server starts its own local Ray head (everything is on this machine)."""
    grafana_url: str | None = None
    """Given to the Ray head it starts as RAY_GRAFANA_HOST, so its dashboard embeds
    Grafana panels (with ``prometheus_url`` as RAY_PROMETHEUS_HOST)."""
    prometheus_url: str | None = None

    def argv(self) -> list[str]:
        """The same options as ``dcsched server`` arguments."""
        args = ["--host", self.host, "--port", str(self.port)]
        if self.ray_address:
            args += ["--ray-address", self.ray_address]
        if self.config_path is not None:
            args += ["--config", str(Path(self.config_path).resolve())]
        if not self.exporters:
            args.append("--no-exporters")
        args += ["--exporter-port", str(self.exporter_port)]
        if self.exporter_host:
            args += ["--exporter-host", self.exporter_host]
        if self.grafana_url:
            args += ["--grafana-url", self.grafana_url]
        if self.prometheus_url:
            args += ["--prometheus-url", self.prometheus_url]
        return args

    def ray_dashboard_env(self) -> dict[str, str]:
        env = {}
        if self.grafana_url:
            env["RAY_GRAFANA_HOST"] = self.grafana_url
        if self.prometheus_url:
            env["RAY_PROMETHEUS_HOST"] = self.prometheus_url
        return env


API_TOKEN_LENGTH = 43
"""Characters of a bootstrap token (``secrets.token_urlsafe(32)``: 256 bits)."""


def private_umask() -> None:
    """Files the server creates (database, logs, runs, models, tokens) are private to its
    account whatever the umask it was started with; its children (the local Ray head and
    the jobs it runs) inherit this."""
    os.umask(0o077)


def ensure_home(paths: Paths) -> None:
    """Create the home (mode 0700); an existing one that others may enter is made private."""
    paths.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = paths.home.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s was mode %o; making it private (0700)", paths.home, mode)
        os.chmod(paths.home, 0o700)


def ensure_api_token(paths: Paths) -> str:
    """Create the bootstrap API token on first start (atomically, mode 0600) and return it;
    refuse a token file that is empty or shorter than a full token."""
    from dcsched.secretfile import SecretFileError, ensure_secret

    ensure_home(paths)
    fix = (
        f"delete {paths.token} and start the server again to create a new one (it is the admin "
        "token; give people tokens of their own with `dcsched tokens create`)"
    )
    try:
        return ensure_secret(paths.token, secrets.token_urlsafe(32), API_TOKEN_LENGTH, fix)
    except SecretFileError as exc:
        raise ServerError(str(exc)) from None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"port {port} on {host} is in use ({exc.strerror}); pick another with --port "
                "or DCSCHED_PORT"
            ) from None


def scheduler_metrics(
    registry: CollectorRegistry, store: SQLiteStore, service: Callable[[], SchedulerService]
) -> SchedulerMetrics:
    """The server's series fed by the service's job events, and its allocated seconds,
    read from ``service()`` (made after its events) at scrape time (docs/metrics.md)."""
    from dcsched.core import accounting
    from dcsched.exporters.scheduler import SchedulerMetrics

    totals = accounting.RunningTotals()
    totals_lock = threading.Lock()

    def allocated_by_team() -> dict[str, Resources]:
        with totals_lock:
            return totals.totals(service().allocations, service().now())

    return SchedulerMetrics(registry, store.counts_by_state, allocated_by_team)


def register_state_collectors(
    registry: CollectorRegistry,
    service: SchedulerService,
    replica_counts: Callable[[], list[dict[str, Any]]],
    tuning: TuneController,
) -> None:
    """The rest of the server's series, read at scrape time: queues, quotas, nodes and
    running jobs from the service, serving deployments from ``replica_counts``, studies
    from ``tuning`` (docs/metrics.md)."""
    from dcsched.exporters.scheduler import SchedulerStateCollector
    from dcsched.serving.metrics import DeploymentCollector
    from dcsched.tuning.metrics import TuneCollector

    registry.register(SchedulerStateCollector(service))
    registry.register(DeploymentCollector(replica_counts))
    registry.register(TuneCollector(tuning))


def run_server(paths: Paths, options: ServerOptions) -> None:
    """Run the server in this process until SIGTERM or Ctrl-C."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from dcsched.adapters import ray_head
    from dcsched.adapters.http_api import create_app
    from dcsched.adapters.http_limits import server_config
    from dcsched.adapters.ray_bridge import (
        FleetOptions,
        RayBridge,
        RemoteClusterView,
        RemoteExecutor,
    )
    from dcsched.adapters.sqlite_store import SQLiteStore
    from dcsched.inference import models as infer_models
    from dcsched.inputs import InputStore, resolve_payload
    from dcsched.kinds import document_of
    from dcsched.plugins.registry import describe_plugins
    from dcsched.ports import RayUnreachable
    from dcsched.service import SchedulerService
    from dcsched.validation import check_runnable

    logging.basicConfig(
        level=os.environ.get("DCSCHED_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    host, port, ray_address = options.host, options.port, options.ray_address
    private_umask()
    ensure_home(paths)
    try:
        lock_home(paths.home / "server.lock", f"pid {os.getpid()}, http://{host}:{port}")
    except HomeLocked as exc:
        raise ServerError(
            f"a dcsched server is already running on {paths.home} ({exc}); use it, or stop "
            "it with `dcsched down` first"
        ) from None
    _check_port_free(host, port)
    config_text = _read_config(options.config_path or (paths.home / "dcsched.yaml"))
    token = ensure_api_token(paths)
    started_ray = False
    if ray_address is None:
        head = ray_head.find_running(paths)
        if head is None:
            logger.info("starting a local Ray head (dashboard on)")
            os.environ.update(options.ray_dashboard_env())
            head = ray_head.start(paths)
            started_ray = True
        elif options.ray_dashboard_env():
            logger.warning(
                "the Ray head was already running; --grafana-url/--prometheus-url apply when "
                "dcsched starts it (`dcsched down` then `dcsched up` with them)"
            )
        try:
            ray_head.check_token(Path(head.token_path))
        except RuntimeError as exc:
            raise ServerError(str(exc)) from None
        os.environ.update(ray_head.ray_env(head.token_path))
        gcs_address, dashboard_url = head.gcs_address, head.dashboard_url
    else:
        gcs_address = ray_address
        dashboard_url = ""
    fleet_options = None
    if options.exporters:
        local = options.ray_address is None
        fleet_options = FleetOptions(
            paths.home / "prometheus" / "exporters.json",
            port=options.exporter_port,
            host=options.exporter_host or ("127.0.0.1" if local else None),
        )
    # The Ray driver is a child process (dcsched.adapters.ray_bridge): losing Ray's head
    # never takes this server down.
    bridge = RayBridge(gcs_address, dashboard_url, fleet_options)
    try:
        dashboard_url = bridge.start()
    except RayUnreachable as exc:
        raise ServerError(str(exc)) from None
    cluster_view = RemoteClusterView(bridge)
    store = SQLiteStore(paths.db, paths.models)
    registry = CollectorRegistry()
    service_ref: list[Any] = []
    metrics = scheduler_metrics(registry, store, lambda: service_ref[0])
    inputs = InputStore(
        paths.uploads,
        data_roots=lambda: service_ref[0].config.data_roots,
        max_upload=lambda: service_ref[0].config.max_upload,
    )

    deployments: list[Any] = []  # the serve controller, made once the service exists

    def run_document(job: Any) -> dict[str, Any]:
        payload = resolve_payload(job.kind, dict(job.payload), inputs)
        if job.kind == "serve":
            payload = deployments[0].run_payload(job, payload)
        document = document_of(job.request, job.kind, payload)
        if job.kind == "infer":  # the model version this run scores with
            document["resolved_model"] = infer_models.resolution(store, payload)
        return document

    def runnable(spec: Any) -> list[str]:
        problems = check_runnable(spec, inputs, models=store)
        return problems + (deployments[0].check_replica(spec) if deployments else [])

    service = SchedulerService(
        store=store,
        executor=RemoteExecutor(bridge),
        cluster=cluster_view,
        paths=paths,
        check_runnable=runnable,
        events=metrics,
        run_document=run_document,
    )
    from dcsched.tuning.controller import TuneController

    tuning = TuneController(service, paths.home)
    service.drivers.append(tuning)
    if config_text is not None:
        service.apply_config(config_text)
    service_ref.append(service)
    from dcsched.serving.controller import ServeController

    serve_host = os.environ.get(
        "DCSCHED_SERVE_HOST", "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
    )
    deployments.append(ServeController(service, paths, host=serve_host))
    register_state_collectors(registry, service, deployments[0].replica_counts, tuning)
    url = f"http://{host}:{port}"
    info = {
        "api_url": url,
        "metrics_url": url + "/metrics",
        "ray_dashboard_url": dashboard_url,
        "ray_address": gcs_address,
        "home": str(paths.home),
        "exporters_file_sd": str(fleet_options.sd_file) if fleet_options else None,
    }
    app = create_app(
        service,
        token,
        registry,
        info,
        describe_plugins,
        cluster_view.usage,
        inputs=inputs,
        access=store,
        deployments=deployments[0],
        tuning=tuning,
    )
    # What is built by now lives as long as the server (modules, the app, the service):
    # left out of the garbage collector's full passes, which otherwise scan it all (~100k
    # objects; 0.1 to 0.7 s a pass on a loaded 2-core machine, a pause for every request in
    # flight: bench/api_scale.py).
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    loop = threading.Thread(target=service.run_forever, args=(stop,), name="scheduler", daemon=True)
    loop.start()
    threading.Thread(
        target=deployments[0].run_forever, args=(stop,), name="serving", daemon=True
    ).start()
    server = uvicorn.Server(server_config(app, host, port))

    def announce() -> None:
        while not server.started and loop.is_alive():
            time.sleep(0.05)
        record = {**info, "url": url, "pid": os.getpid(), "started_ray": started_ray}
        tmp = paths.server_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, paths.server_json)
        logger.info("dcsched API on %s, Ray dashboard on %s", url, dashboard_url)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    try:
        server.run()
    finally:
        stop.set()
        service.wake()
        loop.join(timeout=10)
        bridge.close()
        _remove_if_ours(paths.server_json)
        logger.info("dcsched server stopped; the Ray head keeps running (`dcsched down` ends it)")


def _read_config(path: Path) -> str | None:
    """The configuration's text if the file exists, checked before anything starts."""
    from dcsched.core.config import load_config_yaml
    from dcsched.core.spec import SpecError

    if not path.exists():
        return None
    text = path.read_text()
    try:
        load_config_yaml(text)
    except SpecError as exc:
        problems = "\n  - ".join(exc.problems)
        raise ServerError(f"{path} is not a valid configuration:\n  - {problems}") from None
    return text


def _remove_if_ours(path: Path) -> None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if record.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _info_ok(url: str, token: str) -> bool:
    request = urllib.request.Request(url + "/v1/info", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except Exception:  # not up (yet)
        return False


def start_background(
    paths: Paths, options: ServerOptions, timeout: float = 180.0
) -> dict[str, Any]:
    """Start the server detached (its own session), wait until it answers, return server.json."""
    private_umask()  # server.log and server.pid are created here
    ensure_home(paths)
    pid = _read_pid(paths.server_pid)
    if pid is not None and pid_alive(pid) and paths.server_json.exists():
        record: dict[str, Any] = json.loads(paths.server_json.read_text())
        if _info_ok(record["url"], ensure_api_token(paths)):
            record["already_running"] = True
            return record
    _check_port_free(options.host, options.port)
    ensure_api_token(paths)
    env = {**os.environ, "DCSCHED_HOME": str(paths.home)}
    _, record = launch_server(paths, options.argv(), env, timeout, pid_file=True)
    record["already_running"] = False
    return record


def launch_server(
    paths: Paths,
    server_args: list[str],
    env: dict[str, str],
    timeout: float = 180.0,
    pid_file: bool = False,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``dcsched server SERVER_ARGS`` detached, with ``env`` (which names the home),
    logging to the home's server.log; return the process and its server.json once the
    record is this process's (not one a killed server left behind) and ``/v1/info``
    answers. ServerError with the log's tail if it exits or does not answer in time.
    ``dcsched up``, the tests and the benchmarks all start servers this way."""
    paths.server_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "dcsched.cli", "server", *server_args]
    process = spawn_detached(cmd, paths.server_log, env)
    if pid_file:
        paths.server_pid.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(
                f"the server exited with code {process.returncode}:\n{_tail(paths.server_log)}"
            )
        if paths.server_json.exists():
            try:
                record: dict[str, Any] = json.loads(paths.server_json.read_text())
            except ValueError:  # being written
                record = {}
            if (
                record.get("pid") == process.pid
                and paths.token.exists()
                and _info_ok(record["url"], paths.token.read_text().strip())
            ):
                return process, record
        time.sleep(0.2)
    raise ServerError(f"the server did not answer within {timeout:g}s; see {paths.server_log}")


def stop_background(paths: Paths, stop_ray: bool = True, timeout: float = 30.0) -> list[str]:
    """Stop the background server and, unless told otherwise, the Ray head it started."""
    from dcsched.adapters import ray_head

    messages = []
    pid = _read_pid(paths.server_pid)
    if pid is not None and pid_alive(pid) and not is_server_process(pid):
        messages.append(f"{paths.server_pid} names pid {pid}, which is not a dcsched server")
        pid = None
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        messages.append(f"stopped the dcsched server (pid {pid})")
    else:
        messages.append("no dcsched server was running")
    paths.server_pid.unlink(missing_ok=True)
    paths.server_json.unlink(missing_ok=True)
    if stop_ray:
        from dcsched.serving.haproxy import stop_all

        stopped = stop_all(paths.home / "serve")  # the deployments' load balancers
        if stopped:
            messages.append(f"stopped the load balancers of {', '.join(stopped)}")
        if ray_head.stop(paths):
            messages.append("stopped the local Ray head")
    elif ray_head.find_running(paths) is not None:
        messages.append("the local Ray head keeps running")
    return messages


def is_server_process(pid: int) -> bool:
    """Whether ``pid`` is a dcsched server (started as ``python -m dcsched.cli server``)."""
    return process_matches(pid, "dcsched", "server")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
