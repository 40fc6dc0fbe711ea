"""The job spec accepts the documented example and refuses bad input with clear words."""

from __future__ import annotations

import pytest

from dcsched.core.spec import REQUEST_FIELDS, SchedulingRequest, SpecError
from dcsched.kinds import (
    RunJobSpec,
    TrainJobSpec,
    job_spec_schema,
    load_job_spec_yaml,
    parse_job_spec,
    split,
)
from tests.conftest import EXAMPLES

load_spec_yaml = load_job_spec_yaml
parse_spec = parse_job_spec


def test_example_spec_is_accepted_exactly() -> None:
    spec = load_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
    assert isinstance(spec, TrainJobSpec)
    assert spec.name == "mlp-breast-cancer"
    assert spec.kind == "train"
    assert spec.resources.memory == 1024**3
    assert spec.resources.per_worker().cpus == 1
    assert spec.model.params == {"hidden": [64, 32]}
    assert spec.data.scheme == "sklearn" and spec.data.location == "breast_cancer"
    assert spec.train.epochs == 30 and spec.train.optimizer == "adam"


def test_spec_round_trips_through_json() -> None:
    spec = load_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
    assert parse_spec(spec.model_dump(mode="json")) == spec


def test_split_gives_the_core_only_the_request() -> None:
    spec = load_spec_yaml((EXAMPLES / "train-mlp.yaml").read_text())
    request, kind, payload = split(spec)
    assert type(request) is SchedulingRequest and kind == "train"
    assert set(payload) == {"model", "data", "train"}
    assert not set(payload) & REQUEST_FIELDS
    assert request.resources == spec.resources and request.team == spec.team


def test_core_modules_never_mention_model_or_data_fields() -> None:
    core = EXAMPLES.parent / "scheduler" / "core"
    for path in core.glob("*.py"):
        text = path.read_text()
        for word in ("ModelSpec", "DataSpec", "TrainSpec", "from dcsched.kinds", "sklearn:"):
            assert word not in text, f"{path.name} mentions {word}"


RUN = """\
name: ddp-demo
kind: run
team: research
resources: {workers: 4, cpus: 1, gpus: 0, memory: 1GiB}
run:
  command: [python, train_ddp.py, --epochs, "3"]
  working_dir: upload:sha256:00
  env: {OMP_NUM_THREADS: "1"}
"""


def test_run_spec_is_accepted() -> None:
    spec = load_spec_yaml(RUN)
    assert isinstance(spec, RunJobSpec)
    assert spec.run.command == ["python", "train_ddp.py", "--epochs", "3"]
    assert spec.resources.workers == 4 and spec.run.env == {"OMP_NUM_THREADS": "1"}
    assert load_spec_yaml(RUN.replace('[python, train_ddp.py, --epochs, "3"]', "'echo hi'"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RUN.replace('[python, train_ddp.py, --epochs, "3"]', "[]"), "command is empty"),
        (RUN.replace('[python, train_ddp.py, --epochs, "3"]', "'  '"), "command is empty"),
        (RUN.replace("OMP_NUM_THREADS", "RANK"), "RANK is set by dcsched"),
        (RUN.replace("OMP_NUM_THREADS", "DCSCHED_X"), "DCSCHED_X is set by dcsched"),
        (RUN.replace("OMP_NUM_THREADS", "1BAD"), "'1BAD' is not a variable name"),
        (RUN.replace("run:\n", "model: {type: mlp}\nrun:\n"), "model: unknown field"),
        (RUN.replace("kind: run\n", ""), "kind: required field is missing"),
        (RUN + "max_runtime: 1e12\n", "max_runtime"),
        (RUN.replace("cpus: 1,", "cpus: .inf,"), "resources.cpus"),
        (RUN.replace("memory: 1GiB", "memory: Infinity"), "memory"),
    ],
)
def test_bad_run_specs_are_refused(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_yaml(text)
    assert expected in str(caught.value)


def test_the_schema_has_one_variant_per_kind() -> None:
    schema = job_spec_schema()
    assert set(schema["discriminator"]["mapping"]) == {"train", "run", "tune", "infer", "serve"}


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
