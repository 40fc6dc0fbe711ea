"""What `dcsched list`, `dcsched status` and a scheduling pass cost the server, counted
rather than timed (speed lives in bench/api_scale.py): a listing of ended jobs seen
before parses no spec and opens no run directory, the views it keeps are bounded, it
answers what it answered before (the real API over real HTTP, no Ray), and a ``fair``
pass sums past usage only when teams compete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dcsched.adapters.http_api as http_api
import dcsched.adapters.sqlite_store as sqlite_store
from dcsched.client import Client
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.rundir import RunDir
from tests.api_harness import TOKEN, build_api, serve
from tests.unit.test_store import KIND, PAYLOAD, REQUEST

TEAMS = ("vision", "speech")


def fill(api: Any, ended: int) -> None:
    """``ended`` ended jobs (their run directories with a progress line) and 5 pending."""
    for n in range(ended):
        request = REQUEST.model_copy(update={"team": TEAMS[n % 2]})
        job = Job(f"old-{n:04d}", request, JobState.PENDING, 1000.0 + n, kind=KIND, payload=PAYLOAD)
        api.store.add_job(job)
        api.store.transition(job.id, JobState.ADMITTED, 2000.0 + n, nodes=["node-1"])
        api.store.transition(job.id, JobState.RUNNING, 2001.0 + n)
        files = RunDir(api.service.paths.run_dir(job.id))
        files.progress.parent.mkdir(parents=True, exist_ok=True)
        files.progress.write_text(f'{{"epoch": 1, "loss": {n}}}\n')
        end = JobState.SUCCEEDED if n % 3 else JobState.FAILED
        api.store.transition(job.id, end, 3000.0 + n, result={"metrics": {"f1": 0.5}})
    for n in range(5):
        request = REQUEST.model_copy(update={"team": TEAMS[0]})
        job = Job(f"new-{n}", request, JobState.PENDING, 9000.0 + n, kind=KIND, payload=PAYLOAD)
        api.store.add_job(job)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"specs_parsed": 0, "progress_read": 0}
    parse, last_progress = sqlite_store.request_of, RunDir.last_progress

    def counting_parse(document: Any) -> Any:
        counts["specs_parsed"] += 1
        return parse(document)

    def counting_progress(self: RunDir) -> Any:
        counts["progress_read"] += 1
        return last_progress(self)

    monkeypatch.setattr(sqlite_store, "request_of", counting_parse)
    # a store larger than the parsed-spec cache, as 10,000 jobs are for its 4,096
    monkeypatch.setattr(sqlite_store, "_SPEC_CACHE_SIZE", 50)
    monkeypatch.setattr(RunDir, "last_progress", counting_progress)
    return counts


def test_listing_ended_jobs_again_parses_no_spec_and_reads_no_run_directory(
    tmp_path: Path, counted: dict[str, int]
) -> None:
    api = build_api(tmp_path / "home")
    fill(api, 120)
    with serve(api.app) as url:
        client = Client(url=url, token=TOKEN)
        first = client.list_jobs(limit=200)
        team = client.list_jobs(team="speech", limit=50)
        counted.update(specs_parsed=0, progress_read=0)
        assert client.list_jobs(limit=200) == first
        assert client.list_jobs(team="speech", limit=50) == team
        ended = client.list_jobs(state="SUCCEEDED,FAILED", limit=100)
        # only the 5 pending jobs are read again (from the spec cache: no parse)
        assert counted == {"specs_parsed": 0, "progress_read": 0}
        detail = client.get_job("old-0007")
    assert [j["id"] for j in first[:6]] == [f"new-{n}" for n in (4, 3, 2, 1, 0)] + ["old-0119"]
    assert len(first) == 125 and len(team) == 50 and len(ended) == 100
    assert {j["team"] for j in team} == {"speech"}
    kept = next(j for j in first if j["id"] == "old-0007")
    assert kept == {k: v for k, v in detail.items() if k not in {"spec", "events", "ray"}}
    assert kept["progress"] == {"epoch": 1, "loss": 7} and kept["state"] == "SUCCEEDED"
    assert [e["to_state"] for e in detail["events"]] == [
        "PENDING",
        "ADMITTED",
        "RUNNING",
        "SUCCEEDED",
    ]
    assert detail["ray"]["reachable"] is True and detail["spec"]["team"] == "speech"


def test_a_listing_of_the_whole_store_reads_a_page_of_jobs_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench/api_scale.py lists all 10,000 ids: read at once, they grew the server by ~50 MiB
    api = build_api(tmp_path / "home")
    fill(api, 30)
    with serve(api.app) as url:
        whole = Client(url=url, token=TOKEN).list_jobs()
    monkeypatch.setattr(http_api, "LIST_PAGE", 7)
    again = build_api(tmp_path / "home")  # nothing kept yet
    read: list[int] = []
    by_id = again.service.jobs_by_id

    def counting(job_ids: Any) -> Any:
        read.append(len(job_ids))
        return by_id(job_ids)

    again.service.jobs_by_id = counting  # type: ignore[method-assign]
    with serve(again.app) as url:
        assert Client(url=url, token=TOKEN).list_jobs() == whole
    assert len(whole) == 35 and sum(read) == 35 and max(read) == 7


def test_a_pending_job_that_ends_is_listed_as_it_is_now(tmp_path: Path) -> None:
    api = build_api(tmp_path / "home")
    fill(api, 3)
    with serve(api.app) as url:
        client = Client(url=url, token=TOKEN)
        assert client.list_jobs(state="PENDING")[0]["id"] == "new-4"
        api.store.transition("new-4", JobState.CANCELLED, 9999.0, "cancelled by user")
        listed = {j["id"]: j for j in client.list_jobs()}
    assert listed["new-4"]["state"] == "CANCELLED"
    assert listed["new-4"]["reason"] == "cancelled by user"


def test_ended_views_are_bounded_least_recently_used_out() -> None:
    from dcsched.adapters.view_cache import EndedViews

    views = EndedViews(capacity=3)
    for n in range(3):
        views.put(f"j{n}", b"{}")
    assert views.get("j0") == b"{}"  # now the most recent
    views.put("j3", b"{}")
    assert len(views) == 3 and "j1" not in views
    assert [job_id in views for job_id in ("j0", "j2", "j3")] == [True, True, True]
    with pytest.raises(ValueError):
        EndedViews(capacity=0)


def test_a_fair_pass_reads_past_usage_only_when_teams_compete(tmp_path: Path) -> None:
    from tests.unit.test_service import Clocks, Cluster, Executor, make_service, spec

    service = make_service(tmp_path, Executor(), Cluster(), Clocks())
    service.apply_config("queueing: {policy: fair}\nunlisted_teams: allow\n")
    reads = []
    intervals = service.store.allocation_intervals

    def counting(since: float | None = None) -> Any:
        reads.append(since)
        return intervals(since=since)

    service.store.allocation_intervals = counting  # type: ignore[method-assign]
    for n in range(3):
        service.submit(spec(f"a{n}", cpus=4))  # one node of 4 CPUs each: 2 wait
    service.tick()
    assert reads == []  # one team waits: its own order
    service.submit({**spec("b0", cpus=4), "team": "other"})
    service.tick()
    assert len(reads) == 1


def test_a_members_rights_still_follow_the_jobs_team(tmp_path: Path) -> None:
    # the job's team is now looked up for members only: they must still be refused
    from dcsched.client import ApiError
    from dcsched.core.auth import new_token, token_hash

    api = build_api(tmp_path / "home")
    fill(api, 2)  # old-0000 is team vision, old-0001 speech; new-* vision and pending
    token = new_token()
    api.store.add_principal("alice", "member", "speech", token_hash(token.encode()), 1.0)
    with serve(api.app) as url:
        alice = Client(url=url, token=token)
        assert alice.get_job("old-0000")["team"] == "vision"  # members read every team's
        with pytest.raises(ApiError) as refused:
            alice.cancel("new-0")
        assert refused.value.status == 403
        with pytest.raises(ApiError) as refused:
            alice.job_logs("old-0000")
        assert refused.value.status == 403
        assert Client(url=url, token=TOKEN).cancel("new-0")["state"] == "CANCELLED"
