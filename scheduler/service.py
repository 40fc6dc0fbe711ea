"""The scheduling service: the one place that wires the ports to the core.

Each pass (``tick``) first reconciles admitted and running jobs with the executor
(start reserved jobs, notice runs that started or ended, collect results, free
reservations), then asks the core which pending jobs to admit and applies the
decisions. The store is written *before* the executor acts, and every executor call is
idempotent and keyed by the job id, so a server killed at any point resumes correctly:
a restarted service reconciles what Ray did meanwhile and loses nothing.

Submissions are validated completely before a job is stored (spec, priority class,
plugin and its parameters, data source, and that the request can fit the cluster at
all); an accepted job is never dropped.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dcsched.core.admission import Admit, plan_admissions
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.placement import fits_cluster_at_all
from dcsched.core.priority import DEFAULT_PRIORITY_CLASSES, check_priority
from dcsched.core.resources import Resources
from dcsched.core.spec import JobSpec, SpecError, parse_spec
from dcsched.paths import Paths
from dcsched.ports import ClusterView, Executor, JobStore, RunPhase, RunStatus

logger = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.ADMITTED, JobState.RUNNING)


class SystemClock:
    def now(self) -> float:
        return time.time()


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        super().__init__(f"no job named {job_id!r}; `dcsched list` shows the jobs")


class JobAlreadyEnded(RuntimeError):
    pass


class JobEvents(Protocol):
    """What the service tells the metrics layer (dcsched.exporters.scheduler)."""

    def submitted(self, job: Job) -> None: ...

    def started(self, job: Job, queue_wait_s: float) -> None: ...

    def finished(self, job: Job, run_s: float | None) -> None: ...


class _NoEvents:
    def submitted(self, job: Job) -> None:
        pass

    def started(self, job: Job, queue_wait_s: float) -> None:
        pass

    def finished(self, job: Job, run_s: float | None) -> None:
        pass


@dataclass
class ServiceConfig:
    priorities: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES))
    reservation_timeout_s: float = 60.0
    # Passes run when woken (a submission, a cancel) and at least this often: quickly
    # while jobs are admitted or running (to notice starts and ends), slowly when idle.
    active_pass_interval_s: float = 0.1
    idle_pass_interval_s: float = 1.0


class SchedulerService:
    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        cluster: ClusterView,
        paths: Paths,
        check_runnable: Callable[[JobSpec], list[str]],
        clock: Any = None,
        events: JobEvents | None = None,
        config: ServiceConfig | None = None,
    ):
        self.store = store
        self.executor = executor
        self.cluster = cluster
        self.paths = paths
        self.check_runnable = check_runnable
        self.clock = clock or SystemClock()
        self.events: JobEvents = events or _NoEvents()
        self.config = config or ServiceConfig()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._positions: dict[str, int] = {}

    # -- requests ----------------------------------------------------------------------

    def submit(self, document: Any) -> Job:
        """Validate and store a job; raise SpecError listing every problem."""
        spec = parse_spec(document)
        problems = []
        try:
            check_priority(spec.priority, self.config.priorities)
        except ValueError as exc:
            problems.append(str(exc))
        problems.extend(self.check_runnable(spec))
        too_big = fits_cluster_at_all(
            spec.resources.per_worker(), spec.resources.workers, self.cluster.snapshot()
        )
        if too_big is not None:
            problems.append(f"resources: the request can never run here: {too_big}")
        if problems:
            raise SpecError(problems)
        job = Job(
            id=f"{spec.name[:48]}-{secrets.token_hex(4)}",
            spec=spec,
            state=JobState.PENDING,
            submitted_at=self.clock.now(),
        )
        self.store.add_job(job)
        logger.info("accepted job %s (team %s)", job.id, job.team)
        self.events.submitted(job)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.store.get_job(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state.is_terminal():
                raise JobAlreadyEnded(f"job {job_id} already ended as {job.state}")
            if job.state.holds_resources():
                self.executor.stop(job_id)
                self.executor.release(job_id)
            job = self.store.transition(
                job_id, JobState.CANCELLED, self.clock.now(), "cancelled by user"
            )
            self._positions.pop(job_id, None)
            self.events.finished(job, _run_seconds(job))
            self._wake.set()
            return job

    def position(self, job_id: str) -> int | None:
        return self._positions.get(job_id)

    def wake(self) -> None:
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            busy = True
            try:
                busy = self.tick()
            except Exception:
                logger.exception("scheduling pass failed; retrying next pass")
            interval = self.config.active_pass_interval_s
            if not busy:
                interval = self.config.idle_pass_interval_s
            self._wake.wait(interval)
            self._wake.clear()

    def tick(self) -> bool:
        """One pass; returns whether any job is admitted, running or pending."""
        with self._lock:
            active = self.store.list_jobs(states=ACTIVE_STATES)
            for job in active:
                try:
                    self._reconcile(job)
                except Exception:
                    logger.exception("could not reconcile job %s; retrying next pass", job.id)
            pending = self._admit_pending()
            return bool(active) or pending

    def _admit_pending(self) -> bool:
        pending = self.store.list_jobs(states=[JobState.PENDING])
        if not pending:
            self._positions = {}
            return False
        active = self.store.list_jobs(states=ACTIVE_STATES)
        snapshot = self.cluster.snapshot().with_reservations(_reserved_by_node(active))
        by_id = {job.id: job for job in pending}
        reasons: dict[str, str] = {}
        positions: dict[str, int] = {}
        for decision in plan_admissions(pending, snapshot, self.config.priorities):
            if isinstance(decision, Admit):
                self._admit(by_id[decision.job_id], decision.nodes)
            else:
                reasons[decision.job_id] = decision.reason
                positions[decision.job_id] = decision.position
        self._positions = positions
        self.store.set_reasons(reasons)
        return True

    def _admit(self, job: Job, nodes: tuple[str, ...]) -> None:
        now = self.clock.now()
        job = self.store.transition(job.id, JobState.ADMITTED, now, None, nodes=nodes)
        try:
            self.executor.reserve(job, nodes)
        except Exception as exc:
            logger.exception("reserving resources for job %s failed", job.id)
            self._requeue(job, f"could not reserve resources on Ray ({exc}); requeued")
            return
        # Starting is retried by later passes (see _reconcile) until the reservation
        # timeout, so a slow or briefly unavailable Ray does not cost the job its place.
        try:
            if self.executor.reservation_ready(job.id, timeout_s=2.0):
                self._start(job)
        except Exception:
            logger.exception("starting job %s failed; retrying next pass", job.id)

    def _start(self, job: Job) -> None:
        run_dir = self.paths.run_dir(job.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_file = run_dir / "spec.json"
        tmp = spec_file.with_suffix(".tmp")
        tmp.write_text(job.spec.model_dump_json(indent=2))
        os.replace(tmp, spec_file)
        self.executor.start(job, run_dir)

    def _requeue(self, job: Job, reason: str) -> None:
        self.executor.release(job.id)
        self.store.transition(job.id, JobState.PENDING, self.clock.now(), reason)

    def _reconcile(self, job: Job) -> None:
        status = self.executor.status(job.id)
        if status is None:
            if job.state is JobState.RUNNING:
                self._requeue(job, "Ray no longer knows this run (cluster restarted?); requeued")
                return
            # ADMITTED but not started yet: make sure the reservation exists, then start.
            problem = "its resources were not reserved"
            try:
                self.executor.reserve(job, job.nodes)
                if self.executor.reservation_ready(job.id, timeout_s=0.0):
                    self._start(job)
                    return
            except Exception as exc:
                logger.warning("starting job %s failed (%s); retrying", job.id, exc)
                problem = f"it could not be started ({exc})"
            waited = self.clock.now() - (job.admitted_at or 0)
            if waited > self.config.reservation_timeout_s:
                timeout = self.config.reservation_timeout_s
                self._requeue(job, f"{problem} within {timeout:g}s; requeued")
            return
        if status.phase is RunPhase.RUNNING and job.state is JobState.ADMITTED:
            now = self.clock.now()
            job = self.store.transition(job.id, JobState.RUNNING, now)
            self.events.started(job, now - job.submitted_at)
        elif status.phase.is_terminal():
            self._finish(job, status)

    def _finish(self, job: Job, status: RunStatus) -> None:
        now = self.clock.now()
        run_dir = self.paths.run_dir(job.id)
        if job.state is JobState.ADMITTED:  # ended before we saw it running
            self.events.started(job, now - job.submitted_at)
        if status.phase is RunPhase.SUCCEEDED:
            result = _read_json(run_dir / "result.json")
            if result is None or not (run_dir / "model").is_dir():
                job = self.store.transition(
                    job.id, JobState.FAILED, now, "the run ended without writing its result"
                )
            else:
                version = self.store.finish_with_model(
                    job.id,
                    now,
                    run_dir / "model",
                    metrics=result.get("metrics", {}),
                    plugin=str(result.get("plugin", job.spec.model.type)),
                    params=result.get("params", job.spec.model.params),
                    result=result,
                )
                job = self.store.get_job(job.id) or job
                logger.info("job %s succeeded; model %s:%s", job.id, version.name, version.version)
        elif status.phase is RunPhase.FAILED:
            job = self.store.transition(
                job.id, JobState.FAILED, now, _failure_reason(run_dir, status)
            )
        else:
            job = self.store.transition(
                job.id, JobState.CANCELLED, now, "the Ray job was stopped outside dcsched"
            )
        self.executor.release(job.id)
        self.events.finished(job, _run_seconds(job))


def _reserved_by_node(active: list[Job]) -> dict[str, Resources]:
    reserved: dict[str, Resources] = {}
    for job in active:
        for node in job.nodes:
            reserved[node] = reserved.get(node, Resources()) + job.per_worker
    return reserved


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return job.finished_at - job.started_at


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _failure_reason(run_dir: Path, status: RunStatus) -> str:
    try:
        text = (run_dir / "error.txt").read_text().strip()
    except OSError:
        text = ""
    return text or status.message or "the run failed; see `dcsched logs`"
