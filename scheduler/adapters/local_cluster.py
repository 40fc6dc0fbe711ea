"""Several Ray nodes on one machine, for the tests, the benchmarks and for trying
multi-node placement without a second machine.

``start`` runs a ``ray.cluster_utils.Cluster``: a head with no CPUs (it only runs Ray's
own services, as dcsched's head on a real cluster would) and the worker nodes given, each
a ``dict`` of ``Cluster.add_node`` arguments (``num_cpus``, ``num_gpus``, ``resources``,
``labels``...). Every port is an explicit free loopback port and the dashboard binds
127.0.0.1. Ray's token auth must already be on in this process's environment (see
``token_auth``). ``Cluster.shutdown`` stops the nodes it started, by PID.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dcsched.paths import Paths
from dcsched.processes import free_port


def token_auth(home: Path) -> Path:
    """Turn Ray's token auth on for this process and the processes it starts, with a token
    created under ``home`` (the same files and variables as dcsched's own local head)."""
    from dcsched.adapters import ray_head

    token = ray_head.ensure_token(Paths(home))
    os.environ.update(ray_head.ray_env(token))
    return token


def start(workers: Sequence[Mapping[str, Any]]) -> Any:
    """The started cluster (``ray.cluster_utils.Cluster``), every worker node up."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_port": free_port(),
            "dashboard_host": "127.0.0.1",
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port(),
        },
    )
    try:
        for node in workers:
            cluster.add_node(
                metrics_export_port=free_port(), runtime_env_agent_port=free_port(), **node
            )
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()  # type: ignore[no-untyped-call]
        raise
    return cluster


@contextmanager
def running(workers: Sequence[Mapping[str, Any]]) -> Iterator[Any]:
    """``start`` for the duration of a ``with`` block."""
    cluster = start(workers)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def dashboard_url(cluster: Any) -> str:
    """The cluster's dashboard as an http URL."""
    url = str(cluster.webui_url)
    return url if url.startswith("http") else "http://" + url
