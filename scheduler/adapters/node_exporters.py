"""One node exporter on every Ray node, run as a detached Ray actor pinned to that node.

The server keeps them (``ExporterFleet.run_forever`` in a thread): each pass it starts an
exporter on any alive node that has none (nodes that join later get one too), writes the
Prometheus file_sd targets to ``$DCSCHED_HOME/prometheus/exporters.json`` (labelled with
the Ray node id), and caches each node's latest measured usage. The cache feeds the
cluster view (``utilization``, for the least-loaded placement) and ``/v1/nodes``.

An exporter binds the node's address (or the configured host: 127.0.0.1 when the
server runs its own local Ray head) on the configured port; where that port is taken
(several Ray nodes on one host, as in tests) it takes a free one, and the file_sd file
says which. The actors are detached, so they outlive a server restart; they end with the
Ray cluster (``dcsched down`` stops the head that ``dcsched up`` started).

Ray is imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NAMESPACE = "dcsched"
DEFAULT_EXPORTER_PORT = 9478


def actor_name(node_id: str) -> str:
    return f"dcsched-exporter-{node_id}"


class _ExporterActor:
    """Runs ``dcsched.exporters.node`` inside the actor's process on its node."""

    def __init__(self, node_id: str, host: str, port: int):
        from dcsched.exporters.node import ExporterError, NodeExporter, serve

        self.node_id = node_id
        self.host = host
        self.exporter = NodeExporter(node=node_id)
        try:
            self.server, self.port = serve(host, port, self.exporter)
        except ExporterError:
            if port == 0:
                raise
            self.server, self.port = serve(host, 0, self.exporter)

    def target(self) -> dict[str, Any]:
        return {"node": self.node_id, "host": self.host, "port": self.port, "pid": os.getpid()}

    def usage(self) -> dict[str, Any]:
        result: dict[str, Any] = self.exporter.snapshot().as_dict()
        return result


class ExporterFleet:
    """Starts and tracks the per-node exporter actors; see the module docstring."""

    def __init__(
        self,
        sd_file: Path,
        port: int = DEFAULT_EXPORTER_PORT,
        host: str | None = None,
        interval_s: float = 5.0,
        call_timeout_s: float = 10.0,
    ):
        self.sd_file = sd_file
        self.port = port
        self.host = host  # None: each node's own address (as Ray knows it)
        self.interval_s = interval_s
        self.call_timeout_s = call_timeout_s
        self._lock = threading.Lock()
        self._actors: dict[str, Any] = {}
        self._targets: dict[str, dict[str, Any]] = {}
        self._usage: dict[str, dict[str, Any]] = {}

    # -- what the rest of the server reads ---------------------------------------------

    def usage(self) -> dict[str, dict[str, Any]]:
        """The latest measured usage of each node that reported (node id -> NodeUsage
        as a dict, see dcsched.exporters.node)."""
        with self._lock:
            return dict(self._usage)

    def targets(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._targets)

    # -- the loop ------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.refresh()
            except Exception:
                logger.exception("updating the node exporters failed; retrying")
            stop.wait(self.interval_s)

    def refresh(self) -> None:
        import ray

        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for node_id, node in alive.items():
            if node_id not in self._actors:
                self._actors[node_id] = self._ensure_actor(
                    node_id, self.host or node["NodeManagerAddress"]
                )
        for node_id in list(self._actors):
            if node_id not in alive:
                del self._actors[node_id]
        refs = {
            node_id: (a.target.remote(), a.usage.remote()) for node_id, a in self._actors.items()
        }
        targets: dict[str, dict[str, Any]] = {}
        usage: dict[str, dict[str, Any]] = {}
        for node_id, (target_ref, usage_ref) in refs.items():
            try:
                targets[node_id] = ray.get(target_ref, timeout=self.call_timeout_s)
                usage[node_id] = ray.get(usage_ref, timeout=self.call_timeout_s)
            except Exception as exc:
                logger.warning("the exporter on node %s did not answer: %s", node_id, exc)
                self._actors.pop(node_id, None)  # look it up (or start it) again next pass
        with self._lock:
            self._targets = targets
            self._usage = usage
        self._write_sd(targets)

    def _ensure_actor(self, node_id: str, host: str) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        name = actor_name(node_id)
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            pass
        remote_class = ray.remote(_ExporterActor)
        logger.info("starting the node exporter on node %s", node_id)
        return remote_class.options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(node_id, host, self.port)

    def _write_sd(self, targets: dict[str, dict[str, Any]]) -> None:
        groups = [
            {"targets": [f"{t['host']}:{t['port']}"], "labels": {"node": node_id}}
            for node_id, t in sorted(targets.items())
        ]
        self.sd_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        os.replace(tmp, self.sd_file)
