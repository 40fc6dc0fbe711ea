"""The cluster configuration: the shipped example parses; mistakes get clear errors."""

from __future__ import annotations

import pytest

from dcsched.core.config import ClusterConfig, load_config_yaml
from dcsched.core.spec import SpecError
from tests.conftest import EXAMPLES


def test_the_example_configuration_parses() -> None:
    config = load_config_yaml((EXAMPLES / "dcsched.yaml").read_text())
    assert config.queueing.policy == "fair" and config.queueing.backfill
    assert config.queueing.fair_share_half_life == 6 * 3600
    research = config.team("research")
    assert research is not None and research.weight == 2 and research.cohort == "ml"
    assert research.quota.caps().gpus == 8 and research.quota.gpu_types == {"a100": 8}
    assert config.team("nobody") is None  # unlisted_teams: reject


def test_defaults_without_a_file() -> None:
    config = load_config_yaml("")
    assert config == ClusterConfig()
    assert {c.name: c.value for c in config.priority_classes} == {
        "low": 0,
        "normal": 100,
        "high": 1000,
    }
    assert config.priority_class("normal") is not None and config.priority_class("x") is None
    assert config.team("anyone") is not None  # unlisted teams run without quota


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("placement: sideways", "placement"),
        ("queueing: {policy: lottery}", "queueing.policy"),
        ("teams: [{name: a}, {name: a}]", "names must be unique"),
        ("priority_classes: [{name: low, value: 0}]", "a class named 'normal' is required"),
        ("teams: [{name: a, quota: {gpus: 2, gpu_types: {a100: 3}}}]", "more than gpus"),
        ("teams: [{name: a, quota: {memory: lots}}]", "not a size"),
        ("queueing: {fair_share_half_life: soon}", "not understood"),
        ("- a list", "must be a mapping"),
        ("colour: blue", "colour: unknown field"),
    ],
)
def test_mistakes_are_named(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_config_yaml(text)
    assert expected in str(caught.value)
