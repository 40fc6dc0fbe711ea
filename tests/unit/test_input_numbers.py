"""Numbers and sizes that once broke the service (an overflowing date, an infinite weight,
a NaN quota) are refused at the boundary with a 400 that names the field, never a 500;
listing keeps working after each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.api_harness import Api, build_api, serve
from tests.conftest import EXAMPLES
from tests.unit.test_http_limits import TRAIN, call


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    api: Api = build_api(tmp_path_factory.mktemp("home"))
    with serve(api.app) as base:
        yield base


# -- numbers at the boundary ----------------------------------------------------------------

SPEC_CASES = {
    "max_runtime-1e12": ({"max_runtime": 1e12}, "max_runtime"),
    "max_runtime-huge-int": ({"max_runtime": 10**400}, "max_runtime"),
    "memory-Infinity": ({"resources": {"memory": "Infinity"}}, "resources.memory"),
    "memory-huge-int": ({"resources": {"memory": 10**30}}, "resources.memory"),
    "memory-a-list": ({"resources": {"memory": [1]}}, "resources.memory"),
    "cpus-huge-int": ({"resources": {"cpus": 10**400}}, "resources.cpus"),
    "selector-long-key": ({"node_selector": {"a" * 1000: "b"}}, "node_selector"),
    "selector-long-value": ({"node_selector": {"a": "b" * 1000}}, "node_selector"),
    "depends-on-long-id": ({"depends_on": ["x" * 1000]}, "depends_on.0"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_numbers_and_sizes_are_400(url: str, case: str) -> None:
    change, field = SPEC_CASES[case]
    spec = {**TRAIN, **change}
    if "resources" in change:
        spec["resources"] = {**TRAIN["resources"], **change["resources"]}
    status, body = call(url, "POST", "/v1/jobs", {"spec": spec})
    assert status == 400, body
    assert any(p.startswith(field) for p in body["problems"]), body
    status, listed = call(url, "GET", "/v1/jobs")
    assert status == 200 and isinstance(listed["jobs"], list)


CONFIG_CASES = {
    "weight-inf": ("teams: [{name: a, weight: .inf}]", "teams.0.weight"),
    "weight-huge": ("teams: [{name: a, weight: 1e300}]", "teams.0.weight"),
    "gpu-types-nan": ("teams: [{name: a, quota: {gpu_types: {x: .nan}}}]", "teams.0.quota"),
    "gpu-types-negative": ("teams: [{name: a, quota: {gpu_types: {x: -1}}}]", "teams.0.quota"),
    "lending-negative-gpu-types": (
        "teams: [{name: a, lending_limit: {gpu_types: {x: -2}}}]",
        "teams.0.lending_limit",
    ),
    "borrowing-negative": ("teams: [{name: a, borrowing_limit: {cpus: -1}}]", "teams.0.borrowing"),
    "quota-negative": ("teams: [{name: a, quota: {gpus: -1}}]", "teams.0.quota.gpus"),
    "memory-Infinity": ("teams: [{name: a, quota: {memory: Infinity}}]", "teams.0.quota.memory"),
    "memory-huge-int": (f"teams: [{{name: a, quota: {{memory: {'9' * 400}}}}}]", "teams.0.quota"),
    "cpus-huge": ("teams: [{name: a, quota: {cpus: 1e308}}]", "teams.0.quota.cpus"),
    "priority-huge": (
        f"priority_classes: [{{name: normal, value: {'9' * 100}}}]",
        "priority_classes.0.value",
    ),
    "half-life-huge-int": (
        f"queueing: {{fair_share_half_life: {'9' * 400}}}",
        "queueing.fair_share_half_life",
    ),
    "max-upload-inf": ("max_upload: .inf", "max_upload"),
    "deep": ("teams: " + "[" * 5000 + "]" * 5000, "the YAML"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_numbers_are_400(url: str, case: str) -> None:
    text, field = CONFIG_CASES[case]
    status, body = call(url, "PUT", "/v1/config", {"text": text})
    assert status == 400, body
    assert any(p.startswith(field) for p in body["problems"]), body
    assert call(url, "GET", "/v1/teams")[0] == 200


def test_the_example_spec_still_passes(url: str) -> None:
    spec = yaml.safe_load((EXAMPLES / "train-mlp.yaml").read_text())
    status, body = call(url, "POST", "/v1/jobs", {"spec": spec})
    assert status == 201, body


def test_a_time_no_date_can_show_is_none_not_an_error() -> None:
    from dcsched.adapters.http_api import iso

    assert iso(1e300) is None and iso(float("nan")) is None and iso(0.0) is not None
