"""``dcsched exporter``: serve this node's GPU, host and job metrics until stopped.

Loaded lazily by the main CLI (``LAZY_COMMANDS`` in dcsched.cli), so ``dcsched list``
never imports psutil or prometheus_client. Runs in the foreground; SIGTERM or SIGINT
stops it cleanly (exit code 0). No bearer token: bind it to an address your Prometheus
reaches and nobody else does.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

import click

from dcsched.cli import Failure

DEFAULT_EXPORTER_PORT = 9478


@click.command("exporter")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_EXPORTER_PORT,
    show_default=True,
    envvar="DCSCHED_EXPORTER_PORT",
    help="Port to listen on (0: any free one). Env: DCSCHED_EXPORTER_PORT.",
)
@click.option(
    "--node-name",
    default=None,
    help="The `node` label (the Ray node id where known). Default: the host name.",
)
@click.option("--debug", is_flag=True, help="Log at debug level (NVML failures included).")
def exporter(host: str, port: int, node_name: str | None, debug: bool) -> None:
    """Serve GPU (NVML), host and dcsched job metrics of this node on /metrics."""
    from dcsched.exporters.node import ExporterError, NodeExporter, serve

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    node = node_name or socket.gethostname()
    collector = NodeExporter(node)
    try:
        server, _ = serve(host, port, collector)
    except ExporterError as exc:
        collector.close()
        raise Failure(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    collector.read()  # tries NVML now, so the line below can say whether it is there
    gpus = "NVML up" if collector.gpu_collector_up else "no NVML: GPU series absent"
    click.echo(f"dcsched exporter: node {node} on {server.url} ({gpus})")
    try:
        while not stop.wait(3600):
            pass
    finally:
        server.close()
        collector.close()
    click.echo("dcsched exporter: stopped")
