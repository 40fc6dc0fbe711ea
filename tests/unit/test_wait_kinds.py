"""Waiting reasons as typed values, end to end: each ``WaitKind`` is produced by the core
where it should be (pure passes, no Ray), the service records a preemption-pending wait
for a job that preempted, the SQLite store keeps the kind beside the words (and reads a
store written before the kind existed), and the API and `dcsched status -o json` show it
as ``reason_kind`` (the real API over real HTTP, the loop stepped by hand, no Ray)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import dcsched.adapters.sqlite_store as sqlite_store
from dcsched.adapters.sqlite_store import MIGRATIONS, SQLiteStore
from dcsched.cli import cli
from dcsched.client import Client
from dcsched.core.admission import Preempt, Wait
from dcsched.core.lifecycle import JobState
from dcsched.core.waits import WaitKind, WaitReason
from tests.api_harness import TOKEN, build_api, serve
from tests.unit.test_admission import (
    NOW,
    backfill_case,
    by_id,
    config,
    decide,
    job,
    node,
    running,
    wait,
)
from tests.unit.test_service import Clocks, Cluster, Executor, make_service, spec
from tests.unit.test_store import pending as stored_pending


def kinds(decisions: list[Any]) -> dict[str, WaitKind]:
    return {d.job_id: d.kind for d in decisions if isinstance(d, Wait)}


# -- the core produces each kind where it should ---------------------------------------------


def test_dependency() -> None:
    pending = [job("first", cpus=8, at=1), job("then", cpus=1, at=2, depends_on=["first"])]
    assert kinds(decide(pending, [node("n")])) == {"then": WaitKind.DEPENDENCY}


def test_unknown_team_and_never_fits_block_no_one() -> None:
    cfg = config(teams=[{"name": "a"}], unlisted_teams="reject")
    pending = [
        job("stranger", team="stranger", at=1),
        job("huge", team="a", cpus=100, at=2),
        job("ok", team="a", cpus=1, at=3),
    ]
    d = decide(pending, [node("n")], cfg=cfg)
    assert kinds(d) == {"stranger": WaitKind.UNKNOWN_TEAM, "huge": WaitKind.NEVER_FITS}
    assert not any(w.kind.for_capacity for w in d if isinstance(w, Wait))


def test_quota() -> None:
    cfg = config(teams=[{"name": "research", "quota": {"gpus": 8}}])
    busy = running(job("r0", team="research", gpus=8), ["n1"], 0)
    pending = [job("r1", team="research", gpus=1, at=1)]
    d = decide(pending, [node("n1", gpus=8), node("n2", gpus=8)], [busy], cfg)
    assert wait(d[0]).kind is WaitKind.QUOTA
    assert wait(d[0]).reason.startswith("team research is at its GPU quota 8/8")
    assert wait(d[0]).estimated_start is None


def test_quota_held_for_a_team_that_preempted() -> None:
    cfg = config(
        "fifo",
        teams=[
            {"name": "a", "cohort": "x", "quota": {"cpus": 2, "gpus": 0}},
            {"name": "b", "cohort": "x", "quota": {"cpus": 2, "gpus": 4}},
        ],
    )
    a_gpu = running(job("a-gpu", team="a", gpus=1, priority="low"), ["n"], NOW - 30)
    pending = [job("b-big", team="b", gpus=4, at=0), job("b-cpu", team="b", cpus=2, at=1)]
    d = by_id(decide(pending, [node("n", cpus=16, gpus=8)], [a_gpu], cfg))
    assert isinstance(d["b-big"], Preempt)
    assert wait(d["b-cpu"]).kind is WaitKind.QUOTA_HELD


def test_capacity_head_and_behind_head_without_backfill() -> None:
    busy = running(job("busy", team="x", cpus=6, runtime=300), ["n"], NOW - 100)
    pending = [job("head", team="y", cpus=4, at=1), job("small", team="z", cpus=1, at=2)]
    d = decide(pending, [node("n", cpus=8)], [busy], config("fifo"))
    assert kinds(d) == {"head": WaitKind.CAPACITY, "small": WaitKind.BEHIND_HEAD}
    assert all(wait(x).estimated_start == NOW + 200 for x in d)  # both wait for capacity


def test_backfill_shadow_and_behind_head_with_backfill() -> None:
    nodes, active = backfill_case()
    pending = [
        job("head", cpus=4, at=1),
        job("short", cpus=2, at=2, runtime=50),  # backfilled
        job("long", cpus=1, at=3, runtime=500),  # backfilled off the head's node
        job("long2", cpus=1, at=4, runtime=500),  # would delay the head
        job("forever", cpus=1, at=5),  # no max_runtime: never backfilled
    ]
    d = decide(pending, nodes, active, config("fifo", backfill=True))
    assert kinds(d) == {
        "head": WaitKind.CAPACITY,
        "long2": WaitKind.BACKFILL_SHADOW,
        "forever": WaitKind.BEHIND_HEAD,
    }


def test_behind_head_when_the_heads_start_is_unknown() -> None:
    active = [running(job("busy", cpus=6), ["n1"], 0)]
    pending = [job("head", cpus=4, at=1), job("short", cpus=1, at=2, runtime=5)]
    d = by_id(decide(pending, [node("n1", cpus=8)], active, config("fifo", backfill=True)))
    assert wait(d["short"]).kind is WaitKind.BEHIND_HEAD
    assert "start cannot be estimated" in wait(d["short"]).reason


def test_a_preempt_decision_gives_its_preemption_pending_wait() -> None:
    active = [running(job("lo", gpus=4, priority="low"), ["n"], NOW)]
    d = decide([job("hi", gpus=4)], [node("n", cpus=8, gpus=4)], active)
    assert isinstance(d[0], Preempt)
    waits = d[0].pending()
    assert waits == Wait(
        "hi",
        0,
        WaitReason(
            WaitKind.PREEMPTION_PENDING,
            "starting once the jobs it preempted have released their resources: lo",
        ),
    )


def test_kinds_parse_leniently_and_say_which_wait_for_capacity() -> None:
    assert WaitKind.parse("backfill-shadow") is WaitKind.BACKFILL_SHADOW
    assert WaitKind.parse(None) is None
    assert WaitKind.parse("a-kind-of-a-later-version") is None
    capacity = {k for k in WaitKind if k.for_capacity}
    assert capacity == {WaitKind.CAPACITY, WaitKind.BEHIND_HEAD, WaitKind.BACKFILL_SHADOW}


# -- the service and the store ---------------------------------------------------------------


def test_the_service_records_a_preemption_pending_wait_for_the_preemptor(tmp_path: Path) -> None:
    executor, cluster, clocks = Executor(), Cluster(), Clocks()
    service = make_service(tmp_path, executor, cluster, clocks)
    lows = [service.submit(spec(f"low-{i}", "low", cpus=4)) for i in range(2)]
    service.tick()
    service.tick()
    high = service.submit(spec("urgent", "high", cpus=4))
    behind = service.submit(spec("later", "low", cpus=4))
    service.tick()  # preempts one low job
    stored = service.store.get_job(high.id)
    assert stored.state is JobState.PENDING
    assert stored.reason_kind is WaitKind.PREEMPTION_PENDING
    assert stored.reason.startswith("starting once the jobs it preempted have released")
    assert service.position(high.id) == 0
    victim = next(j for j in lows if service.store.get_job(j.id).state is JobState.PENDING)
    # The victim's requeue is a transition: its reason is the event's, with no kind yet.
    requeued = service.store.get_job(victim.id)
    assert requeued.reason.startswith("preempted: ") and requeued.reason_kind is None
    assert service.store.get_job(behind.id).reason_kind is WaitKind.CAPACITY
    service.tick()  # the preemptor starts; the requeued victim now waits for capacity
    assert service.store.get_job(high.id).state is JobState.ADMITTED
    assert service.store.get_job(high.id).reason_kind is None
    assert service.store.get_job(victim.id).reason_kind in (
        WaitKind.CAPACITY,
        WaitKind.BEHIND_HEAD,
    )


def test_the_store_keeps_the_kind_beside_the_words_and_a_transition_clears_it(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "dcsched.db", tmp_path / "models")
    store.add_job(stored_pending("a"))
    store.add_job(stored_pending("b"))
    quota = WaitReason(WaitKind.QUOTA, "team t is at its GPU quota 8/8")
    store.set_reasons({"a": quota, "b": WaitReason(WaitKind.DEPENDENCY, "waiting for a")})
    got = store.get_job("a")
    assert got is not None and (got.reason, got.reason_kind) == (quota.words, WaitKind.QUOTA)
    # Same words, another kind: the kind is updated too.
    store.set_reasons({"a": WaitReason(WaitKind.CAPACITY, quota.words)})
    got = store.get_job("a")
    assert got is not None and got.reason_kind is WaitKind.CAPACITY
    store.transition("a", JobState.ADMITTED, 2.0, nodes=["n"])
    got = store.get_job("a")
    assert got is not None and got.reason is None and got.reason_kind is None
    # Only pending jobs take waiting reasons.
    store.set_reasons({"a": quota})
    got = store.get_job("a")
    assert got is not None and got.reason_kind is None
    listed = {j.id: j.reason_kind for j in store.list_jobs(states=[JobState.PENDING])}
    assert listed == {"b": WaitKind.DEPENDENCY}


def test_a_store_written_before_the_kind_existed_is_migrated_and_stays_readable(
    tmp_path: Path,
) -> None:
    """A store at schema 5, written as that version did (its migrations, its columns)."""
    db = tmp_path / "dcsched.db"
    old = sqlite3.connect(db, isolation_level=None)
    old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        old.executescript(script)
        old.execute("INSERT INTO schema_migrations(version) VALUES (?)", (number,))
    job = stored_pending("old")
    old.execute(
        "INSERT INTO jobs (id, name, kind, team, priority, state, spec, submitted_at, nodes,"
        " reason, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            job.id,
            job.name,
            job.kind,
            job.team,
            job.priority,
            "PENDING",
            json.dumps(sqlite_store._document(job)),
            1.0,
            "[]",
            "node n was lost; requeued",
            1,
        ),
    )
    old.close()
    store = SQLiteStore(db, tmp_path / "models")
    assert store.schema_version() == len(MIGRATIONS)
    got = store.get_job("old")
    assert got is not None and got.state is JobState.PENDING
    assert (got.reason, got.reason_kind) == ("node n was lost; requeued", None)
    store.set_reasons({"old": WaitReason(WaitKind.CAPACITY, "needs 4 CPUs")})
    got = store.get_job("old")
    assert got is not None and got.reason_kind is WaitKind.CAPACITY
    # A kind this version does not know (a newer server wrote it) reads as none.
    again = sqlite3.connect(db, isolation_level=None)
    again.execute("UPDATE jobs SET reason_kind = 'from-a-later-version'")
    again.close()
    got = store.get_job("old")
    assert got is not None and got.reason == "needs 4 CPUs" and got.reason_kind is None


# -- the API and the CLI ---------------------------------------------------------------------


def test_the_api_and_status_json_show_reason_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = build_api(tmp_path / "home")
    service = api.service
    first = service.submit(spec_of("first"))
    then = service.submit({**spec_of("then"), "depends_on": [first.id]})
    service.tick()  # first is admitted (the idle executor never starts it); then waits
    with serve(api.app) as url:
        client = Client(url=url, token=TOKEN)
        shown = client.get_job(then.id)
        assert shown["state"] == "PENDING"
        assert shown["reason_kind"] == "dependency"
        assert shown["reason"] == f"waiting for {first.id} to succeed"
        assert client.get_job(first.id)["reason_kind"] is None
        listed = {j["id"]: j["reason_kind"] for j in client.list_jobs()}
        assert listed == {then.id: "dependency", first.id: None}

        home = tmp_path / "cli-home"
        home.mkdir()
        (home / "token").write_text(TOKEN + "\n")
        (home / "server.json").write_text(json.dumps({"url": url, "pid": 1}))
        for name in ("DCSCHED_URL", "DCSCHED_TOKEN", "DCSCHED_PORT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DCSCHED_HOME", str(home))
        result = CliRunner().invoke(cli, ["status", then.id, "-o", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["reason_kind"] == "dependency"


def spec_of(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "run",
        "team": "research",
        "resources": {"workers": 1, "cpus": 1, "memory": "1GiB"},
        "run": {"command": ["true"]},
    }
