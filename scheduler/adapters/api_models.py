"""What the API's OpenAPI schema says of its answers, and the schema itself.

The routes build their answers as plain dicts (``job_view``: orjson is fast); the models
here *document* them (each route's ``responses``) and let a schema-driven fuzzer
(schemathesis, ``tests/unit/test_api_fuzz.py``) check that every answer matches. The job
spec's own schema (``dcsched.kinds.JobSpec``, one variant per kind) is published as the
body of ``POST /v1/jobs``; the route still validates it itself, for SpecError's messages.
Every error is ``Error``, whatever its status.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from dcsched.core.waits import WaitKind
from dcsched.kinds import job_spec_schema

State = Literal["PENDING", "ADMITTED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


class Error(BaseModel):
    error: str
    problems: list[str]


class ResourcesView(BaseModel):
    workers: int
    cpus: float
    gpus: float
    memory: int


class JobView(BaseModel):
    id: str
    name: str
    kind: str
    team: str
    state: State
    priority: str
    resources: ResourcesView
    submitted_at: str | None
    admitted_at: str | None
    started_at: str | None
    finished_at: str | None
    nodes: list[str]
    reason: str | None
    reason_kind: WaitKind | None = Field(
        description="Why a PENDING job waits, as a stable value (`reason` says it in words); "
        "null when no pass has decided it yet, or the job is not waiting."
    )
    position: int | None
    estimated_start: str | None
    attempt: int
    result: dict[str, Any] | None
    progress: dict[str, Any] | None


class JobList(BaseModel):
    jobs: list[JobView]


class JobEventView(BaseModel):
    at: str | None
    from_state: State | None
    to_state: State
    reason: str | None


class RayStatus(BaseModel):
    reachable: bool
    since: float | None = Field(description="Unix time of the last change; null: always.")
    error: str


class JobDetail(JobView):
    spec: dict[str, Any] = Field(description="The job spec as stored (see JobSpec).")
    events: list[JobEventView]
    ray: RayStatus = Field(
        description="Whether the server reaches Ray now; while it does not, an active "
        "job's state is as last seen."
    )


class Logs(BaseModel):
    logs: str
    offset: int
    done: bool


class Upload(BaseModel):
    ref: str
    size: int


class Info(BaseModel):
    version: str
    data_roots: list[str]
    max_upload: int


class ModelSummary(BaseModel):
    name: str
    latest_version: int
    versions: int
    updated_at: str | None


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelVersionView(BaseModel):
    name: str
    version: int
    job_id: str
    plugin: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    created_at: str | None
    checksum: str
    path: str


class ModelDetail(BaseModel):
    name: str
    versions: list[ModelVersionView]


class TokenView(BaseModel):
    name: str
    role: str
    team: str | None
    created_at: str | None
    revoked_at: str | None


class NewToken(TokenView):
    token: str = Field(description="Shown only in this answer.")


class TokenList(BaseModel):
    tokens: list[TokenView]


class AuditEntryView(BaseModel):
    at: str | None
    principal: str
    action: str
    object: str
    remote: str
    outcome: str


class AuditLog(BaseModel):
    entries: list[AuditEntryView]


class Usage(BaseModel):
    since: str | None
    until: str | None
    teams: list[dict[str, Any]]
    jobs: list[dict[str, Any]]


def ok(model: type[BaseModel], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: its answer's model."""
    return {status: {"model": model}}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema with the job spec's schema as the submit body's ``spec``,
    errors as ``Error`` (400, not FastAPI's 422), and the upload body as raw bytes."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec = job_spec_schema(ref_template="#/components/schemas/{model}")
    for name, definition in spec.pop("$defs", {}).items():
        assert name not in components, f"schema name {name} is taken"
        components[name] = definition
    components["JobSpec"] = spec
    components["Error"] = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    submit = components["SubmitRequest"]["properties"]["spec"]
    components["SubmitRequest"]["properties"]["spec"] = {
        "$ref": "#/components/schemas/JobSpec",
        "description": submit.get("description", ""),
    }
    error = {"description": "Error", "content": _json("#/components/schemas/Error")}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = error
            if path == "/v1/uploads":
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                }
    app.openapi_schema = schema
    return schema


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}
