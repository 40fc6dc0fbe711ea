"""Gang placement: choose a node for every worker of a job, or none at all.

Policy ``binpack`` (best fit): a gang goes on the fewest nodes that can hold it; among
nodes that hold it whole, the one left with the least free capacity, so that whole
nodes stay free for large jobs. Ties break by node id, so decisions are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.resources import Resources


@dataclass(frozen=True)
class Placement:
    """One node id per worker, in worker order."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NoFit:
    reason: str


def workers_that_fit(per_worker: Resources, free: Resources) -> int:
    """How many workers of this size fit in ``free``."""
    counts = []
    for need, have in (
        (per_worker.cpus, free.cpus),
        (per_worker.gpus, free.gpus),
        (float(per_worker.memory), float(free.memory)),
    ):
        if need > 0:
            counts.append(math.floor(have / need + 1e-9))
    return max(0, min(counts)) if counts else 1_000_000


def place_gang(
    per_worker: Resources,
    workers: int,
    free: Mapping[str, Resources],
) -> Placement | NoFit:
    """Place ``workers`` equal workers on nodes with ``free`` capacity (binpack)."""
    capacity = {node: workers_that_fit(per_worker, res) for node, res in free.items()}
    whole = [node for node, count in capacity.items() if count >= workers]
    if whole:
        need = per_worker.scaled(workers)

        def leftover(node: str) -> tuple[float, float, int, str]:
            rest = free[node] - need
            return (rest.gpus, rest.cpus, rest.memory, node)

        best = min(whole, key=leftover)
        return Placement((best,) * workers)
    # Split over the fewest nodes: take the nodes that hold the most workers first.
    chosen: list[str] = []
    for node in sorted(capacity, key=lambda n: (-capacity[n], n)):
        take = min(capacity[node], workers - len(chosen))
        if take <= 0:
            break
        chosen.extend([node] * take)
    if len(chosen) == workers:
        return Placement(tuple(chosen))
    return NoFit(_why_no_fit(per_worker, workers, free, capacity))


def _why_no_fit(
    per_worker: Resources, workers: int, free: Mapping[str, Resources], capacity: Mapping[str, int]
) -> str:
    if not free:
        return "no alive nodes in the cluster"
    best_node = max(free, key=lambda n: (capacity[n], free[n].gpus, free[n].cpus, n))
    total_fit = sum(capacity.values())
    if workers == 1:
        most = free[best_node]
        return (
            f"needs {per_worker.describe()} on one node; the most free on any node is "
            f"{most.describe()}"
        )
    return (
        f"needs {workers} workers of {per_worker.describe()}; free capacity holds "
        f"{total_fit} of them"
    )


def fits_cluster_at_all(
    per_worker: Resources, workers: int, cluster: ClusterSnapshot
) -> str | None:
    """Why the request can never run on this cluster even when empty, or None if it can."""
    nodes = cluster.alive_nodes()
    if not nodes:
        return "the cluster has no alive nodes"
    largest = cluster.largest_node()
    if not any(per_worker.fits_in(n.total) for n in nodes):
        return (
            f"one worker needs {per_worker.describe()}, but no node is that large "
            f"(largest node: {largest.describe()}); lower the per-worker request"
        )
    empty = {n.id: n.total for n in nodes}
    if isinstance(place_gang(per_worker, workers, empty), NoFit):
        total = cluster.total()
        return (
            f"needs {workers} workers of {per_worker.describe()} "
            f"({per_worker.scaled(workers).describe()} in all), more than the whole cluster "
            f"holds ({len(nodes)} nodes, {total.describe()}); lower workers or per-worker resources"
        )
    return None
