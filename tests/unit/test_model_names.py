"""Model names belong to a team: the team whose job registered a name's first version. Another
team's ``train`` job of that name is refused at submit, and the store refuses to register it
too (if the name was taken between submit and finish)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SpecError
from dcsched.ports import ModelNameTaken
from tests.api_harness import Api, build_api


def train(name: str, team: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "train",
        "team": team,
        "resources": {"cpus": 1, "memory": "1GiB"},
        "model": {"type": "mlp", "params": {"hidden": [4]}},
        "data": {"source": "sklearn:breast_cancer"},
    }


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return build_api(tmp_path / "home")


def finish(api: Api, job_id: str, tmp_path: Path) -> None:
    artifact = tmp_path / f"artifact-{job_id}"
    artifact.mkdir()
    (artifact / "weights.pt").write_bytes(b"w")
    api.store.transition(job_id, JobState.ADMITTED, 2.0, nodes=["node-1"])
    api.store.transition(job_id, JobState.RUNNING, 3.0)
    api.store.finish_with_model(job_id, 4.0, artifact, {}, "mlp", {}, {})


def test_another_teams_train_job_cannot_take_a_model_name(api: Api, tmp_path: Path) -> None:
    first = api.service.submit(train("churn", "research"))
    finish(api, first.id, tmp_path)
    assert api.store.model_owner("churn") == "research"

    with pytest.raises(SpecError) as caught:
        api.service.submit(train("churn", "ads"))
    assert caught.value.problems == [
        "name: model churn belongs to team research; choose another name"
    ]
    # the owner registers new versions; another team uses another name; run jobs may share it
    again = api.service.submit(train("churn", "research"))
    api.service.submit(train("churn-ads", "ads"))
    run = {**train("churn", "ads"), "kind": "run", "run": {"command": ["true"]}}
    for section in ("model", "data"):
        del run[section]
    api.service.submit(run)
    finish(api, again.id, tmp_path)
    assert [v.version for v in api.store.model_versions("churn")] == [1, 2]


def test_the_store_refuses_to_register_another_teams_model(api: Api, tmp_path: Path) -> None:
    ads = api.service.submit(train("shared", "ads"))  # accepted: no model of that name yet
    research = api.service.submit(train("shared", "research"))
    finish(api, research.id, tmp_path)  # research registers first and owns the name

    with pytest.raises(ModelNameTaken, match="model shared belongs to team research"):
        finish(api, ads.id, tmp_path)
    assert [v.job_id for v in api.store.model_versions("shared")] == [research.id]
    job = api.store.get_job(ads.id)
    assert job is not None and job.state is JobState.RUNNING  # unchanged: rolled back
    assert api.store.model_owner("nothing-here") is None


def test_a_run_whose_name_was_taken_meanwhile_fails_with_the_reason(
    api: Api, tmp_path: Path
) -> None:
    ads = api.service.submit(train("taken", "ads"))
    research = api.service.submit(train("taken", "research"))
    finish(api, research.id, tmp_path)
    api.store.transition(ads.id, JobState.ADMITTED, 2.0, nodes=["node-1"])
    job = api.store.transition(ads.id, JobState.RUNNING, 3.0)
    files = api.service.run_files(ads.id)
    files.model.mkdir(parents=True)
    (files.model / "weights.pt").write_bytes(b"w")
    files.write_result({"metrics": {}})

    ended = api.service._register_model(job, files, 5.0)
    assert ended.state is JobState.FAILED
    assert ended.reason == "model taken belongs to team research; choose another name"
