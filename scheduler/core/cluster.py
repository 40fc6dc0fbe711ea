"""A frozen view of the cluster that the policy decides against.

``available`` is what a node can still give: the smaller of what Ray reports free and
its total less what dcsched has already reserved there (Ray's view lags by a tick).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dcsched.core.resources import Resources


@dataclass(frozen=True)
class NodeState:
    id: str
    address: str
    alive: bool
    total: Resources
    available: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    utilization: float | None = None
    """Measured busyness, 0..1 (the larger of CPU and GPU use), work outside dcsched
    included; None when not measured. Used by the least-loaded placement policy."""


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[NodeState, ...]

    def alive_nodes(self) -> tuple[NodeState, ...]:
        return tuple(n for n in self.nodes if n.alive)

    def total(self) -> Resources:
        total = Resources()
        for node in self.alive_nodes():
            total = total + node.total
        return total

    def with_reservations(
        self,
        reserved: Mapping[str, Resources],
        released: Mapping[str, Resources] | None = None,
    ) -> ClusterSnapshot:
        """Cap each node's availability by its total less dcsched's own reservations.

        ``released``: what dcsched freed on a node moments ago, which the cluster's own
        report may not show yet; it counts as available (still within the cap), so a
        pass right after a release does not see the room as taken (and, say, preempt a
        second victim for it)."""
        nodes = []
        for node in self.nodes:
            held = reserved.get(node.id, Resources())
            cap = node.total - held
            seen = node.available + (released or {}).get(node.id, Resources())
            available = Resources(
                cpus=max(0.0, min(seen.cpus, cap.cpus)),
                gpus=max(0.0, min(seen.gpus, cap.gpus)),
                memory=max(0, min(seen.memory, cap.memory)),
            )
            nodes.append(
                NodeState(
                    node.id,
                    node.address,
                    node.alive,
                    node.total,
                    available,
                    node.labels,
                    node.utilization,
                )
            )
        return ClusterSnapshot(tuple(nodes))
