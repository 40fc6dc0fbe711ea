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

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dcsched.core import accounting
from dcsched.core.accounting import AllocationInterval
from dcsched.core.activeset import ActiveSet
from dcsched.core.admission import (
    Admit,
    Cancel,
    Preempt,
    SchedulingInput,
    Wait,
    plan,
    preemptors_after,
)
from dcsched.core.cluster import ClusterSnapshot
from dcsched.core.config import ClusterConfig, load_config_yaml
from dcsched.core.fairshare import decayed_usage
from dcsched.core.job import Job, JobEvent, job_id_of
from dcsched.core.lifecycle import JobState
from dcsched.core.placement import fits_cluster_at_all
from dcsched.core.resources import Resources
from dcsched.core.spec import SpecError
from dcsched.core.units import format_duration
from dcsched.kinds import AnyJobSpec, document_of, parse_job_spec, split
from dcsched.paths import Paths
from dcsched.ports import (
    Clock,
    ClusterView,
    Executor,
    JobStore,
    ModelNameTaken,
    ModelVersion,
    RayUnreachable,
    RunStatus,
    job_state_of,
)
from dcsched.rundir import RunDir

logger = logging.getLogger(__name__)

ACTIVE_STATES = (JobState.ADMITTED, JobState.RUNNING)
STOPPED_OUTSIDE = "the Ray job was stopped outside dcsched"


class SystemClock:
    """The ``Clock`` port on the system's wall clock."""

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

    def preempted(self, job: Job) -> None: ...

    def admission_pass(self, seconds: float, pending: int) -> None: ...


class Driver(Protocol):
    """Drives jobs that hold no resources themselves (``kind: tune``: its trials are
    ordinary jobs); called by the service under its lock (dcsched.tuning.controller)."""

    def step(self) -> None: ...

    def owns(self, job: Job) -> bool:
        """Whether ``job`` is one the driver made (its result is the driver's to use)."""
        ...

    def cancelled(self, job: Job) -> None: ...


DRIVEN_KINDS = frozenset({"tune"})
"""Kinds whose jobs hold no resources: never admitted, reconciled or counted as usage."""


def _holding(jobs: list[Job]) -> list[Job]:
    return [job for job in jobs if job.kind not in DRIVEN_KINDS]


class _NoEvents:
    def submitted(self, job: Job) -> None:
        pass

    def started(self, job: Job, queue_wait_s: float) -> None:
        pass

    def finished(self, job: Job, run_s: float | None) -> None:
        pass

    def preempted(self, job: Job) -> None:
        pass

    def admission_pass(self, seconds: float, pending: int) -> None:
        pass


@dataclass
class ServiceSettings:
    """Timings of the loop (not policy: policy is the ClusterConfig)."""

    reservation_timeout_s: float = 60.0
    # Passes run when woken (a submission, a cancel) and at least this often: quickly
    # while jobs are admitted or running (to notice starts and ends), slowly when idle.
    active_pass_interval_s: float = 0.1
    idle_pass_interval_s: float = 1.0
    # Every so often (and at start) free reservations that no active job owns: what a
    # crash between two steps, or a transient Ray error, could have left behind.
    sweep_interval_s: float = 5.0
    # After a failed pass the loop waits longer each time, up to this.
    max_error_backoff_s: float = 5.0
    # How long freed resources count as free before the cluster's own report shows them.
    release_credit_s: float = 5.0


class SchedulerService:
    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        cluster: ClusterView,
        paths: Paths,
        check_runnable: Callable[[AnyJobSpec], list[str]],
        clock: Clock | None = None,
        events: JobEvents | None = None,
        settings: ServiceSettings | None = None,
        config: ClusterConfig | None = None,
        run_document: Callable[[Job], dict[str, Any]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        """``run_document`` gives the spec document a run reads (spec.json), with its
        inputs resolved to paths; by default the stored document as it is."""
        self.store = store
        self.run_document = run_document or _stored_document
        self.executor = executor
        self.cluster = cluster
        self.paths = paths
        self.check_runnable = check_runnable
        self.clock: Clock = clock or SystemClock()
        self.events: JobEvents = events or _NoEvents()
        self.settings = settings or ServiceSettings()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._waiting: dict[str, Wait] = {}
        self._preemptors: frozenset[str] = frozenset()
        """Jobs whose Preempt was applied and that wait for the room (SchedulingInput)."""
        self.config = config or self._stored_config() or ClusterConfig()
        self.monotonic = monotonic
        self._running_since: dict[str, float] = {}
        """run id -> monotonic time it started running (run-time limits ignore wall-clock
        jumps); a run seen for the first time after a restart is dated from started_at."""
        self._next_sweep = 0.0
        self._released: list[tuple[float, str, Resources]] = []
        """(until, node, resources) freed moments ago; see ClusterSnapshot.with_reservations."""
        self._last_snapshot = ClusterSnapshot(())
        """Ray's view as last seen: what reads show while Ray is unreachable."""
        self.drivers: list[Driver] = []
        self._cancelling: dict[str, int] = {}
        """job id -> cancels of it whose stop is under way outside the lock (``cancel``):
        passes neither reconcile, requeue nor preempt such a job meanwhile."""

    # -- configuration -----------------------------------------------------------------

    def _stored_config(self) -> ClusterConfig | None:
        stored = self.store.latest_config()
        if stored is None:
            return None
        try:
            return load_config_yaml(stored[0])
        except SpecError as exc:
            logger.error("the stored configuration is no longer valid (%s); using defaults", exc)
            return None

    def apply_config(self, text: str) -> ClusterConfig:
        """Validate, record and put in force a cluster configuration (YAML text)."""
        config = load_config_yaml(text)
        with self._lock:
            self.store.save_config(text, self.clock.now())
            self.config = config
        logger.info("applied a new cluster configuration")
        self._wake.set()
        return config

    # -- requests ----------------------------------------------------------------------

    def submit(self, document: Any) -> Job:
        """Validate and store a job; raise SpecError listing every problem."""
        spec = parse_job_spec(document)
        config = self.config
        problems = []
        priority_class = config.priority_class(spec.priority)
        if priority_class is None:
            known = ", ".join(
                c.name for c in sorted(config.priority_classes, key=lambda c: c.value)
            )
            problems.append(f"priority: unknown priority class {spec.priority!r}; known: {known}")
        elif (
            spec.preemptible is False and priority_class.preemptible and not priority_class.opt_out
        ):
            problems.append(
                f"preemptible: priority class {priority_class.name!r} does not let jobs opt out "
                "of preemption; use a class that does, or drop `preemptible: false`"
            )
        if config.team(spec.team) is None:
            listed = ", ".join(t.name for t in config.teams)
            problems.append(f"team: {spec.team!r} is not a team of this cluster; teams: {listed}")
        for dependency in spec.depends_on:
            if self.store.get_job(dependency) is None:
                problems.append(f"depends_on: no job named {dependency!r}")
        problems.extend(self._model_name_problems(spec))
        problems.extend(self.check_runnable(spec))
        selector = spec.node_selector or None
        # While Ray is unreachable, the cluster as last seen decides (none seen: no check).
        last_seen = self._known_snapshot()
        too_big = None
        if last_seen.nodes:
            too_big = fits_cluster_at_all(
                spec.resources.per_worker(), spec.resources.workers, last_seen, selector
            )
        if too_big is not None:
            problems.append(f"resources: the request can never run here: {too_big}")
        if problems:
            raise SpecError(problems)
        request, kind, payload = split(spec)
        job = Job(
            id=f"{spec.name[:48]}-{secrets.token_hex(4)}",
            request=request,
            state=JobState.PENDING,
            submitted_at=self.clock.now(),
            kind=kind,
            payload=payload,
        )
        self.store.add_job(job)
        logger.info("accepted job %s (team %s)", job.id, job.team)
        self.events.submitted(job)
        self._wake.set()
        return job

    def _model_name_problems(self, spec: AnyJobSpec) -> list[str]:
        """A ``train`` (or ``tune``) job's name is its model's: another team's model name
        is refused (registering would otherwise hand them a new "latest" version of it)."""
        if spec.kind not in ("train", "tune"):
            return []
        owner = self.store.model_owner(spec.name)
        if owner is None or owner == spec.team:
            return []
        return [f"name: {ModelNameTaken(spec.name, owner)}"]

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> Job:
        """Cancel a job; a job that holds resources is stopped first, and freed before it
        is reported CANCELLED. The stop runs *outside* the service lock: a Ray job whose
        stop hangs (up to the Ray bridge's call timeout) must hold up neither the
        scheduling pass nor other cancels. Under the lock the intent is recorded
        (``_cancelling``: passes leave the job to this call meanwhile); after the stop,
        under the lock again, the reservation is freed and the job marked CANCELLED.
        Called from inside a pass (a driver cancelling a trial), the lock is held
        throughout, as before."""
        with self._lock:
            job = self.store.get_job(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.state.is_terminal():
                raise JobAlreadyEnded(f"job {job_id} already ended as {job.state}")
            if not job.state.holds_resources():
                return self._record_cancel(job, reason)
            # Durable first: a server killed during the stop finishes this cancel at its
            # first pass (``_finish_cancel_requests``).
            self.store.request_cancel(job.id, reason, self.clock.now())
            self._cancelling[job.id] = self._cancelling.get(job.id, 0) + 1
        fault_point("cancel:after-request")
        unreachable = False
        try:
            self.executor.stop(job.run_id)
        except RayUnreachable:
            unreachable = True
        except BaseException:
            with self._lock:
                if not self._stop_cancelling(job.id):
                    self.store.withdraw_cancel(job.id)  # the passes' again, as it was
            raise
        with self._lock:
            self._stop_cancelling(job.id)
            current = self.store.get_job(job.id)
            if current is None or current.state.is_terminal():
                return current or job  # a concurrent cancel of the same job finished it
            if not unreachable and current.state.holds_resources():
                try:
                    self._release(current.run_id, current.nodes, current.per_worker)
                except RayUnreachable:
                    unreachable = True
            if unreachable:
                # Recorded now; the first sweep after Ray returns stops and frees it.
                logger.warning("job %s cancelled while Ray is unreachable", job_id)
                self._next_sweep = 0.0
            return self._record_cancel(current, reason)

    def _stop_cancelling(self, job_id: str) -> int:
        """One cancel of the job is over; how many others are still under way."""
        left = self._cancelling.pop(job_id) - 1
        if left:
            self._cancelling[job_id] = left
        return left

    def _finish_cancel_requests(self, active: list[Job]) -> set[str]:
        """Carry out the cancels that a killed server left half done (``cancel`` records
        each before it stops the run): stop the run, free it, mark the job CANCELLED with
        the reason asked for. Cancels under way in this process are left to themselves.
        The ids of the jobs it cancelled."""
        requested = self.store.cancel_requests()
        finished: set[str] = set()
        if not requested:
            return finished
        holding = {job.id: job for job in active}
        for job_id, reason in requested.items():
            if job_id in self._cancelling:
                continue
            job = holding.get(job_id) or self.store.get_job(job_id)
            if job is None or job.state.is_terminal():
                continue
            logger.warning("finishing the cancel of job %s that a server restart cut short", job_id)
            if job.state.holds_resources():
                self.executor.stop(job.run_id)
                self._release(job.run_id, job.nodes, job.per_worker)
            self._record_cancel(job, reason)
            finished.add(job_id)
        return finished

    def _record_cancel(self, job: Job, reason: str) -> Job:
        """Mark a job CANCELLED (anything it held is freed already) and tell whom it may
        concern."""
        job = self.store.transition(job.id, JobState.CANCELLED, self.clock.now(), reason)
        self._waiting.pop(job.id, None)
        self.events.finished(job, _run_seconds(job))
        for driver in self.drivers:
            driver.cancelled(job)
        self._wake.set()
        return job

    def position(self, job_id: str) -> int | None:
        waiting = self._waiting.get(job_id)
        return waiting.position if waiting else None

    def estimated_start(self, job_id: str) -> float | None:
        waiting = self._waiting.get(job_id)
        return waiting.estimated_start if waiting else None

    def wake(self) -> None:
        self._wake.set()

    # -- read models: what the API reads (dcsched.adapters.http_api) ---------------------

    def job(self, job_id: str) -> Job | None:
        return self.store.get_job(job_id)

    def jobs(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs of every kind, newest first (``jobs_in`` leaves out driven kinds)."""
        return self.store.list_jobs(states=states, team=team, limit=limit)

    def job_states(
        self,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, JobState]]:
        """(id, state) of what ``jobs`` returns, in its order, without reading the jobs."""
        return self.store.list_job_states(states=states, team=team, limit=limit)

    def jobs_by_id(self, job_ids: Sequence[str]) -> dict[str, Job]:
        return self.store.jobs_by_id(job_ids)

    def history(self, job_id: str) -> list[JobEvent]:
        """A job's history, oldest first."""
        return self.store.events(job_id)

    def logs(self, run_id: str) -> str:
        """What a run's driver wrote, whole, as the executor has it: only for runs whose
        driver has no log file of its own (``RunDir.driver_log``, which every Ray Job's
        driver and every hosted trial now writes), started by an older server."""
        return self.executor.logs(run_id)

    def stored_config(self) -> tuple[str, float] | None:
        """The configuration in force as applied (YAML text, when), if any was."""
        return self.store.latest_config()

    def model_names(self) -> list[tuple[str, int, int, float]]:
        """(name, latest version, number of versions, updated_at) per model."""
        return self.store.model_names()

    def model_versions(self, name: str) -> list[ModelVersion]:
        return self.store.model_versions(name)

    # -- what the metrics read at scrape time (dcsched.exporters.scheduler.SchedulerState)

    def now(self) -> float:
        return self.clock.now()

    def jobs_in(self, states: Sequence[JobState]) -> list[Job]:
        return _holding(self.store.list_jobs(states=states))

    def ray_status(self) -> dict[str, Any]:
        """Whether Ray answers: ``reachable``, ``since`` (when that last changed) and
        ``error`` (why not). A cluster view that cannot lose Ray is always reachable."""
        health = getattr(self.cluster, "health", None)
        if health is None:
            return {"reachable": True, "since": None, "error": ""}
        result: dict[str, Any] = health().as_dict()
        return result

    def _ray_snapshot(self) -> ClusterSnapshot:
        """Ray's view now (raises RayUnreachable), remembered for when Ray is unreachable."""
        snapshot = self.cluster.snapshot()
        self._last_snapshot = snapshot
        return snapshot

    def ray_view(self) -> ClusterSnapshot:
        """Ray's view now (totals and what Ray says is free), or as last seen while Ray is
        unreachable (``ray_status`` says which)."""
        return self._known_snapshot()

    def _known_snapshot(self) -> ClusterSnapshot:
        """Ray's view now, or as last seen while Ray is unreachable."""
        try:
            return self._ray_snapshot()
        except RayUnreachable:
            return self._last_snapshot

    def cluster_snapshot(
        self, active: list[Job] | None = None, fresh: bool = False
    ) -> ClusterSnapshot:
        """The cluster as the policy sees it: Ray's view less dcsched's reservations
        (those of ``active``, the ADMITTED and RUNNING jobs, read here when not given).
        ``fresh``: Ray's view now or RayUnreachable; otherwise the last one seen will do."""
        if active is None:
            active = self.store.list_jobs(states=ACTIVE_STATES)
        now = self.monotonic()
        self._released = [entry for entry in self._released if entry[0] > now]
        credit: dict[str, Resources] = {}
        for _, node, resources in self._released:
            credit[node] = credit.get(node, Resources()) + resources
        ray_view = self._ray_snapshot() if fresh else self._known_snapshot()
        return ray_view.with_reservations(_reserved_by_node(active), credit)

    def _release(self, run_id: str, nodes: Sequence[str], per_worker: Resources) -> None:
        """Free a run's reservation, and count it free until the cluster's report does."""
        self.executor.release(run_id)
        self._running_since.pop(run_id, None)
        until = self.monotonic() + self.settings.release_credit_s
        self._released.extend((until, node, per_worker) for node in nodes)

    def run_files(self, job_id: str) -> RunDir:
        return RunDir(self.paths.run_dir(job_id))

    def run_progress(self, job: Job) -> dict[str, Any] | None:
        return self.run_files(job.id).last_progress()

    def teams_view(
        self, active: list[Job] | None = None, pending: list[Job] | None = None
    ) -> list[dict[str, Any]]:
        """Each team's nominal quota, what it uses now, what of that is borrowed, and its
        pending work. Teams listed in the configuration come first, then any other team
        with pending or active jobs. ``active`` and ``pending`` are read here when not
        given (a caller that has them already saves the queries)."""
        config = self.config
        active = _holding(
            active if active is not None else self.store.list_jobs(states=ACTIVE_STATES)
        )
        if pending is None:
            pending = self.store.list_jobs(states=[JobState.PENDING])
        pending = _holding(pending)
        names = [t.name for t in config.teams]
        for job in active + pending:
            if job.team not in names:
                names.append(job.team)
        rows = []
        for name in names:
            team = config.team(name)
            used = _sum_total(j for j in active if j.team == name)
            waiting = [j for j in pending if j.team == name]
            quota = team.quota if team else None
            nominal = quota.caps() if quota else None
            borrowed = None
            if nominal is not None:
                borrowed = Resources(
                    max(0.0, used.cpus - nominal.cpus),
                    max(0.0, used.gpus - nominal.gpus),
                    max(0, used.memory - nominal.memory),
                )
            rows.append(
                {
                    "name": name,
                    "cohort": team.cohort if team else None,
                    "weight": team.weight if team else None,
                    "quota": quota.model_dump(mode="json") if quota else None,
                    "used": used.as_dict(),
                    "borrowed": borrowed.as_dict() if borrowed else None,
                    "running": sum(1 for j in active if j.team == name),
                    "pending": len(waiting),
                    "pending_resources": _sum_total(waiting).as_dict(),
                }
            )
        return rows

    # -- the loop ----------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop``. A failing pass is logged once per distinct
        error (with its traceback), then retried with a growing pause."""
        failures = 0
        last_error = ""
        while not stop.is_set():
            busy = True
            try:
                busy = self.tick()
            except RayUnreachable as exc:
                failures += 1
                error = f"Ray unreachable: {exc}"
                if error != last_error:
                    logger.warning("%s; jobs stay as they are until it answers again", error)
                    last_error = error
                self._next_sweep = 0.0  # sweep at the first pass that reaches Ray again
            except Exception as exc:
                failures += 1
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:
                    logger.exception("scheduling pass failed; retrying with back-off")
                    last_error = error
                else:
                    logger.debug("scheduling pass failed again: %s", error)
            else:
                if failures:
                    logger.info("scheduling passes work again after %s failures", failures)
                failures, last_error = 0, ""
            interval = self.settings.active_pass_interval_s
            if not busy:
                interval = self.settings.idle_pass_interval_s
            if failures:
                interval = min(
                    self.settings.max_error_backoff_s,
                    self.settings.active_pass_interval_s * 2**failures,
                )
            self._wake.wait(interval)
            self._wake.clear()

    def tick(self) -> bool:
        """One pass; returns whether any job is admitted, running or pending."""
        with self._lock:
            snapshot = self._ray_snapshot()  # Ray unreachable: this pass changes nothing
            active = _holding(self.store.list_jobs(states=ACTIVE_STATES))
            finished = self._finish_cancel_requests(active)
            active = [job for job in active if job.id not in finished]
            self._sweep(active)
            lost = self._lost_nodes(active, snapshot)
            for job in active:
                if job.id in self._cancelling:
                    continue  # its cancel stops, frees and records it (``cancel``)
                try:
                    if lost and lost.intersection(job.nodes):
                        self._requeue_after_node_loss(job, lost)
                    else:
                        self._reconcile(job)
                except RayUnreachable:
                    raise
                except Exception:
                    logger.exception("could not reconcile job %s; retrying next pass", job.id)
            for driver in self.drivers:
                driver.step()
            pending = self._admit_pending()
            return bool(active) or pending

    def _sweep(self, active: list[Job]) -> None:
        """Free every reservation (and stop its run) that belongs to a job of this store
        that is not active, or to an old run of an active job. Runs at the first pass
        and every ``sweep_interval_s``: it closes the windows a crash can leave (a run
        ended but not released, a preemption victim requeued but not yet stopped)."""
        now = self.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.settings.sweep_interval_s
        current = {job.run_id for job in active}
        for run_id, nodes in self.executor.reservations().items():
            owner = None if run_id in current else self.store.get_job(job_id_of(run_id))
            if owner is None:
                continue  # active, or another scheduler's run on a shared cluster
            logger.warning("freeing run %s: no active job owns it (after a crash?)", run_id)
            self.executor.stop(run_id)
            self._release(run_id, nodes, owner.per_worker)

    def _lost_nodes(self, active: list[Job], snapshot: ClusterSnapshot) -> set[str]:
        """The nodes active jobs hold that the cluster no longer has alive."""
        held = {node for job in active for node in job.nodes}
        if not held:
            return set()
        alive = {node.id for node in snapshot.nodes if node.alive}
        return held - alive

    def _requeue_after_node_loss(self, job: Job, lost: set[str]) -> None:
        names = ", ".join(sorted(node[:12] for node in lost.intersection(job.nodes)))
        logger.warning("job %s lost node(s) %s; requeuing it", job.id, names)
        self.executor.stop(job.run_id)
        self._requeue(job, f"node {names} was lost; requeued to resume from its last checkpoint")

    def _admit_pending(self) -> bool:
        pending = _holding(self.store.list_jobs(states=[JobState.PENDING]))
        if not pending:
            self._waiting = {}
            return False
        now = self.clock.now()
        config = self.config
        active = _holding(self.store.list_jobs(states=ACTIVE_STATES))
        snapshot = self.cluster_snapshot(active, fresh=True)
        started = time.perf_counter()
        decisions = plan(
            SchedulingInput(
                pending=pending,
                active=ActiveSet(snapshot, config, held=active),
                now=now,
                past_usage=self._past_usage(now) if _fair_between_teams(config, pending) else {},
                job_states=self._dependency_states(pending),
                preemptors=self._preemptors.intersection(j.id for j in pending),
            )
        )
        self.events.admission_pass(time.perf_counter() - started, len(pending))
        by_id = {job.id: job for job in pending + active}
        waiting: dict[str, Wait] = {}
        for decision in decisions:
            if isinstance(decision, Admit):
                self._admit(by_id[decision.job_id], decision.nodes)
            elif isinstance(decision, Preempt):
                for victim in decision.victims:
                    self._preempt(by_id[victim], decision.reason)
                waiting[decision.job_id] = decision.pending()
            elif isinstance(decision, Cancel):
                job = self.store.transition(
                    decision.job_id, JobState.CANCELLED, now, decision.reason
                )
                self.events.finished(job, None)
            else:
                waiting[decision.job_id] = decision
        self._waiting = waiting
        self._preemptors = preemptors_after(self._preemptors, decisions)
        self.store.set_reasons({job_id: w.why for job_id, w in waiting.items()})
        return True

    def _past_usage(self, now: float) -> dict[str, Resources]:
        half_life = self.config.queueing.fair_share_half_life
        return decayed_usage(self.allocations(since=now - 10 * half_life), now, half_life)

    def allocations(self, since: float | None = None) -> list[AllocationInterval]:
        """Every interval in which a job held resources (ending at or after ``since``)."""
        return self.store.allocation_intervals(since=since)

    def usage(self, team: str | None = None, since: float | None = None) -> dict[str, Any]:
        """Allocated GPU-, CPU- and memory-seconds per job and per team in [since, now]."""
        now = self.clock.now()
        intervals = [i for i in self.allocations(since) if team is None or i.team == team]
        names = {i.job_id: i for i in intervals}
        jobs = [
            {"id": job_id, "team": names[job_id].team, **_seconds(total)}
            for job_id, total in accounting.by_job(intervals, now, since).items()
        ]
        teams = [
            {"team": name, **_seconds(total)}
            for name, total in sorted(accounting.by_team(intervals, now, since).items())
        ]
        return {"since": since, "until": now, "teams": teams, "jobs": jobs}

    def _dependency_states(self, pending: list[Job]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for job in pending:
            for dependency in job.request.depends_on:
                if dependency not in states:
                    found = self.store.get_job(dependency)
                    if found is not None:
                        states[dependency] = found.state
        return states

    def _preempt(self, victim: Job, reason: str) -> None:
        """Stop a running job and put it back in the queue; its run directory keeps its
        checkpoints, so the next run resumes from the last epoch."""
        if victim.id in self._cancelling:
            return  # being cancelled: its room comes when that cancel frees it
        logger.info("preempting job %s: %s", victim.id, reason)
        # The store first: a crash after this leaves a run that no active job owns, which
        # the sweep stops and frees; never a victim that looks "stopped outside dcsched".
        self.store.transition(victim.id, JobState.PENDING, self.clock.now(), f"preempted: {reason}")
        fault_point("preempt:after-requeue")
        self.executor.stop(victim.run_id)
        self._release(victim.run_id, victim.nodes, victim.per_worker)
        self.events.preempted(victim)

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
            if self.executor.reservation_ready(job.run_id, timeout_s=2.0):
                self._start(job)
        except Exception:
            logger.exception("starting job %s failed; retrying next pass", job.id)

    def _start(self, job: Job) -> None:
        files = self.run_files(job.id)
        files.write_spec(self.run_document(job))
        files.clear_outcome()
        self.executor.start(job, files.path)

    def _requeue(self, job: Job, reason: str) -> None:
        self._release(job.run_id, job.nodes, job.per_worker)
        self.store.transition(job.id, JobState.PENDING, self.clock.now(), reason)

    def _reconcile(self, job: Job) -> None:
        status = self.executor.status(job.run_id)
        if status is None:
            if job.state is JobState.RUNNING:
                self._requeue(job, "Ray no longer knows this run (cluster restarted?); requeued")
                return
            # ADMITTED but not started yet: make sure the reservation exists, then start.
            problem = "its resources were not reserved"
            try:
                self.executor.reserve(job, job.nodes)
                if self.executor.reservation_ready(job.run_id, timeout_s=0.0):
                    self._start(job)
                    return
            except Exception as exc:
                logger.warning("starting job %s failed (%s); retrying", job.id, exc)
                problem = f"it could not be started ({exc})"
            waited = self.clock.now() - (job.admitted_at or 0)
            if waited > self.settings.reservation_timeout_s:
                timeout = self.settings.reservation_timeout_s
                self._requeue(job, f"{problem} within {timeout:g}s; requeued")
            return
        target = job_state_of(status.phase)  # the table in dcsched.ports
        if target is JobState.RUNNING and job.state is JobState.ADMITTED:
            now = self.clock.now()
            self._running_since[job.run_id] = self.monotonic()
            job = self.store.transition(job.id, JobState.RUNNING, now)
            self.events.started(job, now - job.submitted_at)
        elif target.is_terminal():
            self._finish(job, status, target)
        elif job.state is JobState.RUNNING and self._over_time(job):
            limit = format_duration(job.request.max_runtime or 0)
            self.executor.stop(job.run_id)
            self._release(job.run_id, job.nodes, job.per_worker)
            job = self.store.transition(
                job.id, JobState.FAILED, self.clock.now(), f"exceeded its max_runtime of {limit}"
            )
            self.events.finished(job, _run_seconds(job))

    def _over_time(self, job: Job) -> bool:
        """Past its max_runtime, by the monotonic clock (a wall-clock jump changes
        nothing); a run first seen after a restart is dated from its started_at."""
        limit = job.request.max_runtime
        if limit is None or job.started_at is None:
            return False
        now = self.monotonic()
        since = self._running_since.get(job.run_id)
        if since is None:
            since = now - max(0.0, self.clock.now() - job.started_at)
            self._running_since[job.run_id] = since
        return now - since > limit

    def _finish(self, job: Job, status: RunStatus, target: JobState) -> None:
        """Record the end of a run as ``target``, the job state its phase means."""
        now = self.clock.now()
        files = self.run_files(job.id)
        if job.state is JobState.ADMITTED:  # ended before we saw it running
            self.events.started(job, now - job.submitted_at)
        # Free the reservation first: a crash after this leaves an ended run still
        # marked active, which the next pass finishes again (release is idempotent).
        self._release(job.run_id, job.nodes, job.per_worker)
        fault_point("finish:after-release")
        driven = any(driver.owns(job) for driver in self.drivers)
        if target is JobState.SUCCEEDED and job.kind == "train" and not driven:
            job = self._register_model(job, files, now)
        elif target is JobState.SUCCEEDED:
            result = files.read_result() or {}
            progress = files.last_progress()
            if progress is not None:
                result.setdefault("progress", progress)
            job = self.store.transition(job.id, JobState.SUCCEEDED, now, None, result=result)
        elif target is JobState.FAILED:
            job = self.store.transition(job.id, target, now, _failure_reason(files, status))
        else:
            job = self.store.transition(job.id, target, now, STOPPED_OUTSIDE)
        self.events.finished(job, _run_seconds(job))

    def _register_model(self, job: Job, files: RunDir, now: float) -> Job:
        result = files.read_result()
        if result is None or not files.model.is_dir():
            return self.store.transition(
                job.id, JobState.FAILED, now, "the run ended without writing its result"
            )
        model = job.payload.get("model", {})
        try:
            version = self.store.finish_with_model(
                job.id,
                now,
                files.model,
                metrics=result.get("metrics", {}),
                plugin=str(result.get("plugin", model.get("type", ""))),
                params=result.get("params", model.get("params", {})),
                result=result,
            )
        except ModelNameTaken as exc:  # taken since submit; the submit check is the rule
            return self.store.transition(job.id, JobState.FAILED, now, str(exc))
        logger.info("job %s succeeded; model %s:%s", job.id, version.name, version.version)
        return self.store.get_job(job.id) or job


def _stored_document(job: Job) -> dict[str, Any]:
    return document_of(job.request, job.kind, dict(job.payload))


def _fair_between_teams(config: ClusterConfig, pending: list[Job]) -> bool:
    """Whether the pass orders teams by fair share: ``fair`` queueing with jobs of more
    than one team waiting (one team's jobs keep their own order, and its past usage is
    not read: summing it costs ~2 ms a pass per 10,000 jobs of the last ten half-lives)."""
    if config.queueing.policy != "fair":
        return False
    teams = {job.team for job in pending}
    return len(teams) > 1


def _reserved_by_node(active: list[Job]) -> dict[str, Resources]:
    reserved: dict[str, Resources] = {}
    for job in active:
        for node in job.nodes:
            reserved[node] = reserved.get(node, Resources()) + job.per_worker
    return reserved


def _seconds(total: Resources) -> dict[str, float]:
    return {
        "cpu_seconds": round(total.cpus, 3),
        "gpu_seconds": round(total.gpus, 3),
        "memory_byte_seconds": float(total.memory),
    }


def _sum_total(jobs: Any) -> Resources:
    total = Resources()
    for job in jobs:
        total = total + job.request.resources.total()
    return total


FAULT_POINT_ENV = "DCSCHED_FAULT_POINT"


def fault_point(name: str) -> None:
    """Tests only: die here, as ``kill -9`` would, when $DCSCHED_FAULT_POINT names this
    point (``finish:after-release``, ``preempt:after-requeue``, ``cancel:after-request``)."""
    if os.environ.get(FAULT_POINT_ENV) == name:
        logger.error("fault injection: dying at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return job.finished_at - job.started_at


def _failure_reason(files: RunDir, status: RunStatus) -> str:
    return files.read_error() or status.message or "the run failed; see `dcsched logs`"
