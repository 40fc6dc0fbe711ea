"""The scheduling request: the part of a job spec that the core schedules, and the schema
helpers every spec model shares (strict models, human units, error wording).

A job spec (``dcsched.kinds.JobSpec``) is a ``SchedulingRequest`` plus ``kind`` plus the
kind's own sections. The core sees only the request; the kind's payload is opaque here.
Extra fields are refused everywhere, so a typo is an error rather than a silent default.
Quantities take human units (``memory: 1GiB``).

Words:
- worker: one gang member; ``resources`` gives the CPUs, GPUs and memory of *each* worker.
- kind: what the job does (``train``, ``run``, ...); see ``dcsched.kinds``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from dcsched.core.resources import Resources
from dcsched.core.units import parse_duration, parse_memory

SLUG_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAX_RUNTIME_S = 366 * 24 * 3600.0
"""A year: longer limits are refused (a huge one overflows date arithmetic later)."""
MAX_SPEC_DEPTH = 32
MAX_SPEC_BYTES = 256 * 1024
"""A spec document's limits: nesting, and about how many bytes its JSON takes."""
MAX_JOB_ID = 128

LabelKey = Annotated[str, Field(min_length=1, max_length=253)]
LabelValue = Annotated[str, Field(max_length=253)]
"""A node label's key and value (Kubernetes' longest label key is 253 characters)."""


class SpecError(ValueError):
    """A spec that cannot be accepted; ``problems`` lists each issue in words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _memory(value: Any) -> int:
    return parse_memory(value)


MEMORY_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 2**60},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[A-Za-z]{0,3}\s*$"},
    ]
}
"""What the JSON schema says of a memory size: bytes, or a number with a unit (1GiB)."""
MemoryBytes = Annotated[
    int, BeforeValidator(_memory), Field(gt=0, le=2**60), WithJsonSchema(MEMORY_SCHEMA)
]


def _duration(value: Any) -> Any:
    return None if value is None else parse_duration(value)


DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?\s*(d|h|m|s|ms)?\s*)+$"},
    ]
}
"""What the JSON schema says of a duration: seconds, or e.g. 90s, 30m, 2h, 1h30m."""
DurationSeconds = Annotated[
    float, BeforeValidator(_duration), Field(gt=0), WithJsonSchema(DURATION_SCHEMA)
]


class StrictModel(BaseModel):
    """Base of every spec model: unknown fields refused, values frozen, no inf or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ResourceRequest(StrictModel):
    """Resources of each worker, and how many workers form the gang."""

    workers: int = Field(1, ge=1, le=1024, description="Gang size: all start together or none.")
    cpus: float = Field(1.0, gt=0, le=100_000, description="CPUs per worker (fractions allowed).")
    gpus: float = Field(0.0, ge=0, le=10_000, description="GPUs per worker; 0 for a CPU-only job.")
    memory: MemoryBytes = Field(
        1024**3, description="Memory per worker, e.g. 512MiB or 2GiB (bytes in JSON)."
    )

    def per_worker(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus, memory=self.memory)

    def total(self) -> Resources:
        return self.per_worker().scaled(self.workers)


class SchedulingRequest(StrictModel):
    """What the core schedules: who asks, how much, where, how long, after what.

    The fields of a job spec that every kind shares. The kind's own sections (``model``,
    ``data``, ``train`` for ``train``; ``run`` for ``run``) are its payload, validated by
    the kind (``dcsched.kinds``) and never seen here. ``resources`` are per worker.
    """

    name: str = Field(pattern=SLUG_PATTERN, description="Lower-case letters, digits and '-'.")
    team: str = Field(pattern=SLUG_PATTERN)
    priority: str = Field("normal", pattern=SLUG_PATTERN, description="A priority class name.")
    resources: ResourceRequest = Field(default_factory=lambda: ResourceRequest())
    max_runtime: DurationSeconds | None = Field(
        None,
        le=MAX_RUNTIME_S,
        description="Longest the job may run (e.g. 30m, 2h); it is stopped after that. "
        "Backfill and start estimates use it.",
    )
    placement: Literal["binpack", "spread", "least-loaded"] | None = Field(
        None, description="Placement policy for this job; the cluster's policy if unset."
    )
    spread_group: str | None = Field(
        None,
        pattern=SLUG_PATTERN,
        description="Jobs of one team with the same spread_group are placed on different "
        "nodes while the cluster has room for that (a node already holding one is chosen "
        "only when no other fits). dcsched sets it on a deployment's replicas.",
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="Node labels the job's nodes must carry, e.g. {dcsched.io/gpu-type: A100}.",
        max_length=32,
    )
    preemptible: bool | None = Field(
        None,
        description="false keeps the job from being preempted, if its priority class allows.",
    )
    depends_on: list[Annotated[str, Field(min_length=1, max_length=MAX_JOB_ID)]] = Field(
        default_factory=list,
        description="Job ids that must succeed before this job starts.",
        max_length=64,
    )


REQUEST_FIELDS = frozenset(SchedulingRequest.model_fields)
"""The top-level spec fields that belong to the scheduling request (the rest but ``kind``
is the kind's payload)."""


def request_of(document: dict[str, Any]) -> SchedulingRequest:
    """The scheduling request inside a (validated) job spec document."""
    return SchedulingRequest.model_validate(
        {k: v for k, v in document.items() if k in REQUEST_FIELDS}
    )


def check_document_size(
    document: Any, what: str = "the spec", max_bytes: int = MAX_SPEC_BYTES
) -> None:
    """Refuse a decoded document nested deeper than MAX_SPEC_DEPTH or larger than about
    ``max_bytes``, before any validator recurses into it (no recursion here)."""
    size, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SPEC_DEPTH:
            raise SpecError([f"{what} is nested deeper than {MAX_SPEC_DEPTH} levels"])
        if isinstance(value, dict):
            size += 2 + 2 * len(value)
            for key, item in value.items():
                size += len(key) if isinstance(key, str) else 8
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            size += 2 + len(value)
            stack.extend((item, depth + 1) for item in value)
        else:
            size += len(value) if isinstance(value, str | bytes) else 8
        if size > max_bytes:
            raise SpecError([f"{what} is larger than {max_bytes // 1024} KiB"])


def load_yaml_mapping(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"the spec is not valid YAML{where}: {problem}"]) from None
    except RecursionError:
        raise SpecError(["the YAML is nested too deeply"]) from None


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into one line each: ``field.path: what is wrong``."""
    return describe_errors(exc.errors())


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """``describe_validation_error`` for a list of pydantic error dicts."""
    lines = []
    for error in errors:
        path = ".".join(str(part) for part in error["loc"]) or "spec"
        if error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "literal_error" and path == "kind":
            message = f"unknown kind {error.get('input')!r}"
        elif error["type"] == "string_pattern_mismatch":
            message = (
                f"{error.get('input')!r} must be lower-case letters, digits and '-' "
                "(at most 63, starting and ending with a letter or digit)"
            )
        else:
            message = re.sub(r"^Value error, ", "", error["msg"])
        lines.append(f"{path}: {message}")
    return lines
