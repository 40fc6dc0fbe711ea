"""Job commands: submit, list, status, logs, cancel, wait."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from dcsched.cli.base import (
    _STATES,
    _TERMINAL,
    BadInput,
    Failure,
    _client,
    _output_option,
    _print_json,
    cli,
)
from dcsched.cli.format import (
    _ago,
    _between,
    _fields,
    _model_ref,
    _node_list,
    _now,
    _pairs,
    _plain,
    _queue_reason,
    _ray_warning,
    _resources,
    _shorten,
    _table,
    _when,
)
from dcsched.cli.tuning import study_lines
from dcsched.client import Client
from dcsched.core.lifecycle import JobState

# -- jobs ------------------------------------------------------------------------------

POLL_INTERVAL_S = 1.0  # how often `wait` and `logs --follow` ask the server


@cli.command()
@click.argument("args", nargs=-1, metavar="FILE | -- COMMAND...")
@click.option("--wait", "wait_", is_flag=True, help="Wait until the job ends.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after S seconds.")
@click.option("--team", default=None, help="Shorthand: the team of a `run` job of COMMAND.")
@click.option("--name", default=None, help="Shorthand: the job's name (default: the program's).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--cpus", type=float, default=1.0, show_default=True, help="CPUs per worker.")
@click.option("--gpus", type=float, default=0.0, show_default=True, help="GPUs per worker.")
@click.option("--memory", default="1GiB", show_default=True, help="Memory per worker.")
@click.option("--priority", default="normal", show_default=True)
@click.option("--max-runtime", default=None, help="e.g. 30m, 2h.")
@click.option(
    "--working-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Shorthand: folder uploaded as the command's working_dir (default: the current one).",
)
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Shorthand: repeatable.")
def submit(
    args: tuple[str, ...],
    wait_: bool,
    timeout: float | None,
    team: str | None,
    name: str | None,
    workers: int,
    cpus: float,
    gpus: float,
    memory: str,
    priority: str,
    max_runtime: str | None,
    working_dir: Path | None,
    env: tuple[str, ...],
) -> None:
    """Submit a job; print its id.

    \b
    dcsched submit SPEC.yaml
    dcsched submit --team research --workers 2 --cpus 1 -- python train.py --lr 0.01

    Files the spec names (csv:FILE data, a run job's working_dir) are uploaded with it,
    unless they lie under a data root the server lists.
    """
    if team is not None:
        if not args:
            raise BadInput("give the command to run after --, e.g. -- python train.py")
        spec = shorthand_spec(
            list(args),
            team=team,
            name=name,
            workers=workers,
            cpus=cpus,
            gpus=gpus,
            memory=memory,
            priority=priority,
            max_runtime=max_runtime,
            working_dir=str(working_dir or "."),
            env=_env_pairs(env),
        )
        base = Path.cwd()
    elif len(args) == 1:
        spec = _read_spec(Path(args[0]))
        base = Path(args[0]).parent
    else:
        raise BadInput(
            "give a spec file (dcsched submit SPEC.yaml), or --team and a command "
            "(dcsched submit --team T -- python train.py)"
        )
    client = _client()
    if spec.get("kind") == "serve":  # a deployment (dcsched.cli.serve): print its URL
        click.echo(client.request("POST", "/v1/deployments", body={"spec": spec})["url"])
        return
    spec = upload_inputs(spec, base, client)
    job = client.submit(spec)
    click.echo(job["id"])
    if wait_:
        raise click.exceptions.Exit(_wait(client, job["id"], timeout))


def _read_spec(file: Path) -> dict[str, Any]:
    from dcsched.core.spec import SpecError, load_yaml_mapping  # imports yaml and pydantic

    try:
        text = file.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{file} is not a text file") from None
    try:
        document = load_yaml_mapping(text)
    except SpecError as exc:
        raise BadInput(f"{file}: {exc}") from None
    if document is None:
        raise BadInput(f"{file} is empty; a job spec is a mapping with name, kind, team, ...")
    if not isinstance(document, dict):
        raise BadInput(f"{file} must hold a mapping of fields, not a {type(document).__name__}")
    spec: dict[str, Any] = json.loads(json.dumps(document, default=str))  # YAML dates etc.
    return spec


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--env {pair!r}: write NAME=VALUE")
        env[key] = value
    return env


def shorthand_spec(
    command: list[str],
    *,
    team: str,
    name: str | None = None,
    workers: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    memory: str = "1GiB",
    priority: str = "normal",
    max_runtime: str | None = None,
    working_dir: str = ".",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The `kind: run` spec that ``dcsched submit --team T ... -- COMMAND`` means."""
    spec: dict[str, Any] = {
        "name": name or _name_of(command),
        "kind": "run",
        "team": team,
        "priority": priority,
        "resources": {"workers": workers, "cpus": cpus, "gpus": gpus, "memory": memory},
        "run": {"command": command, "working_dir": working_dir, "env": env or {}},
    }
    if max_runtime is not None:
        spec["max_runtime"] = max_runtime
    return spec


def _name_of(command: list[str]) -> str:
    """A job name from the command: its script or program, as a slug."""
    words = [w for w in command if not w.startswith("-")]
    script = next((w for w in words[1:] if "." in Path(w).name), None) or words[0]
    stem = Path(script).stem.lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-")[:40].strip("-")
    return slug or "run"


def upload_inputs(spec: dict[str, Any], base: Path, client: Client) -> dict[str, Any]:
    """Upload each local file or folder the spec names (relative to ``base``) and put its
    upload reference in its place; paths under the server's data roots stay as they are."""
    from dcsched.inputs import input_fields, is_upload_ref, replace_inputs, under_roots

    kind = str(spec.get("kind", ""))
    if not input_fields(kind, spec):
        return spec
    info = client.info()
    roots = [str(r) for r in info.get("data_roots") or []]
    limit = int(info.get("max_upload") or 0)

    def upload(field: str, ref: str) -> str:
        if is_upload_ref(ref):
            return ref
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = (base / path).resolve()
        if roots and under_roots(str(path), roots):
            return str(path)
        if path.is_dir():
            data = _zip_folder(path, field, limit)
        elif path.is_file():
            if field == "data.source":
                _check_csv_target(path, spec.get("data", {}).get("target"))
            size = path.stat().st_size
            if limit and size > limit:
                raise BadInput(
                    f"{field}: {path} is {size} bytes, over the server's upload limit of "
                    f"{limit} bytes (max_upload in dcsched.yaml); put it under a data root "
                    "instead"
                )
            data = path.read_bytes()
        else:
            raise BadInput(f"{field}: {path} does not exist")
        return str(client.upload(data)["ref"])

    return {**spec, **replace_inputs(kind, spec, upload)}


def _check_csv_target(path: Path, target: object) -> None:
    """Name the columns of the user's own CSV file when the target is not among them (the
    server checks again, but never quotes a file)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader([handle.readline(1024 * 1024)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return  # the server says what is wrong with the file
    columns = [cell.strip() for cell in header]
    if isinstance(target, str) and columns and target not in columns:
        raise BadInput(
            f"data.target: column {target!r} is not in {path}; its columns are: "
            + ", ".join(columns)
        )


SKIPPED_IN_WORKING_DIR = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache"}


def _zip_folder(folder: Path, field: str, limit: int) -> bytes:
    """The folder as a zip (paths relative to it), without VCS and cache folders."""
    import io
    import os
    import zipfile

    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_IN_WORKING_DIR)
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                total += path.stat().st_size
                if limit and total > limit:
                    raise BadInput(
                        f"{field}: {folder} holds more than the server's upload limit of "
                        f"{limit} bytes (max_upload in dcsched.yaml); leave large files out "
                        "of the working_dir or put them under a data root"
                    )
                archive.write(path, str(path.relative_to(folder)))
    data = buffer.getvalue()
    if limit and len(data) > limit:
        raise BadInput(
            f"{field}: {folder} packs to {len(data)} bytes, over the server's upload limit "
            f"of {limit} bytes (max_upload in dcsched.yaml)"
        )
    return data


@cli.command("list")
@click.option("--state", type=click.Choice(_STATES, case_sensitive=False), default=None)
@click.option("--team", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@_output_option
def list_jobs(state: str | None, team: str | None, limit: int, output: str) -> None:
    """List jobs, newest first (alias: queue)."""
    jobs = _client().list_jobs(state=state.upper() if state else None, team=team, limit=limit)
    if output == "json":
        _print_json(jobs)
        return
    if not jobs:
        click.echo("no jobs", err=True)
        return
    now = _now()
    headers = ["ID", "NAME", "TEAM", "KIND", "STATE", "PRIORITY", "RESOURCES", "AGE"]
    headers += ["NODES", "REASON"]
    rows = [
        [
            job.get("id"),
            job.get("name"),
            job.get("team"),
            job.get("kind"),
            job.get("state"),
            job.get("priority"),
            _resources(job.get("resources")),
            _ago(job.get("submitted_at"), now),
            _node_list(job.get("nodes")),
            _shorten(_queue_reason(job), 100),
        ]
        for job in jobs
    ]
    click.echo(_table(headers, rows))


cli.add_command(
    click.Command(
        "queue", callback=list_jobs.callback, params=list_jobs.params, help="Same as `list`."
    )
)


@cli.command()
@click.argument("job_id", metavar="JOB")
@_output_option
def status(job_id: str, output: str) -> None:
    """Show one job: state, resources, history, result."""
    job = _client().get_job(job_id)
    if output == "json":
        _print_json(job)
        return
    now = _now()
    spec = job.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    fields: list[tuple[str, Any]] = [
        ("ID", job.get("id")),
        ("NAME", job.get("name")),
        ("TEAM", job.get("team")),
        ("KIND", job.get("kind")),
        ("STATE", job.get("state")),
        ("PRIORITY", job.get("priority")),
        ("RESOURCES", _resources(job.get("resources"), total=True)),
        ("MODEL TYPE", (spec.get("model") or {}).get("type")),
        ("DATA", (spec.get("data") or {}).get("source")),
        ("SUBMITTED", _when(job.get("submitted_at"), now)),
        ("ADMITTED", _when(job.get("admitted_at"), now)),
        ("STARTED", _when(job.get("started_at"), now)),
        ("FINISHED", _when(job.get("finished_at"), now)),
        ("QUEUED FOR", _between(job.get("submitted_at"), job.get("admitted_at"), now)),
        ("RAN FOR", _between(job.get("started_at"), job.get("finished_at"), now)),
        ("NODES", ", ".join(job.get("nodes") or []) or None),
        ("REASON", _queue_reason(job) or None),
        ("PROGRESS", _pairs(job.get("progress"))),
        ("RAY", _ray_warning(job)),
    ]
    fields += study_lines(job.get("tuning"))
    result = job.get("result") if isinstance(job.get("result"), dict) else None
    if result is not None:
        fields.append(("METRICS", _pairs(result.get("metrics"))))
        fields.append(("MODEL", _model_ref(result.get("model"))))
        for key, value in result.items():
            if key not in ("metrics", "model") and value is not None:
                fields.append((key.upper(), _plain(value)))
    click.echo(_fields(fields))
    events = job.get("events") or []
    if events:
        click.echo("\nEVENTS")
        rows = [
            [_ago(e.get("at"), now), e.get("from_state"), e.get("to_state"), e.get("reason")]
            for e in events
        ]
        click.echo(_table(["AT", "FROM", "TO", "REASON"], rows, indent=2))


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="Only this rank's output.")
def logs(job_id: str, follow: bool, rank: int | None) -> None:
    """Print a job's logs (every rank's, as Ray collected them; or one rank's)."""
    client = _client()
    offset = 0
    for _ in range(10_000 if not follow else sys.maxsize):
        page = client.job_logs(job_id, offset, rank)
        text = page.get("logs") or ""
        if text:
            click.echo(text, nl=False)
            sys.stdout.flush()
        next_offset = int(page.get("offset", offset + len(text)))
        if page.get("done"):
            return
        if next_offset == offset:
            if not follow:
                return
            time.sleep(POLL_INTERVAL_S)
        offset = next_offset


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="Local file to write (the job's output: .csv or .parquet).",
)
def results(job_id: str, out: str) -> None:
    """Fetch the output of an infer job that SUCCEEDED into a local file."""
    size = _client().job_results(job_id, out)
    click.echo(f"wrote {out} ({size} bytes)")


@cli.command()
@click.argument("job_id", metavar="JOB")
def cancel(job_id: str) -> None:
    """Cancel a job; print its new state."""
    job = _client().cancel(job_id)
    click.echo(f"{job.get('id', job_id)}: {job.get('state')}")


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option("--timeout", type=float, default=None, help="Give up after S seconds.")
def wait(job_id: str, timeout: float | None) -> None:
    """Wait until a job ends; exit 0 if it SUCCEEDED, else 1."""
    raise click.exceptions.Exit(_wait(_client(), job_id, timeout))


def _wait(client: Client, job_id: str, timeout: float | None) -> int:
    """Poll until terminal, narrating changes on stderr; return the exit code."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        job = client.get_job(job_id)
        state = str(job.get("state"))
        if state in _TERMINAL:
            click.echo(_final_line(job), err=True)
            return 0 if state == JobState.SUCCEEDED else 1
        line = _progress_line(job)
        if line != last:
            click.echo(line, err=True)
            last = line
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"job {job_id} is still {state} after {timeout:g}s")
            time.sleep(min(POLL_INTERVAL_S, left))
        else:
            time.sleep(POLL_INTERVAL_S)


def _progress_line(job: Mapping[str, Any]) -> str:
    parts = [f"job {job.get('id')}: {job.get('state')}"]
    reason = _queue_reason(job)
    if reason:
        parts.append(reason)
    if job.get("nodes"):
        parts.append("on " + _node_list(job.get("nodes")))
    progress = _pairs(job.get("progress"))
    if progress:
        parts.append(progress)
    return "  ".join(parts)


def _final_line(job: Mapping[str, Any]) -> str:
    parts = [f"job {job.get('id')}: {job.get('state')}"]
    ran = _between(job.get("started_at"), job.get("finished_at"), _now())
    if ran:
        parts.append(f"after {ran}")
    if job.get("state") != JobState.SUCCEEDED and job.get("reason"):
        parts.append(str(job.get("reason")))
    result = job.get("result")
    result = result if isinstance(result, dict) else {}
    if result.get("metrics"):
        parts.append(_pairs(result.get("metrics")))
    if result.get("model"):
        parts.append("model " + _model_ref(result.get("model")))
    return "  ".join(parts)
