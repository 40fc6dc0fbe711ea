"""The job record: a scheduling request plus where it is in its lifecycle.

A ``Job`` is an immutable value. The store creates new values on each transition; the
core reads them to decide. Times are unix seconds (float), given by the caller's clock.
The core reads ``request`` only; ``kind`` and ``payload`` (the kind's own sections of the
spec, JSON-shaped) ride along for the adapters and are never interpreted here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from dcsched.core.spec import SchedulingRequest
from dcsched.core.waits import WaitKind


@dataclass(frozen=True)
class Job:
    id: str
    request: SchedulingRequest
    state: JobState
    submitted_at: float
    admitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    nodes: tuple[str, ...] = ()
    reason: str | None = None
    result: dict[str, Any] | None = field(default=None, compare=False)
    attempt: int = 0
    """How many times the job has been admitted (a preempted job runs again)."""
    kind: str = "run"
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The kind's sections of the spec (opaque to the core)."""
    reason_kind: WaitKind | None = None
    """While the job is PENDING and a pass has decided why it waits: the kind of wait
    (``reason`` says it in words); None otherwise (``reason`` is then the last
    transition's)."""

    @property
    def run_id(self) -> str:
        """The id of the current run on the executor: the job id for the first run (so the
        Ray job's submission id is the dcsched job id), ``<id>-run<N>`` for later ones."""
        return self.id if self.attempt <= 1 else f"{self.id}-run{self.attempt}"

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def team(self) -> str:
        return self.request.team

    @property
    def priority(self) -> str:
        return self.request.priority

    @property
    def per_worker(self) -> Resources:
        return self.request.resources.per_worker()

    @property
    def workers(self) -> int:
        return self.request.resources.workers


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's append-only history."""

    job_id: str
    at: float
    from_state: JobState | None
    to_state: JobState
    reason: str | None


def job_id_of(run_id: str) -> str:
    """The job of a run id (``Job.run_id``: the job id, ``-runN`` after the first run)."""
    head, sep, tail = run_id.rpartition("-run")
    return head if sep and tail.isdigit() else run_id
