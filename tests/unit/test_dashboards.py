"""The Grafana dashboards and provisioning of deploy/grafana, checked without Grafana:
the JSON is what generate.py writes, panels are well formed, every query names series
that exist (docs/metrics.md, the recording rules, Ray's or Prometheus' own) and only
variables that the dashboard defines. tests/e2e/test_dashboards_live.py runs the queries
against a real Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy_files import (
    DASHBOARDS_DIR,
    GRAFANA_BUILTINS,
    GRAFANA_DIR,
    PROMETHEUS_SERIES,
    alert_rules,
    contract_metrics,
    dashboards,
    exposed_names,
    load_script,
    metric_names,
    panel_queries,
    recording_rules,
    variables_in,
)

generate = load_script(GRAFANA_DIR / "generate.py")
BOARDS = dashboards()
DS = {"type": "prometheus", "uid": "${datasource}"}
# The panels of NVIDIA's DCGM exporter dashboard (grafana.com 12239).
DCGM_PANELS = {
    "GPU Temperature",
    "GPU Avg. Temp",
    "GPU Power Usage",
    "GPU Power Total",
    "GPU SM Clocks",
    "GPU Utilization",
    "Tensor Core Utilization",
    "GPU Framebuffer Mem Used",
}


def test_the_committed_json_is_what_generate_writes() -> None:
    written = generate.files()
    on_disk = {path.name: path.read_text() for path in DASHBOARDS_DIR.glob("*.json")}
    regenerate = "run .venv/bin/python deploy/grafana/generate.py"
    assert set(on_disk) == set(written), regenerate
    for name, text in written.items():
        assert on_disk[name] == text, f"{name} is stale: {regenerate}"


def test_the_documented_way_to_add_a_panel_builds_one() -> None:
    """deploy/README.md's example entry of a dashboard's table of panels (also in
    generate.py's docstring) runs as written and makes the panel it says."""
    readme = (GRAFANA_DIR.parent / "README.md").read_text()
    example = re.search(r"```python\n(.*?)\n```", readme, re.S)
    assert example, "deploy/README.md shows no table entry"
    entry = example.group(1).strip()
    assert entry in (GRAFANA_DIR / "generate.py").read_text()
    table = eval("{" + entry + "}", vars(generate))
    board = generate.laid_out(generate.dashboard("uid", "title", "description"), table)
    [panel] = board.panels
    assert (panel.title, panel.type_val, panel.id_val) == ("Queue length", "timeseries", 1)
    assert panel.description == "PENDING jobs."
    assert [(t.expr, t.legend_format) for t in panel.targets] == [
        ("sum(dcsched_queue_length)", "all")
    ]


def test_the_six_dashboards_exist() -> None:
    assert set(BOARDS) == {
        "dcsched-overview",
        "dcsched-gpus",
        "dcsched-jobs",
        "dcsched-teams",
        "dcsched-job",
        "dcsched-serving",
    }
    assert len({board["title"] for board in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_panels_are_well_formed(uid: str) -> None:
    board = BOARDS[uid]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {uid}"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["title"]
        if panel["type"] == "text":
            assert panel["options"]["content"], panel["title"]
            continue
        assert panel["datasource"] == DS, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip(), f"{panel['title']} {target['refId']} has no expr"
            assert target["datasource"] == DS, panel["title"]


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_queries_name_only_series_that_exist(uid: str) -> None:
    known = exposed_names(contract_metrics()) | recording_rules() | PROMETHEUS_SERIES
    unknown = []
    for title, ref, expr in panel_queries(BOARDS[uid]):
        names = metric_names(expr)
        assert names, f"{title} {ref}: no metric found in {expr!r}"
        for name in names - known:
            if not name.startswith("ray_"):  # Ray's own metrics (the `ray` scrape job)
                unknown.append(f"{title} {ref}: {name}")
    assert not unknown, "not in docs/metrics.md nor a recording rule:\n" + "\n".join(unknown)


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_variables_are_defined_and_use_the_datasource_variable(uid: str) -> None:
    board = BOARDS[uid]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert source["current"]["value"] == generate.DATASOURCE_UID
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DS, variable["name"]
            assert variable["query"]["query"].startswith("label_values("), variable["name"]
            assert variables_in(variable["query"]["query"]) <= set(variables)
    used = set()
    for title, ref, expr in panel_queries(board):
        missing = variables_in(expr) - set(variables) - set(GRAFANA_BUILTINS)
        assert not missing, f"{title} {ref} uses undefined {missing}"
        used |= variables_in(expr)
    unused = set(variables) - used - {"datasource"}
    assert not unused, f"variables no query uses: {unused}"


def test_the_gpu_dashboard_has_the_panels_of_the_dcgm_dashboard() -> None:
    panels = {p["title"]: p for p in BOARDS["dcsched-gpus"]["panels"]}
    assert set(panels) >= DCGM_PANELS
    tensor = panels["Tensor Core Utilization"]
    assert tensor["type"] == "text" and tensor["description"].startswith("No equivalent")
    for title in DCGM_PANELS - {"Tensor Core Utilization", "GPU Avg. Temp", "GPU Power Total"}:
        assert "DCGM_" in panels[title]["description"], f"{title} does not name its DCGM field"


def test_the_job_dashboard_is_templated_by_job_id() -> None:
    board = BOARDS["dcsched-job"]
    job = next(v for v in board["templating"]["list"] if v["name"] == "job")
    assert job["multi"] is False and "job_id" in job["query"]["query"]
    for title, ref, expr in panel_queries(board):
        assert 'job_id="$job"' in expr, f"{title} {ref} is not about the selected job"


def test_the_serving_dashboard_is_about_the_selected_deployments() -> None:
    board = BOARDS["dcsched-serving"]
    deployment = next(v for v in board["templating"]["list"] if v["name"] == "deployment")
    assert deployment["multi"] is True and "deployment)" in deployment["query"]["query"]
    for title, ref, expr in panel_queries(board):
        # every selector of the expression, not just one of them
        for selector in re.findall(r"\b(\w+)\{([^}]*)\}", expr):
            assert 'deployment=~"$deployment"' in selector[1], f"{title} {ref}: {selector}"
        assert "{" in expr, f"{title} {ref} selects nothing"
    titles = {panel["title"] for panel in board["panels"]}
    assert {
        "Request rate by code",
        "Error ratio",
        "Latency p50, p99",
        "In flight per replica",
        "Replicas by state",
        "Model version served",
    } <= titles


def test_the_serving_thresholds_are_those_of_the_serving_alerts() -> None:
    """The red line of the error panels is DcschedServeErrors' ratio, the orange one of
    the latency panels DcschedServeSlow's p99."""
    alerts = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    errors = float(alerts["DcschedServeErrors"].rsplit(">", 1)[1])
    slow = float(alerts["DcschedServeSlow"].rsplit(">", 1)[1])
    panels = {p["title"]: p for p in BOARDS["dcsched-serving"]["panels"]}

    def marks(title: str) -> list[float]:
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [step["value"] for step in steps if step["value"] is not None]

    assert marks("Error ratio") == marks("5xx ratio") == [errors]
    assert marks("Latency p50, p99") == marks("p99 latency") == [slow]


def test_the_jobs_dashboard_shows_batch_inference_progress() -> None:
    queries = {title: expr for title, _, expr in panel_queries(BOARDS["dcsched-jobs"])}
    assert "dcsched_job_inference_rows_done" in queries["Inference progress"]
    assert "dcsched_job_inference_rows{" in queries["Inference progress"]
    assert "dcsched_job_inference_rows_per_second" in queries["Inference throughput"]


def test_job_links_lead_to_the_job_dashboard() -> None:
    links = [
        link["url"]
        for board in BOARDS.values()
        for panel in board["panels"]
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert links
    for url in links:
        assert url.startswith("/d/dcsched-job/") and "var-job=${__data.fields.job_id}" in url


def test_every_recording_rule_is_used() -> None:
    text = " ".join(expr for board in BOARDS.values() for _, _, expr in panel_queries(board))
    text += " ".join(rule["expr"] for rule in alert_rules())
    unused = sorted(name for name in recording_rules() if name not in text)
    assert not unused, f"recording rules no dashboard or alert uses: {unused}"


def _provisioning(kind: str, name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((GRAFANA_DIR / "provisioning" / kind / name).read_text()))


def test_provisioning_matches_the_dashboards() -> None:
    datasource = _provisioning("datasources", "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == generate.DATASOURCE_UID
    assert datasource["name"] == "Prometheus"  # what Ray's generated dashboards expect
    assert datasource["url"] == "${DCSCHED_PROMETHEUS_URL}"
    provider = _provisioning("dashboards", "dcsched.yml")["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${DCSCHED_DASHBOARDS_DIR}"


def test_dashboards_are_plain_json_with_unique_uids() -> None:
    uids = []
    for path in DASHBOARDS_DIR.glob("*.json"):
        board = json.loads(path.read_text())
        assert path.name == f"{board['uid']}.json"
        uids.append(board["uid"])
    assert len(uids) == len(set(uids))
