"""The ``dcsched`` command line: a thin click client over the HTTP API.

Invariants:
- Start-up stays light: ``dcsched --help`` and ``dcsched list`` import click, json and
  http.client only (never ray, torch, pydantic, fastapi, uvicorn or yaml). ``submit``
  imports the YAML loader; ``server``/``up``/``down`` import ``dcsched.daemon``; both lazily.
- Exit codes: 0 success; 2 bad input (invalid local file, HTTP 400/404/422); 1 any other
  failure (server unreachable, 401, 409, 5xx, a job that did not succeed, a timeout).
- Errors go to stderr as ``error: ...``, never as a traceback. ``submit`` prints only the
  job id on stdout, so ``JOB=$(dcsched submit job.yaml)`` works.
- ``-o json`` prints the API's objects unchanged (list commands print a JSON array).

Words: a job is *terminal* once SUCCEEDED, FAILED or CANCELLED (``dcsched.core.lifecycle``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dcsched import __version__
from dcsched.client import ApiError, Client, ServerUnreachable
from dcsched.core.lifecycle import TERMINAL_STATES, JobState
from dcsched.core.units import format_bytes, format_duration
from dcsched.paths import DEFAULT_PORT, Paths

POLL_INTERVAL_S = 1.0  # how often `wait` and `logs --follow` ask the server
BAD_INPUT_STATUSES = frozenset({400, 404, 422})
_CLIENT_KEY = "dcsched.client"
_STATES = [state.value for state in JobState]
_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


class Failure(click.ClickException):
    """A failure the CLI reports as ``error: ...`` on stderr; exit code 1."""

    exit_code = 1

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        for problem in self.problems:
            click.echo(f"  - {problem}", err=True)


class BadInput(Failure):
    """Bad input from the user (a local file, or HTTP 400/404/422); exit code 2."""

    exit_code = 2


class _UsageError(click.UsageError):
    """click's usage error, shown as ``error: ...`` like every other error."""

    def show(self, file: Any = None) -> None:
        if self.ctx is not None:
            click.echo(self.ctx.get_usage(), err=True)
            click.echo(f"Try '{self.ctx.command_path} --help' for help.", err=True)
        click.echo(f"error: {self.message}", err=True)


def _restyled(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _UsageError | click.exceptions.NoArgsIsHelpError):
        return exc  # already ours, or "no arguments: show the help"
    return _UsageError(exc.format_message(), exc.ctx)


# Commands that live in their own modules and are imported only when run, so that
# `dcsched list` never pays for them: name -> "module:attribute".
# Their one-line help is here too, so that ``dcsched --help`` imports none of them.
LAZY_COMMANDS = {
    "exporter": ("dcsched.exporters.cli:exporter", "Serve GPU and host metrics of this node."),
    "sim": ("dcsched.sim.cli:sim", "Replay a cluster trace through the scheduling policies."),
    "top": ("dcsched.top:top", "Live view of nodes, GPUs, running jobs and the queue."),
}


class _Cli(click.Group):
    """Turns usage, API and connection errors of any command into ``error: ...``, and
    loads the commands of ``LAZY_COMMANDS`` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        target = LAZY_COMMANDS[cmd_name][0]
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise Failure(f"`dcsched {cmd_name}` cannot be loaded here: {exc}") from None
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _restyled(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _restyled(exc) from None
        except ServerUnreachable as exc:
            raise Failure(str(exc)) from None
        except ApiError as exc:
            raise _api_failure(exc, ctx.meta.get(_CLIENT_KEY)) from None


def _api_failure(exc: ApiError, client: Client | None) -> Failure:
    if exc.status == 401:
        source = client.token_source if client else "the token file"
        if client is not None and client.token is None:
            why = f"no API token was found ({source} is missing or empty)"
        else:
            why = f"the server refused the API token from {source}"
        return Failure(
            f"{why}: {exc.message}; use the token of the running server "
            "(check DCSCHED_HOME, or restart it with `dcsched up`)",
        )
    kind = BadInput if exc.status in BAD_INPUT_STATUSES else Failure
    return kind(exc.message, exc.problems)


def _client() -> Client:
    ctx = click.get_current_context()
    client = ctx.meta.get(_CLIENT_KEY)
    if client is None:
        client = Client.from_env(Paths.from_env())
        ctx.meta[_CLIENT_KEY] = client
    return client


def _output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Table for people, JSON (the API's objects) for scripts.",
    )(func)


def _print_json(value: Any) -> None:
    """Objects pretty-printed; lists one object per line (still one JSON document).

    ``indent`` switches json to its pure-Python encoder, which costs ~0.1 s for 1,000
    jobs; a line per object keeps the C encoder and stays readable and greppable.
    """
    if isinstance(value, list):
        if not value:
            click.echo("[]")
            return
        click.echo("[\n" + ",\n".join(json.dumps(item) for item in value) + "\n]")
        return
    click.echo(json.dumps(value, indent=2))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcsched")
def cli() -> None:
    """Schedule training jobs on a shared Ray cluster and watch them run."""


# -- server lifecycle --------------------------------------------------------------------

_port_option = click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="DCSCHED_PORT",
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the API (env DCSCHED_PORT).",
)
_host_option = click.option("--host", default="127.0.0.1", show_default=True)
_ray_option = click.option(
    "--ray-address", default=None, help="Join this Ray cluster instead of starting a head."
)
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster configuration (dcsched.yaml) to apply at start; "
    "default $DCSCHED_HOME/dcsched.yaml if present, else the last one applied.",
)


def _daemon() -> Any:
    """Import the server side lazily: it pulls in fastapi and ray."""
    try:
        from dcsched import daemon
    except ImportError as exc:
        raise Failure(f"the dcsched server cannot be loaded here: {exc}") from None
    return daemon


def _daemon_failure(exc: Exception) -> Failure:
    if os.environ.get("DCSCHED_DEBUG"):
        raise exc
    return Failure(f"{exc} (set DCSCHED_DEBUG=1 for the traceback)")


_exporter_options = [
    click.option(
        "--exporters/--no-exporters",
        default=True,
        show_default=True,
        help="Run a node exporter (GPU, host and job metrics) on every Ray node.",
    ),
    click.option(
        "--exporter-port",
        type=click.IntRange(0, 65535),
        envvar="DCSCHED_EXPORTER_PORT",
        default=9478,
        show_default=True,
        help="Port of the node exporters (a free one where it is taken; env "
        "DCSCHED_EXPORTER_PORT).",
    ),
    click.option(
        "--grafana-url",
        envvar="RAY_GRAFANA_HOST",
        default=None,
        help="Grafana for the Ray dashboard to embed (RAY_GRAFANA_HOST of the head it starts).",
    ),
    click.option(
        "--prometheus-url",
        envvar="RAY_PROMETHEUS_HOST",
        default=None,
        help="Prometheus for the Ray dashboard (RAY_PROMETHEUS_HOST of the head it starts).",
    ),
]


def _server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [_port_option, _host_option, _ray_option, _config_option, *_exporter_options]
    ):
        func = option(func)
    return func


def _options(daemon: Any, **given: Any) -> Any:
    return daemon.ServerOptions(
        host=given["host"],
        port=given["port"],
        ray_address=given["ray_address"],
        config_path=given["config_path"],
        exporters=given["exporters"],
        exporter_port=given["exporter_port"],
        grafana_url=given["grafana_url"],
        prometheus_url=given["prometheus_url"],
    )


@cli.command()
@_server_options
def server(**given: Any) -> None:
    """Run the API server in the foreground."""
    daemon = _daemon()
    try:
        daemon.run_server(Paths.from_env(), _options(daemon, **given))
    except Exception as exc:  # a start failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None


@cli.command()
@_server_options
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def up(timeout: float, **given: Any) -> None:
    """Start the server in the background and say where it is."""
    daemon = _daemon()
    paths = Paths.from_env()
    try:
        info = daemon.start_background(paths, _options(daemon, **given), timeout)
    except Exception as exc:  # any start failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None
    click.echo(f"dcsched server is up (pid {info.get('pid', '?')})")
    rows = [
        ("API", info.get("url")),
        ("metrics", info.get("metrics_url")),
        ("Ray dashboard", info.get("ray_dashboard_url")),
        ("exporters", info.get("exporters_file_sd")),
        ("home", str(paths.home)),
        ("log", str(paths.server_log)),
    ]
    for label, value in rows:
        click.echo(f"  {label + ':':<15}{value or '-'}")


@cli.command()
@click.option("--keep-ray", is_flag=True, help="Leave the Ray head that `up` started running.")
def down(keep_ray: bool) -> None:
    """Stop the background server (and the Ray head it started)."""
    daemon = _daemon()
    try:
        messages = daemon.stop_background(Paths.from_env(), stop_ray=not keep_ray)
    except Exception as exc:  # any stop failure is reported in words, not a traceback
        raise _daemon_failure(exc) from None
    for message in messages:
        click.echo(message)


# -- jobs ------------------------------------------------------------------------------


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


# -- cluster, models, plugins ----------------------------------------------------------------


@cli.command()
@_output_option
def nodes(output: str) -> None:
    """List the cluster's nodes with free and total resources."""
    found = _client().nodes()
    if output == "json":
        _print_json(found)
        return
    headers = ["ID", "ADDRESS", "ALIVE", "CPUS", "GPUS", "MEMORY", "JOBS", "LABELS"]
    rows = []
    for node in found:
        free, total = node.get("available") or {}, node.get("total") or {}
        rows.append(
            [
                _short(node.get("id")),
                node.get("address"),
                "yes" if node.get("alive") else "no",
                f"{_num(free.get('cpus'))}/{_num(total.get('cpus'))}",
                f"{_num(free.get('gpus'))}/{_num(total.get('gpus'))}",
                f"{_memory(free.get('memory'))}/{_memory(total.get('memory'))}",
                ",".join(node.get("jobs") or []),
                ",".join(f"{k}={v}" for k, v in sorted((node.get("labels") or {}).items())),
            ]
        )
    click.echo(_table(headers, rows) if rows else "no nodes")


@cli.group()
def models() -> None:
    """Registered models and their versions."""


@models.command("list")
@_output_option
def models_list(output: str) -> None:
    """List registered models."""
    found = _client().models()
    if output == "json":
        _print_json(found)
        return
    if not found:
        click.echo("no models", err=True)
        return
    now = _now()
    rows = [
        [m.get("name"), m.get("latest_version"), m.get("versions"), _ago(m.get("updated_at"), now)]
        for m in found
    ]
    click.echo(_table(["NAME", "LATEST", "VERSIONS", "UPDATED"], rows))


@models.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@_output_option
def models_show(ref: str, output: str) -> None:
    """Show a model's versions, or one version (NAME:3, NAME:latest)."""
    name, _, version = ref.partition(":")
    if not name or (version and version != "latest" and not version.isdigit()):
        raise BadInput(f"{ref!r} is not NAME or NAME:VERSION (a number or 'latest')")
    client = _client()
    if version.isdigit():
        detail = client.model_version(name, int(version))
    else:
        model = client.model(name)
        versions = model.get("versions") or []
        if not version:
            _print_model(model, output)
            return
        if not versions:
            raise BadInput(f"model {name} has no versions")
        detail = max(versions, key=lambda v: int(v.get("version", 0)))
    if output == "json":
        _print_json(detail)
        return
    click.echo(
        _fields(
            [
                ("NAME", detail.get("name")),
                ("VERSION", detail.get("version")),
                ("JOB", detail.get("job_id")),
                ("PLUGIN", detail.get("plugin")),
                ("CREATED", _when(detail.get("created_at"), _now())),
                ("CHECKSUM", detail.get("checksum")),
                ("PATH", detail.get("path")),
                ("PARAMS", _plain(detail.get("params"))),
                ("METRICS", _pairs(detail.get("metrics"))),
            ]
        )
    )


def _print_model(model: Mapping[str, Any], output: str) -> None:
    if output == "json":
        _print_json(model)
        return
    now = _now()
    rows = [
        [
            v.get("version"),
            v.get("job_id"),
            v.get("plugin"),
            _pairs(v.get("metrics")),
            _ago(v.get("created_at"), now),
            _short(v.get("checksum")),
        ]
        for v in model.get("versions") or []
    ]
    click.echo(f"model {model.get('name')}")
    headers = ["VERSION", "JOB", "PLUGIN", "METRICS", "CREATED", "CHECKSUM"]
    click.echo(_table(headers, rows) if rows else "no versions")


@cli.group()
def config() -> None:
    """The cluster configuration: teams, quotas, cohorts, priority classes, policies."""


@config.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_apply(file: Path) -> None:
    """Validate FILE (dcsched.yaml) and put it in force."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror or exc}") from None
    applied = _client().put_config(text).get("config") or {}
    teams = applied.get("teams") or []
    queueing = applied.get("queueing") or {}
    click.echo(
        f"applied {file}: {len(teams)} teams, queueing {queueing.get('policy')}"
        f"{' with backfill' if queueing.get('backfill') else ''}, "
        f"placement {applied.get('placement')}"
    )


@config.command("show")
@_output_option
def config_show(output: str) -> None:
    """Print the configuration in force."""
    found = _client().get_config()
    if output == "json":
        _print_json(found)
    elif found.get("text"):
        click.echo(found["text"].rstrip("\n"))
    else:
        click.echo("# no configuration applied; the defaults are in force", err=True)
        click.echo(json.dumps(found.get("config"), indent=2))


def _quota_cell(quota: Any, key: str) -> str:
    if not isinstance(quota, dict) or quota.get(key) is None:
        return "-"
    return _memory(quota[key]) if key == "memory" else _num(quota[key])


@cli.command()
@_output_option
def teams(output: str) -> None:
    """Each team's quota, what it uses, what it borrowed, and its pending work."""
    found = _client().teams()
    if output == "json":
        _print_json(found)
        return
    headers = ["TEAM", "COHORT", "WEIGHT", "GPUS used/quota", "CPUS used/quota",
               "MEMORY used/quota", "BORROWED", "RUNNING", "PENDING"]  # fmt: skip
    rows = []
    for team in found:
        used, quota, borrowed = team.get("used") or {}, team.get("quota"), team.get("borrowed")
        lent = [
            f"{_num(borrowed[k]) if k != 'memory' else _memory(borrowed[k])} {k}"
            for k in ("gpus", "cpus", "memory")
            if isinstance(borrowed, dict) and borrowed.get(k)
        ]
        rows.append(
            [
                team.get("name"),
                team.get("cohort") or "-",
                _num(team.get("weight")),
                f"{_num(used.get('gpus'))}/{_quota_cell(quota, 'gpus')}",
                f"{_num(used.get('cpus'))}/{_quota_cell(quota, 'cpus')}",
                f"{_memory(used.get('memory'))}/{_quota_cell(quota, 'memory')}",
                ", ".join(lent) or "-",
                team.get("running"),
                team.get("pending"),
            ]
        )
    click.echo(_table(headers, rows) if rows else "no teams")


def _since(value: str | None) -> float | None:
    """`2h`, `7d`, `3600` (that long ago) or an ISO date/time (UTC unless it says)."""
    if value is None:
        return None
    from dcsched.core.units import parse_duration

    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"--since {value!r}: write a duration like 2h or 7d, or a date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@cli.command()
@click.option("--team", default=None, help="Only this team.")
@click.option("--since", "since_text", default=None, help="Window start: 24h, 7d or a date.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json", "csv"]), default="table",
    show_default=True,
)  # fmt: skip
def usage(team: str | None, since_text: str | None, output: str) -> None:
    """Allocated GPU- and CPU-seconds per team and per job."""
    report = _client().usage(team=team, since=_since(since_text))
    if output == "json":
        _print_json(report)
        return
    if output == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["scope", "team", "job", "gpu_seconds", "cpu_seconds"])
        for row in report.get("teams") or []:
            writer.writerow(["team", row["team"], "", row["gpu_seconds"], row["cpu_seconds"]])
        for row in report.get("jobs") or []:
            writer.writerow(["job", row["team"], row["id"], row["gpu_seconds"], row["cpu_seconds"]])
        return
    since = report.get("since") or "the beginning"
    click.echo(f"allocated from {since} to {report.get('until')}")
    rows = [
        [
            r["team"],
            _num(round(r["gpu_seconds"] / 3600, 3)),
            _num(round(r["cpu_seconds"] / 3600, 3)),
        ]
        for r in report.get("teams") or []
    ]
    click.echo(_table(["TEAM", "GPU-HOURS", "CPU-HOURS"], rows) if rows else "no usage")


@cli.group()
def plugins() -> None:
    """Installed model plugins."""


@plugins.command("list")
@_output_option
def plugins_list(output: str) -> None:
    """List the model plugins the server found."""
    found = _client().plugins()
    if output == "json":
        _print_json(found)
        return
    rows = [
        [p.get("name"), p.get("version"), p.get("distribution"), p.get("description")]
        for p in found
    ]
    headers = ["NAME", "VERSION", "DISTRIBUTION", "DESCRIPTION"]
    click.echo(_table(headers, rows) if rows else "no plugins")


# -- formatting ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ago(value: Any, now: datetime) -> str:
    when = _parse_time(value)
    if when is None:
        return str(value) if value else "-"
    return f"{format_duration((now - when).total_seconds())} ago"


def _when(value: Any, now: datetime) -> str | None:
    when = _parse_time(value)
    if when is None:
        return str(value) if value else None
    return f"{when.strftime('%Y-%m-%d %H:%M:%S')} UTC ({_ago(value, now)})"


def _between(start: Any, end: Any, now: datetime) -> str | None:
    begin = _parse_time(start)
    if begin is None:
        return None
    finish = _parse_time(end) or now
    return format_duration((finish - begin).total_seconds())


def _num(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return "-" if value is None else str(value)


def _memory(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        text: str = format_bytes(int(value))
        return text
    return "-" if value is None else str(value)


def _resources(res: Any, total: bool = False) -> str:
    """``1x 1cpu 0gpu 1GiB`` (per worker); with ``total`` the gang's sum too."""
    if not isinstance(res, dict):
        return "-"
    workers = res.get("workers", 1)
    cpus, gpus, memory = res.get("cpus"), res.get("gpus"), res.get("memory")
    text = f"{workers}x {_num(cpus)}cpu {_num(gpus)}gpu {_memory(memory)}"
    numbers = [n for n in (cpus, gpus, memory) if isinstance(n, int | float)]
    if total and isinstance(workers, int) and workers > 1 and len(numbers) == 3:
        cpus_all, gpus_all, memory_all = (workers * n for n in numbers)
        text += f" (total {_num(cpus_all)}cpu {_num(gpus_all)}gpu {_memory(memory_all)})"
    return text


def _queue_reason(job: Mapping[str, Any]) -> str:
    reason = job.get("reason") or ""
    position = job.get("position")
    if job.get("state") == JobState.PENDING and position is not None:
        text = f"#{position} in queue: {reason}" if reason else f"#{position} in queue"
        estimate = _parse_time(job.get("estimated_start"))
        if estimate is not None:
            text += f" (estimated start in {format_duration((estimate - _now()).total_seconds())})"
        return text
    return str(reason)


def _short(value: Any, width: int = 12) -> str:
    text = "" if value is None else str(value)
    return text[:width]


def _node_list(node_ids: Any) -> str:
    ids = [_short(n) for n in node_ids or []]
    if len(ids) > 3:
        return ",".join(ids[:3]) + f",+{len(ids) - 3}"
    return ",".join(ids)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, dict) or not mapping:
        return ""
    return " ".join(f"{k}={_plain(v)}" for k, v in mapping.items())


def _model_ref(model: Any) -> str:
    if not isinstance(model, dict):
        return "" if model is None else str(model)
    return f"{model.get('name')}:{model.get('version')}"


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: int = 0) -> str:
    """Left-aligned columns separated by two spaces; None and "" show as '-'."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return "\n".join(
        pad + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _fields(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(label) for label, _ in pairs) + 2
    return "\n".join(
        f"{label:<{width}}{value}" for label, value in pairs if value not in (None, "")
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``dcsched``)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="dcsched")
    except BrokenPipeError:  # `dcsched list | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
