"""The serving series: what a replica's /metrics and the server's deployment collector
expose is what docs/metrics.md documents (names, types, label names), promtool accepts
it, and a replica's state is derived from its job state and balancer slot."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dcsched.serving.metrics import (
    REPLICA_STATES,
    DeploymentCollector,
    ReplicaMetrics,
    replica_state,
)
from tests.deploy_files import METRICS_DOC


def documented(section: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) of the table under the heading ``## {section}``."""
    text = METRICS_DOC.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    series = {}
    for line in body.splitlines():
        match = re.match(r"\|\s*`(dcsched_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if match:
            labels = re.sub(r"\([^)]*\)", "", match.group(3))
            names = frozenset(part.strip() for part in labels.split(",") if part.strip())
            series[match.group(1)] = (match.group(2), names)
    return series


def exposed(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """family name -> (type, label-name sets of its samples, ``le`` left out);
    prometheus_client's ``*_created`` timestamps left out."""
    seen: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        _kind, label_sets = seen.setdefault(name, (family.type, set()))
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            label_sets.add(frozenset(sample.labels) - {"le"})
    return seen


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (Debian package `prometheus`; see Makefile)"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_replicas_series_are_the_documented_ones() -> None:
    metrics = ReplicaMetrics("svc", "job-1", "mlp-bc", 3)
    metrics.observe(200, 0.002)
    metrics.observe(503, 0.010)
    text = metrics.render().decode()
    promtool_check(text)
    table = documented("Serving replicas")
    assert set(table) == {
        "dcsched_serve_requests_total",
        "dcsched_serve_request_duration_seconds",
        "dcsched_serve_requests_in_flight",
        "dcsched_serve_model_info",
    }
    seen = exposed(text)
    assert set(seen) == set(table), "served and documented series differ"
    for name, (kind, labels) in table.items():
        assert seen[name] == (kind, {labels}), name
    info = 'dcsched_serve_model_info{deployment="svc",model="mlp-bc",replica="job-1",version="3"}'
    assert f"{info} 1.0" in text


def test_the_error_codes_exist_at_zero_before_any_request() -> None:
    """So that a 5xx ratio is 0, not empty, while nothing failed (the dashboards' and
    DcschedServeErrors' numerator)."""
    text = ReplicaMetrics("svc", "job-1", "m", 1).render().decode()
    codes = {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dcsched_serve_requests_total"
    }
    assert codes == dict.fromkeys(("200", "400", "404", "413", "422", "500"), 0.0)


@pytest.mark.parametrize(
    ("job_state", "balancer", "expected"),
    [
        ("PENDING", None, "pending"),
        ("ADMITTED", None, "starting"),
        ("RUNNING", None, "starting"),
        ("RUNNING", "DOWN", "starting"),
        ("RUNNING", "MAINT", "starting"),
        ("RUNNING", "UP", "ready"),
        ("RUNNING", "UP 1/2", "ready"),
        ("RUNNING", "DRAIN", "draining"),
    ],
)
def test_a_replicas_state(job_state: str, balancer: str | None, expected: str) -> None:
    assert replica_state(job_state, balancer) == expected
    assert expected in REPLICA_STATES


def test_the_servers_deployment_series_are_the_documented_ones() -> None:
    counts = [
        {"deployment": "bc", "team": "research", "wanted": 3,
         "replicas": {"ready": 2, "pending": 1}},
        {"deployment": "lm", "team": "vision", "wanted": 1, "replicas": {"draining": 1}},
    ]  # fmt: skip
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(lambda: counts))
    text = generate_latest(registry).decode()
    promtool_check(text)
    server_table = documented("Server")
    seen = exposed(text)
    assert set(seen) == {"dcsched_serve_replicas", "dcsched_serve_replicas_wanted"}
    for name in seen:
        kind, labels = server_table[name]
        assert seen[name] == (kind, {labels}), name
    values = {
        (s.labels["deployment"], s.labels["state"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dcsched_serve_replicas"
    }
    # every state of every deployment, the absent ones at 0
    assert values == {
        ("bc", "pending"): 1, ("bc", "starting"): 0, ("bc", "ready"): 2, ("bc", "draining"): 0,
        ("lm", "pending"): 0, ("lm", "starting"): 0, ("lm", "ready"): 0, ("lm", "draining"): 1,
    }  # fmt: skip
    assert 'dcsched_serve_replicas_wanted{deployment="bc",team="research"} 3.0' in text
