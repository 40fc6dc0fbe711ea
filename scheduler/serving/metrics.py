"""A replica's own Prometheus metrics (``GET /metrics`` on the replica).

Series (base units, bounded labels: one deployment, one replica, a handful of codes):
- ``dcsched_serve_requests_total{deployment, replica, code}``
- ``dcsched_serve_request_duration_seconds{deployment, replica}`` (histogram, from the
  request's last byte to its answer being written)
- ``dcsched_serve_requests_in_flight{deployment, replica}``: requests received and not yet
  answered
- ``dcsched_serve_model_info{deployment, replica, model, version}`` = 1

The registry is the replica's own, never the process-global one. The codes a replica
usually answers (200, 400, 404, 413, 422, and 500 for a model that raised) exist from its
start at 0, so an error ratio is 0 rather than empty while nothing failed.

The server's own view of each deployment (``DeploymentCollector``, on the server's
``/metrics``):
- ``dcsched_serve_replicas{deployment, team, state}``: its live replica jobs by state,
  ``pending`` (waiting for admission), ``starting`` (admitted or running, not passing the
  balancer's health check), ``ready`` (in the balancer, up), ``draining`` (taking no new
  requests, being retired)
- ``dcsched_serve_replicas_wanted{deployment, team}``: the replica count it aims for
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ReplicaMetrics:
    def __init__(
        self,
        deployment: str,
        replica: str,
        model: str,
        version: int,
        registry: CollectorRegistry | None = None,
    ):
        self.registry = registry or CollectorRegistry()
        labels = ("deployment", "replica")
        self._requests = Counter(
            "dcsched_serve_requests",
            "Requests answered by this replica, by HTTP status code.",
            [*labels, "code"],
            registry=self.registry,
        )
        latency = Histogram(
            "dcsched_serve_request_duration_seconds",
            "Time from a request's last byte to its answer.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        in_flight = Gauge(
            "dcsched_serve_requests_in_flight",
            "Requests received and not yet answered.",
            labels,
            registry=self.registry,
        )
        info = Gauge(
            "dcsched_serve_model_info",
            "The model version this replica serves (value 1).",
            [*labels, "model", "version"],
            registry=self.registry,
        )
        self._labels = (deployment, replica)
        info.labels(deployment, replica, model, str(version)).set(1)
        self.latency = latency.labels(*self._labels)
        self.in_flight = in_flight.labels(*self._labels)
        self._by_code: dict[int, Any] = {}
        for code in (200, 400, 404, 413, 422, 500):  # present from the start, at 0
            self._code(code)

    def _code(self, code: int) -> Any:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(*self._labels, str(code))
        return child

    def observe(self, code: int, seconds: float) -> None:
        self._code(code).inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


REPLICA_STATES = ("pending", "starting", "ready", "draining")


def replica_state(job_state: str, balancer: str | None) -> str:
    """One of ``REPLICA_STATES`` for a live replica job (its dcsched state) and its
    balancer slot's state (HAProxy's: ``UP``, ``UP 1/2``, ``DOWN``, ...; ``DRAIN`` while
    it is retired; None before it has a slot)."""
    if job_state == "PENDING":
        return "pending"
    if balancer == "DRAIN":
        return "draining"
    if balancer is not None and balancer.startswith("UP"):
        return "ready"
    return "starting"


class DeploymentCollector(Collector):
    """The server's series of every active deployment, read at scrape time from
    ``counts()``: ``[{"deployment", "team", "wanted", "replicas": {state: n}}]``."""

    def __init__(self, counts: Callable[[], list[dict[str, Any]]]):
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        replicas = GaugeMetricFamily(
            "dcsched_serve_replicas",
            "Live replica jobs of a deployment by state (pending, starting, ready, draining)",
            labels=["deployment", "team", "state"],
        )
        wanted = GaugeMetricFamily(
            "dcsched_serve_replicas_wanted",
            "The replica count a deployment aims for",
            labels=["deployment", "team"],
        )
        for entry in self._counts():
            key = [entry["deployment"], entry["team"]]
            wanted.add_metric(key, float(entry["wanted"]))
            for state in REPLICA_STATES:
                replicas.add_metric([*key, state], float(entry["replicas"].get(state, 0)))
        yield replicas
        yield wanted
