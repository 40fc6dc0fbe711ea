"""The job spec accepts the documented example and refuses bad input with clear words."""

from __future__ import annotations

import pytest

from dcsched.core.spec import JobSpec, SpecError, load_spec_yaml, parse_spec
from tests.conftest import EXAMPLES


def test_example_spec_is_accepted_exactly() -> None:
    spec = load_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
    assert spec.name == "mlp-breast-cancer"
    assert spec.kind == "train"
    assert spec.resources.memory == 1024**3
    assert spec.resources.per_worker().cpus == 1
    assert spec.model.params == {"hidden": [64, 32]}
    assert spec.data.scheme == "sklearn" and spec.data.location == "breast_cancer"
    assert spec.train.epochs == 30 and spec.train.optimizer == "adam"


def test_spec_round_trips_through_json() -> None:
    spec = load_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


BASE = (EXAMPLES / "train-mlp.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed", "not valid YAML at line 1"),
        ("", "the spec is empty"),
        ("- a\n- b\n", "must be a mapping of fields, not a list"),
        (BASE + "colour: blue\n", "colour: unknown field"),
        (BASE.replace("  seed: 42", "  seed: 42\n  shuffle: true"), "data.shuffle: unknown field"),
        (BASE.replace("kind: train", "kind: juggle"), "kind: unknown kind 'juggle'"),
        (BASE.replace("workers: 1", "workers: 0"), "resources.workers"),
        (BASE.replace("cpus: 1", "cpus: -2"), "resources.cpus"),
        (BASE.replace("cpus: 1", "cpus: 0"), "resources.cpus"),
        (BASE.replace("gpus: 0", "gpus: -1"), "resources.gpus"),
        (BASE.replace("memory: 1GiB", "memory: lots"), "memory 'lots' is not a size"),
        (BASE.replace("source: sklearn:breast_cancer", "source: s3://x"), "data.source"),
        (BASE.replace("source: sklearn:breast_cancer", "source: csv:x.csv"), "needs `target:`"),
        (BASE.replace("name: mlp-breast-cancer", "name: Big Name"), "name: 'Big Name' must be"),
        (BASE.replace("team: research\n", ""), "team: required field is missing"),
        (BASE.replace("lr: 0.001", "lr: 0"), "train.lr"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_yaml(text)
    assert expected in str(caught.value)


def test_memory_units() -> None:
    doc = {
        "name": "a",
        "kind": "train",
        "team": "t",
        "model": {"type": "mlp"},
        "data": {"source": "sklearn:iris"},
    }
    for text, expected in [("512MiB", 512 * 1024**2), ("2GB", 2 * 10**9), ("1.5Gi", 1.5 * 1024**3)]:
        spec = parse_spec({**doc, "resources": {"memory": text}})
        assert spec.resources.memory == int(expected)
