"""Ports: what the scheduling service needs from the world, as protocols.

Adapters implement them (``dcsched.adapters``): SQLite for the store, Ray for the
executor and cluster view. Tests and the simulator supply their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from dcsched.core.accounting import AllocationInterval
from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.job import Job, JobEvent
from dcsched.core.lifecycle import JobState
from dcsched.core.waits import WaitReason


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""
        ...


class RunPhase(StrEnum):
    """Where the executor says a job's run is; maps onto Ray's JobStatus."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in (RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.STOPPED)


RUN_PHASE_STATES: Mapping[RunPhase, JobState] = MappingProxyType(
    {
        RunPhase.PENDING: JobState.ADMITTED,
        RunPhase.RUNNING: JobState.RUNNING,
        RunPhase.SUCCEEDED: JobState.SUCCEEDED,
        RunPhase.FAILED: JobState.FAILED,
        RunPhase.STOPPED: JobState.CANCELLED,
    }
)
"""The job state each run phase means; the service's reconciliation moves an active job
(ADMITTED or RUNNING) there, through ``job_state_of``:

============  ===========  =============================================================
Ray's run     job state    what the service does
============  ===========  =============================================================
(unknown)     --           ADMITTED: (re)reserve and start it; after
                           ``reservation_timeout_s`` requeue it (PENDING). RUNNING: Ray
                           lost the run (a restarted cluster): requeue it (PENDING).
PENDING       ADMITTED     nothing yet (a RUNNING job stays RUNNING; its run-time limit
                           is still checked)
RUNNING       RUNNING      ADMITTED -> RUNNING (started_at); RUNNING: fail it past its
                           ``max_runtime`` (FAILED)
SUCCEEDED     SUCCEEDED    free the reservation; record the result (``train``: register
                           the model; no result or model written: FAILED)
FAILED        FAILED       free the reservation; the run's error (error.txt) is the reason
STOPPED       CANCELLED    free the reservation; "the Ray job was stopped outside dcsched"
============  ===========  =============================================================

A run that ended before the service saw it running goes ADMITTED straight to its end
state (it is counted as started then)."""


def job_state_of(phase: RunPhase) -> JobState:
    """The job state a run phase means (``RUN_PHASE_STATES``)."""
    return RUN_PHASE_STATES[phase]


@dataclass(frozen=True)
class RunStatus:
    phase: RunPhase
    message: str = ""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    job_id: str
    plugin: str
    params: dict[str, Any]
    metrics: dict[str, float]
    created_at: float
    checksum: str
    path: str


@dataclass
class Deployment:
    """An online-serving deployment (``dcsched.serving.controller``): one row of the
    store's ``deployments`` table. Its replicas are jobs; this is what they serve."""

    name: str
    team: str
    spec: dict[str, Any]
    """The ``kind: serve`` document as accepted (``serve.model`` as the user wrote it)."""
    model: str
    version: int
    plugin: str
    replicas: int
    min_replicas: int
    max_replicas: int
    target_in_flight: float
    host: str
    port: int
    state: str = "active"
    created_at: float = 0.0
    updated_at: float = 0.0
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    """replica job id -> {"slot": n, "host", "port", "version"}: what HAProxy points at."""
    message: str = ""
    scale_down_after_s: float = 30.0
    """Autoscaling: how long the load stays below target before one replica goes."""

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas < self.max_replicas


class RayUnreachable(RuntimeError):
    """Ray's cluster cannot be reached now (its head or GCS is gone, or does not answer).
    Nothing was changed; the scheduling pass leaves every job as it is and tries again."""


class StoreFull(RuntimeError):
    """The store could not write (disk or database full); nothing of the change was kept."""


class ModelNameTaken(Exception):
    """A model name belongs to another team (the team that registered its first version)."""

    def __init__(self, name: str, owner: str):
        self.name, self.owner = name, owner
        super().__init__(f"model {name} belongs to team {owner}; choose another name")


class JobStore(Protocol):
    def add_job(self, job: Job) -> None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[Job]: ...

    def list_job_states(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, JobState]]:
        """(id, state) of the jobs ``list_jobs`` returns, in the same order."""
        ...

    def jobs_by_id(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist, by id."""
        ...

    def transition(
        self,
        job_id: str,
        target: JobState,
        at: float,
        reason: str | None = None,
        *,
        nodes: Sequence[str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Job:
        """Move a job to ``target`` (checked by the lifecycle) and append the event."""
        ...

    def set_reasons(self, reasons: dict[str, WaitReason]) -> None:
        """Set why many pending jobs wait at once: each one's ``reason`` (the words) and
        ``reason_kind``. A transition clears ``reason_kind``."""
        ...

    def request_cancel(self, job_id: str, reason: str, at: float) -> None:
        """Record that a job is being cancelled (its run is being stopped), so that a
        server killed before the cancel ends finishes it at its next start."""
        ...

    def withdraw_cancel(self, job_id: str) -> None:
        """Forget a job's cancel request (its stop failed; the job is as it was)."""
        ...

    def cancel_requests(self) -> dict[str, str]:
        """The reasons of the cancels asked for and not yet carried out, by job id. A job's
        request goes when the job ends."""
        ...

    def events(self, job_id: str) -> list[JobEvent]: ...

    def finish_with_model(
        self,
        job_id: str,
        at: float,
        artifact: Path,
        metrics: dict[str, float],
        plugin: str,
        params: dict[str, Any],
        result: dict[str, Any],
    ) -> ModelVersion:
        """Register the artifact as the next version of the job's model and mark the job
        SUCCEEDED, atomically. Raise ModelNameTaken, changing nothing, if another team
        owns the model's name."""
        ...

    def model_versions(self, name: str) -> list[ModelVersion]: ...

    def model_owner(self, name: str) -> str | None:
        """The team that owns a model name: the team of the job that registered its first
        version; None if no model has that name."""
        ...

    def model_names(self) -> list[tuple[str, int, int, float]]:
        """(name, latest version, number of versions, updated_at) per model."""
        ...

    def allocation_intervals(self, since: float | None = None) -> list[AllocationInterval]: ...

    def save_config(self, text: str, at: float) -> None: ...

    def latest_config(self) -> tuple[str, float] | None: ...

    def counts_by_state(self) -> dict[tuple[str, str, str], int]:
        """Number of jobs per (state, team, kind)."""
        ...


class Executor(Protocol):
    """Runs admitted jobs. Every method is idempotent. Runs are keyed by ``Job.run_id``
    (the job id, with a suffix when a job runs again after a preemption)."""

    def reserve(self, job: Job, nodes: Sequence[str]) -> None:
        """Reserve one bundle per worker on the given nodes (a gang)."""
        ...

    def reservation_ready(self, run_id: str, timeout_s: float) -> bool: ...

    def start(self, job: Job, run_dir: Path) -> None: ...

    def status(self, run_id: str) -> RunStatus | None:
        """None when the executor has never heard of the run."""
        ...

    def stop(self, run_id: str) -> None: ...

    def release(self, run_id: str) -> None:
        """Free the run's reservation; a no-op if there is none."""
        ...

    def reservations(self) -> dict[str, tuple[str, ...]]:
        """Every reservation dcsched holds on the cluster: run id -> the node of each of
        its bundles (empty while a bundle is not placed)."""
        ...

    def logs(self, run_id: str) -> str: ...


class ClusterView(Protocol):
    def snapshot(self) -> ClusterSnapshot: ...


@dataclass(frozen=True)
class TokenRecord:
    """A principal's token as stored: never the token itself, only its hash."""

    name: str
    role: str
    team: str | None
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    at: float
    principal: str
    action: str
    object: str
    remote: str
    outcome: str


class PrincipalExists(Exception):
    """An active token of that name already exists."""


class AccessStore(Protocol):
    """Principals (their hashed tokens) and the audit log of state-changing calls."""

    def add_principal(
        self, name: str, role: str, team: str | None, token_hash: str, at: float
    ) -> TokenRecord:
        """Raise PrincipalExists if an active token has that name."""
        ...

    def principal_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The active (not revoked) principal holding that token, if any."""
        ...

    def principals(self, include_revoked: bool = False) -> list[TokenRecord]: ...

    def revoke_principal(self, name: str, at: float) -> TokenRecord | None:
        """Revoke the active token of that name; None if there is none."""
        ...

    def add_audit(self, entry: AuditEntry) -> None: ...

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest entries first."""
        ...
