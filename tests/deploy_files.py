"""What the tests of deploy/ share: the files, the two stdlib scripts loaded as modules,
promtool and prometheus from PATH, the metric names of docs/metrics.md, and a small
reader of the metric names and variables in a PromQL expression."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES = (RULES_DIR / "recording.yml", RULES_DIR / "alerts.yml")
RULE_TESTS = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Grafana's own variables, and what the tests put in their place.
GRAFANA_BUILTINS = {"__rate_interval": "30s", "__range": "1h", "__interval": "15s"}
# Series that Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}


def load_script(path: Path) -> ModuleType:
    """Import one of the stdlib scripts of deploy/ (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def binary(name: str) -> str:
    """A Prometheus binary from PATH, or a failure that says how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: install the Debian package `prometheus` "
            "(apt-get install prometheus; `make test` does it when it is missing)"
        )
    return path


def contract_metrics() -> dict[str, str]:
    """Metric name -> type, from the tables of docs/metrics.md."""
    names = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`(dcsched_\w+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            names[match.group(1)] = match.group(2)
    return names


def exposed_names(contract: dict[str, str]) -> set[str]:
    """Names a query may use for the contract's series (histograms have three)."""
    names = set()
    for name, kind in contract.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def rule_groups(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["groups"])


def recording_rules() -> set[str]:
    return {
        rule["record"]
        for group in rule_groups(RULES_DIR / "recording.yml")
        for rule in group["rules"]
    }


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups(RULES_DIR / "alerts.yml") for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    """uid -> dashboard, from the committed JSON files."""
    boards = {}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        boards[board["uid"]] = board
    return boards


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of a dashboard."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "Inf", "NaN",
             # aggregations, which may be followed by `by (...)` rather than `(`
             "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk",
             "bottomk", "quantile", "count_values"}  # fmt: skip


def variables_in(expr: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of ``$name`` and ``${name}`` (a missing name is an error)."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    keywords, label names or durations."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = _LABEL_LIST.sub(r"\1", text)  # by (...), on (...), group_left (...)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group(0)
        if token in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation
        names.add(token)
    return names
