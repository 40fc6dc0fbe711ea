"""The service's crash windows and faults, on a real SQLite store with a scripted executor
and cluster (no Ray): release before reporting an end, a preemption recorded before its
victim is stopped, the sweep of reservations no active job owns, a lost node requeues,
run-time limits on the monotonic clock, back-off on repeated errors, a full disk."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from dcsched.adapters.sqlite_store import SQLiteStore
from dcsched.core.cluster import ClusterSnapshot, NodeState
from dcsched.core.job import Job, job_id_of
from dcsched.core.lifecycle import JobState
from dcsched.core.resources import Resources
from dcsched.paths import Paths
from dcsched.ports import RUN_PHASE_STATES, RunPhase, RunStatus, StoreFull, job_state_of
from dcsched.service import SchedulerService, ServiceSettings

GiB = 1024**3


class Cluster:
    def __init__(self) -> None:
        self.alive = {"node-a": True, "node-b": True}
        self.lagging = False  # report every node full, as Ray does moments after a release

    def snapshot(self) -> ClusterSnapshot:
        total = Resources(4, 0, 16 * GiB)
        available = Resources() if self.lagging else total
        return ClusterSnapshot(
            tuple(
                NodeState(name, "127.0.0.1", alive, total, available)
                for name, alive in sorted(self.alive.items())
            )
        )


class Executor:
    """Reservations start at once; runs stay RUNNING until ``end`` says otherwise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.groups: set[str] = set()
        self.phase: dict[str, RunPhase] = {}
        self.fail_stop = False

    def reserve(self, job: Job, nodes: Any) -> None:
        self.calls.append(("reserve", job.run_id))
        self.groups.add(job.run_id)

    def reservation_ready(self, run_id: str, timeout_s: float) -> bool:
        return run_id in self.groups

    def start(self, job: Job, run_dir: Path) -> None:
        self.calls.append(("start", job.run_id))
        self.phase.setdefault(job.run_id, RunPhase.RUNNING)

    def status(self, run_id: str) -> RunStatus | None:
        phase = self.phase.get(run_id)
        return RunStatus(phase) if phase else None

    def stop(self, run_id: str) -> None:
        if self.fail_stop:
            raise RuntimeError("Ray is unreachable")
        self.calls.append(("stop", run_id))
        if run_id in self.phase and not self.phase[run_id].is_terminal():
            self.phase[run_id] = RunPhase.STOPPED

    def release(self, run_id: str) -> None:
        self.calls.append(("release", run_id))
        self.groups.discard(run_id)

    def reservations(self) -> dict[str, tuple[str, ...]]:
        return {run_id: ("node-a",) for run_id in sorted(self.groups)}

    def logs(self, run_id: str) -> str:
        return ""


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


def spec(name: str, priority: str = "normal", cpus: float = 1, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "run",
        "team": "t",
        "priority": priority,
        "resources": {"workers": 1, "cpus": cpus, "memory": "1GiB"},
        "run": {"command": ["true"]},
        **extra,
    }


def make_service(home: Path, executor: Executor, cluster: Cluster, clocks: Clocks) -> Any:
    paths = Paths(home)
    return SchedulerService(
        store=SQLiteStore(paths.db, paths.models),
        executor=executor,
        cluster=cluster,
        paths=paths,
        check_runnable=lambda _: [],
        clock=clocks,
        settings=ServiceSettings(sweep_interval_s=5.0),
        monotonic=clocks.monotonic,
    )


@pytest.fixture
def world(tmp_path: Path) -> tuple[Any, Executor, Cluster, Clocks]:
    executor, cluster, clocks = Executor(), Cluster(), Clocks()
    return make_service(tmp_path, executor, cluster, clocks), executor, cluster, clocks


def test_job_id_of_a_run_id() -> None:
    assert job_id_of("train-ab12") == "train-ab12"
    assert job_id_of("train-ab12-run3") == "train-ab12"
    assert job_id_of("my-runner-x1") == "my-runner-x1"


def test_a_run_that_ends_is_released_before_it_is_reported_ended(world: Any) -> None:
    service, executor, _, _ = world
    job = service.submit(spec("a"))
    service.tick()
    assert service.store.get_job(job.id).state is JobState.ADMITTED
    executor.phase[job.run_id] = RunPhase.SUCCEEDED
    transitions: list[str] = []
    store_transition = service.store.transition

    def watched(*args: Any, **kwargs: Any) -> Job:
        transitions.append(f"transition after {executor.calls[-1]}")
        return store_transition(*args, **kwargs)

    service.store.transition = watched
    service.tick()
    assert service.store.get_job(job.id).state is JobState.SUCCEEDED
    assert transitions[-1] == f"transition after {('release', job.run_id)}"


def test_a_preemption_is_recorded_before_the_victim_is_stopped(world: Any, tmp_path: Path) -> None:
    """A crash (here: Ray failing) between requeue and stop leaves a victim that is
    PENDING, never 'stopped outside dcsched'; the next server's sweep stops its run."""
    service, executor, cluster, clocks = world
    lows = [service.submit(spec(f"low-{i}", "low", cpus=4)) for i in range(2)]
    service.tick()
    service.tick()
    assert all(service.store.get_job(j.id).state is JobState.RUNNING for j in lows)
    service.submit(spec("urgent", "high", cpus=4))
    executor.fail_stop = True  # the server dies (or Ray fails) right after the requeue
    with pytest.raises(RuntimeError, match="unreachable"):
        service.tick()
    victims = [j for j in lows if service.store.get_job(j.id).state is JobState.PENDING]
    assert len(victims) == 1
    victim = victims[0]
    events = service.store.events(victim.id)
    assert "preempted" in (events[-1].reason or "")
    # A new server on the same store: its first pass sweeps the orphaned run.
    executor.fail_stop = False
    restarted = make_service(tmp_path, executor, cluster, clocks)
    restarted.tick()
    assert ("stop", victim.run_id) in executor.calls
    assert victim.run_id not in executor.groups
    assert restarted.store.get_job(victim.id).state is not JobState.CANCELLED


def test_the_sweep_frees_only_reservations_of_this_store_no_active_job_owns(world: Any) -> None:
    service, executor, _, clocks = world
    job = service.submit(spec("keeper"))
    service.tick()
    ended = service.submit(spec("ended"))
    service.cancel(ended.id)
    executor.groups |= {ended.run_id, "someone-elses-job-1234", f"{job.id}-run7"}
    clocks.mono += 10  # past the sweep interval
    service.tick()
    assert executor.groups == {job.run_id, "someone-elses-job-1234"}


def test_a_lost_node_requeues_its_jobs_with_the_reason(world: Any) -> None:
    service, executor, cluster, _ = world
    job = service.submit(spec("on-b", placement="spread"))
    service.tick()
    service.tick()
    job = service.store.get_job(job.id)
    assert job.state is JobState.RUNNING
    cluster.alive[job.nodes[0]] = False
    service.tick()
    events = service.store.events(job.id)
    lost = [e for e in events if e.reason and "was lost" in e.reason]
    assert lost and lost[0].to_state is JobState.PENDING
    assert ("stop", job.run_id) in executor.calls and job.run_id not in executor.groups
    service.tick()  # admitted again on the node that is left
    again = service.store.get_job(job.id)
    assert again.state in (JobState.ADMITTED, JobState.RUNNING) and again.attempt == 2


def test_run_time_limits_ignore_wall_clock_jumps(world: Any) -> None:
    service, _, _, clocks = world
    job = service.submit(spec("limited", max_runtime="1h"))
    service.tick()
    service.tick()
    assert service.store.get_job(job.id).state is JobState.RUNNING
    clocks.wall += 10 * 3600  # NTP or an operator moves the clock
    service.tick()
    assert service.store.get_job(job.id).state is JobState.RUNNING
    clocks.mono += 3601  # an hour really passes
    service.tick()
    ended = service.store.get_job(job.id)
    assert ended.state is JobState.FAILED and "max_runtime" in (ended.reason or "")


def test_repeated_errors_back_off_and_are_logged_once(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service, _, _, _ = world
    calls: list[float] = []

    def broken() -> bool:
        calls.append(0)
        if len(calls) >= 6:
            stop.set()
        raise ConnectionError("Ray is unreachable")

    service.tick = broken
    service.settings.active_pass_interval_s = 0.001
    service.settings.max_error_backoff_s = 0.01
    stop = threading.Event()
    with caplog.at_level(logging.DEBUG, logger="dcsched.service"):
        service.run_forever(stop)
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(calls) == 6 and len(tracebacks) == 1


def test_a_full_disk_refuses_the_submission_and_keeps_the_store_consistent(
    world: Any,
) -> None:
    service, _, _, _ = world
    kept = service.submit(spec("kept"))
    conn = service.store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreFull, match="disk is full"):
        for i in range(200):
            service.submit(spec(f"filler-{i}"))
    conn.execute("PRAGMA max_page_count = 1073741823")
    jobs = service.store.list_jobs()
    assert kept.id in {j.id for j in jobs}
    for job in jobs:  # every stored job has its submission event, nothing half-written
        assert service.store.events(job.id)[0].reason == "submitted"


def test_room_just_freed_counts_as_free_so_one_preemption_is_enough(world: Any) -> None:
    """Right after a victim is released Ray still reports its node full; the next pass
    must start the preemptor there, not preempt a second victim."""
    service, _, cluster, _ = world
    lows = [service.submit(spec(f"low-{i}", "low", cpus=4)) for i in range(2)]
    service.tick()
    service.tick()
    high = service.submit(spec("urgent", "high", cpus=4))
    service.tick()  # preempts one low job
    cluster.lagging = True
    service.tick()
    service.tick()
    preempted = [
        j for j in lows if any("preempted" in (e.reason or "") for e in service.store.events(j.id))
    ]
    assert len(preempted) == 1
    assert service.store.get_job(high.id).state in (JobState.ADMITTED, JobState.RUNNING)


def test_the_run_phase_table_covers_every_phase_and_ends_only_on_terminal_ones() -> None:
    assert set(RUN_PHASE_STATES) == set(RunPhase)
    for phase in RunPhase:
        assert job_state_of(phase).is_terminal() == phase.is_terminal()


@pytest.mark.parametrize(
    ("phase", "state", "reason"),
    [
        (RunPhase.PENDING, JobState.RUNNING, None),
        (RunPhase.RUNNING, JobState.RUNNING, None),
        (RunPhase.SUCCEEDED, JobState.SUCCEEDED, None),
        (RunPhase.FAILED, JobState.FAILED, "the run failed; see `dcsched logs`"),
        (RunPhase.STOPPED, JobState.CANCELLED, "the Ray job was stopped outside dcsched"),
    ],
)
def test_a_running_job_follows_its_run_phase_as_the_ports_table_says(
    world: Any, phase: RunPhase, state: JobState, reason: str | None
) -> None:
    service, executor, _, _ = world
    job = service.submit(spec("a"))
    service.tick()  # admitted and started
    service.tick()  # seen running
    assert service.store.get_job(job.id).state is JobState.RUNNING
    executor.phase[job.run_id] = phase
    service.tick()
    now = service.store.get_job(job.id)
    assert (now.state, now.reason) == (state, reason)
    assert (job.run_id in executor.groups) == (not state.is_terminal())  # ended: released


def test_the_service_reads_time_from_its_clock_port(world: Any) -> None:
    service, _, _, clocks = world
    clocks.wall = 1_234_567.0
    job = service.submit(spec("a"))
    assert service.now() == 1_234_567.0 and job.submitted_at == 1_234_567.0
    clocks.wall += 5
    service.tick()
    assert service.store.get_job(job.id).admitted_at == 1_234_572.0


def test_the_http_adapter_reads_through_the_service_not_its_ports() -> None:
    import re

    import dcsched.adapters.http_api as http_api
    import dcsched.adapters.serve_api as serve_api

    for module in (http_api, serve_api):
        source = Path(module.__file__ or "").read_text()
        assert "def create_app" in source or "def add_serve_routes" in source
        reaching = re.findall(r"service\.(?:store|executor|cluster)\b", source)
        assert reaching == [], f"{module.__name__} reaches past the service: {reaching}"


def test_the_read_models_answer_from_the_store_and_the_executor(world: Any) -> None:
    service, executor, _, _ = world
    job = service.submit(spec("a"))
    service.tick()
    assert service.job(job.id) == service.store.get_job(job.id)
    assert service.job("nope") is None
    assert [j.id for j in service.jobs(states=[JobState.ADMITTED])] == [job.id]
    assert service.jobs(states=[JobState.PENDING]) == []
    assert [e.to_state for e in service.history(job.id)] == [JobState.PENDING, JobState.ADMITTED]
    executor.logs = lambda run_id: f"the log of {run_id}"
    assert service.logs(job.run_id) == f"the log of {job.run_id}"
    assert service.stored_config() is None and service.model_names() == []
    assert service.model_versions("none") == []


def test_the_room_a_preemption_freed_goes_to_its_preemptor(world: Any) -> None:
    """One node of 4 CPUs, team t's quota 4 CPUs, fifo. x (high, 1 CPU) runs; older (low,
    4) and preemptor (normal, 4) wait for quota, neither with a lower-priority job to
    preempt; victim (low, 1) fits the quota and starts. When x ends, preemptor preempts
    victim (older cannot: victim is not below it). In the next pass submit order would
    start older on the freed room; the room is preemptor's (SchedulingInput.preemptors)."""
    service, executor, cluster, _ = world
    cluster.alive = {"node-a": True}
    service.apply_config(
        "queueing: {policy: fifo, preemption: true}\nteams: [{name: t, quota: {cpus: 4}}]\n"
    )
    x = service.submit(spec("x", "high", cpus=1))
    service.tick()
    older = service.submit(spec("older", "low", cpus=4))
    preemptor = service.submit(spec("preemptor", "normal", cpus=4))
    victim = service.submit(spec("victim", "low", cpus=1))
    service.tick()
    service.tick()
    state = {job.name: service.store.get_job(job.id).state for job in (x, older, preemptor, victim)}
    assert state == {
        "x": JobState.RUNNING,
        "older": JobState.PENDING,
        "preemptor": JobState.PENDING,
        "victim": JobState.RUNNING,
    }
    executor.phase[x.run_id] = RunPhase.SUCCEEDED
    service.tick()  # x ends; preemptor preempts victim
    assert service.store.get_job(victim.id).state is JobState.PENDING
    service.tick()
    service.tick()
    assert service.store.get_job(preemptor.id).state is JobState.RUNNING
    assert service.store.get_job(older.id).state is JobState.PENDING
