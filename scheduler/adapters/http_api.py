"""The REST API of the dcsched server (FastAPI), bound to loopback by default.

Every route, ``/metrics`` and ``/openapi.json`` included, requires a bearer token: the
bootstrap token from ``$DCSCHED_HOME/token`` (principal ``admin``) or one issued with
``dcsched tokens create``. A missing, wrong or revoked token gets 401, a role that may not
make the call 403 (``dcsched.core.auth``), and neither changes anything. Every
state-changing call is written to the audit log with its principal and outcome. Errors
are JSON ``{"error": str, "problems": [str, ...]}`` with 400 for bad input, 404 for an
unknown job or model, 409 for a job that already ended. The routes are thin: the
service decides, the store remembers.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dcsched import __version__
from dcsched.adapters import api_models as m
from dcsched.adapters.http_limits import JSON_BODY_LIMIT, BodyLimit
from dcsched.adapters.view_cache import EndedViews
from dcsched.client import ApiError
from dcsched.core.auth import (
    BOOTSTRAP_PRINCIPAL,
    Call,
    Denied,
    Principal,
    Role,
    action_of,
    authorize,
    check_new_principal,
    deployment_of,
    job_of,
    new_token,
    token_hash,
)
from dcsched.core.job import Job
from dcsched.core.lifecycle import JobState
from dcsched.core.spec import SpecError
from dcsched.inputs import InputError, InputStore, UploadTooLarge
from dcsched.kinds import document_of, job_spec_schema
from dcsched.ports import (
    AccessStore,
    AuditEntry,
    ModelVersion,
    PrincipalExists,
    RayUnreachable,
    StoreFull,
    TokenRecord,
)
from dcsched.rundir import read_range
from dcsched.service import JobAlreadyEnded, JobNotFound, SchedulerService

logger = logging.getLogger(__name__)


LOG_CHUNK_BYTES = 1024 * 1024
"""Most log bytes one call returns; ``dcsched logs`` pages with ``offset``."""
MAX_LIST_LIMIT = 100_000
"""Most jobs (or audit entries) one list call returns."""
LIST_PAGE = 500
"""Jobs a listing reads from the store at a time."""
MAX_TIMESTAMP = 2**33
"""Largest time (seconds since 1970, about the year 2242) a query may name."""
MAX_OFFSET = 2**62
RESULT_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
"""Media types of an infer job's output files."""


class SubmitRequest(BaseModel):
    spec: Any = Field(description="The job spec (a mapping); see GET /v1/schema/job-spec.")


class ConfigRequest(BaseModel):
    text: str = Field(description="The cluster configuration, as dcsched.yaml text.")


class TokenRequest(BaseModel):
    name: str = Field(description="Who holds the token (lower-case letters, digits, . _ -).")
    role: str = Field("member", description="member | viewer | admin | metrics")
    team: str | None = Field(None, description="The member's team.")


def iso(ts: float | None) -> str | None:
    """An ISO 8601 time in UTC; None for None and for a time no date can show."""
    if ts is None:
        return None
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        "reason_kind": job.reason_kind.value if job.reason_kind is not None else None,
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
    access: AccessStore | None = None,
    deployments: Any = None,
    tuning: Any = None,
) -> FastAPI:
    """Build the app. ``plugins`` is a callable returning the plugin descriptions;
    ``node_usage`` returns each node's latest measured usage (node id -> the node
    exporter's NodeUsage dict). ``access`` holds the issued tokens and the audit log;
    without it only the bootstrap ``token`` is accepted and nothing is audited.
    ``deployments`` (a ``dcsched.serving.controller.ServeController``) adds the serving
    routes (``dcsched.adapters.serve_api``)."""
    bootstrap = token.encode()

    def principal_of(header: str) -> Principal | None:
        # Starlette decodes headers as latin-1: encoding back gives the bytes sent, so a
        # non-ASCII header is compared (and refused), never an error.
        scheme, _, given = header.encode("latin-1").partition(b" ")
        given = given.strip()
        if scheme.lower() != b"bearer" or not given:
            return None
        if hmac.compare_digest(given, bootstrap):
            return Principal(BOOTSTRAP_PRINCIPAL, Role.ADMIN)
        record = access.principal_by_hash(token_hash(given)) if access is not None else None
        if record is None:
            return None
        return Principal(record.name, Role(record.role), record.team)

    async def call_of(
        request: Request, action: str | None, principal: Principal | None
    ) -> tuple[Call, str]:
        """The call as authorization sees it, and the object the audit names (the body is
        read only for a known principal; a job's team is looked up only for a member, the
        one role whose rights depend on it: this runs on the event loop)."""
        known = principal is not None
        method, path = request.method.upper(), request.url.path
        job_id = job_of(path)
        job_team = None
        if job_id is not None and principal is not None and principal.role is Role.MEMBER:
            job = service.job(job_id)
            job_team = job.team if job is not None else None
        spec_team, target = None, job_id or ""
        deployment = deployment_of(path)
        if deployment is not None and deployments is not None:
            job_team = deployments.team_of(deployment) if known else None
            target = deployment
        if action in {"submit", "token.create", "serve.create"} and known:
            try:
                body = orjson.loads(await request.body())
            except ValueError:
                body = None
            if isinstance(body, dict) and action == "token.create":
                target = str(body.get("name", ""))[:100]
            spec = body.get("spec") if isinstance(body, dict) else None
            if isinstance(spec, dict):
                team = spec.get("team")
                spec_team = team if isinstance(team, str) else None
                target = f"{str(spec_team)[:64]}/{str(spec.get('name', ''))[:64]}"
        elif action == "config.apply":
            target = "config"
        elif action == "token.revoke":
            target = path.rsplit("/", 1)[-1]
        elif action is not None and not target:
            target = path
        return Call(method, path, job_team=job_team, spec_team=spec_team), target

    def audit(request: Request, who: str, action: str, target: str, outcome: str) -> None:
        if access is None:
            return
        remote = request.client.host if request.client else ""
        entry = AuditEntry(service.now(), who, action, target, remote, outcome[:500])
        try:
            access.add_audit(entry)
        except Exception:  # the call's outcome stands; the failure is logged
            logger.exception("could not write the audit entry for %s %s", action, target)

    async def authenticate(request: Request) -> AsyncIterator[Principal]:
        action = action_of(request.method.upper(), request.url.path)
        principal = principal_of(request.headers.get("authorization", ""))
        call, target = await call_of(request, action, principal)
        if principal is None:
            if action is not None:
                audit(request, "-", action, target, "denied 401: no valid token")
            raise ApiError(
                401,
                "missing, wrong or revoked bearer token; use the token in $DCSCHED_HOME/token "
                "or one from `dcsched tokens create` (DCSCHED_TOKEN)",
            )
        try:
            authorize(principal, call)
        except Denied as exc:
            if action is not None:
                audit(request, principal.name, action, target, f"denied 403: {exc}")
            raise ApiError(403, str(exc)) from None
        if action is None:
            yield principal
            return
        try:
            yield principal
        except ApiError as exc:
            audit(request, principal.name, action, target, f"refused {exc.status}: {exc.message}")
            raise
        except RequestValidationError:
            audit(request, principal.name, action, target, "refused 400: malformed request")
            raise
        except Exception as exc:
            audit(request, principal.name, action, target, f"error: {type(exc).__name__}")
            raise
        audit(request, principal.name, action, target, "ok")

    app = FastAPI(
        title="dcsched",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # scope="function": the audit entry is written before the response is sent.
        dependencies=[Depends(authenticate, scope="function")],
    )
    # Bodies are limited before anything reads them (authentication reads a submission's).
    streamed = {"/v1/uploads": inputs.max_upload} if inputs is not None else {}
    app.add_middleware(BodyLimit, json_limit=JSON_BODY_LIMIT, streamed=streamed)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(exc.detail), "problems": []}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = {"error": exc.message, "problems": exc.problems}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(StoreFull)
    async def _store_full(_: Request, exc: StoreFull) -> JSONResponse:
        logger.error("refused a request: %s", exc)
        return JSONResponse({"error": str(exc), "problems": []}, status_code=507)

    @app.exception_handler(RayUnreachable)
    async def _ray_unreachable(_: Request, exc: RayUnreachable) -> JSONResponse:
        body = {
            "error": f"Ray unreachable: {exc}. Jobs are kept and queued; dcsched reconnects "
            "by itself when Ray answers again",
            "problems": [],
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return JSONResponse({"error": "malformed request", "problems": problems}, 400)

    ended_views = EndedViews()

    def progress_of(job: Job) -> dict[str, Any] | None:
        if job.state is JobState.PENDING:
            return None
        return service.run_files(job.id).last_progress()

    def view(job: Job) -> dict[str, Any]:
        return job_view(
            job, service.position(job.id), progress_of(job), service.estimated_start(job.id)
        )

    def view_bytes(job: Job) -> bytes:
        """``view(job)`` as JSON; an ended job's is kept (``EndedViews``)."""
        body = orjson.dumps(view(job))
        if job.state.is_terminal():
            ended_views.put(job.id, body)
        return body

    def listing(keys: list[tuple[str, JobState]]) -> bytes:
        """``{"jobs": [views]}`` of the jobs ``keys`` names, in its order: an ended job's
        view as kept, the others (and ended jobs not kept) read a page at a time, so that
        a listing of the whole store holds no more than a page of jobs in memory."""
        body = bytearray(b'{"jobs":[')
        for first in range(0, len(keys), LIST_PAGE):
            page = keys[first : first + LIST_PAGE]
            kept = {job_id: ended_views.get(job_id) for job_id, s in page if s.is_terminal()}
            fresh = service.jobs_by_id([job_id for job_id, _ in page if kept.get(job_id) is None])
            for job_id, _ in page:
                part = kept.get(job_id)
                if part is None:
                    job = fresh.get(job_id)
                    if job is None:
                        continue
                    part = view_bytes(job)
                body += part
                body += b","
        if body.endswith(b","):
            body[-1:] = b"]"
        else:
            body += b"]"
        body += b"}"
        return bytes(body)

    def get_job_or_404(job_id: str) -> Job:
        job = service.job(job_id)
        if job is None:
            raise ApiError(404, str(JobNotFound(job_id)))
        return job

    if deployments is not None:
        from dcsched.adapters.serve_api import add_serve_routes

        add_serve_routes(app, deployments)

    app.openapi = lambda: m.openapi_schema(app)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/v1/info", response_model=None, responses=m.ok(m.Info))
    def get_info() -> dict[str, Any]:
        config = service.config
        return {
            "version": __version__,
            **info,
            "data_roots": list(config.data_roots),
            "max_upload": config.max_upload,
            "ray": service.ray_status(),
        }

    @app.get("/v1/schema/job-spec")
    def get_job_spec_schema() -> dict[str, Any]:
        return job_spec_schema()

    @app.post("/v1/jobs", status_code=201, response_model=None, responses=m.ok(m.JobView, 201))
    def submit(request: SubmitRequest) -> dict[str, Any]:
        try:
            job = service.submit(request.spec)
        except SpecError as exc:
            raise ApiError(400, "invalid job spec", exc.problems) from None
        return view(job)

    @app.get("/v1/jobs", response_model=None, responses=m.ok(m.JobList))
    def list_jobs(
        state: str | None = Query(None, max_length=1000),
        team: str | None = Query(None, max_length=100),
        limit: int | None = Query(None, ge=1, le=MAX_LIST_LIMIT),
    ) -> Response:
        states = None
        if state:
            try:
                states = [JobState(s.strip().upper()) for s in state.split(",")]
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise ApiError(400, f"unknown state {state!r}; states: {known}") from None
        # orjson directly: FastAPI's generic encoder costs ~0.1 s for 1,000 jobs.
        keys = service.job_states(states=states, team=team, limit=limit)
        return Response(listing(keys), media_type="application/json")

    @app.get("/v1/jobs/{job_id}", response_model=None, responses=m.ok(m.JobDetail))
    def get_job(job_id: str) -> Response:
        job = get_job_or_404(job_id)
        body = view(job)
        body["spec"] = document_of(job.request, job.kind, dict(job.payload))
        if tuning is not None and job.kind == "tune":
            body["tuning"] = tuning.summary(job)
        body["events"] = [
            {
                "at": iso(e.at),
                "from_state": e.from_state.value if e.from_state else None,
                "to_state": e.to_state.value,
                "reason": e.reason,
            }
            for e in service.history(job_id)
        ]
        body["ray"] = service.ray_status()  # the bridge's last known health, not a Ray call
        return Response(orjson.dumps(body), media_type="application/json")

    def tune_job_or_404(job_id: str) -> Job:
        job = get_job_or_404(job_id)
        if tuning is None or job.kind != "tune":
            raise ApiError(404, f"job {job_id} is a {job.kind} job; trials belong to tune jobs")
        return job

    @app.get("/v1/jobs/{job_id}/trials", response_model=None)
    def get_trials(job_id: str) -> dict[str, Any]:
        """Every trial of a tune job, and the study's summary."""
        job = tune_job_or_404(job_id)
        return {"summary": tuning.summary(job), "trials": tuning.trials(job)}

    @app.get(
        "/v1/jobs/{job_id}/plots/{name}",
        response_model=None,
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The plot, a PNG."}},
    )
    def get_plot(job_id: str, name: str) -> Response:
        """A PNG of the study (history, importances, intermediate), drawn into the job's
        artifacts (runs/JOB/plots/) and sent."""
        from dcsched.tuning.plots import PLOTS, PlotError, render

        job = tune_job_or_404(job_id)
        if name not in PLOTS:
            raise ApiError(404, f"no plot {name!r}; plots: {', '.join(PLOTS)}")
        try:
            path = render(tuning.study_of(job), name, service.run_files(job.id).path / "plots")
        except PlotError as exc:
            raise ApiError(409, str(exc)) from None
        return Response(path.read_bytes(), media_type="image/png")

    @app.get("/v1/jobs/{job_id}/logs", response_model=None, responses=m.ok(m.Logs))
    def get_logs(
        job_id: str,
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        rank: int | None = Query(None, ge=0, le=1023),
        limit: int = Query(LOG_CHUNK_BYTES, ge=1, le=LOG_CHUNK_BYTES),
    ) -> dict[str, Any]:
        """The job's output from ``offset``: its driver's log (all ranks) or, with
        ``rank``, that rank's own log file; at most ``limit`` bytes a call, read as a
        byte range of the file. A run started by an older server, whose driver has no
        log file, is read from Ray's job log (whole, then sliced)."""
        job = get_job_or_404(job_id)
        done = job.state.is_terminal()
        if rank is not None:
            if rank >= job.workers:
                raise ApiError(400, f"rank {rank} does not exist; the job has {job.workers}")
            data, end = read_range(service.run_files(job.id).rank_log(rank), offset, limit)
            return {"logs": data.decode("utf-8", "replace"), "offset": end, "done": done}
        own = service.run_files(job.id).driver_log(job.run_id)  # see dcsched.runs.tee
        if own.is_file():
            data, end = read_range(own, offset, limit)
            return {"logs": data.decode("utf-8", "replace"), "offset": end, "done": done}
        text = "" if job.state is JobState.PENDING else service.logs(job.run_id)
        raw = text.encode("utf-8", "replace")
        start = min(offset, len(raw))
        chunk = raw[start : start + limit]
        return {
            "logs": chunk.decode("utf-8", "replace"),
            "offset": start + len(chunk),
            "done": done,
        }

    @app.get(
        "/v1/jobs/{job_id}/results",
        response_class=Response,
        responses={
            200: {
                "description": "The output file of an infer job that SUCCEEDED",
                "content": {RESULT_TYPES["parquet"]: {}, RESULT_TYPES["csv"]: {}},
            }
        },
    )
    def get_results(job_id: str) -> Response:
        """The output an infer job published in its own artifacts (streamed). Only once
        the job SUCCEEDED: its result.json, written after the output, names the file."""
        job = get_job_or_404(job_id)
        if job.kind != "infer":
            raise ApiError(400, f"job {job_id} is a {job.kind} job; only infer jobs have results")
        if job.state is not JobState.SUCCEEDED:
            reason = f" ({job.reason})" if job.state.is_terminal() and job.reason else ""
            raise ApiError(
                409,
                f"job {job_id} is {job.state.value}{reason}; its results exist once it "
                "SUCCEEDED (`dcsched wait JOB`)",
            )
        result = job.result if isinstance(job.result, dict) else {}
        name = str(result.get("output") or "")
        folder = service.run_files(job.id).path / "artifacts"
        path = folder / name
        # The name comes from the job's own result; it must still be a plain file name.
        if not name or "/" in name or name.startswith(".") or not path.is_file():
            raise ApiError(404, f"job {job_id} has no output file any more")
        media = RESULT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
        return FileResponse(path, media_type=media, filename=name)

    @app.post("/v1/uploads", status_code=201, response_model=None, responses=m.ok(m.Upload, 201))
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

    @app.post("/v1/jobs/{job_id}/cancel", response_model=None, responses=m.ok(m.JobView))
    def cancel(job_id: str) -> dict[str, Any]:
        try:
            return view(service.cancel(job_id))
        except JobNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except JobAlreadyEnded as exc:
            raise ApiError(409, str(exc)) from None

    @app.get("/v1/config")
    def get_config() -> dict[str, Any]:
        stored = service.stored_config()
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

    @app.get("/v1/usage", response_model=None, responses=m.ok(m.Usage))
    def usage(
        team: str | None = Query(None, max_length=100),
        since: float | None = Query(
            None, ge=0, le=MAX_TIMESTAMP, description="Window start, seconds since 1970."
        ),
    ) -> dict[str, Any]:
        report = service.usage(team, since)
        report["since"], report["until"] = iso(report["since"]), iso(report["until"])
        return report

    @app.get("/v1/nodes")
    def nodes() -> dict[str, Any]:
        on_node: dict[str, list[str]] = {}
        for job in service.jobs(states=[JobState.ADMITTED, JobState.RUNNING]):
            for node in dict.fromkeys(job.nodes):
                on_node.setdefault(node, []).append(job.id)
        usage = node_usage()
        snapshot = service.ray_view()
        return {
            "ray": service.ray_status(),
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
                for node in snapshot.nodes
            ],
        }

    @app.get("/v1/models", response_model=None, responses=m.ok(m.ModelList))
    def models() -> dict[str, Any]:
        return {
            "models": [
                {"name": n, "latest_version": latest, "versions": count, "updated_at": iso(at)}
                for n, latest, count, at in service.model_names()
            ]
        }

    @app.get("/v1/models/{name}", response_model=None, responses=m.ok(m.ModelDetail))
    def model(name: str) -> dict[str, Any]:
        versions = service.model_versions(name)
        if not versions:
            raise ApiError(404, f"no model named {name!r}; `dcsched models list` shows them")
        return {"name": name, "versions": [model_view(v) for v in versions]}

    @app.get(
        "/v1/models/{name}/versions/{version}",
        response_model=None,
        responses=m.ok(m.ModelVersionView),
    )
    def model_version(name: str, version: int) -> dict[str, Any]:
        for v in service.model_versions(name):
            if v.version == version:
                return model_view(v)
        raise ApiError(404, f"no version {version} of model {name!r}")

    @app.get("/v1/plugins")
    def list_plugins() -> dict[str, Any]:
        return {"plugins": plugins()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- principals and audit (admin; the audit log also for viewers) ----------------------

    def access_or_501() -> AccessStore:
        if access is None:
            raise ApiError(501, "this server keeps no tokens or audit log")
        return access

    def token_view(record: TokenRecord) -> dict[str, Any]:
        return {
            "name": record.name,
            "role": record.role,
            "team": record.team,
            "created_at": iso(record.created_at),
            "revoked_at": iso(record.revoked_at),
        }

    @app.post("/v1/tokens", status_code=201, response_model=None, responses=m.ok(m.NewToken, 201))
    def create_token(request: TokenRequest) -> dict[str, Any]:
        tokens = access_or_501()
        team = request.team or None
        problems = check_new_principal(request.name, request.role, team)
        if problems:
            raise ApiError(400, "invalid token request", problems)
        token_value = new_token()
        try:
            record = tokens.add_principal(
                request.name, request.role, team, token_hash(token_value.encode()), service.now()
            )
        except PrincipalExists:
            raise ApiError(
                409,
                f"a token named {request.name!r} exists; revoke it first "
                f"(`dcsched tokens revoke {request.name}`) or choose another name",
            ) from None
        logger.info("issued a %s token to %s", request.role, request.name)
        return {**token_view(record), "token": token_value}

    @app.get("/v1/tokens", response_model=None, responses=m.ok(m.TokenList))
    def list_tokens(include_revoked: bool = False) -> dict[str, Any]:
        tokens = access_or_501().principals(include_revoked)
        bootstrap_view = {
            "name": BOOTSTRAP_PRINCIPAL,
            "role": Role.ADMIN.value,
            "team": None,
            "created_at": None,
            "revoked_at": None,
            "bootstrap": True,
        }
        return {"tokens": [bootstrap_view, *(token_view(t) for t in tokens)]}

    @app.delete("/v1/tokens/{name}", response_model=None, responses=m.ok(m.TokenView))
    def revoke_token(name: str) -> dict[str, Any]:
        if name == BOOTSTRAP_PRINCIPAL:
            raise ApiError(
                400,
                "the bootstrap token is not revoked through the API; to rotate it, delete "
                "$DCSCHED_HOME/token and restart the server",
            )
        record = access_or_501().revoke_principal(name, service.now())
        if record is None:
            raise ApiError(404, f"no active token named {name!r}; `dcsched tokens list` shows them")
        logger.info("revoked the token of %s", name)
        return token_view(record)

    @app.get("/v1/audit", response_model=None, responses=m.ok(m.AuditLog))
    def get_audit(limit: int = Query(100, ge=1, le=MAX_LIST_LIMIT)) -> dict[str, Any]:
        entries = access_or_501().audit(limit)
        return {
            "entries": [
                {
                    "at": iso(e.at),
                    "principal": e.principal,
                    "action": e.action,
                    "object": e.object,
                    "remote": e.remote,
                    "outcome": e.outcome,
                }
                for e in entries
            ]
        }

    return app
