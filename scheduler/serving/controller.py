"""Deployments: replicas as scheduled jobs, one load-balanced URL, updates and healing.

A *deployment* is a ``kind: serve`` spec accepted by ``ServeController.create``: a name,
a team, a pinned model version, a desired replica count and an entry port. Its record
is a row of the store's ``deployments`` table (``dcsched.ports.Deployment``), so it
survives a restart of the server; its HAProxy files are under
``$DCSCHED_HOME/serve/NAME/`` (``dcsched.serving.haproxy``). Each replica is an ordinary job of
kind ``serve`` submitted through ``SchedulerService.submit``: the same checks, queue,
quota, priority class, placement and accounting as every job, and a Ray job that runs
``dcsched.serving.replica`` until the deployment no longer wants it.

The controller's pass (``reconcile``, every 0.25 s) compares what each deployment wants
with its replica jobs and acts:
- replicas are spread across nodes: each replica job carries ``spread_group``
  ``NAME-vVERSION``, so admission puts it on a node without a replica of the deployment's
  version while one has room (``placement: spread``, the default for serve; another
  policy leaves placement to that policy);
- a RUNNING replica whose ``endpoint.json`` exists gets a balancer slot (runtime API,
  no reload); a replica that ended loses its slot;
- fewer replicas of the wanted version than wanted: submit more (a replica that died is
  replaced this way; the new job waits in the queue, with its reason, like any other);
- replicas of another version (after ``update``): one extra replica of the new version
  is started (surge 1); each time one becomes healthy, one old replica is *drained* (no
  new requests; the requests it holds finish) and then stopped. Under constant load no
  request fails (tests/integration/test_serve_live.py counts them);
- more replicas than wanted (scale down, autoscaling): the surplus is drained, stopped;
- with ``min_replicas < max_replicas``: the wanted count follows the requests in flight
  per replica (HAProxy's count) towards ``target_in_flight``; up at once, down one replica
  at a time after ``serve.scale_down_after`` (default 30 s) below target. A scale-up is
  a job submission, so it passes through admission like any request for resources.

Replica endpoints are also written as Prometheus file_sd targets
(``$DCSCHED_HOME/prometheus/serving.json``), labelled by deployment and replica.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SpecError
from dcsched.kinds import parse_job_spec
from dcsched.kinds.serve import ServeJobSpec, parse_model_ref
from dcsched.paths import Paths
from dcsched.ports import Deployment
from dcsched.rundir import write_text_atomically
from dcsched.serving.haproxy import SLOTS, Balancer, HAProxyError, Slot
from dcsched.serving.metrics import REPLICA_STATES, replica_state

logger = logging.getLogger(__name__)

ENDPOINT_FILE = "endpoint.json"
LIVE_STATES = (JobState.PENDING, JobState.ADMITTED, JobState.RUNNING)
DRAIN_MIN_S = 0.6
"""A drained replica is stopped no sooner than this (a health-check round) ..."""
DRAIN_MAX_S = 15.0
"""... and no later than this, even if requests are still open on it."""


class DeploymentError(Exception):
    """A request about a deployment that cannot be done; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


class ServeController:
    def __init__(
        self,
        service: Any,
        paths: Paths,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        interval_s: float = 0.25,
    ):
        self.service = service
        self.store = service.store
        self.paths = paths
        self.host = host
        self.clock, self.monotonic = clock, monotonic
        self.interval_s = interval_s
        self.directory = paths.home / "serve"
        self.sd_file = paths.home / "prometheus" / "serving.json"
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._submitting: set[str] = set()
        self._draining: dict[str, float] = {}
        """replica job id -> monotonic time its draining began."""
        self._low_since: dict[str, float] = {}
        self._balancers: dict[str, Balancer] = {}
        self._deployments: dict[str, Deployment] = {}
        self._load()

    # -- records -------------------------------------------------------------------------

    def _load(self) -> None:
        for record in self.store.deployments():
            self._deployments[record.name] = record
        self._import_json_records()

    def _import_json_records(self) -> None:
        """Deployments recorded as ``serve/NAME/deployment.json`` by earlier versions move
        into the store once (the file is renamed ``deployment.json.imported``)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*/deployment.json")):
            try:
                record = Deployment(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                logger.error("cannot read deployment record %s: %s", path, exc)
                continue
            if record.name not in self._deployments:
                self.store.save_deployment(record)
                self._deployments[record.name] = record
            path.rename(path.with_name("deployment.json.imported"))

    def _save(self, record: Deployment) -> None:
        record.updated_at = self.clock()
        self.store.save_deployment(record)

    def _balancer(self, record: Deployment) -> Balancer:
        balancer = self._balancers.get(record.name)
        if balancer is None or balancer.port != record.port:
            balancer = Balancer(record.name, self.directory / record.name, record.host, record.port)
            self._balancers[record.name] = balancer
        return balancer

    def get(self, name: str) -> Deployment:
        record = self._deployments.get(name)
        if record is None:
            raise DeploymentError(
                404, f"no deployment named {name!r}; `dcsched serve list` shows them"
            )
        return record

    def team_of(self, name: str) -> str | None:
        record = self._deployments.get(name)
        return record.team if record is not None else None

    # -- requests ------------------------------------------------------------------------

    def create(self, document: Any) -> Deployment:
        """Validate a ``kind: serve`` document, submit its replicas, start its balancer."""
        spec = parse_job_spec(document)
        if not isinstance(spec, ServeJobSpec):
            raise SpecError([f"kind: a deployment is a kind: serve spec, not kind: {spec.kind}"])
        if spec.serve.deployment is not None or spec.serve.version is not None:
            raise SpecError(["serve.deployment, serve.version: set by dcsched; leave them out"])
        with self._lock:
            existing = self._deployments.get(spec.name)
            if existing is not None and existing.state == "active":
                raise DeploymentError(
                    409,
                    f"deployment {spec.name!r} exists (model {existing.model}:"
                    f"{existing.version}); `dcsched serve update` changes it, "
                    "`dcsched serve stop` ends it",
                )
            name, version = parse_model_ref(spec.serve.model)
            model_version = self._model_version(name, version)
            low = spec.serve.min_replicas
            high = spec.serve.max_replicas
            record = Deployment(
                name=spec.name,
                team=spec.team,
                spec=spec.model_dump(mode="json", exclude_none=True),
                model=name,
                version=model_version.version,
                plugin=model_version.plugin,
                replicas=spec.serve.replicas,
                min_replicas=spec.serve.replicas if low is None else low,
                max_replicas=spec.serve.replicas if high is None else high,
                target_in_flight=spec.serve.target_in_flight,
                scale_down_after_s=spec.serve.scale_down_after,
                host=self.host,
                port=_free_port(self.host),
                created_at=self.clock(),
            )
            submitted: list[Job] = []
            try:
                for _ in range(record.replicas):
                    submitted.append(self._submit_replica(record))
            except SpecError:
                for job in submitted:
                    self._cancel(job.id, "the deployment was refused")
                raise
            balancer = self._balancer(record)
            try:
                balancer.start({})
            except HAProxyError as exc:
                for job in submitted:
                    self._cancel(job.id, f"the deployment's load balancer failed: {exc}")
                raise DeploymentError(500, str(exc)) from None
            self._deployments[record.name] = record
            self._save(record)
            logger.info(
                "deployment %s: %s:%s x%s on %s",
                record.name,
                record.model,
                record.version,
                record.replicas,
                record.url,
            )
        self._wake.set()
        return record

    def stop(self, name: str) -> Deployment:
        with self._lock:
            record = self.get(name)
            if record.state != "active":
                raise DeploymentError(409, f"deployment {name!r} is already stopped")
            record.state = "stopped"
            self._save(record)
            for job in self._replica_jobs(name):
                self._cancel(job.id, f"deployment {name} was stopped")
                self._draining.pop(job.id, None)
            self._balancer(record).stop()
            record.slots = {}
            self._save(record)
            self._write_targets()
            logger.info("deployment %s stopped", name)
            return record

    def update(self, name: str, model: str) -> Deployment:
        """Roll the deployment onto another model version, one replica at a time."""
        try:
            model_name, version = parse_model_ref(model)
        except ValueError as exc:
            raise DeploymentError(400, str(exc)) from None
        with self._lock:
            record = self._active(name)
            found = self._model_version(model_name, version)
            record.model, record.version, record.plugin = model_name, found.version, found.plugin
            record.spec = {**record.spec, "serve": {**record.spec["serve"], "model": model}}
            record.message = f"rolling update to {model_name}:{found.version}"
            self._save(record)
        self._wake.set()
        return record

    def scale(self, name: str, replicas: int) -> Deployment:
        with self._lock:
            record = self._active(name)
            if not 0 <= replicas <= 64:
                raise DeploymentError(400, "replicas must be from 0 to 64")
            record.replicas = replicas
            record.min_replicas = min(record.min_replicas, replicas)
            record.max_replicas = max(record.max_replicas, replicas)
            self._save(record)
        self._wake.set()
        return record

    def _active(self, name: str) -> Deployment:
        record = self.get(name)
        if record.state != "active":
            raise DeploymentError(409, f"deployment {name!r} is stopped; create it again")
        return record

    def _model_version(self, name: str, version: int | None) -> Any:
        versions = self.store.model_versions(name)
        if not versions:
            raise DeploymentError(
                404, f"no model named {name!r}; `dcsched models list` shows the registered ones"
            )
        if version is None:
            return versions[-1]
        for found in versions:
            if found.version == version:
                return found
        known = ", ".join(str(v.version) for v in versions)
        raise DeploymentError(404, f"model {name!r} has no version {version}; it has: {known}")

    def _submit_replica(self, record: Deployment) -> Job:
        document = json.loads(json.dumps(record.spec))
        document["serve"] = {
            **document["serve"],
            "deployment": record.name,
            "version": record.version,
            "model": f"{record.model}:{record.version}",
        }
        if document.get("placement") is None:
            document["placement"] = "spread"
        if document["placement"] == "spread" and document.get("spread_group") is None:
            document["spread_group"] = spread_group(record.name, record.version)
        self._submitting.add(record.name)
        try:
            job: Job = self.service.submit(document)
        finally:
            self._submitting.discard(record.name)
        return job

    def _cancel(self, job_id: str, reason: str) -> None:
        try:
            self.service.cancel(job_id, reason=reason)
        except Exception as exc:  # already ended: nothing to stop
            logger.debug("cancel %s: %s", job_id, exc)

    # -- hooks for the service (submit checks, the run's spec.json) ---------------------

    def check_replica(self, spec: Any) -> list[str]:
        """Submit-time problems of a ``kind: serve`` job: only the controller makes them."""
        if getattr(spec, "kind", None) != "serve":
            return []
        if spec.serve.deployment is None or spec.serve.deployment not in self._submitting:
            return [
                "kind: a serve spec describes a deployment; create it with "
                "`dcsched serve apply FILE` (or POST /v1/deployments), not as a job"
            ]
        return []

    def run_payload(self, job: Job, payload: dict[str, Any]) -> dict[str, Any]:
        """A replica's spec.json payload: the model's directory and plugin resolved."""
        serve = dict(payload["serve"])
        name, _ = parse_model_ref(serve["model"])
        found = self._model_version(name, int(serve["version"]))
        serve.update(model_name=name, model_dir=found.path, plugin=found.plugin)
        return {**payload, "serve": serve}

    # -- the loop ------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        with self._lock:
            for record in self._deployments.values():
                if record.state == "active":
                    try:
                        self._balancer(record).start(self._slot_map(record))
                    except HAProxyError as exc:
                        logger.error("deployment %s: %s", record.name, exc)
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception:
                logger.exception("deployment pass failed; retrying")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def reconcile(self) -> None:
        with self._lock:
            jobs = self._live_jobs()
            for record in list(self._deployments.values()):
                if record.state == "active":
                    self._reconcile(record, jobs.get(record.name, []))

    def _live_jobs(self) -> dict[str, list[Job]]:
        by_deployment: dict[str, list[Job]] = {}
        for job in self.store.list_jobs(states=LIVE_STATES):
            if job.kind == "serve":
                name = job.payload.get("serve", {}).get("deployment")
                if name:
                    by_deployment.setdefault(name, []).append(job)
        return by_deployment

    def _replica_jobs(self, name: str) -> list[Job]:
        return self._live_jobs().get(name, [])

    def _reconcile(self, record: Deployment, jobs: list[Job]) -> None:
        balancer = self._balancer(record)
        if not balancer.running():
            balancer.start(self._slot_map(record))
        changed = self._sync_slots(record, jobs, balancer)
        stats = _safe_stats(balancer)
        ready = {
            job_id
            for job_id, slot in record.slots.items()
            if stats.get(f"r{slot['slot']}", {}).get("status", "").startswith("UP")
        }
        self._autoscale(record, stats, ready)
        live = [job for job in jobs if job.id not in self._draining]
        current = [job for job in live if _version(job) == record.version]
        old = [job for job in live if _version(job) != record.version]
        wanted = record.replicas
        missing = wanted - len(current)
        if missing > 0:
            room = missing if not old else max(0, wanted + 1 - len(live))
            for _ in range(min(missing, room)):
                try:
                    self._submit_replica(record)
                except SpecError as exc:
                    record.message = "cannot add a replica: " + "; ".join(exc.problems)
                    changed = True
                    break
        ready_current = [job for job in current if job.id in ready]
        if old:
            keep = max(0, wanted - len(ready_current))
            # Replicas that serve nothing go first; the serving ones only as new ones are up.
            for job in sorted(old, key=lambda j: j.id in ready)[: max(0, len(old) - keep)]:
                self._retire(record, job, balancer, ready)
        elif record.message.startswith("rolling update") and len(ready_current) >= wanted:
            record.message = ""
            changed = True
        if len(current) > wanted:
            # Surplus: the ones that serve nothing first, then the newest.
            order = sorted(current, key=lambda j: (j.id in ready, -(j.submitted_at or 0)))
            for job in order[: len(current) - wanted]:
                self._retire(record, job, balancer, ready)
        self._finish_draining(record, balancer, stats)
        if changed:
            self._save(record)

    def _sync_slots(self, record: Deployment, jobs: list[Job], balancer: Balancer) -> bool:
        changed = False
        live = {job.id: job for job in jobs}
        for job_id in list(record.slots):
            job = live.get(job_id)
            entry = record.slots[job_id]
            # A replica that ended loses its slot; so does one whose run ended and was
            # requeued (its node was lost): its next run serves on another address.
            if (
                job is None
                or job.state is not JobState.RUNNING
                or job.attempt != entry.get("attempt", job.attempt)
            ):
                number = record.slots.pop(job_id)["slot"]
                self._draining.pop(job_id, None)
                try:
                    balancer.disable(number)
                except OSError as exc:
                    logger.warning(
                        "deployment %s: cannot disable slot %s: %s", record.name, number, exc
                    )
                changed = True
        used = {entry["slot"] for entry in record.slots.values()}
        for job in jobs:
            if job.state is not JobState.RUNNING or job.id in record.slots:
                continue
            endpoint = _read_endpoint(self.service.run_files(job.id).path / ENDPOINT_FILE)
            if endpoint is None or int(endpoint.get("attempt", job.attempt)) != job.attempt:
                continue  # not listening yet, or the file of a run that was lost
            free = [n for n in range(1, SLOTS + 1) if n not in used]
            if not free:
                logger.error("deployment %s has no free balancer slot", record.name)
                break
            slot = Slot(free[0], str(endpoint["host"]), int(endpoint["port"]))
            balancer.set_server(slot)
            used.add(slot.number)
            record.slots[job.id] = {
                "slot": slot.number,
                "host": slot.host,
                "port": slot.port,
                "version": _version(job),
                "attempt": job.attempt,
            }
            logger.info(
                "deployment %s: replica %s serves on %s:%s (slot %s)",
                record.name,
                job.id,
                slot.host,
                slot.port,
                slot.number,
            )
            changed = True
        if changed:
            balancer.write_config(self._slot_map(record))
            self._write_targets()
        return changed

    def _retire(self, record: Deployment, job: Job, balancer: Balancer, ready: set[str]) -> None:
        if job.id in self._draining:
            return
        entry = record.slots.get(job.id)
        if entry is None or job.id not in ready:
            self._cancel(job.id, f"no longer wanted by deployment {record.name}")
            return
        balancer.drain(int(entry["slot"]))
        self._draining[job.id] = self.monotonic()
        logger.info("deployment %s: draining replica %s", record.name, job.id)

    def _finish_draining(
        self, record: Deployment, balancer: Balancer, stats: dict[str, dict[str, str]]
    ) -> None:
        now = self.monotonic()
        for job_id, since in list(self._draining.items()):
            entry = record.slots.get(job_id)
            if entry is None:
                if _job_of(job_id, record, self) is None:
                    self._draining.pop(job_id, None)
                continue
            row = stats.get(f"r{entry['slot']}", {})
            idle = row.get("scur", "0") in ("0", "") and row.get("qcur", "0") in ("0", "")
            waited = now - since
            if waited < DRAIN_MIN_S or (not idle and waited < DRAIN_MAX_S):
                continue
            balancer.disable(int(entry["slot"]))
            self._cancel(job_id, f"replaced or scaled down by deployment {record.name}")
            self._draining.pop(job_id, None)

    def _autoscale(
        self, record: Deployment, stats: dict[str, dict[str, str]], ready: set[str]
    ) -> None:
        if not record.autoscaled or not ready:
            return
        in_flight = 0
        for job_id in ready:
            row = stats.get(f"r{record.slots[job_id]['slot']}", {})
            in_flight += _int(row.get("scur")) + _int(row.get("qcur"))
        wanted = math.ceil(in_flight / record.target_in_flight) if in_flight else 0
        wanted = max(record.min_replicas, min(record.max_replicas, wanted))
        now = self.monotonic()
        if wanted > record.replicas:
            logger.info(
                "deployment %s: %s in flight on %s replicas; scaling to %s",
                record.name,
                in_flight,
                len(ready),
                wanted,
            )
            record.replicas = wanted
            self._low_since.pop(record.name, None)
            self._save(record)
        elif wanted < record.replicas:
            since = self._low_since.setdefault(record.name, now)
            if now - since >= record.scale_down_after_s:
                record.replicas = max(wanted, record.replicas - 1)
                self._low_since.pop(record.name, None)
                self._save(record)
        else:
            self._low_since.pop(record.name, None)

    def _slot_map(self, record: Deployment) -> dict[int, Slot]:
        return {
            int(entry["slot"]): Slot(int(entry["slot"]), str(entry["host"]), int(entry["port"]))
            for entry in record.slots.values()
        }

    def _write_targets(self) -> None:
        """Prometheus file_sd targets: every replica's /metrics, labelled."""
        groups = [
            {
                "targets": [f"{entry['host']}:{entry['port']}"],
                "labels": {"deployment": record.name, "replica": job_id, "team": record.team},
            }
            for record in self._deployments.values()
            if record.state == "active"
            for job_id, entry in sorted(record.slots.items())
        ]
        self.sd_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.sd_file, json.dumps(groups, indent=2) + "\n")

    # -- views ---------------------------------------------------------------------------

    def view(self, name: str) -> dict[str, Any]:
        with self._lock:
            record = self.get(name)
            jobs = self._replica_jobs(name) if record.state == "active" else []
            stats = _safe_stats(self._balancer(record)) if record.state == "active" else {}
            members = []
            for job in sorted(jobs, key=lambda j: j.submitted_at or 0):
                entry = record.slots.get(job.id)
                row = stats.get(f"r{entry['slot']}", {}) if entry else {}
                lb_state = row.get("status", "") if entry else ""
                if job.id in self._draining:
                    lb_state = "DRAIN"
                members.append(
                    {
                        "job": job.id,
                        "state": job.state.value,
                        "node": job.nodes[0] if job.nodes else None,
                        "version": _version(job),
                        "endpoint": f"{entry['host']}:{entry['port']}" if entry else None,
                        "balancer": lb_state or None,
                        "in_flight": _int(row.get("scur")),
                        "requests": _int(row.get("stot")),
                        "request_rate": _int(row.get("rate")),
                        "reason": job.reason if job.state is JobState.PENDING else None,
                    }
                )
            frontend = stats.get("FRONTEND", {})
            return {
                "name": record.name,
                "team": record.team,
                "state": record.state,
                "url": record.url,
                "model": record.model,
                "version": record.version,
                "plugin": record.plugin,
                "replicas": record.replicas,
                "min_replicas": record.min_replicas,
                "max_replicas": record.max_replicas,
                "ready": sum(1 for m in members if str(m["balancer"]).startswith("UP")),
                "request_rate": _int(frontend.get("req_rate")),
                "requests": _int(frontend.get("req_tot")),
                "responses_5xx": _int(frontend.get("hrsp_5xx")),
                "message": record.message,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "members": members,
            }

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._deployments)

    def replica_counts(self) -> list[dict[str, Any]]:
        """Every active deployment's wanted count and live replicas by state (what the
        server's ``/metrics`` shows, ``dcsched.serving.metrics.DeploymentCollector``)."""
        with self._lock:
            out = []
            for name in sorted(self._deployments):
                if self._deployments[name].state != "active":
                    continue
                view = self.view(name)
                counts = dict.fromkeys(REPLICA_STATES, 0)
                for member in view["members"]:
                    counts[replica_state(member["state"], member["balancer"])] += 1
                out.append(
                    {
                        "deployment": name,
                        "team": view["team"],
                        "wanted": view["replicas"],
                        "replicas": counts,
                    }
                )
            return out


def spread_group(name: str, version: int) -> str:
    """The spread group of a deployment's replicas of one model version: the replicas of
    the version being rolled out spread among themselves, whatever nodes the old ones
    (about to leave) are on, so the deployment ends up spread after an update too."""
    suffix = f"-v{version}"
    return name[: 63 - len(suffix)].rstrip("-") + suffix


def _version(job: Job) -> int | None:
    value = job.payload.get("serve", {}).get("version")
    return int(value) if value is not None else None


def _job_of(job_id: str, record: Deployment, controller: ServeController) -> Job | None:
    job = controller.store.get_job(job_id)
    return job if job is not None and not job.state.is_terminal() else None


def _read_endpoint(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "port" not in data or "host" not in data:
        return None
    return data


def _safe_stats(balancer: Balancer) -> dict[str, dict[str, str]]:
    try:
        return balancer.stats()
    except OSError:
        return {}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


__all__ = ["Deployment", "DeploymentError", "ServeController"]
