"""Cluster commands: nodes, models, plugins, config, teams, usage."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dcsched.cli.base import (
    BadInput,
    _client,
    _output_option,
    _print_json,
    cli,
)
from dcsched.cli.format import (
    _ago,
    _fields,
    _memory,
    _now,
    _num,
    _pairs,
    _plain,
    _short,
    _table,
    _when,
)

# -- cluster, models, plugins ----------------------------------------------------------------


@cli.command()
@_output_option
def nodes(output: str) -> None:
    """List the cluster's nodes with free and total resources."""
    found, ray = _client().nodes_and_ray()
    if output == "json":
        _print_json(found)
        return
    if ray and not ray.get("reachable", True):
        click.echo(
            f"Ray unreachable: {ray.get('error') or 'no answer'}; nodes as last seen, jobs "
            "stay queued until it answers again",
            err=True,
        )
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
    headers = ["TEAM", "COHORT", "WEIGHT", "CPUS used/quota", "GPUS used/quota",
               "MEMORY used/quota", "BORROWED", "RUNNING", "PENDING"]  # fmt: skip
    rows = []
    for team in found:
        used, quota, borrowed = team.get("used") or {}, team.get("quota"), team.get("borrowed")
        lent = [
            f"{_num(borrowed[k]) if k != 'memory' else _memory(borrowed[k])} {k}"
            for k in ("cpus", "gpus", "memory")
            if isinstance(borrowed, dict) and borrowed.get(k)
        ]
        rows.append(
            [
                team.get("name"),
                team.get("cohort") or "-",
                _num(team.get("weight")),
                f"{_num(used.get('cpus'))}/{_quota_cell(quota, 'cpus')}",
                f"{_num(used.get('gpus'))}/{_quota_cell(quota, 'gpus')}",
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
    """Allocated CPU- and GPU-seconds per team and per job."""
    report = _client().usage(team=team, since=_since(since_text))
    if output == "json":
        _print_json(report)
        return
    if output == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["scope", "team", "job", "cpu_seconds", "gpu_seconds"])
        for row in report.get("teams") or []:
            writer.writerow(["team", row["team"], "", row["cpu_seconds"], row["gpu_seconds"]])
        for row in report.get("jobs") or []:
            writer.writerow(["job", row["team"], row["id"], row["cpu_seconds"], row["gpu_seconds"]])
        return
    since = report.get("since") or "the beginning"
    click.echo(f"allocated from {since} to {report.get('until')}")
    rows = [
        [
            r["team"],
            _num(round(r["cpu_seconds"] / 3600, 3)),
            _num(round(r["gpu_seconds"] / 3600, 3)),
        ]
        for r in report.get("teams") or []
    ]
    click.echo(_table(["TEAM", "CPU-HOURS", "GPU-HOURS"], rows) if rows else "no usage")


@cli.group()
def plugins() -> None:
    """Installed model plugins."""


@plugins.command("list")
@_output_option
def plugins_list(output: str) -> None:
    """List the model plugins the server found (broken ones with their error)."""
    found = _client().plugins()
    if output == "json":
        _print_json(found)
        return
    rows = [
        [
            p.get("name"),
            p.get("status", "ok"),
            p.get("version"),
            p.get("distribution"),
            p.get("error") if p.get("status") == "broken" else p.get("description"),
        ]
        for p in found
    ]
    headers = ["NAME", "STATUS", "VERSION", "DISTRIBUTION", "DESCRIPTION / ERROR"]
    click.echo(_table(headers, rows) if rows else "no plugins")


@plugins.command("show")
@click.argument("name")
@_output_option
def plugins_show(name: str, output: str) -> None:
    """A plugin's params (defaults, descriptions), data sources, metrics, search space and
    resources."""
    found = {p.get("name"): p for p in _client().plugins()}
    plugin = found.get(name)
    if plugin is None:
        listed = ", ".join(sorted(str(n) for n in found)) or "none"
        raise BadInput(f"no model plugin {name!r}; installed: {listed}")
    if output == "json":
        _print_json(plugin)
        return
    click.echo(f"{name} ({plugin.get('distribution')} {plugin.get('version')})")
    if plugin.get("status") == "broken":
        click.echo(f"BROKEN: {plugin.get('error')}")
        return
    click.echo(plugin.get("description") or "")
    click.echo(f"api_version: {plugin.get('api_version')}")
    schema = plugin.get("params_schema") or {}
    click.echo("params:")
    params = schema.get("properties") or {}
    if params:
        rows = [
            [
                key,
                _schema_type(prop),
                json.dumps(prop["default"]) if "default" in prop else "(required)",
                prop.get("description", ""),
            ]
            for key, prop in params.items()
        ]
        click.echo(_indent(_table(["NAME", "TYPE", "DEFAULT", "DESCRIPTION"], rows)))
    else:
        click.echo("  none")
    click.echo(f"data sources: {', '.join(plugin.get('data_sources') or [])}")
    click.echo("metrics:")
    for task, metric_set in (plugin.get("metrics") or {}).items():
        click.echo(
            f"  {task}: {', '.join(metric_set.get('names', []))}; objective "
            f"{metric_set.get('objective')} ({metric_set.get('direction')})"
        )
    space = plugin.get("search_space") or {}
    click.echo("search space:" + ("" if space else " none"))
    for key, dimension in space.items():
        click.echo(f"  {key}: {json.dumps(dimension)}")
    resources = plugin.get("resources") or {}
    click.echo(
        "resources: "
        + ", ".join(f"{key} {value}" for key, value in resources.items())
        + f"; gpu: {'yes' if plugin.get('gpu') else 'no'}"
        + f"; workers: {'several (data-parallel)' if plugin.get('multi_worker') else '1'}"
    )


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "|".join(str(v) for v in prop["enum"])
    if "type" in prop:
        item = prop.get("items", {}).get("type") if prop["type"] == "array" else None
        return f"list[{item}]" if item else str(prop["type"])
    if "anyOf" in prop:
        return "|".join(str(p.get("type", "?")) for p in prop["anyOf"])
    return "?"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
