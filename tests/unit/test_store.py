"""The SQLite store on a real file: migrations, enforced transitions, history, models."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dcsched.adapters import sqlite_store
from dcsched.adapters.sqlite_store import SQLiteStore, directory_checksum
from dcsched.core.job import Job
from dcsched.core.lifecycle import InvalidTransition, JobState
from dcsched.kinds import load_job_spec_yaml, split
from tests.conftest import EXAMPLES

SPEC = load_job_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
REQUEST, KIND, PAYLOAD = split(SPEC)


def make_store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "dcsched.db", tmp_path / "models")


def pending(job_id: str, at: float = 1.0) -> Job:
    return Job(job_id, REQUEST, JobState.PENDING, submitted_at=at, kind=KIND, payload=PAYLOAD)


def test_migrations_run_once_and_wal_is_on(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.schema_version() == 8
    store.close()
    again = make_store(tmp_path)
    assert again.schema_version() == 8
    mode = sqlite3.connect(tmp_path / "dcsched.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_jobs_survive_reopening(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_job(pending("a"))
    store.transition("a", JobState.ADMITTED, 2.0, nodes=["n1"])
    store.close()
    job = make_store(tmp_path).get_job("a")
    assert job is not None and job.state is JobState.ADMITTED and job.nodes == ("n1",)
    assert job.request == REQUEST and job.admitted_at == 2.0
    assert job.kind == KIND and job.payload == PAYLOAD


def test_transitions_are_enforced_and_recorded(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_job(pending("a"))
    with pytest.raises(InvalidTransition):
        store.transition("a", JobState.SUCCEEDED, 2.0)
    store.transition("a", JobState.ADMITTED, 2.0, nodes=["n1"])
    store.transition("a", JobState.RUNNING, 3.0)
    store.transition("a", JobState.FAILED, 4.0, "boom")
    with pytest.raises(InvalidTransition, match="already ended as FAILED"):
        store.transition("a", JobState.CANCELLED, 5.0)
    history = [(e.from_state, e.to_state, e.reason) for e in store.events("a")]
    assert history == [
        (None, JobState.PENDING, "submitted"),
        (JobState.PENDING, JobState.ADMITTED, None),
        (JobState.ADMITTED, JobState.RUNNING, None),
        (JobState.RUNNING, JobState.FAILED, "boom"),
    ]
    job = store.get_job("a")
    assert job is not None and job.finished_at == 4.0 and job.reason == "boom"


def test_requeue_clears_placement(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_job(pending("a"))
    store.transition("a", JobState.ADMITTED, 2.0, nodes=["n1"])
    job = store.transition("a", JobState.PENDING, 3.0, "not ready")
    assert job.nodes == () and job.admitted_at is None and job.reason == "not ready"


def test_listing_filters_and_orders_newest_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for i in range(5):
        store.add_job(pending(f"j{i}", at=float(i)))
    store.transition("j1", JobState.CANCELLED, 9.0)
    assert [j.id for j in store.list_jobs(limit=2)] == ["j4", "j3"]
    assert [j.id for j in store.list_jobs(states=[JobState.CANCELLED])] == ["j1"]
    assert store.counts_by_state()[("PENDING", "research", "train")] == 4


def _finish(store: SQLiteStore, job_id: str, artifact: Path) -> None:
    store.transition(job_id, JobState.ADMITTED, 2.0, nodes=["n"])
    store.transition(job_id, JobState.RUNNING, 3.0)
    store.finish_with_model(
        job_id, 4.0, artifact, {"accuracy": 0.9}, "mlp", {"hidden": [4]}, {"task": "binary"}
    )


def test_model_versions_count_up_and_are_idempotent(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "weights.pt").write_bytes(b"abc")
    for job_id in ("a", "b"):
        store.add_job(pending(job_id))
        _finish(store, job_id, artifact)
    versions = store.model_versions("mlp-breast-cancer")
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].checksum == directory_checksum(artifact)
    assert Path(versions[1].path, "weights.pt").read_bytes() == b"abc"
    job = store.get_job("b")
    assert job is not None and job.state is JobState.SUCCEEDED
    assert job.result == {"task": "binary", "model": {"name": "mlp-breast-cancer", "version": 2}}
    assert store.model_names() == [("mlp-breast-cancer", 2, 2, 4.0)]


def test_allocation_intervals_follow_the_event_history(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add_job(pending("a", at=0.0))
    store.transition("a", JobState.ADMITTED, 10.0, nodes=["n"])
    store.transition("a", JobState.RUNNING, 11.0)
    store.transition("a", JobState.PENDING, 20.0, "preempted by b")
    store.transition("a", JobState.ADMITTED, 30.0, nodes=["n"])
    store.transition("a", JobState.RUNNING, 31.0)
    store.add_job(pending("never", at=0.0))
    store.add_job(pending("requeued", at=0.0))
    store.transition("requeued", JobState.ADMITTED, 12.0, nodes=["n"])
    store.transition("requeued", JobState.PENDING, 15.0, "preempted by a")
    intervals = {(i.job_id, i.start, i.end) for i in store.allocation_intervals()}
    # a requeued job waiting again keeps its past interval (counters must never go down)
    assert intervals == {("a", 10.0, 20.0), ("a", 30.0, None), ("requeued", 12.0, 15.0)}
    assert {(i.job_id, i.end) for i in store.allocation_intervals(since=16.0)} == {
        ("a", 20.0),
        ("a", None),
    }
    store.transition("a", JobState.SUCCEEDED, 40.0)
    intervals = [(i.job_id, i.start, i.end) for i in store.allocation_intervals(since=35.0)]
    assert intervals == [("a", 30.0, 40.0)]
    assert store.allocation_intervals(since=41.0) == []


def test_configs_are_kept_and_the_newest_wins(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.latest_config() is None
    store.save_config("placement: spread\n", 1.0)
    store.save_config("placement: binpack\n", 2.0)
    assert store.latest_config() == ("placement: binpack\n", 2.0)
    assert store.schema_version() == 8


def test_deployments_are_rows_that_survive_reopening(tmp_path: Path) -> None:
    from dcsched.ports import Deployment

    store = make_store(tmp_path)
    record = Deployment(
        name="bc", team="research", spec={"name": "bc", "serve": {"model": "m:1"}},
        model="m", version=1, plugin="mlp", replicas=2, min_replicas=1, max_replicas=3,
        target_in_flight=2.5, host="127.0.0.1", port=20123, created_at=5.0, updated_at=6.0,
        slots={"job-1": {"slot": 1, "host": "127.0.0.1", "port": 20200, "version": 1}},
        scale_down_after_s=4.0,
    )  # fmt: skip
    store.save_deployment(record)
    record.version, record.state, record.message = 2, "stopped", "rolling update"
    store.save_deployment(record)  # the same name: replaced, not added
    store.close()
    again = make_store(tmp_path)
    assert again.deployments() == [record]
    assert again.deployments()[0].url == "http://127.0.0.1:20123"


def _vm_steps(store: SQLiteStore, call: Callable[[], object]) -> int:
    """SQLite virtual-machine steps (in thousands) that ``call`` makes on this thread's
    connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn = store._conn()
    conn.set_progress_handler(count, 1000)
    try:
        call()
    finally:
        conn.set_progress_handler(None, 0)
    return steps[0]


def test_a_warm_allocation_read_reads_only_the_events_since_the_last(tmp_path: Path) -> None:
    # The scheduling pass asks for fair share's intervals many times a second: a warm
    # call must not read every recent job's history again (it cost ~0.1 s a pass at
    # 10,000 jobs).
    store = make_store(tmp_path)
    for n in range(400):
        job_id = f"j{n}"
        store.add_job(pending(job_id, at=100.0 + n))
        store.transition(job_id, JobState.ADMITTED, 101.0 + n, nodes=["n"])
        store.transition(job_id, JobState.RUNNING, 102.0 + n)
        store.transition(job_id, JobState.SUCCEEDED, 103.0 + n)
    cold = _vm_steps(store, lambda: store.allocation_intervals(since=50.0))
    store.add_job(pending("late", at=600.0))
    store.transition("late", JobState.ADMITTED, 601.0, nodes=["n"])
    warm = _vm_steps(store, lambda: store.allocation_intervals(since=60.0))
    assert cold > 20
    assert warm * 20 < cold
    got = store.allocation_intervals(since=60.0)
    assert len(got) == 401 and (got[-1].job_id, got[-1].end) == ("late", None)


def test_allocation_windows_agree_with_the_whole_history(tmp_path: Path) -> None:
    # Random histories (requeues, cancels, tune jobs that hold nothing), read as they
    # grow with a later and later `since` (as fair share and the metrics ask, each its
    # own), and now and then with an earlier one (as `dcsched usage --since` may): always
    # what the whole history says.
    tune_request, _, tune_payload = split(
        load_job_spec_yaml((EXAMPLES / "tune-mlp.yaml").read_text())
    )
    store = make_store(tmp_path)
    reference = make_store(tmp_path)  # another instance: its unbounded reads only
    rng = random.Random(3)
    states: dict[str, JobState] = {}
    now = 0.0
    for step in range(600):
        now += rng.uniform(0.1, 2.0)
        live = [j for j, s in states.items() if not s.is_terminal()]
        if not live or rng.random() < 0.2:
            job_id = f"j{step}"
            if rng.random() < 0.1:
                job = Job(
                    job_id, tune_request, JobState.PENDING, now, kind="tune", payload=tune_payload
                )
            else:
                job = pending(job_id, at=now)
            store.add_job(job)
            states[job_id] = JobState.PENDING
        else:
            job_id = rng.choice(live)
            state = states[job_id]
            if state is JobState.PENDING:
                target = rng.choice([JobState.ADMITTED, JobState.ADMITTED, JobState.CANCELLED])
            elif state is JobState.ADMITTED:
                target = rng.choice([JobState.RUNNING, JobState.PENDING, JobState.FAILED])
            else:
                target = rng.choice(
                    [JobState.SUCCEEDED, JobState.FAILED, JobState.PENDING, JobState.CANCELLED]
                )
            nodes = ["n"] if target is JobState.ADMITTED else None
            store.transition(job_id, target, now, nodes=nodes)
            states[job_id] = target
        whole = reference.allocation_intervals()
        # two callers with their own horizons (fair share, the metrics' running totals)
        for since in (now - 60.0 if rng.random() > 0.05 else now - 200.0, now - 5.0):
            expected = [i for i in whole if i.end is None or i.end >= since]
            assert store.allocation_intervals(since=since) == expected, (step, since)


def test_parsed_specs_kept_in_memory_are_bounded(tmp_path: Path) -> None:
    # ~3 KiB a job: a server whose store holds 100,000 jobs must not keep them all.
    store = make_store(tmp_path)
    for n in range(5000):
        store.add_job(pending(f"j{n}", at=float(n)))
    assert len(store.list_jobs()) == 5000
    assert 0 < len(sqlite_store._spec_cache) <= 4096
    assert store.get_job("j0") == pending("j0", at=0.0)
    assert "j0" in sqlite_store._spec_cache  # the one just read stays (least recent out)


def test_only_specs_of_jobs_not_ended_are_kept(tmp_path: Path) -> None:
    # What a server keeps parsed follows the jobs in flight, not the size of its store
    # (bench/api_scale.py: 10,000 ended jobs grew it by ~50 MiB and its GC pauses).
    store = make_store(tmp_path)
    for n in range(300):
        store.add_job(pending(f"e{n}", at=float(n)))
    store.add_job(pending("live", at=1000.0))
    for n in range(300):
        store.transition(f"e{n}", JobState.CANCELLED, 2000.0, "cancelled by user")
    sqlite_store._spec_cache.clear()
    listed = store.list_jobs()
    assert len(listed) == 301 and listed[0].request == REQUEST
    assert store.get_job("e7") is not None and store.jobs_by_id(["e8", "live"]).keys() == {
        "e8",
        "live",
    }
    assert [k for k in sqlite_store._spec_cache if k.startswith("e")] == []
    assert "live" in sqlite_store._spec_cache
    store.transition("live", JobState.CANCELLED, 3000.0, "cancelled by user")
    assert "live" not in sqlite_store._spec_cache  # dropped when it ended


def test_job_states_and_jobs_by_id_answer_what_list_jobs_does(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for n in range(1200):  # more ids than one query names
        store.add_job(pending(f"j{n:04d}", at=float(n % 7)))
    for n in range(0, 1200, 3):
        store.transition(f"j{n:04d}", JobState.CANCELLED, 10.0, "cancelled by user")
    for states, limit in ((None, None), ([JobState.PENDING], 50), ([JobState.CANCELLED], None)):
        jobs = store.list_jobs(states=states, limit=limit)
        keys = store.list_job_states(states=states, limit=limit)
        assert keys == [(j.id, j.state) for j in jobs]
        by_id = store.jobs_by_id([job_id for job_id, _ in keys] + ["missing"])
        assert [by_id[job_id] for job_id, _ in keys] == jobs


def test_each_connection_caches_at_most_512_kib_of_pages(tmp_path: Path) -> None:
    # One connection a thread (the API's pool has up to 40): SQLite's default 2 MiB each
    # grew the server by ~80 MiB once its store outgrew it (bench/api_scale.py).
    store = make_store(tmp_path)
    sizes: list[int] = []

    def read() -> None:
        store.list_jobs()
        sizes.append(store._conn().execute("PRAGMA cache_size").fetchone()[0])

    worker = threading.Thread(target=read)
    worker.start()
    worker.join()
    read()
    assert sizes == [-512, -512]
