"""The REST API of the dcsched server (FastAPI), bound to loopback by default.

Every route, ``/metrics`` and ``/openapi.json`` included, requires the bearer token from
``$DCSCHED_HOME/token``; a missing or wrong token gets 401 and changes nothing. Errors
are JSON ``{"error": str, "problems": [str, ...]}`` with 400 for bad input, 404 for an
unknown job or model, 409 for a job that already ended. The routes are thin: the
service decides, the store remembers.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from dcsched import __version__
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SpecError
from dcsched.inputs import InputError, InputStore, UploadTooLarge
from dcsched.kinds import document_of, job_spec_schema
from dcsched.ports import ModelVersion
from dcsched.rundir import read_range
from dcsched.service import JobAlreadyEnded, JobNotFound, SchedulerService

logger = logging.getLogger(__name__)


LOG_CHUNK_BYTES = 1024 * 1024
"""Most log bytes one call returns; ``dcsched logs`` pages with ``offset``."""


class SubmitRequest(BaseModel):
    spec: Any = Field(description="The job spec (a mapping); see GET /v1/schema/job-spec.")


class ConfigRequest(BaseModel):
    text: str = Field(description="The cluster configuration, as dcsched.yaml text.")


class ApiError(Exception):
    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(
    job: Job,
    position: int | None,
    progress: dict[str, Any] | None,
    estimated_start: float | None = None,
) -> dict[str, Any]:
    """The API's one representation of a job (stable field names)."""
    resources = job.request.resources
    return {
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "team": job.team,
        "state": job.state.value,
        "priority": job.priority,
        "resources": {
            "workers": resources.workers,
            "cpus": resources.cpus,
            "gpus": resources.gpus,
            "memory": resources.memory,
        },
        "submitted_at": iso(job.submitted_at),
        "admitted_at": iso(job.admitted_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "nodes": list(job.nodes),
        "reason": job.reason,
        "position": position if job.state is JobState.PENDING else None,
        "estimated_start": iso(estimated_start) if job.state is JobState.PENDING else None,
        "attempt": job.attempt,
        "result": job.result,
        "progress": progress,
    }


def model_view(version: ModelVersion) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "job_id": version.job_id,
        "plugin": version.plugin,
        "params": version.params,
        "metrics": version.metrics,
        "created_at": iso(version.created_at),
        "checksum": version.checksum,
        "path": version.path,
    }


def create_app(
    service: SchedulerService,
    token: str,
    registry: CollectorRegistry,
    info: dict[str, Any],
    plugins: Any,
    node_usage: Callable[[], dict[str, dict[str, Any]]] = dict,
    inputs: InputStore | None = None,
) -> FastAPI:
    """Build the app. ``plugins`` is a callable returning the plugin descriptions;
    ``node_usage`` returns each node's latest measured usage (node id -> the node
    exporter's NodeUsage dict)."""

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise ApiError(
                401,
                "missing or wrong bearer token; use the token in $DCSCHED_HOME/token",
            )

    app = FastAPI(
        title="dcsched",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(require_token)],
    )
    store = service.store

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = {"error": exc.message, "problems": exc.problems}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return JSONResponse({"error": "malformed request", "problems": problems}, 400)

    final_progress: dict[str, dict[str, Any] | None] = {}

    def progress_of(job: Job) -> dict[str, Any] | None:
        if job.state is JobState.PENDING:
            return None
        if job.id in final_progress:  # an ended job's progress never changes
            return final_progress[job.id]
        progress = service.run_files(job.id).last_progress()
        if job.state.is_terminal():
            if len(final_progress) > 100_000:
                final_progress.clear()
            final_progress[job.id] = progress
        return progress

    def view(job: Job) -> dict[str, Any]:
        return job_view(
            job, service.position(job.id), progress_of(job), service.estimated_start(job.id)
        )

    def get_job_or_404(job_id: str) -> Job:
        job = store.get_job(job_id)
        if job is None:
            raise ApiError(404, str(JobNotFound(job_id)))
        return job

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/v1/info")
    def get_info() -> dict[str, Any]:
        config = service.config
        return {
            "version": __version__,
            **info,
            "data_roots": list(config.data_roots),
            "max_upload": config.max_upload,
        }

    @app.get("/v1/schema/job-spec")
    def get_job_spec_schema() -> dict[str, Any]:
        return job_spec_schema()

    @app.post("/v1/jobs", status_code=201)
    def submit(request: SubmitRequest) -> dict[str, Any]:
        try:
            job = service.submit(request.spec)
        except SpecError as exc:
            raise ApiError(400, "invalid job spec", exc.problems) from None
        return view(job)

    @app.get("/v1/jobs")
    def list_jobs(
        state: str | None = None, team: str | None = None, limit: int | None = None
    ) -> Response:
        states = None
        if state:
            try:
                states = [JobState(s.strip().upper()) for s in state.split(",")]
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise ApiError(400, f"unknown state {state!r}; states: {known}") from None
        if limit is not None and limit < 1:
            raise ApiError(400, "limit must be at least 1")
        jobs = store.list_jobs(states=states, team=team, limit=limit)
        # orjson directly: FastAPI's generic encoder costs ~0.1 s for 1,000 jobs.
        body = orjson.dumps({"jobs": [view(j) for j in jobs]})
        return Response(body, media_type="application/json")

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        job = get_job_or_404(job_id)
        body = view(job)
        body["spec"] = document_of(job.request, job.kind, dict(job.payload))
        body["events"] = [
            {
                "at": iso(e.at),
                "from_state": e.from_state.value if e.from_state else None,
                "to_state": e.to_state.value,
                "reason": e.reason,
            }
            for e in store.events(job_id)
        ]
        return body

    @app.get("/v1/jobs/{job_id}/logs")
    def get_logs(
        job_id: str,
        offset: int = Query(0, ge=0),
        rank: int | None = Query(None, ge=0, le=1023),
        limit: int = Query(LOG_CHUNK_BYTES, ge=1, le=LOG_CHUNK_BYTES),
    ) -> dict[str, Any]:
        """The job's output from ``offset``: Ray's log of the run (all ranks) or, with
        ``rank``, that rank's own log file; at most ``limit`` bytes a call."""
        job = get_job_or_404(job_id)
        done = job.state.is_terminal()
        if rank is not None:
            if rank >= job.workers:
                raise ApiError(400, f"rank {rank} does not exist; the job has {job.workers}")
            data, end = read_range(service.run_files(job.id).rank_log(rank), offset, limit)
            return {"logs": data.decode("utf-8", "replace"), "offset": end, "done": done}
        text = "" if job.state is JobState.PENDING else service.executor.logs(job.run_id)
        raw = text.encode("utf-8", "replace")
        start = min(offset, len(raw))
        chunk = raw[start : start + limit]
        return {
            "logs": chunk.decode("utf-8", "replace"),
            "offset": start + len(chunk),
            "done": done,
        }

    @app.post("/v1/uploads", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        """Store the request body (a data file, or a zip of a working_dir) content-
        addressed; the answer's ``ref`` goes into the spec. Raw bytes, size-limited."""
        if inputs is None:
            raise ApiError(404, "this server takes no uploads")
        limit = inputs.max_upload()
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise ApiError(411, "an upload needs a Content-Length header")
        if int(declared) > limit:
            raise ApiError(
                413,
                f"the upload is {int(declared)} bytes, over the limit of {limit} bytes "
                "(max_upload in dcsched.yaml); leave large files out of the working_dir or "
                "put them under a data root",
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the upload is over the limit of {limit} bytes")
        try:
            ref, size = inputs.save([bytes(body)])
        except UploadTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except InputError as exc:
            raise ApiError(400, str(exc)) from None
        return {"ref": ref, "size": size}

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        try:
            return view(service.cancel(job_id))
        except JobNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except JobAlreadyEnded as exc:
            raise ApiError(409, str(exc)) from None

    @app.get("/v1/config")
    def get_config() -> dict[str, Any]:
        stored = store.latest_config()
        return {
            "text": stored[0] if stored else None,
            "applied_at": iso(stored[1]) if stored else None,
            "config": service.config.model_dump(mode="json"),
        }

    @app.put("/v1/config")
    def put_config(request: ConfigRequest) -> dict[str, Any]:
        try:
            config = service.apply_config(request.text)
        except SpecError as exc:
            raise ApiError(400, "invalid cluster configuration", exc.problems) from None
        return {"config": config.model_dump(mode="json")}

    @app.get("/v1/teams")
    def teams() -> dict[str, Any]:
        return {"teams": service.teams_view()}

    @app.get("/v1/usage")
    def usage(team: str | None = None, since: float | None = None) -> dict[str, Any]:
        report = service.usage(team, since)
        report["since"], report["until"] = iso(report["since"]), iso(report["until"])
        return report

    @app.get("/v1/nodes")
    def nodes() -> dict[str, Any]:
        on_node: dict[str, list[str]] = {}
        for job in store.list_jobs(states=[JobState.ADMITTED, JobState.RUNNING]):
            for node in dict.fromkeys(job.nodes):
                on_node.setdefault(node, []).append(job.id)
        usage = node_usage()
        return {
            "nodes": [
                {
                    "id": node.id,
                    "address": node.address,
                    "alive": node.alive,
                    "labels": dict(node.labels),
                    "total": node.total.as_dict(),
                    "available": node.available.as_dict(),
                    "jobs": on_node.get(node.id, []),
                    "utilization": node.utilization,
                    "usage": usage.get(node.id),
                }
                for node in service.cluster.snapshot().nodes
            ]
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "models": [
                {"name": n, "latest_version": latest, "versions": count, "updated_at": iso(at)}
                for n, latest, count, at in store.model_names()
            ]
        }

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        versions = store.model_versions(name)
        if not versions:
            raise ApiError(404, f"no model named {name!r}; `dcsched models list` shows them")
        return {"name": name, "versions": [model_view(v) for v in versions]}

    @app.get("/v1/models/{name}/versions/{version}")
    def model_version(name: str, version: int) -> dict[str, Any]:
        for v in store.model_versions(name):
            if v.version == version:
                return model_view(v)
        raise ApiError(404, f"no version {version} of model {name!r}")

    @app.get("/v1/plugins")
    def list_plugins() -> dict[str, Any]:
        return {"plugins": plugins()}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
