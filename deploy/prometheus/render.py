#!/usr/bin/env python3
"""Write a concrete prometheus.yml for one dcsched install.

Prometheus does not expand environment variables in file paths, and the paths it needs
differ per install ($DCSCHED_HOME, the server's address, Ray's temp dir), so the config
is rendered. This script needs only the Python standard library (no dcsched import), so
it runs on the Prometheus host as well as in the repository:

    python3 deploy/prometheus/render.py                 # this install, read from $DCSCHED_HOME
    python3 deploy/prometheus/render.py --dcsched-home /srv/dcsched \\
        --server-url http://10.0.0.5:8765 --ray-temp-dir /tmp/ray -o /etc/prometheus/dcsched.yml

Four scrape jobs (their names are what the alert rules and dashboards select on):

- ``dcsched-server``: the server's ``/metrics``, with the API's bearer token read from
  ``$DCSCHED_HOME/token`` (``authorization.credentials_file``; Prometheus re-reads it at
  every scrape, so a new token needs no reload);
- ``dcsched-node``: every node exporter (``dcsched exporter``), found through the
  file_sd file that the dcsched server keeps, ``$DCSCHED_HOME/prometheus/exporters.json``
  (``[{"targets": ["host:port"], "labels": {"node": "<Ray node id>"}}]``);
- ``dcsched-serving``: every serving replica (``dcsched serve``), found through the
  file_sd file the server keeps, ``$DCSCHED_HOME/prometheus/serving.json`` (labels
  ``deployment``, ``replica``, ``team``);
- ``ray``: Ray's own metrics agents, found through Ray's service-discovery file
  ``<Ray temp dir>/prom_metrics_service_discovery.json``, which the Ray head writes
  (Ray 2.60 keeps it in the session dir and links it there). It exists on the head node
  only: run Prometheus there, or copy the file.

Labels: ``job`` is the scrape job (Prometheus' own target label), ``job_id`` a dcsched
job. On the node exporters the ``node`` label of the file_sd target (the Ray node id,
which the server knows) wins over the exporter's own copy (which Prometheus would keep as
``exported_node``; it is dropped), so exporter and server series always join on ``node``.

With no arguments the values come from this install: ``$DCSCHED_HOME`` (default
``~/.dcsched``), its ``server.json`` (the running server's URL) and ``ray/head.json`` (the
temp dir of the Ray head dcsched started), else the defaults below.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
SD_FILE_NAME = "prom_metrics_service_discovery.json"
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


@dataclass(frozen=True)
class Settings:
    """What differs per install. The defaults are the placeholders of the shipped
    ``deploy/prometheus/prometheus.yml``."""

    dcsched_home: str = "/var/lib/dcsched"
    server_url: str = "http://127.0.0.1:8765"
    ray_temp_dir: str = "/tmp/ray"
    rules_dir: str = "rules"
    token_path: str | None = None  # default: <dcsched_home>/token
    exporters_file: str | None = None  # default: <dcsched_home>/prometheus/exporters.json
    # More file_sd files of node exporters, e.g. for exporters you run yourself on hosts
    # that are not Ray nodes (same format; label each target with its `node`).
    extra_exporter_files: tuple[str, ...] = field(default_factory=tuple)
    scrape_interval: str = "15s"
    evaluation_interval: str | None = None  # default: the scrape interval
    alertmanagers: tuple[str, ...] = field(default_factory=tuple)

    @property
    def token_file(self) -> str:
        return self.token_path or f"{self.dcsched_home.rstrip('/')}/token"

    @property
    def exporters_sd_file(self) -> str:
        return self.exporters_file or f"{self.dcsched_home.rstrip('/')}/prometheus/exporters.json"

    @property
    def ray_sd_file(self) -> str:
        return f"{self.ray_temp_dir.rstrip('/')}/{SD_FILE_NAME}"


def _ms(duration: str) -> int:
    match = _DURATION.match(duration)
    if match is None:
        raise ValueError(f"{duration!r} is not a duration like 15s, 500ms, 1m or 1h")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def render(settings: Settings) -> str:
    """The text of prometheus.yml for these settings."""
    url = urlsplit(settings.server_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"server URL {settings.server_url!r} is not http(s)://host:port")
    host_port = url.netloc
    metrics_path = url.path.rstrip("/") + "/metrics"
    scrape_ms = _ms(settings.scrape_interval)
    evaluation = settings.evaluation_interval or settings.scrape_interval
    _ms(evaluation)
    # Prometheus refuses a scrape timeout longer than the interval.
    timeout = "10s" if scrape_ms >= 10_000 else settings.scrape_interval
    rules = settings.rules_dir.rstrip("/")
    out = [
        "# prometheus.yml for dcsched, written by deploy/prometheus/render.py.",
        "# Install-specific values (regenerate rather than edit by hand):",
        f"#   DCSCHED_HOME  {settings.dcsched_home}",
        f"#   server        {settings.server_url}",
        f"#   Ray temp dir  {settings.ray_temp_dir}",
        "# See deploy/README.md.",
        "global:",
        f"  scrape_interval: {settings.scrape_interval}",
        f"  scrape_timeout: {timeout}",
        f"  evaluation_interval: {evaluation}",
        "",
        "rule_files:",
        f"  - {_q(rules + '/recording.yml')}",
        f"  - {_q(rules + '/alerts.yml')}",
        "",
    ]
    if settings.alertmanagers:
        out += [
            "alerting:",
            "  alertmanagers:",
            "    - static_configs:",
            "        - targets: [" + ", ".join(_q(a) for a in settings.alertmanagers) + "]",
            "",
        ]
    out += [
        "scrape_configs:",
        "  # The dcsched server: scheduler state (jobs, queues, quotas, allocations).",
        "  - job_name: dcsched-server",
        f"    scheme: {url.scheme}",
        f"    metrics_path: {_q(metrics_path)}",
        "    authorization:",
        "      type: Bearer",
        f"      credentials_file: {_q(settings.token_file)}",
        "    static_configs:",
        f"      - targets: [{_q(host_port)}]",
        "",
        "  # One `dcsched exporter` per node (GPUs, host, job processes); the dcsched",
        "  # server keeps this file up to date, Prometheus watches it.",
        "  - job_name: dcsched-node",
        "    file_sd_configs:",
        "      - files: ["
        + ", ".join(_q(f) for f in (settings.exporters_sd_file, *settings.extra_exporter_files))
        + "]",
        "        refresh_interval: 30s",
        "    metric_relabel_configs:",
        "      # The target's `node` (the Ray node id from the file_sd file) wins; drop",
        "      # the exporter's own copy.",
        "      - regex: exported_node",
        "        action: labeldrop",
        "",
        "  # Serving replicas (`dcsched serve`): the server lists each replica's address",
        "  # with its deployment, replica and team in this file.",
        "  - job_name: dcsched-serving",
        "    file_sd_configs:",
        f"      - files: [{_q(settings.dcsched_home.rstrip('/') + '/prometheus/serving.json')}]",
        "        refresh_interval: 15s",
        "    metric_relabel_configs:",
        "      # The replicas label their series with the same deployment and replica as",
        "      # the file does; drop the copies Prometheus would keep as exported_*.",
        "      - regex: exported_(deployment|replica)",
        "        action: labeldrop",
        "",
        "  # Ray's own metrics agents (one per Ray node), from the file the Ray head writes.",
        "  - job_name: ray",
        "    file_sd_configs:",
        f"      - files: [{_q(settings.ray_sd_file)}]",
        "        refresh_interval: 30s",
        "",
    ]
    return "\n".join(out)


def _from_install(home: Path) -> dict[str, str]:
    """Server URL and Ray temp dir of this DCSCHED_HOME, where its files say."""
    found: dict[str, str] = {}
    for name, key, target in (
        ("server.json", "url", "server_url"),
        ("ray/head.json", "temp_dir", "ray_temp_dir"),
    ):
        try:
            value = json.loads((home / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, str) and value:
            found[target] = value
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write prometheus.yml for a dcsched install (see deploy/README.md)."
    )
    parser.add_argument("--dcsched-home", help="default: $DCSCHED_HOME or ~/.dcsched")
    parser.add_argument(
        "--server-url", help="dcsched server, as Prometheus reaches it (default: server.json)"
    )
    parser.add_argument(
        "--ray-temp-dir", help="Ray's --temp-dir on the head node (default: head.json, /tmp/ray)"
    )
    parser.add_argument(
        "--rules-dir",
        default=str(HERE / "rules"),
        help="folder of recording.yml and alerts.yml (default: this script's rules/)",
    )
    parser.add_argument(
        "--token-file",
        help="a metrics-only API token as Prometheus reads it (`dcsched tokens create "
        "prometheus --role metrics`); default $DCSCHED_HOME/token, the admin token, for a "
        "quick local try only",
    )
    parser.add_argument("--exporters-file", help="file_sd file of the node exporters")
    parser.add_argument(
        "--extra-exporters-file",
        action="append",
        default=[],
        help="another file_sd file of node exporters, repeatable",
    )
    parser.add_argument("--scrape-interval", default="15s")
    parser.add_argument("--evaluation-interval")
    parser.add_argument("--alertmanager", action="append", default=[], help="host:port, repeatable")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)

    home = Path(
        args.dcsched_home or os.environ.get("DCSCHED_HOME") or Path.home() / ".dcsched"
    ).expanduser()
    found = _from_install(home)
    settings = Settings(
        dcsched_home=str(home),
        server_url=args.server_url or found.get("server_url", Settings.server_url),
        ray_temp_dir=args.ray_temp_dir or found.get("ray_temp_dir", Settings.ray_temp_dir),
        rules_dir=args.rules_dir,
        token_path=args.token_file,
        exporters_file=args.exporters_file,
        extra_exporter_files=tuple(args.extra_exporters_file),
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        alertmanagers=tuple(args.alertmanager),
    )
    try:
        text = render(settings)
    except ValueError as exc:
        parser.error(str(exc))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
