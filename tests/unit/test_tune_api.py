"""The tuning routes over the real HTTP app and store (no Ray, no loop): a bad study is
refused with every problem and nothing stored; a study's trials and plots are read by
fixed names only; a train job has no trials; a tune job's name is its model's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcsched.client import ApiError, Client
from tests.api_harness import TOKEN, Api, build_api, serve


def study(**tune: Any) -> dict[str, Any]:
    return {
        "name": "study",
        "kind": "tune",
        "team": "research",
        "resources": {"cpus": 1, "memory": "1GiB"},
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:breast_cancer"},
        "train": {"epochs": 2},
        "tune": {"trials": 4, "parallel": 2, **tune},
    }


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return build_api(tmp_path / "home")


@pytest.fixture
def client(api: Api) -> Iterator[Client]:
    with serve(api.app) as url:
        yield Client(url, TOKEN)


def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_a_bad_study_is_refused_with_every_problem_and_nothing_is_stored(
    api: Api, client: Client
) -> None:
    bad = study(
        metric="val_auc",
        search_space={"params.width": {"int": [1, 8]}, "train.lr": {"uniform": [0.1, 0.2]}},
    )
    error = refused(lambda: client.submit(bad))
    assert error.status == 400
    problems = error.problems
    assert any(p.startswith("tune.search_space.params.width: unknown parameter") for p in problems)
    assert any(p.startswith("tune.metric: model type 'mlp' does not report") for p in problems)
    assert api.store.list_jobs() == []
    audit = api.store.audit(1)[0]
    assert (audit.action, audit.outcome[:12]) == ("submit", "refused 400:")


def test_trials_and_plots_of_a_study(api: Api, client: Client) -> None:
    job_id = client.submit(study(seed=3))["id"]
    trials = client.trials(job_id)
    assert trials["trials"] == []
    summary = trials["summary"]
    assert (summary["metric"], summary["mode"], summary["total"], summary["created"]) == (
        "val_f1",
        "max",
        4,
        0,
    )
    assert client.get_job(job_id)["tuning"] == summary
    early = refused(lambda: client.plot(job_id, "history"))
    assert early.status == 409 and "no trial has completed yet" in early.message
    unknown = refused(lambda: client.plot(job_id, "../../token"))
    assert unknown.status == 404
    # The study's journal lies under the home, named by the job id.
    assert (api.service.paths.home / "tuning" / f"{job_id}.journal").is_file()


def test_a_train_job_has_no_trials(client: Client) -> None:
    spec = {k: v for k, v in study().items() if k != "tune"}
    job_id = client.submit({**spec, "kind": "train"})["id"]
    error = refused(lambda: client.trials(job_id))
    assert error.status == 404
    assert error.message == f"job {job_id} is a train job; trials belong to tune jobs"
