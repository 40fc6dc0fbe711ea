#!/usr/bin/env python3
"""Write the Grafana dashboards of dcsched: ``.venv/bin/python deploy/grafana/generate.py``.

The dashboards (``dashboards/*.json``) are generated from the definitions below, so that
every panel uses the same datasource variable, gets a unique id and a place on the grid,
and carries its description; a test checks the committed JSON is what this script
writes. Edit here, run it, commit both.

The panels are built with Grafana's typed builders, ``grafana-foundation-sdk`` (its
Grafana 10.1 build, pinned in the ``test`` extra of pyproject.toml, which ``make install``
puts in .venv; never a runtime dependency). The definitions below say what each panel
shows; ``panel_of`` and ``render`` turn them into the SDK's panels and dashboard, and the
SDK's encoder writes the JSON. Where the SDK's 10.1 schema lacks a field Grafana writes
(a query variable's ``definition``), ``QueryVariableModel`` adds it.

PromQL conventions (see deploy/prometheus/render.py): ``job`` is the scrape job
(dcsched-server, dcsched-node, dcsched-serving, ray), ``job_id`` the dcsched job, ``node``
the Ray node id, ``deployment`` a serving deployment. Series are those of docs/metrics.md
and the recording rules of deploy/prometheus/rules/recording.yml. Every dashboard has a
``datasource`` variable; the provisioned datasource
(provisioning/datasources/prometheus.yml) has the uid ``dcsched-prometheus``, which is the
variable's default.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    gauge,
    prometheus,
    stat,
    table,
    text,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import text as tm

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE_UID = "dcsched-prometheus"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "dcsched"
# Grafana 10's dashboard schema (the SDK's default is 36): what Grafana itself writes.
SCHEMA_VERSION = 39


@dataclass(frozen=True)
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    description: str
    queries: list[Q] = field(default_factory=list)
    kind: str = "timeseries"  # timeseries | stat | gauge | bargauge | table | text
    unit: str = "short"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    thresholds: list[tuple[float | None, str]] | None = None
    stack: bool = False
    content: str = ""  # text panels
    links: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dm.ValueMap] = field(default_factory=list)


@dataclass
class Row:
    title: str


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    items: list[Panel | Row]
    variables: list[cogbuilder.Builder[dm.VariableModel]] = field(default_factory=list)
    time_from: str = "now-6h"


# -- templating -------------------------------------------------------------------------


class Built(cogbuilder.Builder[dm.VariableModel]):
    """A variable model made whole, where the SDK's builder lacks a setter (the
    datasource variable's ``refresh`` and ``options``)."""

    def __init__(self, model: dm.VariableModel):
        self._model = model

    def build(self) -> dm.VariableModel:
        return self._model


def datasource_variable() -> Built:
    return Built(
        dm.VariableModel(
            type_val=dm.VariableType.DATASOURCE,
            name="datasource",
            label="Data source",
            query="prometheus",
            current=dm.VariableOption(selected=False, text="Prometheus", value=DATASOURCE_UID),
            hide=dm.VariableHide.DONT_HIDE,
            refresh=dm.VariableRefresh.ON_DASHBOARD_LOAD,
            regex="",
            options=[],
        )
    )


class QueryVariableModel(dm.VariableModel):
    """The SDK's variable model plus what Grafana writes for a query variable and Grafana
    10.1's schema (the SDK's) lacks: ``definition``, the query as the variable list shows
    it, and an empty ``current`` (Grafana picks the value when the dashboard loads)."""

    def __init__(self, definition: str, **fields: Any):
        super().__init__(**fields)
        self.definition = definition

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "definition": self.definition, "current": {}}


def query_variable(
    name: str, label: str, query: str, multi: bool = True, description: str = ""
) -> Built:
    """A variable from ``label_values(series, label)``; multi-value ones offer All (.*)."""
    return Built(
        QueryVariableModel(
            definition=query,
            type_val=dm.VariableType.QUERY,
            name=name,
            label=label,
            description=description,
            datasource=DS,
            query={"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            refresh=dm.VariableRefresh.ON_TIME_RANGE_CHANGED,
            sort=dm.VariableSort.ALPHABETICAL_ASC,
            multi=multi,
            include_all=multi,
            all_value=".*" if multi else None,
            options=[],
            hide=dm.VariableHide.DONT_HIDE,
            regex="",
        )
    )


# -- rendering --------------------------------------------------------------------------

PanelBuilder = (
    timeseries.Panel | stat.Panel | gauge.Panel | bargauge.Panel | table.Panel | text.Panel
)
REDUCE = cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _builder(panel: Panel) -> PanelBuilder:
    """The typed builder of the panel's kind, with its kind's display options."""
    if panel.kind == "timeseries":
        return (
            timeseries.Panel()
            .legend(
                cb.VizLegendOptions()
                .display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                cb.VizTooltipOptions()
                .mode(cm.TooltipDisplayMode.MULTI)
                .sort(cm.SortOrder.DESCENDING)
            )
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
            .draw_style(cm.GraphDrawStyle.LINE)
            .line_width(1)
            .fill_opacity(10)
            .show_points(cm.VisibilityMode.NEVER)
            .span_nulls(False)
            .stacking(
                cb.StackingConfig()
                .mode(cm.StackingMode.NORMAL if panel.stack else cm.StackingMode.NONE)
                .group("A")
            )
            .thresholds_style(
                cb.GraphThresholdsStyleConfig().mode(
                    cm.GraphTresholdsStyleMode.LINE
                    if panel.thresholds
                    else cm.GraphTresholdsStyleMode.OFF
                )
            )
        )
    if panel.kind == "stat":
        return (
            stat.Panel()
            .reduce_options(REDUCE)
            .color_mode(cm.BigValueColorMode.VALUE)
            .graph_mode(cm.BigValueGraphMode.AREA)
            .text_mode(cm.BigValueTextMode.AUTO)
            .justify_mode(cm.BigValueJustifyMode.AUTO)
            .orientation(cm.VizOrientation.AUTO)
        )
    if panel.kind == "gauge":
        return (
            gauge.Panel()
            .reduce_options(REDUCE)
            .show_threshold_markers(True)
            .orientation(cm.VizOrientation.AUTO)
        )
    if panel.kind == "bargauge":
        return (
            bargauge.Panel()
            .reduce_options(REDUCE)
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .show_unfilled(True)
        )
    if panel.kind == "table":
        return (
            table.Panel()
            .show_header(True)
            .cell_height(cm.TableCellHeight.SM)
            .footer(cb.TableFooterOptions().show(False))
            .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(
                dm.DataTransformerConfig(
                    id_val="organize", options={"excludeByName": {"Time": True}}
                )
            )
        )
    if panel.kind == "text":
        return text.Panel().mode(tm.TextMode.MARKDOWN).content(panel.content)
    raise ValueError(f"unknown panel kind {panel.kind}")


def _query(panel: Panel, index: int, query: Q) -> prometheus.Dataquery:
    instant = query.instant or panel.kind == "table"
    target = (
        prometheus.Dataquery()
        .datasource(DS)
        .ref_id(chr(ord("A") + index))
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .editor_mode(pm.QueryEditorMode.CODE)
    )
    target = target.instant() if instant else target.range()
    if panel.kind == "table":
        target.format(pm.PromQueryFormat.TABLE)
    return target


def _thresholds(panel: Panel) -> db.ThresholdsConfig:
    # (None, colour) first sets the base colour (default green).
    marks = list(panel.thresholds or [])
    base = marks.pop(0)[1] if marks and marks[0][0] is None else "green"
    steps = [dm.Threshold(value=None, color=base)]
    steps += [dm.Threshold(value=value, color=color) for value, color in marks]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def panel_of(panel: Panel, panel_id: int, grid: dm.GridPos) -> PanelBuilder:
    """The panel, typed: its kind's builder with the shared field config and queries."""
    built = (
        _builder(panel)
        .id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .grid_pos(grid)
    )
    if panel.kind == "text":
        return built
    built = built.datasource(DS).unit(panel.unit).mappings(panel.mappings)
    if panel.min is not None:
        built.min(panel.min)
    if panel.max is not None:
        built.max(panel.max)
    built.thresholds(_thresholds(panel))
    if panel.kind != "timeseries":
        built.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
    if panel.links:
        built.data_links([db.DashboardLink(link["title"]).url(link["url"]) for link in panel.links])
    return built.targets([_query(panel, i, q) for i, q in enumerate(panel.queries)])


def render(board: Dashboard) -> dm.Dashboard:
    """The dashboard, laid out left to right and wrapped at 24 columns; a row starts a
    new line."""
    builder = (
        db.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags([TAG])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time(board.time_from, "now")
        .timezone("browser")
        .link(
            db.DashboardLink("dcsched")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
        .variables([datasource_variable(), *board.variables])
        .annotations([])
    )
    x = y = 0
    row_height = 0
    for panel_id, item in enumerate(board.items, start=1):
        if isinstance(item, Row):
            if x:
                x, y = 0, y + row_height
            builder.with_row(
                db.Row(item.title).id(panel_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=y))
            )
            y += 1
            row_height = 0
            continue
        if x + item.width > 24:
            x, y = 0, y + row_height
            row_height = 0
        grid = dm.GridPos(h=item.height, w=item.width, x=x, y=y)
        builder.with_panel(panel_of(item, panel_id, grid))
        x += item.width
        row_height = max(row_height, item.height)
    dashboard = builder.build()
    dashboard.schema_version = SCHEMA_VERSION
    return dashboard


# -- the dashboards ---------------------------------------------------------------------

JOB_LINK = [
    {
        "title": "Open job ${__data.fields.job_id}",
        "url": "/d/dcsched-job/dcsched-job?var-job=${__data.fields.job_id}&${__url_time_range}",
    }
]
# Under 10% of the allocated GPUs used: red (DcschedGPUAllocatedIdle's threshold).
IDLE_MARK: list[tuple[float | None, str]] = [(None, "red"), (0.1, "green")]
UP_MAPPING = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="down", color="red"),
            "1": dm.ValueMappingResult(text="up", color="green"),
        }
    )
]


def overview() -> Dashboard:
    return Dashboard(
        uid="dcsched-overview",
        title="dcsched / Cluster overview",
        description="The cluster at a glance: capacity, what dcsched has reserved, what the "
        "hardware measures, and whether every part is scraped.",
        items=[
            Row("Capacity"),
            Panel(
                "Nodes",
                "Ray nodes alive, as the dcsched server sees them.",
                [Q('count(max by (node) (dcsched_cluster_node_capacity{resource="cpus"}))')],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "GPUs free / total",
                "GPUs reserved by no dcsched job, and all GPUs Ray reports.",
                [
                    Q('resource:dcsched_cluster_node_free:sum{resource="gpus"}', "free"),
                    Q('resource:dcsched_cluster_node_capacity:sum{resource="gpus"}', "total"),
                ],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "CPUs free / total",
                "CPUs reserved by no dcsched job, and all CPUs Ray reports.",
                [
                    Q('resource:dcsched_cluster_node_free:sum{resource="cpus"}', "free"),
                    Q('resource:dcsched_cluster_node_capacity:sum{resource="cpus"}', "total"),
                ],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Running jobs",
                "Jobs in state RUNNING.",
                [Q('sum(dcsched_jobs{state="RUNNING"})')],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Pending jobs",
                "Jobs waiting in the queue (all teams).",
                [Q("sum(dcsched_queue_length)")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "GPU utilisation",
                "Mean measured SM busy ratio of all GPUs (NVML).",
                [Q("cluster:dcsched_gpu_utilization_ratio:avg")],
                kind="stat",
                unit="percentunit",
                width=4,
                height=4,
                min=0,
                max=1,
            ),
            Row("Reserved and used"),
            Panel(
                "Reserved share by resource",
                "Share of each resource that dcsched jobs "
                "hold (capacity minus free, over capacity). A resource the cluster has none "
                "of is not drawn.",
                [Q("resource:dcsched_cluster_node_reserved:ratio", "{{resource}}")],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "GPUs: capacity, allocated, used",
                "GPUs Ray reports, GPUs allocated to "
                "running jobs (server) and GPU-equivalents those jobs use (node exporters: "
                "their SM share summed). The gap between allocated and used is what "
                "dcsched shows that neither DCGM nor Ray does.",
                [
                    Q('resource:dcsched_cluster_node_capacity:sum{resource="gpus"}', "capacity"),
                    Q("sum(dcsched_job_allocated_gpus)", "allocated"),
                    Q("sum(job_id_team:dcsched_job_gpu_utilization_ratio:sum)", "used"),
                ],
            ),
            Panel(
                "CPU utilisation by node",
                "Measured busy ratio of all CPUs of each node "
                "(node exporter), and of the cluster weighted by CPUs.",
                [
                    Q("dcsched_node_cpu_utilization_ratio", "{{node}}"),
                    Q("cluster:dcsched_node_cpu_utilization_ratio:avg", "cluster"),
                ],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Memory used by node",
                "Host memory in use over total, per node.",
                [
                    Q(
                        "dcsched_node_memory_used_bytes / dcsched_node_memory_total_bytes",
                        "{{node}}",
                    ),
                    Q("cluster:dcsched_node_memory_used:ratio", "cluster"),
                ],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "GPU utilisation by node",
                "Mean measured SM busy ratio of each node's GPUs.",
                [Q("node:dcsched_gpu_utilization_ratio:avg", "{{node}}")],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Network and disk by node",
                "Bytes per second received and sent (all "
                "interfaces but loopback) and read and written (all disks).",
                [
                    Q(
                        "sum by (node) (rate(dcsched_node_network_receive_bytes_total"
                        "[$__rate_interval]))",
                        "{{node}} received",
                    ),
                    Q(
                        "sum by (node) (rate(dcsched_node_network_transmit_bytes_total"
                        "[$__rate_interval]))",
                        "{{node}} sent",
                    ),
                    Q(
                        "sum by (node) (rate(dcsched_node_disk_read_bytes_total"
                        "[$__rate_interval]))",
                        "{{node}} disk read",
                    ),
                    Q(
                        "sum by (node) (rate(dcsched_node_disk_written_bytes_total"
                        "[$__rate_interval]))",
                        "{{node}} disk written",
                    ),
                ],
                unit="Bps",
            ),
            Row("Health of the monitoring"),
            Panel(
                "Scrape targets",
                "Every target Prometheus scrapes for dcsched: the "
                "server, one exporter per node, Ray's metrics agents. Down targets raise "
                "DcschedSchedulerDown / DcschedExporterDown.",
                [Q('up{job=~"dcsched-server|dcsched-node|ray"}')],
                kind="table",
                mappings=UP_MAPPING,
            ),
            Panel(
                "GPU collector by node",
                "1 where the exporter read NVML at its last "
                "scrape, 0 where it could not (no GPU or no driver: no GPU series then).",
                [Q("dcsched_gpu_collector_up", "{{node}}")],
                min=0,
                max=1,
            ),
            Panel(
                "Exporter collector time",
                "How long each collector of each node exporter took at the last scrape.",
                [Q("dcsched_exporter_scrape_duration_seconds", "{{node}} {{collector}}")],
                unit="s",
            ),
            Panel(
                "Scrape duration",
                "How long Prometheus took to scrape each target.",
                [
                    Q(
                        'scrape_duration_seconds{job=~"dcsched-server|dcsched-node"}',
                        "{{job}} {{instance}}",
                    )
                ],
                unit="s",
            ),
            Row("Ray's own metrics"),
            Panel(
                "Ray logical resources",
                "What Ray itself reports (ray_resources, from "
                "the ray scrape job): logical CPUs and GPUs in use and available. Ray's "
                "own dashboards (see deploy/README.md) show much more.",
                [Q('sum by (Name, State) (ray_resources{Name=~"CPU|GPU"})', "{{Name}} {{State}}")],
            ),
            Panel(
                "Ray node CPU",
                "CPU use of each Ray node in percent, as Ray's metrics agent measures it.",
                [Q("avg by (instance) (ray_node_cpu_utilization)", "{{instance}}")],
                unit="percent",
            ),
        ],
    )


GPU_SEL = 'node=~"$node", gpu=~"$gpu"'
BY_GPU = "max by (node, gpu, uuid)"
GPU_LEGEND = "{{node}} - GPU {{gpu}}"


def gpus() -> Dashboard:
    return Dashboard(
        uid="dcsched-gpus",
        title="dcsched / GPUs",
        description="The panels of NVIDIA's DCGM exporter dashboard (grafana.com 12239) on "
        "dcsched's NVML series, then what DCGM lacks: per-job use, energy, errors.",
        variables=[
            query_variable("node", "Node", "label_values(dcsched_gpu_collector_up, node)"),
            query_variable(
                "gpu", "GPU", 'label_values(dcsched_gpu_memory_total_bytes{node=~"$node"}, gpu)'
            ),
        ],
        time_from="now-1h",
        items=[
            Row("DCGM exporter dashboard panels"),
            Panel(
                "GPU Temperature",
                "DCGM_FI_DEV_GPU_TEMP -> dcsched_gpu_temperature_celsius (core temperature, NVML).",
                [Q(f"{BY_GPU} (dcsched_gpu_temperature_celsius{{{GPU_SEL}}})", GPU_LEGEND)],
                unit="celsius",
                width=18,
                thresholds=[(83, "orange"), (87, "red")],
            ),
            Panel(
                "GPU Avg. Temp",
                "Mean of the selected GPUs' temperature.",
                [Q(f"avg(dcsched_gpu_temperature_celsius{{{GPU_SEL}}})")],
                kind="gauge",
                unit="celsius",
                width=6,
                min=0,
                max=100,
                thresholds=[(83, "orange"), (87, "red")],
            ),
            Panel(
                "GPU Power Usage",
                "DCGM_FI_DEV_POWER_USAGE -> dcsched_gpu_power_watts (power draw, NVML).",
                [Q(f"{BY_GPU} (dcsched_gpu_power_watts{{{GPU_SEL}}})", GPU_LEGEND)],
                unit="watt",
                width=18,
            ),
            Panel(
                "GPU Power Total",
                "Sum of the selected GPUs' power draw.",
                [Q(f"sum(dcsched_gpu_power_watts{{{GPU_SEL}}})")],
                kind="gauge",
                unit="watt",
                width=6,
                min=0,
            ),
            Panel(
                "GPU SM Clocks",
                "DCGM_FI_DEV_SM_CLOCK (MHz) -> dcsched_gpu_sm_clock_hertz "
                "(already in hertz, so no x 1e6). A clock that drops under load means "
                "thermal or power throttling.",
                [Q(f"{BY_GPU} (dcsched_gpu_sm_clock_hertz{{{GPU_SEL}}})", GPU_LEGEND)],
                unit="hertz",
                width=24,
            ),
            Panel(
                "GPU Utilization",
                "The DCGM dashboard plots DCGM_FI_PROF_GR_ENGINE_ACTIVE "
                "(a DCGM profiling metric: share of time the graphics engine is active). "
                "NVML has no profiling metrics; the nearest is its utilisation rate "
                "(DCGM_FI_DEV_GPU_UTIL), here dcsched_gpu_utilization_ratio: the share of "
                "the sample period in which at least one kernel ran. It reads high even "
                "for one small kernel, so it overstates how busy the SMs are.",
                [Q(f"{BY_GPU} (dcsched_gpu_utilization_ratio{{{GPU_SEL}}})", GPU_LEGEND)],
                unit="percentunit",
                width=24,
                min=0,
                max=1,
            ),
            Panel(
                "Tensor Core Utilization",
                "No equivalent: the DCGM dashboard plots "
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, a DCGM profiling metric. NVML, which the "
                "dcsched exporter reads, has no tensor-pipe counter.",
                kind="text",
                width=24,
                height=3,
                content="**Tensor Core Utilization: no equivalent.** The DCGM exporter "
                "dashboard plots `DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`, which only DCGM's "
                "profiling module measures; NVML (what `dcsched exporter` reads) has no "
                "tensor-pipe counter. Run NVIDIA's dcgm-exporter beside dcsched when you "
                "need it; its series join ours on the GPU UUID.",
            ),
            Panel(
                "GPU Framebuffer Mem Used",
                "DCGM_FI_DEV_FB_USED (MiB) -> dcsched_gpu_memory_used_bytes (bytes).",
                [Q(f"{BY_GPU} (dcsched_gpu_memory_used_bytes{{{GPU_SEL}}})", GPU_LEGEND)],
                unit="bytes",
                width=24,
            ),
            Row("Beyond DCGM"),
            Panel(
                "Framebuffer memory used share",
                "Memory used over total, per GPU.",
                [
                    Q(
                        f"{BY_GPU} (dcsched_gpu_memory_used_bytes{{{GPU_SEL}}}) / {BY_GPU} "
                        f"(dcsched_gpu_memory_total_bytes{{{GPU_SEL}}})",
                        GPU_LEGEND,
                    )
                ],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Energy in the time range",
                "Energy the selected GPUs used in the "
                "dashboard's time range, from the driver's energy counter "
                "(dcsched_gpu_energy_joules_total).",
                [
                    Q(
                        f"sum(increase(dcsched_gpu_energy_joules_total{{{GPU_SEL}}}[$__range]))"
                        " / 3.6e6",
                        instant=True,
                    )
                ],
                kind="stat",
                unit="kwatth",
                width=6,
            ),
            Panel(
                "GPU collector",
                "1 where the exporter read NVML at its last scrape; 0 "
                "where it could not (no GPU, no driver), and the GPU series are absent.",
                [Q('dcsched_gpu_collector_up{node=~"$node"}', "{{node}}")],
                kind="stat",
                width=6,
                mappings=UP_MAPPING,
            ),
            Panel(
                "ECC errors",
                "Volatile ECC errors per interval. Uncorrected ones raise "
                "DcschedGPUUncorrectedECC.",
                [
                    Q(
                        f"sum by (node, gpu, type) (increase(dcsched_gpu_ecc_errors_total"
                        f"{{{GPU_SEL}}}[$__rate_interval]))",
                        GPU_LEGEND + " {{type}}",
                    )
                ],
            ),
            Panel(
                "XID errors",
                "XID events per interval (they raise DcschedGPUXidError).",
                [
                    Q(
                        f"sum by (node, gpu) (increase(dcsched_gpu_xid_errors_total{{{GPU_SEL}}}"
                        "[$__rate_interval]))",
                        GPU_LEGEND,
                    )
                ],
            ),
            Panel(
                "Last XID",
                "Code of the last XID event of each GPU (0: none since the exporter started).",
                [Q(f"max by (node, gpu, uuid, model) (dcsched_gpu_last_xid{{{GPU_SEL}}})")],
                kind="table",
            ),
            Row("Who uses the GPUs"),
            Panel(
                "GPU memory by job",
                "GPU memory of each dcsched job's processes, over the selected GPUs.",
                [
                    Q(
                        f"sum by (job_id, team) (dcsched_job_gpu_memory_used_bytes{{{GPU_SEL}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                unit="bytes",
                stack=True,
                links=JOB_LINK,
            ),
            Panel(
                "SM share by job",
                "Each job's share of the SMs (NVML process samples), "
                "summed over the selected GPUs: 1 = one whole GPU.",
                [
                    Q(
                        f"sum by (job_id, team) (dcsched_job_gpu_utilization_ratio{{{GPU_SEL}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                stack=True,
                links=JOB_LINK,
            ),
            Panel(
                "GPU memory outside dcsched",
                "GPU memory of processes that belong to no "
                "dcsched job: someone using the GPUs past the scheduler.",
                [
                    Q(
                        f"sum by (node, gpu) (dcsched_gpu_unattributed_memory_used_bytes"
                        f"{{{GPU_SEL}}})",
                        GPU_LEGEND,
                    )
                ],
                unit="bytes",
                width=24,
            ),
        ],
    )


TEAM = 'team=~"$team"'
LIVE = 'state=~"PENDING|ADMITTED|RUNNING"'
ENDED = 'state=~"SUCCEEDED|FAILED|CANCELLED"'


def jobs() -> Dashboard:
    return Dashboard(
        uid="dcsched-jobs",
        title="dcsched / Jobs and queues",
        description="Who waits and why, how long, and what running jobs do with what they hold.",
        variables=[query_variable("team", "Team", "label_values(dcsched_jobs, team)")],
        items=[
            Row("Queue"),
            Panel(
                "Live jobs by state",
                "Jobs pending, admitted (reservation being made) and running.",
                [
                    Q(
                        f"sum by (state) (dcsched_jobs{{{TEAM}, {LIVE}}})",
                        "{{state}}",
                    )
                ],
                stack=True,
            ),
            Panel(
                "Finished jobs by state",
                "Jobs that ended, since the store began.",
                [
                    Q(
                        f"sum by (state) (dcsched_jobs{{{TEAM}, {ENDED}}})",
                        "{{state}}",
                        instant=True,
                    )
                ],
                kind="bargauge",
                width=6,
            ),
            Panel(
                "Submissions per minute",
                "Jobs accepted by the API, per team.",
                [
                    Q(
                        f"sum by (team) (rate(dcsched_job_submissions_total{{{TEAM}}}"
                        "[$__rate_interval])) * 60",
                        "{{team}}",
                    )
                ],
                width=6,
            ),
            Panel(
                "Queue length by team",
                "PENDING jobs of each team.",
                [Q(f"sum by (team) (dcsched_queue_length{{{TEAM}}})", "{{team}}")],
                stack=True,
            ),
            Panel(
                "Oldest pending job",
                "Age of each team's oldest PENDING job (0: none). "
                "`dcsched list` says why each one waits.",
                [
                    Q(
                        f"max by (team) (dcsched_queue_oldest_pending_age_seconds{{{TEAM}}})",
                        "{{team}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "GPUs asked for by pending jobs",
                "GPUs the PENDING jobs of each team ask "
                "for, beside the GPUs nobody holds. Both above zero for 15 minutes raises "
                "DcschedJobsPendingWhileGPUsFree (fragmentation or quota).",
                [
                    Q(f"sum by (team) (dcsched_queue_pending_gpus{{{TEAM}}})", "{{team}}"),
                    Q('resource:dcsched_cluster_node_free:sum{resource="gpus"}', "free GPUs"),
                ],
            ),
            Panel(
                "Queue wait (p50, p90)",
                "Submit-to-start time of jobs that started in the "
                "last 5 minutes, per team (recording rule; empty when none started).",
                [
                    Q(
                        f"team_quantile:dcsched_job_queue_wait_seconds:histogram_quantile"
                        f"{{{TEAM}}}",
                        "{{team}} p{{quantile}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Run time in the range (p50, p90)",
                "Start-to-end time of the jobs that "
                "ended in the dashboard's time range, by end state.",
                [
                    Q(
                        f"histogram_quantile(0.5, sum by (state, le) (increase("
                        f"dcsched_job_run_seconds_bucket{{{TEAM}}}[$__range])))",
                        "{{state}} p50",
                        instant=True,
                    ),
                    Q(
                        f"histogram_quantile(0.9, sum by (state, le) (increase("
                        f"dcsched_job_run_seconds_bucket{{{TEAM}}}[$__range])))",
                        "{{state}} p90",
                        instant=True,
                    ),
                ],
                kind="bargauge",
                unit="s",
            ),
            Panel(
                "Preemptions",
                "Runs preempted per interval, by the preempted job's team.",
                [
                    Q(
                        f"sum by (team) (increase(dcsched_preemptions_total{{{TEAM}}}"
                        "[$__rate_interval]))",
                        "{{team}}",
                    )
                ],
            ),
            Panel(
                "Admission pass duration",
                "One scheduling pass of the policy core (p50, p99 over 5 minutes).",
                [
                    Q(
                        "quantile:dcsched_admission_pass_duration_seconds:histogram_quantile",
                        "p{{quantile}}",
                    )
                ],
                unit="s",
            ),
            Row("Running jobs: allocated beside used"),
            Panel(
                "Running jobs",
                "Each running job's allocation (server) beside what its "
                "processes use (node exporters). Click a job id for its own dashboard.",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_allocated_gpus{{{TEAM}}})",
                        "GPUs allocated",
                    ),
                    Q(f"job_id_team:dcsched_job_gpu_utilization_ratio:sum{{{TEAM}}}", "GPUs used"),
                    Q(
                        f"max by (job_id, team) (dcsched_job_allocated_cpus{{{TEAM}}})",
                        "CPUs allocated",
                    ),
                    Q(
                        f"sum by (job_id, team) (rate(dcsched_job_cpu_seconds_total{{{TEAM}}}"
                        "[$__rate_interval]))",
                        "CPUs used",
                    ),
                    Q(
                        f"sum by (job_id, team) (dcsched_job_memory_rss_bytes{{{TEAM}}})",
                        "resident memory",
                    ),
                    Q(f"max by (job_id, team) (dcsched_job_training_epoch{{{TEAM}}})", "epoch"),
                    Q(
                        f"max by (job_id, team) (dcsched_job_training_samples_per_second"
                        f"{{{TEAM}}})",
                        "samples/s",
                    ),
                ],
                kind="table",
                width=24,
                links=JOB_LINK,
            ),
            Panel(
                "GPU use per allocated GPU",
                "Measured use over allocation of each job "
                "that holds GPUs (0 for one that never touches them). Under 10% for 15 "
                "minutes raises DcschedGPUAllocatedIdle.",
                [
                    Q(
                        f"job_id_team:dcsched_job_gpu_used_per_allocated:ratio{{{TEAM}}}",
                        "{{job_id}} ({{team}})",
                    )
                ],
                unit="percentunit",
                min=0,
                max=1,
                thresholds=IDLE_MARK,
                links=JOB_LINK,
            ),
            Panel(
                "CPU use per allocated CPU",
                "CPU time the job's processes burn over the CPUs reserved for it.",
                [
                    Q(
                        f"sum by (job_id, team) (rate(dcsched_job_cpu_seconds_total{{{TEAM}}}"
                        "[$__rate_interval])) / on (job_id, team) max by (job_id, team) "
                        f"(dcsched_job_allocated_cpus{{{TEAM}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                unit="percentunit",
                min=0,
                links=JOB_LINK,
            ),
            Panel(
                "Training throughput",
                "Samples per second each training job reports.",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_training_samples_per_second"
                        f"{{{TEAM}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                links=JOB_LINK,
            ),
            Panel(
                "Training loss",
                "Last training loss each training job reports.",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_training_loss{{{TEAM}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                links=JOB_LINK,
            ),
            Row("Tuning studies"),
            Panel(
                "Trials of each tune job",
                "Trials of each running tune job by state: COMPLETE, RUNNING (admitted or "
                "queued like any job), PRUNED (stopped early), FAIL, WAITING (not yet asked "
                "for; at most `parallel` are unfinished at once).",
                [
                    Q(
                        f"sum by (job_id, state) (dcsched_tune_trials{{{TEAM}}})",
                        "{{job_id}} {{state}}",
                    )
                ],
                stack=True,
            ),
            Panel(
                "Best value of each tune job",
                "The best value so far of the metric each running study optimises.",
                [
                    Q(
                        f"max by (job_id, metric) (dcsched_tune_best_value{{{TEAM}}})",
                        "{{job_id}} {{metric}}",
                    )
                ],
            ),
            Row("Batch inference"),
            Panel(
                "Inference progress",
                "Rows each running `kind: infer` job has scored over the rows of its input "
                "(all workers; shown once every worker has read its shard).",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_inference_rows_done{{{TEAM}}}) "
                        "/ on (job_id, team) max by (job_id, team) "
                        f"(dcsched_job_inference_rows{{{TEAM}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                unit="percentunit",
                width=8,
                min=0,
                max=1,
                links=JOB_LINK,
            ),
            Panel(
                "Inference rows: scored and total",
                "Rows each running infer job has scored, beside the rows it scores in all.",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_inference_rows_done{{{TEAM}}})",
                        "{{job_id}} scored",
                    ),
                    Q(
                        f"max by (job_id, team) (dcsched_job_inference_rows{{{TEAM}}})",
                        "{{job_id}} total",
                    ),
                ],
                width=8,
                links=JOB_LINK,
            ),
            Panel(
                "Inference throughput",
                "Rows per second each running infer job scores (all workers, since its first "
                "batch).",
                [
                    Q(
                        f"max by (job_id, team) (dcsched_job_inference_rows_per_second{{{TEAM}}})",
                        "{{job_id}} ({{team}})",
                    )
                ],
                unit="suffix: rows/s",
                width=8,
                links=JOB_LINK,
            ),
        ],
    )


SERVE = 'deployment=~"$deployment"'
SERVE_RATE = f"rate(dcsched_serve_requests_total{{{SERVE}}}[$__rate_interval])"
SERVE_BUCKETS = f"rate(dcsched_serve_request_duration_seconds_bucket{{{SERVE}}}[$__rate_interval])"


def _errors(by: str, codes: str) -> str:
    """Share of the requests answered with ``codes`` (a regex), per ``by``."""
    return (
        f'sum by ({by}) (rate(dcsched_serve_requests_total{{{SERVE}, code=~"{codes}"}}'
        f"[$__rate_interval])) / sum by ({by}) ({SERVE_RATE})"
    )


def _latency(quantile: float, by: str) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) ({SERVE_BUCKETS}))"


# DcschedServeErrors fires above 1% of 5xx, DcschedServeSlow above a p99 of 100 ms.
ERROR_MARK: list[tuple[float | None, str]] = [(0.01, "red")]
SLOW_MARK: list[tuple[float | None, str]] = [(0.1, "orange")]


def serving() -> Dashboard:
    return Dashboard(
        uid="dcsched-serving",
        title="dcsched / Serving",
        description="Online serving deployments (`dcsched serve`): requests, errors and "
        "latency as each replica measures them (scrape job dcsched-serving), replicas by "
        "state as the server sees them, and the model version each replica serves.",
        variables=[
            query_variable(
                "deployment",
                "Deployment",
                "label_values(dcsched_serve_model_info, deployment)",
                description="A serving deployment (`dcsched serve list`).",
            )
        ],
        time_from="now-1h",
        items=[
            Row("Deployments"),
            Panel(
                "Replicas ready / wanted",
                "Replicas in the load balancer and passing its health check, and the "
                "count each deployment aims for.",
                [
                    Q(
                        f'sum by (deployment) (dcsched_serve_replicas{{{SERVE}, state="ready"}})',
                        "{{deployment}} ready",
                    ),
                    Q(
                        f"max by (deployment) (dcsched_serve_replicas_wanted{{{SERVE}}})",
                        "{{deployment}} wanted",
                    ),
                ],
                kind="stat",
                width=6,
                height=4,
            ),
            Panel(
                "Requests per second",
                "Requests all replicas of the selected deployments answer, any code.",
                [Q(f"sum({SERVE_RATE})")],
                kind="stat",
                unit="reqps",
                width=6,
                height=4,
            ),
            Panel(
                "5xx ratio",
                "Share of requests the replicas failed (HTTP 5xx: the model raised). Over "
                "1% for 5 minutes raises DcschedServeErrors; bad input is a 4xx and does "
                "not count.",
                [
                    Q(
                        f'sum(rate(dcsched_serve_requests_total{{{SERVE}, code=~"5.."}}'
                        f"[$__rate_interval])) / sum({SERVE_RATE})"
                    )
                ],
                kind="stat",
                unit="percentunit",
                width=6,
                height=4,
                thresholds=ERROR_MARK,
            ),
            Panel(
                "p99 latency",
                "99th percentile of the replicas' answer time, all selected deployments. "
                "Over 100 ms for 10 minutes raises DcschedServeSlow.",
                [Q(f"histogram_quantile(0.99, sum by (le) ({SERVE_BUCKETS}))")],
                kind="stat",
                unit="s",
                width=6,
                height=4,
                thresholds=SLOW_MARK,
            ),
            Row("Requests"),
            Panel(
                "Request rate by code",
                "Requests answered per second, by deployment and HTTP status code.",
                [Q(f"sum by (deployment, code) ({SERVE_RATE})", "{{deployment}} {{code}}")],
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Error ratio",
                "Share of requests answered 5xx (the replica failed; DcschedServeErrors "
                "above 1%) and 4xx (the request was refused: malformed, wrong features, "
                "too large).",
                [
                    Q(_errors("deployment", "5.."), "{{deployment}} 5xx"),
                    Q(_errors("deployment", "4.."), "{{deployment}} 4xx"),
                ],
                unit="percentunit",
                min=0,
                thresholds=ERROR_MARK,
            ),
            Panel(
                "Latency p50, p99",
                "From a request's last byte to its answer being written, as the replicas "
                "measure it (the load balancer's hop is not in it). p99 over 100 ms for 10 "
                "minutes raises DcschedServeSlow.",
                [
                    Q(_latency(0.5, "deployment"), "{{deployment}} p50"),
                    Q(_latency(0.99, "deployment"), "{{deployment}} p99"),
                ],
                unit="s",
                min=0,
                thresholds=SLOW_MARK,
            ),
            Panel(
                "p99 latency by replica",
                "The same p99, each replica on its own: one slow replica (a busy node) "
                "stands out here.",
                [Q(_latency(0.99, "deployment, replica"), "{{replica}} ({{deployment}})")],
                unit="s",
                min=0,
                thresholds=SLOW_MARK,
            ),
            Row("Replicas"),
            Panel(
                "Requests per second by replica",
                "How the load balancer spreads requests over each deployment's replicas.",
                [
                    Q(
                        f"sum by (deployment, replica) ({SERVE_RATE})",
                        "{{replica}} ({{deployment}})",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "In flight per replica",
                "Requests each replica has received and not yet answered (autoscaling "
                "follows the balancer's own count of these toward `target_in_flight`).",
                [
                    Q(
                        f"sum by (deployment, replica) (dcsched_serve_requests_in_flight"
                        f"{{{SERVE}}})",
                        "{{replica}} ({{deployment}})",
                    )
                ],
                min=0,
            ),
            Panel(
                "Replicas by state",
                "Each deployment's live replica jobs (server): pending (waiting for "
                "admission: `dcsched serve status` says why), starting (admitted or "
                "running, not passing the balancer's health check), ready, draining "
                "(retired by an update or a scale-down); and the count it aims for.",
                [
                    Q(
                        f"sum by (deployment, state) (dcsched_serve_replicas{{{SERVE}}})",
                        "{{deployment}} {{state}}",
                    ),
                    Q(
                        f"max by (deployment) (dcsched_serve_replicas_wanted{{{SERVE}}})",
                        "{{deployment}} wanted",
                    ),
                ],
                min=0,
            ),
            Panel(
                "Replicas answering Prometheus",
                "Replicas listed in serving.json (the server writes every replica that "
                "has a balancer slot) and those whose /metrics answered the last scrape.",
                [
                    Q(
                        f'count by (deployment) (up{{job="dcsched-serving", {SERVE}}})',
                        "{{deployment}} listed",
                    ),
                    Q(
                        f'sum by (deployment) (up{{job="dcsched-serving", {SERVE}}})',
                        "{{deployment}} up",
                    ),
                ],
                min=0,
            ),
            Panel(
                "Model version served",
                "Replicas serving each model version: one version normally, two during a "
                "rolling update (`dcsched serve update`).",
                [
                    Q(
                        f"count by (deployment, model, version) (dcsched_serve_model_info"
                        f"{{{SERVE}}})",
                        "{{deployment}}: {{model}}:{{version}}",
                    )
                ],
                min=0,
                width=24,
                stack=True,
            ),
        ],
    )


def teams() -> Dashboard:
    def quota(resource: str, name: str, unit: str) -> Panel:
        return Panel(
            f"{name} quota: nominal, used, borrowed",
            f"Nominal quota of each team ({resource}; absent: unlimited), what its admitted "
            "and running jobs hold, and the part of that above nominal, borrowed from its "
            "cohort.",
            [
                Q(
                    f'dcsched_team_quota_nominal{{{TEAM}, resource="{resource}"}}',
                    "{{team}} nominal",
                ),
                Q(f'dcsched_team_quota_used{{{TEAM}, resource="{resource}"}}', "{{team}} used"),
                Q(
                    f'dcsched_team_quota_borrowed{{{TEAM}, resource="{resource}"}}',
                    "{{team}} borrowed",
                ),
            ],
            unit=unit,
            width=8,
        )

    return Dashboard(
        uid="dcsched-teams",
        title="dcsched / Teams",
        description="Each team's quota, what it was allocated and what it used, and its "
        "fair share.",
        variables=[query_variable("team", "Team", "label_values(dcsched_team_quota_used, team)")],
        time_from="now-24h",
        items=[
            Row("Quota"),
            quota("gpus", "GPU", "short"),
            quota("cpus", "CPU", "short"),
            quota("memory_bytes", "Memory", "bytes"),
            Panel(
                "Quota in use",
                "Held over nominal quota, per team and resource (over 100%: borrowing).",
                [
                    Q(
                        f"dcsched_team_quota_used{{{TEAM}}} / dcsched_team_quota_nominal{{{TEAM}}}",
                        "{{team}} {{resource}}",
                        instant=True,
                    )
                ],
                kind="bargauge",
                unit="percentunit",
                width=24,
                height=6,
                min=0,
                thresholds=[(1, "orange")],
            ),
            Row("Allocated and used"),
            Panel(
                "GPUs: allocated vs used",
                "GPUs allocated to each team's running jobs "
                "(server) and GPU-equivalents they use (node exporters).",
                [
                    Q(f"team:dcsched_job_allocated_gpus:sum{{{TEAM}}}", "{{team}} allocated"),
                    Q(f"team:dcsched_job_gpu_utilization_ratio:sum{{{TEAM}}}", "{{team}} used"),
                ],
            ),
            Panel(
                "CPUs: allocated vs used",
                "CPUs allocated to each team's running jobs and "
                "CPU-seconds per second their processes burn (5-minute rate).",
                [
                    Q(f"team:dcsched_job_allocated_cpus:sum{{{TEAM}}}", "{{team}} allocated"),
                    Q(f"team:dcsched_job_cpu_seconds:rate5m{{{TEAM}}}", "{{team}} used"),
                ],
            ),
            Panel(
                "GPU use per allocated GPU",
                "Measured over allocated, per team.",
                [Q(f"team:dcsched_job_gpu_used_per_allocated:ratio{{{TEAM}}}", "{{team}}")],
                unit="percentunit",
                min=0,
                max=1,
                thresholds=IDLE_MARK,
            ),
            Panel(
                "GPUs allocated (5-minute average)",
                "From the allocated GPU-seconds counter: the GPUs each team held on average.",
                [Q(f"team:dcsched_allocated_gpu_seconds:rate5m{{{TEAM}}}", "{{team}}")],
            ),
            Panel(
                "GPU-hours allocated in the range",
                "GPU-seconds allocated to each team "
                "in the dashboard's time range, in hours (what `dcsched usage` reports).",
                [
                    Q(
                        f"sum by (team) (increase(dcsched_allocated_gpu_seconds_total{{{TEAM}}}"
                        "[$__range])) / 3600",
                        "{{team}}",
                        instant=True,
                    )
                ],
                kind="bargauge",
                unit="h",
            ),
            Panel(
                "CPU-hours allocated in the range",
                "CPU-seconds allocated to each team in the time range, in hours.",
                [
                    Q(
                        f"sum by (team) (increase(dcsched_allocated_cpu_seconds_total{{{TEAM}}}"
                        "[$__range])) / 3600",
                        "{{team}}",
                        instant=True,
                    )
                ],
                kind="bargauge",
                unit="h",
            ),
            Row("Fair share"),
            Panel(
                "Dominant share vs weight",
                "Each team's dominant share of the cluster "
                "(its largest share of any resource) beside its weight's share of all "
                "weights. Under the fair policy, teams that all have work converge to "
                "their weight share.",
                [
                    Q(f"dcsched_team_dominant_share_ratio{{{TEAM}}}", "{{team}} held"),
                    Q(
                        f"dcsched_team_fair_share_weight{{{TEAM}}} / scalar(sum("
                        "dcsched_team_fair_share_weight))",
                        "{{team}} weight share",
                    ),
                ],
                unit="percentunit",
                min=0,
            ),
            Panel(
                "Queue by team",
                "PENDING jobs and the GPUs they ask for.",
                [
                    Q(f"dcsched_queue_length{{{TEAM}}}", "{{team}} jobs"),
                    Q(f"dcsched_queue_pending_gpus{{{TEAM}}}", "{{team}} GPUs"),
                ],
            ),
            Panel(
                "Preemptions",
                "The team's runs preempted per interval (by higher "
                "priority jobs of the team, or to reclaim quota it borrowed).",
                [
                    Q(
                        f"sum by (team) (increase(dcsched_preemptions_total{{{TEAM}}}"
                        "[$__rate_interval]))",
                        "{{team}}",
                    )
                ],
                width=24,
            ),
        ],
    )


JOB = 'job_id="$job"'


def job() -> Dashboard:
    return Dashboard(
        uid="dcsched-job",
        title="dcsched / Job",
        description="One dcsched job by its id: what it holds, what it uses, how it "
        "trains. Per-job series exist only while the job runs.",
        variables=[
            query_variable(
                "job",
                "Job",
                "label_values(dcsched_job_allocated_cpus, job_id)",
                multi=False,
                description="A dcsched job id (`dcsched list`).",
            )
        ],
        time_from="now-1h",
        items=[
            Panel(
                "Team",
                "The team the job belongs to.",
                [Q(f"max by (team) (dcsched_job_allocated_cpus{{{JOB}}})", "{{team}}")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "GPUs allocated",
                "GPUs reserved for the job.",
                [Q(f"max(dcsched_job_allocated_gpus{{{JOB}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "CPUs allocated",
                "CPUs reserved for the job.",
                [Q(f"max(dcsched_job_allocated_cpus{{{JOB}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "GPU use per allocated GPU",
                "Measured over allocated (under 10% for 15 "
                "minutes raises DcschedGPUAllocatedIdle).",
                [Q(f"max(job_id_team:dcsched_job_gpu_used_per_allocated:ratio{{{JOB}}})")],
                kind="stat",
                unit="percentunit",
                width=4,
                height=4,
                thresholds=IDLE_MARK,
            ),
            Panel(
                "Epoch",
                "Last finished epoch.",
                [Q(f"max(dcsched_job_training_epoch{{{JOB}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Loss",
                "Last training loss.",
                [Q(f"max(dcsched_job_training_loss{{{JOB}}})")],
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "SM share by GPU",
                "The job's share of each GPU's SMs (NVML process samples).",
                [Q(f"sum by (node, gpu) (dcsched_job_gpu_utilization_ratio{{{JOB}}})", GPU_LEGEND)],
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "GPU memory by GPU",
                "GPU memory of the job's processes on each GPU.",
                [Q(f"sum by (node, gpu) (dcsched_job_gpu_memory_used_bytes{{{JOB}}})", GPU_LEGEND)],
                unit="bytes",
            ),
            Panel(
                "CPU used vs allocated",
                "CPU-seconds per second of the job's processes "
                "(all nodes) beside the CPUs reserved.",
                [
                    Q(
                        f"sum(rate(dcsched_job_cpu_seconds_total{{{JOB}}}[$__rate_interval]))",
                        "used",
                    ),
                    Q(f"max(dcsched_job_allocated_cpus{{{JOB}}})", "allocated"),
                ],
            ),
            Panel(
                "Resident memory by node",
                "Resident memory of the job's processes.",
                [Q(f"sum by (node) (dcsched_job_memory_rss_bytes{{{JOB}}})", "{{node}}")],
                unit="bytes",
            ),
            Panel(
                "Training loss",
                "Loss the job reports after each epoch.",
                [Q(f"max(dcsched_job_training_loss{{{JOB}}})", "loss")],
            ),
            Panel(
                "Throughput",
                "Samples per second the job reports.",
                [Q(f"max(dcsched_job_training_samples_per_second{{{JOB}}})", "samples/s")],
            ),
            Panel(
                "Its GPUs: temperature",
                "Temperature of the GPUs the job has memory on.",
                [
                    Q(
                        "max by (node, gpu) (dcsched_gpu_temperature_celsius) and on (node, gpu) "
                        f"dcsched_job_gpu_memory_used_bytes{{{JOB}}}",
                        GPU_LEGEND,
                    )
                ],
                unit="celsius",
            ),
            Panel(
                "Its GPUs: power",
                "Power draw of the GPUs the job has memory on (shared GPUs: the whole GPU's draw).",
                [
                    Q(
                        "max by (node, gpu) (dcsched_gpu_power_watts) and on (node, gpu) "
                        f"dcsched_job_gpu_memory_used_bytes{{{JOB}}}",
                        GPU_LEGEND,
                    )
                ],
                unit="watt",
            ),
        ],
    )


DASHBOARDS = (overview, gpus, jobs, teams, job, serving)


def files() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in DASHBOARDS:
        board = make()
        encoded = JSONEncoder(sort_keys=False).encode(render(board))
        text = json.dumps(json.loads(encoded), indent=2, ensure_ascii=False)
        out[f"{board.uid}.json"] = text + "\n"
    return out


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, body in files().items():
        (OUT / name).write_text(body)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
