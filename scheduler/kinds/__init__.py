"""Job kinds: each kind's spec, and ``JobSpec``, the one schema over all of them.

A job spec is a ``SchedulingRequest`` (what the core schedules) plus ``kind`` plus the
kind's own sections, its *payload* (``train``: model, data, train; ``run``: run;
``infer``: infer). Parsing
picks the kind's model by ``kind`` and reports every problem as ``field.path: words``.
The store keeps the validated document; ``Job.request`` is the request part and
``Job.payload`` the rest (see ``split``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from dcsched.core.spec import (
    REQUEST_FIELDS,
    SchedulingRequest,
    SpecError,
    check_document_size,
    describe_errors,
    load_yaml_mapping,
    request_of,
)
from dcsched.kinds.infer import InferJobSpec
from dcsched.kinds.run import RunJobSpec
from dcsched.kinds.serve import ServeJobSpec
from dcsched.kinds.train import TrainJobSpec
from dcsched.kinds.tune import TuneJobSpec

JobSpec = Annotated[
    TrainJobSpec | RunJobSpec | TuneJobSpec | InferJobSpec | ServeJobSpec,
    Field(discriminator="kind"),
]
AnyJobSpec = TrainJobSpec | RunJobSpec | TuneJobSpec | InferJobSpec | ServeJobSpec
KINDS: dict[str, type[SchedulingRequest]] = {
    "train": TrainJobSpec,
    "run": RunJobSpec,
    "tune": TuneJobSpec,
    "infer": InferJobSpec,
    "serve": ServeJobSpec,
}
_ADAPTER: TypeAdapter[AnyJobSpec] = TypeAdapter(JobSpec)


def parse_job_spec(document: Any) -> AnyJobSpec:
    """Validate a decoded document (a mapping) into its kind's spec, or raise SpecError."""
    if document is None:
        raise SpecError(["the spec is empty; it must be a mapping with name, kind, team, ..."])
    if not isinstance(document, dict):
        raise SpecError([f"the spec must be a mapping of fields, not a {type(document).__name__}"])
    check_document_size(document)
    kind = document.get("kind")
    if "kind" not in document:
        raise SpecError([f"kind: required field is missing; one of: {', '.join(KINDS)}"])
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError([f"kind: unknown kind {kind!r}; supported: {', '.join(KINDS)}"])
    try:
        return _ADAPTER.validate_python(document)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = error["loc"]
            if loc and loc[0] == kind:  # the union's tag comes first; users never see it
                error = {**error, "loc": loc[1:]}
            errors.append(error)
        raise SpecError(describe_errors(errors)) from None


def load_job_spec_yaml(text: str) -> AnyJobSpec:
    """Parse YAML text into a job spec, or raise SpecError."""
    return parse_job_spec(load_yaml_mapping(text))


def split(spec: AnyJobSpec) -> tuple[SchedulingRequest, str, dict[str, Any]]:
    """(request, kind, payload) of a validated spec; the payload is JSON-shaped."""
    document = spec.model_dump(mode="json")
    payload = {k: v for k, v in document.items() if k not in REQUEST_FIELDS and k != "kind"}
    return request_of(document), spec.kind, payload


def document_of(request: SchedulingRequest, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The spec document again (what ``split`` took apart), JSON-shaped."""
    return {**request.model_dump(mode="json"), "kind": kind, **payload}


def job_spec_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of a job spec (one variant per kind); ``ref_template`` places its
    definitions (the OpenAPI schema keeps them under ``#/components/schemas/``)."""
    return _ADAPTER.json_schema(ref_template=ref_template)


__all__ = [
    "KINDS",
    "AnyJobSpec",
    "InferJobSpec",
    "JobSpec",
    "RunJobSpec",
    "ServeJobSpec",
    "TrainJobSpec",
    "TuneJobSpec",
    "document_of",
    "job_spec_schema",
    "load_job_spec_yaml",
    "parse_job_spec",
    "split",
]
