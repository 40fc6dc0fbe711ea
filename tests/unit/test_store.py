"""The SQLite store on a real file: migrations, enforced transitions, history, models."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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
    assert store.schema_version() == 7
    store.close()
    again = make_store(tmp_path)
    assert again.schema_version() == 7
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
    assert store.schema_version() == 7


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
