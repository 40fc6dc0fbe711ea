"""Job commands: submit, list, status, logs, cancel, wait."""

from __future__ import annotations

import json
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
    _resources,
    _shorten,
    _table,
    _when,
)
from dcsched.client import Client
from dcsched.core.lifecycle import JobState

# -- jobs ------------------------------------------------------------------------------

POLL_INTERVAL_S = 1.0  # how often `wait` and `logs --follow` ask the server


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", "wait_", is_flag=True, help="Wait until the job ends.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after S seconds.")
def submit(file: Path, wait_: bool, timeout: float | None) -> None:
    """Submit the job spec in FILE (YAML); print the job id."""
    spec = _read_spec(file)
    job = _client().submit(spec)
    click.echo(job["id"])
    if wait_:
        raise click.exceptions.Exit(_wait(_client(), job["id"], timeout))


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
    data = spec.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        data["source"] = _absolute_csv(data["source"], file.parent)
    return spec


def _absolute_csv(source: str, base: Path) -> str:
    """``csv:RELATIVE`` becomes ``csv:ABSOLUTE``, resolved against the spec's folder."""
    scheme, sep, location = source.partition(":")
    if scheme != "csv" or not sep or not location:
        return source
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    return f"csv:{path}"


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
    ]
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
def logs(job_id: str, follow: bool) -> None:
    """Print a job's logs."""
    client = _client()
    offset = 0
    for _ in range(10_000 if not follow else sys.maxsize):
        page = client.job_logs(job_id, offset)
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
