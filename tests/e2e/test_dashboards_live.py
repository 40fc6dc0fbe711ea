"""Every panel query of every dashboard, run against a real Prometheus.

A real Prometheus (the Debian package's binary, its own port and storage dir) runs our
rendered prometheus.yml and rules with a 1 s scrape interval. It scrapes the real dcsched
server (token from its file) and the real node exporter that the server runs on the Ray
node, found through the file_sd file the server writes ($DCSCHED_HOME/prometheus/
exporters.json), and Ray's own metrics agent through Ray's service-discovery file. Jobs
go through the server so that every kind of series exists: one that finishes, one that
is preempted and waits, one that runs and reports progress, a tuning study, a batch
inference job and a serving deployment.

The serving deployment (one replica of a model trained here, behind its HAProxy) gets a
light steady load for the whole module; Prometheus scrapes its replica as the
``dcsched-serving`` job through the file_sd file the server writes
($DCSCHED_HOME/prometheus/serving.json), as in production. The batch inference job
(``kind: infer``, one row per batch over 300,000 rows) is paused with SIGSTOP once it has
reported progress, so that it is still RUNNING with its progress series when the queries
run, without burning a CPU for the rest of the module; it is resumed before it is
cancelled.

This machine has no NVIDIA GPU, so the real exporter has no GPU series. To run the GPU
queries on data all the same, a second exporter process serves the same collector with
the project's NVML stand-in (dcsched.exporters.nvml_fake: 2 GPUs, and a process of the
running job on GPU 0), listed in an extra file_sd file under the node name
``nvml-stand-in``. Its attribution of that process to the job is the real code path.

The running job holds the session head's one logical GPU, so the queries of allocated
GPUs have data too.

Then every panel's PromQL is sent to /api/v1/query, with the template variables put in
(``$job`` is the running job, multi-value variables are All, ``$__rate_interval`` 30s,
``$__range`` 1h): each must succeed and return at least one finite value. Prometheus and
the helper processes are stopped by PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.conftest import EXAMPLES, Server, await_condition, free_port
from tests.deploy_files import (
    GRAFANA_BUILTINS,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULES_DIR,
    binary,
    dashboards,
    load_script,
    panel_queries,
    rule_groups,
    substitute,
)

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

render = load_script(PROMETHEUS_DIR / "render.py")


CONFIG = """
queueing: {policy: priority, preemption: true}
priority_classes:
  - {name: low, value: 0, preemptible: true}
  - {name: normal, value: 100, preemptible: true}
  - {name: high, value: 1000, preemptible: false}
teams:
  - {name: research, cohort: ml, weight: 2, quota: {cpus: 8, gpus: 2, memory: 16GiB}}
  - {name: vision, cohort: ml, weight: 1, quota: {cpus: 4, gpus: 1, memory: 8GiB}}
"""
BASE = (EXAMPLES / "train-mlp.yaml").read_text()
STAND_IN_NODE = "nvml-stand-in"
# The node exporter's collector on the NVML stand-in: 2 GPUs, the given pid on GPU 0.
STAND_IN = """
import sys, threading
from dcsched.exporters.node import NodeExporter, serve
from dcsched.exporters.nvml_fake import FakeNvml
node, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
serve("127.0.0.1", port, NodeExporter(node, FakeNvml.with_gpus(2, [pid], sm_percent=40.0)))
threading.Event().wait()
"""


# -- the pieces ---------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        try:
            data = self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400: the expression is wrong
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(expr):
                return True
            time.sleep(1)
        return False


def start_prometheus(config: Path, data: Path, log: Path) -> Prometheus:
    port = free_port()
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("prometheus exited: " + log.read_text())
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2):
                return Prometheus(url, process, log)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("prometheus did not become ready: " + log.read_text())


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stand_in_exporter(
    sd_file: Path, job_id: str, team: str, tmp: Path
) -> list[subprocess.Popen[bytes]]:
    """A process of the job (by its environment, as dcsched's Ray jobs carry it) and an
    exporter on the NVML stand-in that puts it on GPU 0, listed in ``sd_file``."""
    env = {**os.environ, "DCSCHED_JOB_ID": job_id, "DCSCHED_TEAM": team}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], env=env)
    port = free_port()
    log = (tmp / "stand-in.log").open("ab")
    exporter = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, STAND_IN_NODE, str(port), str(sleeper.pid)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"node": STAND_IN_NODE}}]
    (tmp / "stand-in.tmp").write_text(json.dumps(targets))
    os.replace(tmp / "stand-in.tmp", sd_file)
    return [exporter, sleeper]


def spec(
    tmp_path: Path, name: str, team: str, priority: str, cpus: int, epochs: int, gpus: int = 0
) -> Path:
    text = (
        BASE.replace("name: mlp-breast-cancer", f"name: {name}")
        .replace("gpus: 0", f"gpus: {gpus}")
        .replace("team: research", f"team: {team}")
        .replace("priority: normal", f"priority: {priority}")
        .replace("cpus: 1", f"cpus: {cpus}")
        .replace("memory: 1GiB", "memory: 64MiB")
        .replace("epochs: 30", f"epochs: {epochs}")
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def tune_spec(tmp_path: Path) -> Path:
    text = (EXAMPLES / "tune-mlp.yaml").read_text()
    text = (
        text.replace("team: research", "team: vision")
        .replace("memory: 512MiB", "memory: 64MiB")
        # Trials of a few seconds each: warm trials of 2 epochs took 0.3 s, and the
        # study ran all its trials in the CPUs the victim left before the jobs below
        # filled them, so no tuning series was left to query.
        .replace("epochs: 8", "epochs: 200")
        .replace("trials: 6", "trials: 50")
        .replace("parallel: 2", "parallel: 1")
        .replace("pruner: asha", "pruner: none")
        # As low as the victim below, which was queued first: the study's next trial
        # never jumps ahead of it.
        .replace("priority: normal", "priority: low")
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def epoch(job: dict) -> int:
    return int((job.get("progress") or {}).get("epoch") or 0)


# -- serving and batch inference ------------------------------------------------------------

DEPLOYMENT = "dash"
MODEL = "short"  # registered by the first train job below
INFER_ROWS = 300_000


class Trickle:
    """One keep-alive client that posts a prediction every 50 ms until stopped, counting
    the answers by status (a failed connection counts as 0)."""

    def __init__(self, url: str):
        self.url = urllib.parse.urlsplit(url)
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        body = json.dumps({"features": [0.5] * 30}).encode()
        conn: http.client.HTTPConnection | None = None
        while not self._stop.wait(0.05):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
                conn.request("POST", "/predict", body=body)
                response = conn.getresponse()
                response.read()
                code = response.status
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn, code = None, 0
            self.codes[code] = self.codes.get(code, 0) + 1
        if conn is not None:
            conn.close()


def serve_deployment(server: Server) -> dict[str, Any]:
    """One replica of MODEL:1 for team vision; its status once the balancer has it up."""
    created = server.cli(
        "serve", f"{MODEL}:1", "--name", DEPLOYMENT, "--team", "vision", "--replicas", "1",
        "--cpus", "0.5", "--memory", "256MiB",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr

    def up() -> dict[str, Any] | None:
        view: dict[str, Any] = server.cli_json("serve", "status", DEPLOYMENT)  # type: ignore[assignment]
        members = view["members"]
        if len(members) == 1 and str(members[0]["balancer"]).startswith("UP"):
            return view
        return None

    return dict(await_condition("the deployment's replica to be up", up, timeout=240))


def infer_spec(tmp: Path) -> Path:
    """A ``kind: infer`` job over INFER_ROWS rows of zeros (a parquet file of a few KB) with
    MODEL:1, one row per batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    names = [str(n) for n in load_breast_cancer().feature_names]
    zeros = pa.array(np.zeros(INFER_ROWS))
    pq.write_table(pa.table({name: zeros for name in names}), tmp / "rows.parquet")
    document = {
        "name": "score",
        "kind": "infer",
        "team": "research",
        "priority": "normal",
        "resources": {"workers": 1, "cpus": 1, "memory": "512MiB"},
        "infer": {
            "model": f"{MODEL}:1",
            "input": "rows.parquet",
            "output": "scores.parquet",
            "batch_size": 1,
        },
    }
    path = tmp / "score.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def pause_mid_run(server: Server, job_id: str) -> psutil.Process:
    """SIGSTOP the infer job's process once its progress has rows done and rows in all,
    and not all of them done; the process, to resume it."""
    progress = server.home / "runs" / job_id / "progress.jsonl"

    def mid_run() -> dict[str, Any] | None:
        try:
            lines = progress.read_text().splitlines()
        except OSError:
            return None
        last = json.loads(lines[-1]) if lines and lines[-1].strip() else {}
        total, done = last.get("rows_total"), last.get("rows_done") or 0
        return last if total and 0 < done < total else None

    def runs_module(command: list[str], module: str) -> bool:
        # The driver itself, not the tee that starts it (``python -m dcsched.runs.tee LOG --
        # python -m dcsched.inference.batch ...`` names the module too): stopping the tee
        # would leave the driver running until the pipe fills.
        return "-m" in command and command[command.index("-m") + 1 :][:1] == [module]

    await_condition("the infer job to report progress", mid_run, timeout=240, interval=0.1)
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if runs_module(command, "dcsched.inference.batch") and any(
            job_id in arg for arg in command
        ):
            process.send_signal(signal.SIGSTOP)
            await_condition(
                "the infer job's driver to stop",
                lambda stopping=process: stopping.status() == psutil.STATUS_STOPPED,
                timeout=10,
                interval=0.05,
            )
            last = mid_run()
            assert last is not None, "the infer job finished before it could be paused"
            return process
    raise AssertionError(f"no process of infer job {job_id}")


@dataclass
class Live:
    prometheus: Prometheus
    server: Server
    running_job: str
    node: str
    infer_job: str
    replica: str
    trickle: Trickle


@pytest.fixture(scope="module")
def live(server: Server, ray_head: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("prometheus")
    stand_in_sd = tmp / "stand-in.json"
    stand_in_sd.write_text("[]")
    settings = render.Settings(
        dcsched_home=str(server.home),
        server_url=server.url,
        ray_temp_dir=ray_head.temp_dir,
        rules_dir=str(RULES_DIR),
        extra_exporter_files=(str(stand_in_sd),),
        scrape_interval="1s",
    )
    config = tmp / "prometheus.yml"
    config.write_text(render.render(settings))
    checked = subprocess.run(
        [binary("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (tmp / "dcsched.yaml").write_text(CONFIG)
    applied = server.cli("config", "apply", str(tmp / "dcsched.yaml"))
    assert applied.returncode == 0, applied.stderr

    prometheus = start_prometheus(config, tmp / "data", tmp / "prometheus.log")
    helpers: list[subprocess.Popen[bytes]] = []
    paused: list[psutil.Process] = []
    trickles: list[Trickle] = []
    try:
        # The server's exporter on the Ray node, through the server's file_sd file.
        assert prometheus.wait_for('up{job="dcsched-server"} == 1', 60), prometheus.get(
            "/api/v1/targets"
        )
        assert prometheus.wait_for('up{job="dcsched-node"} == 1', 120), prometheus.get(
            "/api/v1/targets"
        )
        # Jobs that end, one preempted (it waits in the queue), one that runs.
        # Two that end: a histogram's increase() counts from a series' second sample, so
        # the run-time quantiles need an observation after the first.
        for name in ("short", "short-again"):
            short = server.cli("submit", str(spec(tmp, name, "vision", "normal", 1, 2)))
            done = server.cli("wait", short.stdout.strip(), "--timeout", "240")
            assert done.returncode == 0, done.stdout + done.stderr
        # A tuning study, one trial at a time, still running at the end (its next trial
        # waits behind the jobs below) with one trial done: the tuning series exist.
        study = server.cli("submit", str(tune_spec(tmp))).stdout.strip()
        server.wait_for_job(
            study, lambda j: (j.get("tuning") or {}).get("done", 0) >= 1, timeout=300
        )
        victim = server.cli(
            "submit", str(spec(tmp, "victim", "research", "low", 6, 100000))
        ).stdout.strip()
        server.wait_for_job(
            victim, lambda j: j["state"] == "RUNNING" and epoch(j) >= 1, timeout=240
        )
        urgent = server.cli(
            "submit", str(spec(tmp, "urgent", "research", "high", 6, 100000, gpus=1))
        ).stdout.strip()
        server.wait_for_job(
            urgent, lambda j: j["state"] == "RUNNING" and epoch(j) >= 1, timeout=240
        )
        assert server.cli_json("status", victim)["state"] == "PENDING"  # type: ignore[index]

        # In the 2 CPUs urgent leaves (normal priority: ahead of the waiting victim), a
        # serving deployment under load and a batch inference job, paused mid-run.
        submitted = server.cli("submit", str(infer_spec(tmp)))
        assert submitted.returncode == 0, submitted.stderr
        infer_job = submitted.stdout.strip()
        view = serve_deployment(server)
        trickles.append(Trickle(view["url"]))
        trickles[0].start()
        paused.append(pause_mid_run(server, infer_job))

        helpers += stand_in_exporter(stand_in_sd, urgent, "research", tmp)
        assert prometheus.wait_for(f'dcsched_gpu_collector_up{{node="{STAND_IN_NODE}"}} == 1', 60)

        node = server.cli_json("nodes")[0]["id"]  # type: ignore[index]
        for expr in (
            f'dcsched_job_training_epoch{{job_id="{urgent}"}}',
            "dcsched_preemptions_total",
            f'dcsched_job_cpu_seconds_total{{job_id="{urgent}"}}',
            f'dcsched_job_inference_rows{{job_id="{infer_job}"}}',
            f'dcsched_serve_replicas{{deployment="{DEPLOYMENT}", state="ready"}} == 1',
            f'dcsched_serve_requests_total{{deployment="{DEPLOYMENT}", code="200"}} > 0',
        ):
            prometheus.wait_for(expr, 60)  # what is still missing shows below
        time.sleep(5)  # a few more samples for the rate() windows
        yield Live(
            prometheus, server, urgent, node, infer_job, view["members"][0]["job"], trickles[0]
        )
    finally:
        stop(prometheus.process)
        for trickle in trickles:
            trickle.stop()
        for helper in helpers:
            stop(helper)
        for process in paused:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
        server.cli("serve", "stop", DEPLOYMENT)  # its HAProxy would outlive the server
        server.cancel_live_jobs()


# -- the checks ---------------------------------------------------------------------------


def test_every_panel_query_returns_data(live: Live) -> None:
    prometheus = live.prometheus
    values = {
        **GRAFANA_BUILTINS,
        **{"node": ".*", "gpu": ".*", "team": ".*", "deployment": ".*"},
        "job": live.running_job,
    }
    missing, errors = [], []
    ran = 0
    for uid, board in dashboards().items():
        for title, ref, expr in panel_queries(board):
            key = f"{uid}/{title}/{ref}"
            concrete = substitute(expr, values)
            try:
                result = prometheus.query(concrete)
            except AssertionError as exc:
                errors.append(f"{key}: {exc}")
                continue
            ran += 1
            if not any(math.isfinite(float(sample["value"][1])) for sample in result):
                missing.append(f"{key}: {concrete} -> {result[:3]}")
    assert not errors, "queries Prometheus refused:\n" + "\n".join(errors)
    assert not missing, "queries without a finite value:\n" + "\n".join(missing)
    assert ran == sum(len(panel_queries(b)) for b in dashboards().values())


def test_every_template_variable_has_values(live: Live) -> None:
    prometheus = live.prometheus
    empty = []
    for uid, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]["query"]
            selector = substitute(match.group(1), {"node": ".*", "gpu": ".*", "team": ".*"})
            found = prometheus.get(
                f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector}
            )
            if variable["name"] == "job":
                assert live.running_job in found, found
            if not found:
                empty.append(f"{uid}/{variable['name']}")
    assert not empty, f"variables without values: {empty}"


def test_rules_evaluate_without_errors(live: Live) -> None:
    groups = live.prometheus.get("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for path in RULE_FILES for g in rule_groups(path))
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, broken
    # One thing is wrong here, on purpose: the session's Ray node claims a (logical) GPU
    # that its exporter cannot read (no NVML on this machine), which is what
    # DcschedGPUCollectorDown is for; it is pending (its `for:` is 10 minutes) for that
    # node only. Nothing else fires or is about to ("pending": the condition holds but
    # its `for:` has not passed).
    raised = ("firing", "pending")
    alerting = {r["name"] for r in rules if r.get("state") in raised}
    assert alerting == {"DcschedGPUCollectorDown"}, alerting
    collector = live.prometheus.query('ALERTS{alertname="DcschedGPUCollectorDown"}')
    assert {a["metric"]["node"] for a in collector} == {live.node}, collector
    evaluated = [r["name"] for r in rules if r.get("type") == "alerting" and r.get("state")]
    assert evaluated, "no alert rule was evaluated"


def test_labels_join_server_and_exporter_on_node_and_job_id(live: Live) -> None:
    prometheus = live.prometheus
    job = live.running_job
    server_side = prometheus.query(
        f'dcsched_job_allocated_cpus{{job="dcsched-server", job_id="{job}", team="research"}}'
    )
    assert server_side and float(server_side[0]["value"][1]) == 6
    measured = prometheus.query(
        f'dcsched_job_cpu_seconds_total{{job="dcsched-node", job_id="{job}", node="{live.node}"}}'
    )
    assert measured, "the exporter does not attribute the running job's processes"
    # the join of the running-jobs table: measured CPU over allocated, per job
    joined = prometheus.query(
        f'sum by (job_id, team) (rate(dcsched_job_cpu_seconds_total{{job_id="{job}"}}[30s])) '
        "/ on (job_id, team) max by (job_id, team) (dcsched_job_allocated_cpus)"
    )
    assert joined and joined[0]["metric"] == {"job_id": job, "team": "research"}
    capacity = prometheus.query(f'dcsched_cluster_node_capacity{{node="{live.node}"}}')
    exporter = prometheus.query(f'dcsched_node_cpus{{job="dcsched-node", node="{live.node}"}}')
    assert capacity and exporter  # both sides carry the Ray node id
    assert not prometheus.query('{exported_node=~".+"}')
    assert not prometheus.query('{exported_job=~".+"}')


def test_ray_metrics_are_scraped_through_rays_discovery_file(live: Live) -> None:
    """The session's Ray head writes prom_metrics_service_discovery.json into its temp
    dir; the `ray` job finds its metrics agent there."""
    targets = live.prometheus.get("/api/v1/targets")["activeTargets"]
    ray = [t for t in targets if t["labels"]["job"] == "ray"]
    assert ray, "no target from Ray's service-discovery file"
    assert live.prometheus.wait_for('up{job="ray"} == 1', 30)


def test_serving_series_join_the_deployment_its_replica_job_and_the_server(live: Live) -> None:
    """The replica's series carry the deployment, the replica's job id and the team from
    serving.json (no exported_* copies), the model version it serves, and the server's
    count of the deployment's replicas agrees; the load got only 200s."""
    prometheus = live.prometheus
    info = prometheus.query(f'dcsched_serve_model_info{{deployment="{DEPLOYMENT}"}}')
    assert len(info) == 1, info
    labels = info[0]["metric"]
    assert labels["job"] == "dcsched-serving" and labels["replica"] == live.replica
    assert (labels["team"], labels["model"], labels["version"]) == ("vision", MODEL, "1")
    assert not prometheus.query('{exported_deployment=~".+"}')
    assert not prometheus.query('{exported_replica=~".+"}')
    ready = prometheus.query(f'dcsched_serve_replicas{{deployment="{DEPLOYMENT}", state="ready"}}')
    wanted = prometheus.query(f'dcsched_serve_replicas_wanted{{deployment="{DEPLOYMENT}"}}')
    assert [r["metric"]["job"] for r in ready] == ["dcsched-server"]
    assert float(ready[0]["value"][1]) == float(wanted[0]["value"][1]) == 1
    answered = prometheus.query(
        f'sum(dcsched_serve_requests_total{{deployment="{DEPLOYMENT}", code="200"}})'
    )
    assert answered and float(answered[0]["value"][1]) > 0
    assert set(live.trickle.codes) == {200}, live.trickle.codes


def test_the_paused_infer_jobs_progress_is_what_it_reported(live: Live) -> None:
    job = live.server.cli_json("status", live.infer_job)
    assert isinstance(job, dict) and job["state"] == "RUNNING", job
    progress = job["progress"]
    assert 0 < progress["rows_done"] < progress["rows_total"] == INFER_ROWS
    for series, value in (
        ("dcsched_job_inference_rows_done", progress["rows_done"]),
        ("dcsched_job_inference_rows", INFER_ROWS),
        ("dcsched_job_inference_rows_per_second", progress["rows_per_s"]),
    ):
        found = live.prometheus.query(f'{series}{{job_id="{live.infer_job}", team="research"}}')
        assert found and float(found[0]["value"][1]) == value, (series, found)
