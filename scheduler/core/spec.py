"""The job spec: one typed schema for what a user submits (YAML on the CLI, JSON on the API).

Extra fields are refused everywhere, so a typo is an error rather than a silent default.
Quantities take human units (``memory: 1GiB``). ``JobSpec.model_json_schema()`` is the
documented schema; nothing else describes a job.

Words:
- worker: one gang member; ``resources`` gives the CPUs, GPUs and memory of *each* worker.
- kind: what the job does (``train`` fits a model and registers it).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dcsched.core.resources import Resources
from dcsched.core.units import parse_duration, parse_memory

SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SUPPORTED_KINDS = ("train",)
DATA_SCHEMES = ("sklearn", "csv")


class SpecError(ValueError):
    """A spec that cannot be accepted; ``problems`` lists each issue in words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _memory(value: Any) -> int:
    return parse_memory(value)


MemoryBytes = Annotated[int, BeforeValidator(_memory), Field(gt=0)]


def _duration(value: Any) -> Any:
    return None if value is None else parse_duration(value)


DurationSeconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceRequest(_Strict):
    """Resources of each worker, and how many workers form the gang."""

    workers: int = Field(1, ge=1, le=1024, description="Gang size: all start together or none.")
    cpus: float = Field(1.0, gt=0, description="CPUs per worker (fractions allowed).")
    gpus: float = Field(0.0, ge=0, description="GPUs per worker; 0 for a CPU-only job.")
    memory: MemoryBytes = Field(
        1024**3, description="Memory per worker, e.g. 512MiB or 2GiB (bytes in JSON)."
    )

    def per_worker(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus, memory=self.memory)

    def total(self) -> Resources:
        return self.per_worker().scaled(self.workers)


class ModelSpec(_Strict):
    type: str = Field(min_length=1, description="Model plugin name, see `dcsched plugins list`.")
    params: dict[str, Any] = Field(default_factory=dict, description="Checked by the plugin.")


class DataSpec(_Strict):
    source: str = Field(
        description="sklearn:NAME (a dataset shipped with scikit-learn) or csv:PATH."
    )
    target: str | None = Field(None, description="Target column; required for csv sources.")
    test_size: float = Field(0.2, gt=0, lt=1, description="Fraction held out for evaluation.")
    seed: int = Field(0, ge=0, description="Seed of the train/test split and of training.")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or scheme not in DATA_SCHEMES or not rest:
            raise ValueError(
                f"data source {value!r} is not understood; use sklearn:NAME "
                "(for example sklearn:breast_cancer) or csv:PATH"
            )
        return value

    @model_validator(mode="after")
    def _csv_needs_target(self) -> DataSpec:
        if self.scheme == "csv" and not self.target:
            raise ValueError("a csv source needs `target:` naming the column to predict")
        return self

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def location(self) -> str:
        return self.source.partition(":")[2]


class TrainSpec(_Strict):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)


class JobSpec(_Strict):
    """A job as submitted. ``resources`` are per worker."""

    name: str = Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits and '-'.")
    kind: Literal["train"] = Field(description="What the job does; only `train` so far.")
    team: str = Field(pattern=SLUG_PATTERN)
    priority: str = Field("normal", pattern=SLUG_PATTERN, description="A priority class name.")
    resources: ResourceRequest = Field(default_factory=lambda: ResourceRequest())
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=lambda: TrainSpec())
    max_runtime: DurationSeconds | None = Field(
        None,
        description="Longest the job may run (e.g. 30m, 2h); it is stopped after that. "
        "Backfill and start estimates use it.",
    )
    placement: Literal["binpack", "spread", "least-loaded"] | None = Field(
        None, description="Placement policy for this job; the cluster's policy if unset."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the job's nodes must carry, e.g. {dcsched.io/gpu-type: A100}.",
    )
    preemptible: bool | None = Field(
        None,
        description="false keeps the job from being preempted, if its priority class allows.",
    )
    depends_on: list[str] = Field(
        default_factory=list,
        description="Job ids that must succeed before this job starts.",
        max_length=64,
    )


def parse_spec(document: Any) -> JobSpec:
    """Validate a decoded document (a mapping) into a JobSpec, or raise SpecError."""
    if document is None:
        raise SpecError(["the spec is empty; it must be a mapping with name, kind, team, ..."])
    if not isinstance(document, dict):
        raise SpecError([f"the spec must be a mapping of fields, not a {type(document).__name__}"])
    try:
        return JobSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None


def load_spec_yaml(text: str) -> JobSpec:
    """Parse YAML text into a JobSpec, or raise SpecError."""
    return parse_spec(load_yaml_mapping(text))


def load_yaml_mapping(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"the spec is not valid YAML{where}: {problem}"]) from None


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into one line each: ``field.path: what is wrong``."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "spec"
        if error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "literal_error" and path == "kind":
            message = (
                f"unknown kind {error.get('input')!r}; supported: {', '.join(SUPPORTED_KINDS)}"
            )
        elif error["type"] == "string_pattern_mismatch":
            message = (
                f"{error.get('input')!r} must be lower-case letters, digits and '-' "
                "(at most 63, starting and ending with a letter or digit)"
            )
        else:
            message = re.sub(r"^Value error, ", "", error["msg"])
        lines.append(f"{path}: {message}")
    return lines
