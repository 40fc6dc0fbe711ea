"""One admission pass: which pending jobs start now, and why the others wait.

Input: the pending jobs, a cluster snapshot and the priority classes. Output: one
decision per pending job, in queue order. The pass is strict priority-then-FIFO: once a
job cannot be placed, the jobs after it wait behind it (no backfill yet), so a large
job at the head is never starved by a stream of small ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.job import Job
from dcsched.core.placement import NoFit, fits_cluster_at_all, place_gang
from dcsched.core.resources import Resources


@dataclass(frozen=True)
class Admit:
    job_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    job_id: str
    position: int
    reason: str


Decision = Admit | Wait


def queue_order(jobs: Sequence[Job], priorities: Mapping[str, int]) -> list[Job]:
    """Higher priority class first, then earlier submission, then id."""
    return sorted(jobs, key=lambda j: (-priorities.get(j.priority, 0), j.submitted_at, j.id))


def plan_admissions(
    pending: Sequence[Job],
    cluster: ClusterSnapshot,
    priorities: Mapping[str, int],
) -> list[Decision]:
    free: dict[str, Resources] = {n.id: n.available for n in cluster.alive_nodes()}
    decisions: list[Decision] = []
    blocked_by: Job | None = None
    position = 0
    for job in queue_order(pending, priorities):
        if blocked_by is not None:
            position += 1
            decisions.append(
                Wait(job.id, position, f"queued behind {blocked_by.id} (priority, then FIFO order)")
            )
            continue
        never = fits_cluster_at_all(job.per_worker, job.workers, cluster)
        if never is not None:
            # The cluster shrank below this job (nodes died); it waits for them to return
            # and does not block the queue, since it cannot start anyway.
            position += 1
            decisions.append(
                Wait(job.id, position, f"cannot fit the cluster as it is now: {never}")
            )
            continue
        placement = place_gang(job.per_worker, job.workers, free)
        if isinstance(placement, NoFit):
            position += 1
            decisions.append(Wait(job.id, position, f"waiting for resources: {placement.reason}"))
            blocked_by = job
            continue
        for node in placement.nodes:
            free[node] = free[node] - job.per_worker
        decisions.append(Admit(job.id, placement.nodes))
    return decisions
