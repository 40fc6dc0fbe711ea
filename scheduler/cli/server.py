"""`dcsched server`, `up` and `down`: running the server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dcsched.cli.base import (
    Failure,
    cli,
)
from dcsched.paths import DEFAULT_PORT, Paths

# -- server lifecycle --------------------------------------------------------------------

_port_option = click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="DCSCHED_PORT",
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the API (env DCSCHED_PORT).",
)
_host_option = click.option("--host", default="127.0.0.1", show_default=True)
_ray_option = click.option(
    "--ray-address", default=None, help="Join this Ray cluster instead of starting a head."
)
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster configuration (dcsched.yaml) to apply at start; "
    "default $DCSCHED_HOME/dcsched.yaml if present, else the last one applied.",
)


def _daemon() -> Any:
    """Import the server side lazily: it pulls in fastapi and ray."""
    try:
        from dcsched import daemon
    except ImportError as exc:
        raise Failure(f"the dcsched server cannot be loaded here: {exc}") from None
    return daemon


def _daemon_failure(exc: Exception) -> Failure:
    if os.environ.get("DCSCHED_DEBUG"):
        raise exc
    return Failure(f"{exc} (set DCSCHED_DEBUG=1 for the traceback)")


_exporter_options = [
    click.option(
        "--exporters/--no-exporters",
        default=True,
        show_default=True,
        help="Run a node exporter (GPU, host and job metrics) on every Ray node.",
    ),
    click.option(
        "--exporter-port",
        type=click.IntRange(0, 65535),
        envvar="DCSCHED_EXPORTER_PORT",
        default=9478,
        show_default=True,
        help="Port of the node exporters (a free one where it is taken; env "
        "DCSCHED_EXPORTER_PORT).",
    ),
    click.option(
        "--exporter-host",
        default=None,
        help="Address the node exporters bind (default: each node's Ray address; "
        "127.0.0.1 with the local Ray head that dcsched starts).",
    ),
    click.option(
        "--grafana-url",
        envvar="RAY_GRAFANA_HOST",
        default=None,
        help="Grafana for the Ray dashboard to embed (RAY_GRAFANA_HOST of the head it starts).",
    ),
    click.option(
        "--prometheus-url",
        envvar="RAY_PROMETHEUS_HOST",
        default=None,
        help="Prometheus for the Ray dashboard (RAY_PROMETHEUS_HOST of the head it starts).",
    ),
]


def _server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [_port_option, _host_option, _ray_option, _config_option, *_exporter_options]
    ):
        func = option(func)
    return func


def _options(daemon: Any, **given: Any) -> Any:
    return daemon.ServerOptions(
        host=given["host"],
        port=given["port"],
        ray_address=given["ray_address"],
        config_path=given["config_path"],
        exporters=given["exporters"],
        exporter_port=given["exporter_port"],
        exporter_host=given["exporter_host"],
        grafana_url=given["grafana_url"],
        prometheus_url=given["prometheus_url"],
    )


@cli.command()
@_server_options
def server(**given: Any) -> None:
    """Run the API server in the foreground."""
    daemon = _daemon()
    try:
        daemon.run_server(Paths.from_env(), _options(daemon, **given))
    except Exception as exc:  # a start failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None


@cli.command()
@_server_options
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def up(timeout: float, **given: Any) -> None:
    """Start the server in the background and say where it is."""
    daemon = _daemon()
    paths = Paths.from_env()
    try:
        info = daemon.start_background(paths, _options(daemon, **given), timeout)
    except Exception as exc:  # any start failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None
    click.echo(f"dcsched server is up (pid {info.get('pid', '?')})")
    rows = [
        ("API", info.get("url")),
        ("metrics", info.get("metrics_url")),
        ("Ray dashboard", info.get("ray_dashboard_url")),
        ("exporters", info.get("exporters_file_sd")),
        ("home", str(paths.home)),
        ("log", str(paths.server_log)),
    ]
    for label, value in rows:
        click.echo(f"  {label + ':':<15}{value or '-'}")


@cli.command()
@click.option("--keep-ray", is_flag=True, help="Leave the Ray head that `up` started running.")
def down(keep_ray: bool) -> None:
    """Stop the background server (and the Ray head it started)."""
    daemon = _daemon()
    try:
        messages = daemon.stop_background(Paths.from_env(), stop_ray=not keep_ray)
    except Exception as exc:  # any stop failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None
    for message in messages:
        click.echo(message)
