"""The job record: a spec plus where it is in its lifecycle.

A ``Job`` is an immutable value. The store creates new values on each transition; the
core reads them to decide. Times are unix seconds (float), given by the caller's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from dcsched.core.spec import JobSpec


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
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

    @property
    def run_id(self) -> str:
        """The id of the current run on the executor: the job id for the first run (so the
        Ray job's submission id is the dcsched job id), ``<id>-run<N>`` for later ones."""
        return self.id if self.attempt <= 1 else f"{self.id}-run{self.attempt}"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def team(self) -> str:
        return self.spec.team

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def priority(self) -> str:
        return self.spec.priority

    @property
    def per_worker(self) -> Resources:
        return self.spec.resources.per_worker()

    @property
    def workers(self) -> int:
        return self.spec.resources.workers


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's append-only history."""

    job_id: str
    at: float
    from_state: JobState | None
    to_state: JobState
    reason: str | None
