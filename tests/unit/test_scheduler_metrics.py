"""The server's scheduler series (dcsched.exporters.scheduler) over a real SQLite store and
the real scheduling service; the cluster is a fixed snapshot and the executor records
what it is asked (no Ray here: tests/e2e checks the same series on a live server).

The text is checked with the parser of prometheus_client and with `promtool check
metrics` (Prometheus' own linter)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dcsched import daemon
from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from dcsched.paths import Paths
from dcsched.ports import RunPhase, RunStatus
from dcsched.service import SchedulerService
from tests.conftest import REPO

GiB = 1024**3
CONFIG = """
queueing: {policy: fifo}
teams:
  - name: research
    cohort: ml
    weight: 2
    quota: {cpus: 8, gpus: 2, memory: 64GiB}
  - name: vision
    cohort: ml
    quota: {cpus: 4, gpus: 1}
"""


class FixedCluster:
    def __init__(self, nodes: tuple[NodeState, ...]):
        self.nodes = nodes

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(self.nodes)


class RecordingExecutor:
    """Accepts every reservation; a reserved run counts as RUNNING until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.live: set[str] = set()

    def reserve(self, job: Job, nodes: Any) -> None:
        self.calls.append(("reserve", job.run_id))
        self.live.add(job.run_id)

    def reservation_ready(self, run_id: str, timeout_s: float) -> bool:
        return False

    def release(self, run_id: str) -> None:
        self.calls.append(("release", run_id))
        self.live.discard(run_id)

    def start(self, job: Job, run_dir: Path) -> None:
        self.calls.append(("start", job.run_id))

    def status(self, run_id: str) -> RunStatus | None:
        return RunStatus(RunPhase.RUNNING) if run_id in self.live else None

    def stop(self, run_id: str, wait_s: float = 15.0) -> None:
        self.calls.append(("stop", run_id))

    def reservations(self) -> dict[str, tuple[str, ...]]:
        return {run_id: () for run_id in sorted(self.live)}


class Clock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def spec(name: str, team: str, gpus: int = 0, cpus: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "train",
        "team": team,
        "resources": {"cpus": cpus, "gpus": gpus, "memory": "1GiB"},
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:breast_cancer"},
    }


class FakeStudies:
    """What the tune collector reads of the tune controller: the store, and each running
    study's summary (a real study needs Optuna and trial runs: tests/e2e)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.store = self
        self._jobs = jobs

    def list_jobs(self, states: Any = None) -> list[Job]:
        return self._jobs

    def summary(self, job: Job) -> dict[str, Any]:
        return {
            "done": 3,
            "running": 1,
            "pruned": 1,
            "failed": 0,
            "total": 8,
            "created": 5,
            "metric": "accuracy",
            "best": {"value": 0.9},
        }


def server(
    tmp_path: Path,
    studies: FakeStudies | None = None,
    replicas: list[dict[str, Any]] | None = None,
) -> tuple[SchedulerService, CollectorRegistry, Clock]:
    """The service and its registry as `dcsched server` builds them (dcsched.daemon), on
    one fixed node; ``studies`` and ``replicas`` stand for the tune and serve controllers."""
    paths = Paths(tmp_path)
    store = SQLiteStore(paths.db, paths.models)
    node = NodeState(
        "node-a", "127.0.0.1", True, Resources(16, 2, 64 * GiB), Resources(16, 2, 64 * GiB)
    )
    clock = Clock(1_000.0)
    registry = CollectorRegistry()
    made: list[SchedulerService] = []
    service = SchedulerService(
        store=store,
        executor=RecordingExecutor(),
        cluster=FixedCluster((node,)),
        paths=paths,
        check_runnable=lambda _: [],
        clock=clock,
        events=daemon.scheduler_metrics(registry, store, lambda: made[0]),
    )
    made.append(service)
    service.apply_config(CONFIG)
    daemon.register_state_collectors(
        registry,
        service,
        lambda: replicas or [],
        studies or FakeStudies([]),  # type: ignore[arg-type]
    )
    return service, registry, clock


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SchedulerService, CollectorRegistry, Clock]:
    return server(tmp_path)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_queue_quota_node_and_running_job_series(
    setup: tuple[SchedulerService, CollectorRegistry, Clock],
) -> None:
    service, registry, clock = setup
    first = service.submit(spec("big", "research", gpus=2, cpus=2))
    clock.t += 30
    second = service.submit(spec("waits", "research", gpus=1))
    clock.t += 10
    service.submit(spec("small", "vision", gpus=1))
    clock.t += 5
    service.tick()  # fifo: `big` takes both GPUs; the other two wait
    service.tick()  # and is seen running
    assert service.store.get_job(first.id).state is JobState.RUNNING  # type: ignore[union-attr]
    run_dir = service.paths.run_dir(first.id)
    run_dir.mkdir(parents=True)
    (run_dir / "progress.jsonl").write_text(
        json.dumps({"epoch": 1, "loss": 0.9, "samples_per_s": 100.0})
        + "\n"
        + json.dumps({"epoch": 2, "loss": 0.5, "samples_per_s": 120.0})
        + "\n"
    )

    found = samples(registry)
    assert value(found, "dcsched_queue_length", team="research") == 1
    assert value(found, "dcsched_queue_length", team="vision") == 1
    # the oldest pending job of research was submitted 15 s ago (clock moved 10 + 5)
    assert value(found, "dcsched_queue_oldest_pending_age_seconds", team="research") == 15
    assert value(found, "dcsched_queue_pending_gpus", team="vision") == 1
    assert value(found, "dcsched_team_quota_nominal", team="research", resource="gpus") == 2
    assert value(found, "dcsched_team_quota_used", team="research", resource="gpus") == 2
    assert value(found, "dcsched_team_quota_used", team="research", resource="cpus") == 2
    assert value(found, "dcsched_team_quota_borrowed", team="research", resource="gpus") == 0
    assert (
        "dcsched_team_quota_nominal",
        (("resource", "memory_bytes"), ("team", "vision")),
    ) not in (found), "an unlimited quota has no nominal series"
    assert value(found, "dcsched_team_fair_share_weight", team="research") == 2
    assert value(found, "dcsched_team_dominant_share_ratio", team="research") == 1.0
    assert value(found, "dcsched_cluster_node_capacity", node="node-a", resource="gpus") == 2
    assert value(found, "dcsched_cluster_node_free", node="node-a", resource="gpus") == 0
    assert value(found, "dcsched_cluster_node_free", node="node-a", resource="cpus") == 14
    assert value(found, "dcsched_job_allocated_gpus", job_id=first.id, team="research") == 2
    assert value(found, "dcsched_job_training_epoch", job_id=first.id, team="research") == 2
    assert value(found, "dcsched_job_training_loss", job_id=first.id, team="research") == 0.5
    assert (
        value(found, "dcsched_job_training_samples_per_second", job_id=first.id, team="research")
        == 120
    )
    assert value(found, "dcsched_admission_pass_duration_seconds_count") == 2
    assert not any(
        name == "dcsched_job_allocated_gpus" and ("job", second.id) in labels
        for name, labels in found
    )

    # when the job ends, its per-job series go away
    service.cancel(first.id)
    found = samples(registry)
    assert not any(name.startswith("dcsched_job_allocated") for name, _ in found)
    assert not any(name.startswith("dcsched_job_training") for name, _ in found)


def test_preemptions_are_counted_by_the_victims_team(
    setup: tuple[SchedulerService, CollectorRegistry, Clock],
) -> None:
    service, registry, clock = setup
    service.apply_config(CONFIG.replace("{policy: fifo}", "{policy: priority, preemption: true}"))
    low = service.submit({**spec("low", "research", gpus=2), "priority": "low"})
    service.tick()
    service.tick()
    clock.t += 60
    service.submit({**spec("urgent", "research", gpus=2), "priority": "high"})
    service.tick()
    found = samples(registry)
    assert value(found, "dcsched_preemptions_total", team="research") == 1
    assert service.store.get_job(low.id).state is JobState.PENDING  # type: ignore[union-attr]


def test_promtool_accepts_the_exposition(
    setup: tuple[SchedulerService, CollectorRegistry, Clock], tmp_path: Path
) -> None:
    service, registry, _ = setup
    service.submit(spec("one", "research", gpus=1))
    service.tick()
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed; `make install` installs it"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# -- the contract: docs/metrics.md ---------------------------------------------------------


def documented_server_series() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from the server's table of docs/metrics.md."""
    text = (REPO / "docs" / "metrics.md").read_text()
    section = text.split("## Server (`/metrics`)", 1)[1].split("\n## ", 1)[0]
    series = {}
    for row in re.finditer(r"(?m)^\| `(dcsched_\w+)` \| (\w+) \|([^|]*)\|", section):
        labels = re.sub(r"\([^)]*\)", "", row.group(3))
        series[row.group(1)] = (
            row.group(2),
            frozenset(w.strip() for w in labels.split(",") if w.strip()),
        )
    return series


def test_the_server_serves_exactly_the_documented_series(tmp_path: Path) -> None:
    """The registry as `dcsched server` builds it, after a preemption, a finished run and
    a running job that reports training and inference progress, serves every series of
    docs/metrics.md's server table with its type and labels, and no other."""
    studies = FakeStudies([])
    replicas = [{"deployment": "bc", "team": "vision", "wanted": 2, "replicas": {"ready": 1}}]
    service, registry, clock = server(tmp_path, studies, replicas)
    service.apply_config(CONFIG.replace("{policy: fifo}", "{policy: priority, preemption: true}"))
    low = service.submit({**spec("low", "research", gpus=2), "priority": "low"})
    studies._jobs.append(Job("study", low.request, JobState.RUNNING, 0.0, kind="tune"))
    service.tick()
    service.tick()
    clock.t += 60
    urgent = service.submit({**spec("urgent", "research", gpus=2), "priority": "high"})
    service.tick()  # preempts `low`
    service.tick()
    service.tick()
    assert service.store.get_job(urgent.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert service.store.get_job(low.id).state is JobState.PENDING  # type: ignore[union-attr]
    run_dir = service.paths.run_dir(urgent.id)
    run_dir.mkdir(parents=True)
    progress = {"epoch": 1, "loss": 0.5, "samples_per_s": 100.0}
    progress |= {"rows_done": 10, "rows_total": 20, "rows_per_s": 5.0}
    (run_dir / "progress.jsonl").write_text(json.dumps(progress) + "\n")
    clock.t += 30
    finished = service.submit(spec("short", "vision", cpus=1))
    service.tick()
    service.tick()
    service.cancel(finished.id)  # a run that ended: run-time histogram

    documented = documented_server_series()
    served: dict[str, tuple[str, frozenset[str]]] = {}
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        start = name.removesuffix("_created")
        of = documented.get(start + "_total") or documented.get(start)
        if start != name and of is not None and of[0] in ("counter", "histogram"):
            continue  # prometheus_client's start time of a counter or histogram (the note)
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        assert family.samples, f"{name}: no sample; make this test produce one"
        served[name] = (family.type, frozenset(labels))
    assert sorted(set(served) - set(documented)) == [], "served but not documented"
    assert sorted(set(documented) - set(served)) == [], "documented but not served"
    for name, (kind, labels) in documented.items():
        assert served[name] == (kind, labels), f"{name}: served {served[name]}, documented"
