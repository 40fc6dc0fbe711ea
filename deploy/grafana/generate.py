#!/usr/bin/env python3
"""Write the Grafana dashboards of dcsched: ``.venv/bin/python deploy/grafana/generate.py``.

The dashboards (``dashboards/*.json``) are generated from the tables at the end of this
file; a test checks that the committed JSON is what this script writes. Edit here, run
it, commit both.

Each dashboard is a function: ``dashboard()`` with its uid, title, description and
variables, then its table of panels, title -> panel in reading order, which
``laid_out()`` titles, numbers from 1 and places. A panel is one call of the helper of its
kind, ``timeseries_panel``, ``stat_panel``, ``gauge_panel``, ``bargauge_panel`` or
``table_panel``: its description, its queries ``Q(expr, legend)``, then what sets it
apart (``Look``: unit and range, thresholds, width and height, a link to the job
dashboard, value mappings); ``text_panel`` is a note, ``row()`` a heading. To add a panel,
add a line to the table, e.g.::

    "Queue length": timeseries_panel("PENDING jobs.", Q("sum(dcsched_queue_length)", "all")),

The SDK's dashboard builder places the panels left to right and starts a new line once
24 columns are full (a time series is 12 wide unless given, a stat 4), so keep each line
of panels 24 columns wide; the unit test fails on a panel past the 24th column or over
another.

The helpers are Grafana's typed builders, ``grafana-foundation-sdk`` (its Grafana 10.1
build, pinned in the ``test`` extra of pyproject.toml, which ``make install`` puts in
.venv; never a runtime dependency), each kind's display options set in one place; the
SDK's encoder writes the JSON. Where the SDK lacks a setter or a field Grafana writes (the
datasource variable's ``refresh`` and ``options``, a query variable's ``definition``), the
variable's model is built whole.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

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
from grafana_foundation_sdk.cog import variants as cogvariants
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


# -- what a panel says ------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """One query of a panel, and its legend (empty: Grafana's ``__auto``)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Unit:
    """A field's unit and the range of its axis or gauge."""

    name: str
    min: float | None = None
    max: float | None = None


RATIO = Unit("percentunit", 0, 1)  # a share, 0 to 100%
# Threshold marks (value, colour), each colour from its value up; a first (None, colour)
# sets the colour below the first mark (default green).
Marks = Sequence[tuple[float | None, str]]


class Look(TypedDict, total=False):
    """What sets a panel apart from the others of its kind (all optional)."""

    unit: Unit | str  # "short" unless given
    thresholds: Marks  # none unless given
    width: int  # of 24 columns: 12 unless given (a stat 4)
    height: int  # 8 unless given (a stat 4)
    job_link: bool  # each series links to the job dashboard of its job_id
    mappings: Sequence[dm.ValueMap]  # values shown as words


class SeriesLook(Look, total=False):
    stack: bool  # stack the series


class StatLook(Look, total=False):
    instant: bool  # query the value now rather than a range


# -- panels -----------------------------------------------------------------------------

FieldPanel = TypeVar(
    "FieldPanel", timeseries.Panel, stat.Panel, gauge.Panel, bargauge.Panel, table.Panel
)
Item = (
    db.Row | timeseries.Panel | stat.Panel | gauge.Panel | bargauge.Panel | table.Panel | text.Panel
)
REDUCE = cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
BY_THRESHOLDS = db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)
JOB_LINK = db.DashboardLink("Open job ${__data.fields.job_id}").url(
    "/d/dcsched-job/dcsched-job?var-job=${__data.fields.job_id}&${__url_time_range}"
)


def _fields(
    panel: FieldPanel,
    description: str,
    queries: Sequence[Q],
    look: Look,
    size: tuple[int, int] = (12, 8),
    *,
    instant: bool = False,
    table_format: bool = False,
) -> FieldPanel:
    """What every panel of series has: description, size, datasource, unit and range,
    thresholds, mappings, links and queries (instant ones, or a table's)."""
    unit = look.get("unit", "short")
    unit = Unit(unit) if isinstance(unit, str) else unit
    panel.description(description).datasource(DS)
    panel.span(look.get("width", size[0])).height(look.get("height", size[1]))
    panel.unit(unit.name).mappings(list(look.get("mappings", [])))
    if unit.min is not None:
        panel.min(unit.min)
    if unit.max is not None:
        panel.max(unit.max)
    marks = list(look.get("thresholds", []))
    base = marks.pop(0)[1] if marks and marks[0][0] is None else "green"
    steps = [dm.Threshold(value=None, color=base)]
    steps += [dm.Threshold(value=value, color=color) for value, color in marks]
    panel.thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
    if look.get("job_link"):
        panel.data_links([JOB_LINK])
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .datasource(DS)
            .ref_id(chr(ord("A") + index))
            .expr(query.expr)
            .legend_format(query.legend or "__auto")
            .editor_mode(pm.QueryEditorMode.CODE)
        )
        target = target.instant() if instant or table_format else target.range()
        if table_format:
            target.format(pm.PromQueryFormat.TABLE)
        targets.append(target)
    return panel.targets(targets)


def timeseries_panel(description: str, *queries: Q, **look: Unpack[SeriesLook]) -> timeseries.Panel:
    """Lines over time, a colour per series; the thresholds drawn as lines."""
    stacking = cm.StackingMode.NORMAL if look.get("stack") else cm.StackingMode.NONE
    lines = cm.GraphTresholdsStyleMode  # (sic)
    threshold_lines = lines.LINE if look.get("thresholds") else lines.OFF
    panel = (
        timeseries.Panel()
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(cb.StackingConfig().mode(stacking).group("A"))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(threshold_lines))
    )
    return _fields(panel, description, queries, look)


def stat_panel(description: str, *queries: Q, **look: Unpack[StatLook]) -> stat.Panel:
    """The last value of each query, large, over its sparkline; 4 x 4 unless sized."""
    panel = (
        stat.Panel()
        .reduce_options(REDUCE)
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .text_mode(cm.BigValueTextMode.AUTO)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
        .color_scheme(BY_THRESHOLDS)
    )
    return _fields(panel, description, queries, look, (4, 4), instant=look.get("instant", False))


def gauge_panel(description: str, *queries: Q, **look: Unpack[Look]) -> gauge.Panel:
    """The last value on a dial that marks the thresholds."""
    panel = (
        gauge.Panel()
        .reduce_options(REDUCE)
        .show_threshold_markers(True)
        .orientation(cm.VizOrientation.AUTO)
        .color_scheme(BY_THRESHOLDS)
    )
    return _fields(panel, description, queries, look)


def bargauge_panel(description: str, *queries: Q, **look: Unpack[Look]) -> bargauge.Panel:
    """A horizontal bar per series, of its value now."""
    panel = (
        bargauge.Panel()
        .reduce_options(REDUCE)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .color_scheme(BY_THRESHOLDS)
    )
    return _fields(panel, description, queries, look, instant=True)


def table_panel(description: str, *queries: Q, **look: Unpack[Look]) -> table.Panel:
    """A row per series and a column per query (their values now, merged on the labels),
    without the time column."""
    panel = (
        table.Panel()
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .footer(cb.TableFooterOptions().show(False))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
        )
        .color_scheme(BY_THRESHOLDS)
    )
    return _fields(panel, description, queries, look, table_format=True)


def text_panel(description: str, markdown: str) -> text.Panel:
    """A note across the dashboard, 3 rows high."""
    return (
        text.Panel()
        .description(description)
        .mode(tm.TextMode.MARKDOWN)
        .content(markdown)
        .span(24)
        .height(3)
    )


def row() -> db.Row:
    """A row: a heading across the dashboard that starts a new line of panels."""
    return db.Row("")


# -- dashboards -------------------------------------------------------------------------


class Built(cogbuilder.Builder[dm.VariableModel]):
    """A variable model built whole, where the SDK's builder lacks a setter."""

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


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Built] = (),
    time_from: str = "now-6h",
) -> db.Dashboard:
    """A dashboard with no panels yet: the datasource variable and ``variables``, a menu
    of the other dcsched dashboards, refreshed every 30 s."""
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time(time_from, "now")
        .timezone("browser")
        .link(
            db.DashboardLink("dcsched")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
        .variables([datasource_variable(), *variables])
        .annotations([])
    )


def laid_out(board: db.Dashboard, panels: Mapping[str, Item]) -> dm.Dashboard:
    """The dashboard with its panels (title -> panel, in reading order) titled, numbered
    from 1 and placed by the SDK."""
    for panel_id, (title, panel) in enumerate(panels.items(), start=1):
        if isinstance(panel, db.Row):
            board.with_row(panel.title(title).id(panel_id))
        else:
            board.with_panel(panel.title(title).id(panel_id))
    built = board.build()
    built.schema_version = SCHEMA_VERSION
    return built


# -- the dashboards ---------------------------------------------------------------------

# Under 10% of the allocated GPUs used: red (DcschedGPUAllocatedIdle's threshold).
IDLE_MARK: Marks = [(None, "red"), (0.1, "green")]
UP_MAPPING = [
    dm.ValueMap(
        options={
            "0": dm.ValueMappingResult(text="down", color="red"),
            "1": dm.ValueMappingResult(text="up", color="green"),
        }
    )
]
NODE = "{{node}}"
TEAM_LEGEND = "{{team}}"
JOB_LEGEND = "{{job_id}} ({{team}})"


def cluster(kind: str, resource: str) -> str:
    """The cluster's total of a resource: ``kind`` is capacity or free."""
    return f'resource:dcsched_cluster_node_{kind}:sum{{resource="{resource}"}}'


def node_rate(series: str) -> str:
    return f"sum by (node) (rate({series}[$__rate_interval]))"


def overview() -> dm.Dashboard:
    board = dashboard(
        "dcsched-overview",
        "dcsched / Cluster overview",
        "The cluster at a glance: capacity, what dcsched has reserved, what the hardware measures, "
        "and whether every part is scraped.",
    )
    panels: dict[str, Item] = {
        "Capacity": row(),
        "Nodes": stat_panel(
            "Ray nodes alive, as the dcsched server sees them.",
            Q('count(max by (node) (dcsched_cluster_node_capacity{resource="cpus"}))'),
        ),
        "GPUs free / total": stat_panel(
            "GPUs reserved by no dcsched job, and all GPUs Ray reports.",
            Q(cluster("free", "gpus"), "free"),
            Q(cluster("capacity", "gpus"), "total"),
        ),
        "CPUs free / total": stat_panel(
            "CPUs reserved by no dcsched job, and all CPUs Ray reports.",
            Q(cluster("free", "cpus"), "free"),
            Q(cluster("capacity", "cpus"), "total"),
        ),
        "Running jobs": stat_panel(
            "Jobs in state RUNNING.", Q('sum(dcsched_jobs{state="RUNNING"})')
        ),
        "Pending jobs": stat_panel(
            "Jobs waiting in the queue (all teams).", Q("sum(dcsched_queue_length)")
        ),
        "GPU utilisation": stat_panel(
            "Mean measured SM busy ratio of all GPUs (NVML).",
            Q("cluster:dcsched_gpu_utilization_ratio:avg"),
            unit=RATIO,
        ),
        "Reserved and used": row(),
        "Reserved share by resource": timeseries_panel(
            "Share of each resource that dcsched jobs hold (capacity minus free, over capacity). A "
            "resource the cluster has none of is not drawn.",
            Q("resource:dcsched_cluster_node_reserved:ratio", "{{resource}}"),
            unit=RATIO,
        ),
        "GPUs: capacity, allocated, used": timeseries_panel(
            "GPUs Ray reports, GPUs allocated to running jobs (server) and GPU-equivalents those "
            "jobs use (node exporters: their SM share summed). The gap between allocated and used "
            "is what dcsched shows that neither DCGM nor Ray does.",
            Q(cluster("capacity", "gpus"), "capacity"),
            Q("sum(dcsched_job_allocated_gpus)", "allocated"),
            Q("sum(job_id_team:dcsched_job_gpu_utilization_ratio:sum)", "used"),
        ),
        "CPU utilisation by node": timeseries_panel(
            "Measured busy ratio of all CPUs of each node (node exporter), and of the cluster "
            "weighted by CPUs.",
            Q("dcsched_node_cpu_utilization_ratio", NODE),
            Q("cluster:dcsched_node_cpu_utilization_ratio:avg", "cluster"),
            unit=RATIO,
        ),
        "Memory used by node": timeseries_panel(
            "Host memory in use over total, per node.",
            Q("dcsched_node_memory_used_bytes / dcsched_node_memory_total_bytes", NODE),
            Q("cluster:dcsched_node_memory_used:ratio", "cluster"),
            unit=RATIO,
        ),
        "GPU utilisation by node": timeseries_panel(
            "Mean measured SM busy ratio of each node's GPUs.",
            Q("node:dcsched_gpu_utilization_ratio:avg", NODE),
            unit=RATIO,
        ),
        "Network and disk by node": timeseries_panel(
            "Bytes per second received and sent (all interfaces but loopback) and read and written "
            "(all disks).",
            Q(node_rate("dcsched_node_network_receive_bytes_total"), "{{node}} received"),
            Q(node_rate("dcsched_node_network_transmit_bytes_total"), "{{node}} sent"),
            Q(node_rate("dcsched_node_disk_read_bytes_total"), "{{node}} disk read"),
            Q(node_rate("dcsched_node_disk_written_bytes_total"), "{{node}} disk written"),
            unit="Bps",
        ),
        "Health of the monitoring": row(),
        "Scrape targets": table_panel(
            "Every target Prometheus scrapes for dcsched: the server, one exporter per node, Ray's "
            "metrics agents. Down targets raise DcschedSchedulerDown / DcschedExporterDown.",
            Q('up{job=~"dcsched-server|dcsched-node|ray"}'),
            mappings=UP_MAPPING,
        ),
        "GPU collector by node": timeseries_panel(
            "1 where the exporter read NVML at its last scrape, 0 where it could not (no GPU or no "
            "driver: no GPU series then).",
            Q("dcsched_gpu_collector_up", NODE),
            unit=Unit("short", 0, 1),
        ),
        "Exporter collector time": timeseries_panel(
            "How long each collector of each node exporter took at the last scrape.",
            Q("dcsched_exporter_scrape_duration_seconds", "{{node}} {{collector}}"),
            unit="s",
        ),
        "Scrape duration": timeseries_panel(
            "How long Prometheus took to scrape each target.",
            Q(
                'scrape_duration_seconds{job=~"dcsched-server|dcsched-node"}',
                "{{job}} {{instance}}",
            ),
            unit="s",
        ),
        "Ray's own metrics": row(),
        "Ray logical resources": timeseries_panel(
            "What Ray itself reports (ray_resources, from the ray scrape job): logical CPUs and "
            "GPUs in use and available. Ray's own dashboards (see deploy/README.md) show much "
            "more.",
            Q('sum by (Name, State) (ray_resources{Name=~"CPU|GPU"})', "{{Name}} {{State}}"),
        ),
        "Ray node CPU": timeseries_panel(
            "CPU use of each Ray node in percent, as Ray's metrics agent measures it.",
            Q("avg by (instance) (ray_node_cpu_utilization)", "{{instance}}"),
            unit="percent",
        ),
    }
    return laid_out(board, panels)


GPU_SEL = 'node=~"$node", gpu=~"$gpu"'
GPU_LEGEND = "{{node}} - GPU {{gpu}}"
GPU_TYPE_LEGEND = GPU_LEGEND + " {{type}}"
TEMPERATURE_MARKS: Marks = [(83, "orange"), (87, "red")]


def per_gpu(series: str) -> str:
    """A GPU series of the selected GPUs, one line per GPU."""
    return f"max by (node, gpu, uuid) ({series}{{{GPU_SEL}}})"


def gpu_sum(by: str, series: str) -> str:
    """A series of the selected GPUs summed per ``by``."""
    return f"sum by ({by}) ({series}{{{GPU_SEL}}})"


def gpu_increase(by: str, counter: str) -> str:
    """A counter of the selected GPUs: its increase per interval, summed per ``by``."""
    return f"sum by ({by}) (increase({counter}{{{GPU_SEL}}}[$__rate_interval]))"


def gpus() -> dm.Dashboard:
    board = dashboard(
        "dcsched-gpus",
        "dcsched / GPUs",
        "The panels of NVIDIA's DCGM exporter dashboard (grafana.com 12239) on dcsched's NVML "
        "series, then what DCGM lacks: per-job use, energy, errors.",
        variables=[
            query_variable("node", "Node", "label_values(dcsched_gpu_collector_up, node)"),
            query_variable(
                "gpu", "GPU", 'label_values(dcsched_gpu_memory_total_bytes{node=~"$node"}, gpu)'
            ),
        ],
        time_from="now-1h",
    )
    panels: dict[str, Item] = {
        "DCGM exporter dashboard panels": row(),
        "GPU Temperature": timeseries_panel(
            "DCGM_FI_DEV_GPU_TEMP -> dcsched_gpu_temperature_celsius (core temperature, NVML).",
            Q(per_gpu("dcsched_gpu_temperature_celsius"), GPU_LEGEND),
            unit="celsius",
            thresholds=TEMPERATURE_MARKS,
            width=18,
        ),
        "GPU Avg. Temp": gauge_panel(
            "Mean of the selected GPUs' temperature.",
            Q(f"avg(dcsched_gpu_temperature_celsius{{{GPU_SEL}}})"),
            unit=Unit("celsius", 0, 100),
            thresholds=TEMPERATURE_MARKS,
            width=6,
        ),
        "GPU Power Usage": timeseries_panel(
            "DCGM_FI_DEV_POWER_USAGE -> dcsched_gpu_power_watts (power draw, NVML).",
            Q(per_gpu("dcsched_gpu_power_watts"), GPU_LEGEND),
            unit="watt",
            width=18,
        ),
        "GPU Power Total": gauge_panel(
            "Sum of the selected GPUs' power draw.",
            Q(f"sum(dcsched_gpu_power_watts{{{GPU_SEL}}})"),
            unit=Unit("watt", 0),
            width=6,
        ),
        "GPU SM Clocks": timeseries_panel(
            "DCGM_FI_DEV_SM_CLOCK (MHz) -> dcsched_gpu_sm_clock_hertz (already in hertz, so no x "
            "1e6). A clock that drops under load means thermal or power throttling.",
            Q(per_gpu("dcsched_gpu_sm_clock_hertz"), GPU_LEGEND),
            unit="hertz",
            width=24,
        ),
        "GPU Utilization": timeseries_panel(
            "The DCGM dashboard plots DCGM_FI_PROF_GR_ENGINE_ACTIVE (a DCGM profiling metric: "
            "share of time the graphics engine is active). NVML has no profiling metrics; the "
            "nearest is its utilisation rate (DCGM_FI_DEV_GPU_UTIL), here "
            "dcsched_gpu_utilization_ratio: the share of the sample period in which at least one "
            "kernel ran. It reads high even for one small kernel, so it overstates how busy the "
            "SMs are.",
            Q(per_gpu("dcsched_gpu_utilization_ratio"), GPU_LEGEND),
            unit=RATIO,
            width=24,
        ),
        "Tensor Core Utilization": text_panel(
            "No equivalent: the DCGM dashboard plots DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, a DCGM "
            "profiling metric. NVML, which the dcsched exporter reads, has no tensor-pipe counter.",
            "**Tensor Core Utilization: no equivalent.** The DCGM exporter dashboard plots "
            "`DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`, which only DCGM's profiling module measures; NVML "
            "(what `dcsched exporter` reads) has no tensor-pipe counter. Run NVIDIA's "
            "dcgm-exporter beside dcsched when you need it; its series join ours on the GPU UUID.",
        ),
        "GPU Framebuffer Mem Used": timeseries_panel(
            "DCGM_FI_DEV_FB_USED (MiB) -> dcsched_gpu_memory_used_bytes (bytes).",
            Q(per_gpu("dcsched_gpu_memory_used_bytes"), GPU_LEGEND),
            unit="bytes",
            width=24,
        ),
        "Beyond DCGM": row(),
        "Framebuffer memory used share": timeseries_panel(
            "Memory used over total, per GPU.",
            Q(
                f"{per_gpu('dcsched_gpu_memory_used_bytes')} / "
                f"{per_gpu('dcsched_gpu_memory_total_bytes')}",
                GPU_LEGEND,
            ),
            unit=RATIO,
        ),
        "Energy in the time range": stat_panel(
            "Energy the selected GPUs used in the dashboard's time range, from the driver's energy "
            "counter (dcsched_gpu_energy_joules_total).",
            Q(f"sum(increase(dcsched_gpu_energy_joules_total{{{GPU_SEL}}}[$__range])) / 3.6e6"),
            unit="kwatth",
            instant=True,
            width=6,
            height=8,
        ),
        "GPU collector": stat_panel(
            "1 where the exporter read NVML at its last scrape; 0 where it could not (no GPU, no "
            "driver), and the GPU series are absent.",
            Q('dcsched_gpu_collector_up{node=~"$node"}', NODE),
            mappings=UP_MAPPING,
            width=6,
            height=8,
        ),
        "ECC errors": timeseries_panel(
            "Volatile ECC errors per interval. Uncorrected ones raise DcschedGPUUncorrectedECC.",
            Q(gpu_increase("node, gpu, type", "dcsched_gpu_ecc_errors_total"), GPU_TYPE_LEGEND),
        ),
        "XID errors": timeseries_panel(
            "XID events per interval (they raise DcschedGPUXidError).",
            Q(gpu_increase("node, gpu", "dcsched_gpu_xid_errors_total"), GPU_LEGEND),
        ),
        "Last XID": table_panel(
            "Code of the last XID event of each GPU (0: none since the exporter started).",
            Q(f"max by (node, gpu, uuid, model) (dcsched_gpu_last_xid{{{GPU_SEL}}})"),
        ),
        "Who uses the GPUs": row(),
        "GPU memory by job": timeseries_panel(
            "GPU memory of each dcsched job's processes, over the selected GPUs.",
            Q(gpu_sum("job_id, team", "dcsched_job_gpu_memory_used_bytes"), JOB_LEGEND),
            unit="bytes",
            stack=True,
            job_link=True,
        ),
        "SM share by job": timeseries_panel(
            "Each job's share of the SMs (NVML process samples), summed over the selected GPUs: 1 "
            "= one whole GPU.",
            Q(gpu_sum("job_id, team", "dcsched_job_gpu_utilization_ratio"), JOB_LEGEND),
            stack=True,
            job_link=True,
        ),
        "GPU memory outside dcsched": timeseries_panel(
            "GPU memory of processes that belong to no dcsched job: someone using the GPUs past "
            "the scheduler.",
            Q(gpu_sum("node, gpu", "dcsched_gpu_unattributed_memory_used_bytes"), GPU_LEGEND),
            unit="bytes",
            width=24,
        ),
    }
    return laid_out(board, panels)


TEAM = 'team=~"$team"'
LIVE = 'state=~"PENDING|ADMITTED|RUNNING"'
ENDED = 'state=~"SUCCEEDED|FAILED|CANCELLED"'


def per_job(series: str) -> str:
    """A per-job series of the selected teams, one line per job."""
    return f"max by (job_id, team) ({series}{{{TEAM}}})"


def team_increase(series: str) -> str:
    """A counter's increase per interval, summed per team."""
    return f"sum by (team) (increase({series}{{{TEAM}}}[$__rate_interval]))"


def run_time(percentile: int) -> Q:
    """A percentile of the run time of the jobs that ended in the range, per end state."""
    return Q(
        f"histogram_quantile({percentile / 100}, sum by (state, le) (increase("
        f"dcsched_job_run_seconds_bucket{{{TEAM}}}[$__range])))",
        f"{{{{state}}}} p{percentile}",
    )


JOB_CPU_RATE = (
    f"sum by (job_id, team) (rate(dcsched_job_cpu_seconds_total{{{TEAM}}}[$__rate_interval]))"
)


def jobs() -> dm.Dashboard:
    board = dashboard(
        "dcsched-jobs",
        "dcsched / Jobs and queues",
        "Who waits and why, how long, and what running jobs do with what they hold.",
        variables=[query_variable("team", "Team", "label_values(dcsched_jobs, team)")],
    )
    panels: dict[str, Item] = {
        "Queue": row(),
        "Live jobs by state": timeseries_panel(
            "Jobs pending, admitted (reservation being made) and running.",
            Q(f"sum by (state) (dcsched_jobs{{{TEAM}, {LIVE}}})", "{{state}}"),
            stack=True,
        ),
        "Finished jobs by state": bargauge_panel(
            "Jobs that ended, since the store began.",
            Q(f"sum by (state) (dcsched_jobs{{{TEAM}, {ENDED}}})", "{{state}}"),
            width=6,
        ),
        "Submissions per minute": timeseries_panel(
            "Jobs accepted by the API, per team.",
            Q(
                f"sum by (team) (rate(dcsched_job_submissions_total{{{TEAM}}}"
                "[$__rate_interval])) * 60",
                TEAM_LEGEND,
            ),
            width=6,
        ),
        "Queue length by team": timeseries_panel(
            "PENDING jobs of each team.",
            Q(f"sum by (team) (dcsched_queue_length{{{TEAM}}})", TEAM_LEGEND),
            stack=True,
        ),
        "Oldest pending job": timeseries_panel(
            "Age of each team's oldest PENDING job (0: none). `dcsched list` says why each one "
            "waits.",
            Q(f"max by (team) (dcsched_queue_oldest_pending_age_seconds{{{TEAM}}})", TEAM_LEGEND),
            unit="s",
        ),
        "GPUs asked for by pending jobs": timeseries_panel(
            "GPUs the PENDING jobs of each team ask for, beside the GPUs nobody holds. Both above "
            "zero for 15 minutes raises DcschedJobsPendingWhileGPUsFree (fragmentation or quota).",
            Q(f"sum by (team) (dcsched_queue_pending_gpus{{{TEAM}}})", TEAM_LEGEND),
            Q(cluster("free", "gpus"), "free GPUs"),
        ),
        "Queue wait (p50, p90)": timeseries_panel(
            "Submit-to-start time of jobs that started in the last 5 minutes, per team (recording "
            "rule; empty when none started).",
            Q(
                f"team_quantile:dcsched_job_queue_wait_seconds:histogram_quantile{{{TEAM}}}",
                "{{team}} p{{quantile}}",
            ),
            unit="s",
        ),
        "Run time in the range (p50, p90)": bargauge_panel(
            "Start-to-end time of the jobs that ended in the dashboard's time range, by end state.",
            run_time(50),
            run_time(90),
            unit="s",
        ),
        "Preemptions": timeseries_panel(
            "Runs preempted per interval, by the preempted job's team.",
            Q(team_increase("dcsched_preemptions_total"), TEAM_LEGEND),
        ),
        "Admission pass duration": timeseries_panel(
            "One scheduling pass of the policy core (p50, p99 over 5 minutes).",
            Q(
                "quantile:dcsched_admission_pass_duration_seconds:histogram_quantile",
                "p{{quantile}}",
            ),
            unit="s",
        ),
        "Running jobs: allocated beside used": row(),
        "Running jobs": table_panel(
            "Each running job's allocation (server) beside what its processes use (node "
            "exporters). Click a job id for its own dashboard.",
            Q(per_job("dcsched_job_allocated_gpus"), "GPUs allocated"),
            Q(f"job_id_team:dcsched_job_gpu_utilization_ratio:sum{{{TEAM}}}", "GPUs used"),
            Q(per_job("dcsched_job_allocated_cpus"), "CPUs allocated"),
            Q(JOB_CPU_RATE, "CPUs used"),
            Q(f"sum by (job_id, team) (dcsched_job_memory_rss_bytes{{{TEAM}}})", "resident memory"),
            Q(per_job("dcsched_job_training_epoch"), "epoch"),
            Q(per_job("dcsched_job_training_samples_per_second"), "samples/s"),
            job_link=True,
            width=24,
        ),
        "GPU use per allocated GPU": timeseries_panel(
            "Measured use over allocation of each job that holds GPUs (0 for one that never "
            "touches them). Under 10% for 15 minutes raises DcschedGPUAllocatedIdle.",
            Q(f"job_id_team:dcsched_job_gpu_used_per_allocated:ratio{{{TEAM}}}", JOB_LEGEND),
            unit=RATIO,
            thresholds=IDLE_MARK,
            job_link=True,
        ),
        "CPU use per allocated CPU": timeseries_panel(
            "CPU time the job's processes burn over the CPUs reserved for it.",
            Q(
                f"{JOB_CPU_RATE} / on (job_id, team) {per_job('dcsched_job_allocated_cpus')}",
                JOB_LEGEND,
            ),
            unit=Unit("percentunit", 0),
            job_link=True,
        ),
        "Training throughput": timeseries_panel(
            "Samples per second each training job reports.",
            Q(per_job("dcsched_job_training_samples_per_second"), JOB_LEGEND),
            job_link=True,
        ),
        "Training loss": timeseries_panel(
            "Last training loss each training job reports.",
            Q(per_job("dcsched_job_training_loss"), JOB_LEGEND),
            job_link=True,
        ),
        "Tuning studies": row(),
        "Trials of each tune job": timeseries_panel(
            "Trials of each running tune job by state: COMPLETE, RUNNING (admitted or queued like "
            "any job), PRUNED (stopped early), FAIL, WAITING (not yet asked for; at most "
            "`parallel` are unfinished at once).",
            Q(f"sum by (job_id, state) (dcsched_tune_trials{{{TEAM}}})", "{{job_id}} {{state}}"),
            stack=True,
        ),
        "Best value of each tune job": timeseries_panel(
            "The best value so far of the metric each running study optimises.",
            Q(
                f"max by (job_id, metric) (dcsched_tune_best_value{{{TEAM}}})",
                "{{job_id}} {{metric}}",
            ),
        ),
        "Batch inference": row(),
        "Inference progress": timeseries_panel(
            "Rows each running `kind: infer` job has scored over the rows of its input (all "
            "workers; shown once every worker has read its shard).",
            Q(
                f"{per_job('dcsched_job_inference_rows_done')} / on (job_id, team) "
                f"{per_job('dcsched_job_inference_rows')}",
                JOB_LEGEND,
            ),
            unit=RATIO,
            job_link=True,
            width=8,
        ),
        "Inference rows: scored and total": timeseries_panel(
            "Rows each running infer job has scored, beside the rows it scores in all.",
            Q(per_job("dcsched_job_inference_rows_done"), "{{job_id}} scored"),
            Q(per_job("dcsched_job_inference_rows"), "{{job_id}} total"),
            job_link=True,
            width=8,
        ),
        "Inference throughput": timeseries_panel(
            "Rows per second each running infer job scores (all workers, since its first batch).",
            Q(per_job("dcsched_job_inference_rows_per_second"), JOB_LEGEND),
            unit="suffix: rows/s",
            job_link=True,
            width=8,
        ),
    }
    return laid_out(board, panels)


SERVE = 'deployment=~"$deployment"'
SERVE_RATE = f"rate(dcsched_serve_requests_total{{{SERVE}}}[$__rate_interval])"
SERVE_BUCKETS = f"rate(dcsched_serve_request_duration_seconds_bucket{{{SERVE}}}[$__rate_interval])"
REPLICA_LEGEND = "{{replica}} ({{deployment}})"
# DcschedServeErrors fires above 1% of 5xx, DcschedServeSlow above a p99 of 100 ms.
ERROR_MARK: Marks = [(0.01, "red")]
SLOW_MARK: Marks = [(0.1, "orange")]


def errors(by: str, codes: str) -> str:
    """Share of the requests answered with ``codes`` (a regex), per ``by``."""
    return (
        f'sum by ({by}) (rate(dcsched_serve_requests_total{{{SERVE}, code=~"{codes}"}}'
        f"[$__rate_interval])) / sum by ({by}) ({SERVE_RATE})"
    )


def latency(quantile: float, *by: str) -> str:
    """The ``quantile`` of the replicas' answer time, per ``by``."""
    return f"histogram_quantile({quantile}, sum by ({', '.join([*by, 'le'])}) ({SERVE_BUCKETS}))"


def serving() -> dm.Dashboard:
    wanted = Q(
        f"max by (deployment) (dcsched_serve_replicas_wanted{{{SERVE}}})", "{{deployment}} wanted"
    )
    board = dashboard(
        "dcsched-serving",
        "dcsched / Serving",
        "Online serving deployments (`dcsched serve`): requests, errors and latency as each "
        "replica measures them (scrape job dcsched-serving), replicas by state as the server sees "
        "them, and the model version each replica serves.",
        variables=[
            query_variable(
                "deployment",
                "Deployment",
                "label_values(dcsched_serve_model_info, deployment)",
                description="A serving deployment (`dcsched serve list`).",
            )
        ],
        time_from="now-1h",
    )
    panels: dict[str, Item] = {
        "Deployments": row(),
        "Replicas ready / wanted": stat_panel(
            "Replicas in the load balancer and passing its health check, and the count each "
            "deployment aims for.",
            Q(
                f'sum by (deployment) (dcsched_serve_replicas{{{SERVE}, state="ready"}})',
                "{{deployment}} ready",
            ),
            wanted,
            width=6,
        ),
        "Requests per second": stat_panel(
            "Requests all replicas of the selected deployments answer, any code.",
            Q(f"sum({SERVE_RATE})"),
            unit="reqps",
            width=6,
        ),
        "5xx ratio": stat_panel(
            "Share of requests the replicas failed (HTTP 5xx: the model raised). Over 1% for 5 "
            "minutes raises DcschedServeErrors; bad input is a 4xx and does not count.",
            Q(
                f'sum(rate(dcsched_serve_requests_total{{{SERVE}, code=~"5.."}}'
                f"[$__rate_interval])) / sum({SERVE_RATE})"
            ),
            unit="percentunit",
            thresholds=ERROR_MARK,
            width=6,
        ),
        "p99 latency": stat_panel(
            "99th percentile of the replicas' answer time, all selected deployments. Over 100 ms "
            "for 10 minutes raises DcschedServeSlow.",
            Q(latency(0.99)),
            unit="s",
            thresholds=SLOW_MARK,
            width=6,
        ),
        "Requests": row(),
        "Request rate by code": timeseries_panel(
            "Requests answered per second, by deployment and HTTP status code.",
            Q(f"sum by (deployment, code) ({SERVE_RATE})", "{{deployment}} {{code}}"),
            unit="reqps",
            stack=True,
        ),
        "Error ratio": timeseries_panel(
            "Share of requests answered 5xx (the replica failed; DcschedServeErrors above 1%) and "
            "4xx (the request was refused: malformed, wrong features, too large).",
            Q(errors("deployment", "5.."), "{{deployment}} 5xx"),
            Q(errors("deployment", "4.."), "{{deployment}} 4xx"),
            unit=Unit("percentunit", 0),
            thresholds=ERROR_MARK,
        ),
        "Latency p50, p99": timeseries_panel(
            "From a request's last byte to its answer being written, as the replicas measure it "
            "(the load balancer's hop is not in it). p99 over 100 ms for 10 minutes raises "
            "DcschedServeSlow.",
            Q(latency(0.5, "deployment"), "{{deployment}} p50"),
            Q(latency(0.99, "deployment"), "{{deployment}} p99"),
            unit=Unit("s", 0),
            thresholds=SLOW_MARK,
        ),
        "p99 latency by replica": timeseries_panel(
            "The same p99, each replica on its own: one slow replica (a busy node) stands out "
            "here.",
            Q(latency(0.99, "deployment", "replica"), REPLICA_LEGEND),
            unit=Unit("s", 0),
            thresholds=SLOW_MARK,
        ),
        "Replicas": row(),
        "Requests per second by replica": timeseries_panel(
            "How the load balancer spreads requests over each deployment's replicas.",
            Q(f"sum by (deployment, replica) ({SERVE_RATE})", REPLICA_LEGEND),
            unit="reqps",
        ),
        "In flight per replica": timeseries_panel(
            "Requests each replica has received and not yet answered (autoscaling follows the "
            "balancer's own count of these toward `target_in_flight`).",
            Q(
                f"sum by (deployment, replica) (dcsched_serve_requests_in_flight{{{SERVE}}})",
                REPLICA_LEGEND,
            ),
            unit=Unit("short", 0),
        ),
        "Replicas by state": timeseries_panel(
            "Each deployment's live replica jobs (server): pending (waiting for admission: "
            "`dcsched serve status` says why), starting (admitted or running, not passing the "
            "balancer's health check), ready, draining (retired by an update or a scale-down); and "
            "the count it aims for.",
            Q(
                f"sum by (deployment, state) (dcsched_serve_replicas{{{SERVE}}})",
                "{{deployment}} {{state}}",
            ),
            wanted,
            unit=Unit("short", 0),
        ),
        "Replicas answering Prometheus": timeseries_panel(
            "Replicas listed in serving.json (the server writes every replica that has a balancer "
            "slot) and those whose /metrics answered the last scrape.",
            Q(
                f'count by (deployment) (up{{job="dcsched-serving", {SERVE}}})',
                "{{deployment}} listed",
            ),
            Q(f'sum by (deployment) (up{{job="dcsched-serving", {SERVE}}})', "{{deployment}} up"),
            unit=Unit("short", 0),
        ),
        "Model version served": timeseries_panel(
            "Replicas serving each model version: one version normally, two during a rolling "
            "update (`dcsched serve update`).",
            Q(
                f"count by (deployment, model, version) (dcsched_serve_model_info{{{SERVE}}})",
                "{{deployment}}: {{model}}:{{version}}",
            ),
            unit=Unit("short", 0),
            stack=True,
            width=24,
        ),
    }
    return laid_out(board, panels)


def team_series(series: str, resource: str) -> str:
    return f'{series}{{{TEAM}, resource="{resource}"}}'


def quota_panel(resource: str, unit: str) -> timeseries.Panel:
    return timeseries_panel(
        f"Nominal quota of each team ({resource}; absent: unlimited), what its admitted and "
        "running jobs hold, and the part of that above nominal, borrowed from its cohort.",
        Q(team_series("dcsched_team_quota_nominal", resource), "{{team}} nominal"),
        Q(team_series("dcsched_team_quota_used", resource), "{{team}} used"),
        Q(team_series("dcsched_team_quota_borrowed", resource), "{{team}} borrowed"),
        unit=unit,
        width=8,
    )


def allocated_hours(resource: str) -> Q:
    return Q(
        f"sum by (team) (increase(dcsched_allocated_{resource}_seconds_total{{{TEAM}}}"
        "[$__range])) / 3600",
        TEAM_LEGEND,
    )


def teams() -> dm.Dashboard:
    board = dashboard(
        "dcsched-teams",
        "dcsched / Teams",
        "Each team's quota, what it was allocated and what it used, and its fair share.",
        variables=[query_variable("team", "Team", "label_values(dcsched_team_quota_used, team)")],
        time_from="now-24h",
    )
    panels: dict[str, Item] = {
        "Quota": row(),
        "GPU quota: nominal, used, borrowed": quota_panel("gpus", "short"),
        "CPU quota: nominal, used, borrowed": quota_panel("cpus", "short"),
        "Memory quota: nominal, used, borrowed": quota_panel("memory_bytes", "bytes"),
        "Quota in use": bargauge_panel(
            "Held over nominal quota, per team and resource (over 100%: borrowing).",
            Q(
                f"dcsched_team_quota_used{{{TEAM}}} / dcsched_team_quota_nominal{{{TEAM}}}",
                "{{team}} {{resource}}",
            ),
            unit=Unit("percentunit", 0),
            thresholds=[(1, "orange")],
            width=24,
            height=6,
        ),
        "Allocated and used": row(),
        "GPUs: allocated vs used": timeseries_panel(
            "GPUs allocated to each team's running jobs (server) and GPU-equivalents they use "
            "(node exporters).",
            Q(f"team:dcsched_job_allocated_gpus:sum{{{TEAM}}}", "{{team}} allocated"),
            Q(f"team:dcsched_job_gpu_utilization_ratio:sum{{{TEAM}}}", "{{team}} used"),
        ),
        "CPUs: allocated vs used": timeseries_panel(
            "CPUs allocated to each team's running jobs and CPU-seconds per second their processes "
            "burn (5-minute rate).",
            Q(f"team:dcsched_job_allocated_cpus:sum{{{TEAM}}}", "{{team}} allocated"),
            Q(f"team:dcsched_job_cpu_seconds:rate5m{{{TEAM}}}", "{{team}} used"),
        ),
        "GPU use per allocated GPU": timeseries_panel(
            "Measured over allocated, per team.",
            Q(f"team:dcsched_job_gpu_used_per_allocated:ratio{{{TEAM}}}", TEAM_LEGEND),
            unit=RATIO,
            thresholds=IDLE_MARK,
        ),
        "GPUs allocated (5-minute average)": timeseries_panel(
            "From the allocated GPU-seconds counter: the GPUs each team held on average.",
            Q(f"team:dcsched_allocated_gpu_seconds:rate5m{{{TEAM}}}", TEAM_LEGEND),
        ),
        "GPU-hours allocated in the range": bargauge_panel(
            "GPU-seconds allocated to each team in the dashboard's time range, in hours (what "
            "`dcsched usage` reports).",
            allocated_hours("gpu"),
            unit="h",
        ),
        "CPU-hours allocated in the range": bargauge_panel(
            "CPU-seconds allocated to each team in the time range, in hours.",
            allocated_hours("cpu"),
            unit="h",
        ),
        "Fair share": row(),
        "Dominant share vs weight": timeseries_panel(
            "Each team's dominant share of the cluster (its largest share of any resource) beside "
            "its weight's share of all weights. Under the fair policy, teams that all have work "
            "converge to their weight share.",
            Q(f"dcsched_team_dominant_share_ratio{{{TEAM}}}", "{{team}} held"),
            Q(
                f"dcsched_team_fair_share_weight{{{TEAM}}} / scalar(sum("
                "dcsched_team_fair_share_weight))",
                "{{team}} weight share",
            ),
            unit=Unit("percentunit", 0),
        ),
        "Queue by team": timeseries_panel(
            "PENDING jobs and the GPUs they ask for.",
            Q(f"dcsched_queue_length{{{TEAM}}}", "{{team}} jobs"),
            Q(f"dcsched_queue_pending_gpus{{{TEAM}}}", "{{team}} GPUs"),
        ),
        "Preemptions": timeseries_panel(
            "The team's runs preempted per interval (by higher priority jobs of the team, or to "
            "reclaim quota it borrowed).",
            Q(team_increase("dcsched_preemptions_total"), TEAM_LEGEND),
            width=24,
        ),
    }
    return laid_out(board, panels)


JOB = 'job_id="$job"'


def its_gpus(series: str) -> str:
    """A GPU series of the GPUs the selected job has memory on."""
    return (
        f"max by (node, gpu) ({series}) and on (node, gpu) "
        f"dcsched_job_gpu_memory_used_bytes{{{JOB}}}"
    )


def job() -> dm.Dashboard:
    board = dashboard(
        "dcsched-job",
        "dcsched / Job",
        "One dcsched job by its id: what it holds, what it uses, how it trains. Per-job series "
        "exist only while the job runs.",
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
    )
    panels: dict[str, Item] = {
        "Team": stat_panel(
            "The team the job belongs to.",
            Q(f"max by (team) (dcsched_job_allocated_cpus{{{JOB}}})", TEAM_LEGEND),
        ),
        "GPUs allocated": stat_panel(
            "GPUs reserved for the job.", Q(f"max(dcsched_job_allocated_gpus{{{JOB}}})")
        ),
        "CPUs allocated": stat_panel(
            "CPUs reserved for the job.", Q(f"max(dcsched_job_allocated_cpus{{{JOB}}})")
        ),
        "GPU use per allocated GPU": stat_panel(
            "Measured over allocated (under 10% for 15 minutes raises DcschedGPUAllocatedIdle).",
            Q(f"max(job_id_team:dcsched_job_gpu_used_per_allocated:ratio{{{JOB}}})"),
            unit="percentunit",
            thresholds=IDLE_MARK,
        ),
        "Epoch": stat_panel("Last finished epoch.", Q(f"max(dcsched_job_training_epoch{{{JOB}}})")),
        "Loss": stat_panel("Last training loss.", Q(f"max(dcsched_job_training_loss{{{JOB}}})")),
        "SM share by GPU": timeseries_panel(
            "The job's share of each GPU's SMs (NVML process samples).",
            Q(f"sum by (node, gpu) (dcsched_job_gpu_utilization_ratio{{{JOB}}})", GPU_LEGEND),
            unit=RATIO,
        ),
        "GPU memory by GPU": timeseries_panel(
            "GPU memory of the job's processes on each GPU.",
            Q(f"sum by (node, gpu) (dcsched_job_gpu_memory_used_bytes{{{JOB}}})", GPU_LEGEND),
            unit="bytes",
        ),
        "CPU used vs allocated": timeseries_panel(
            "CPU-seconds per second of the job's processes (all nodes) beside the CPUs reserved.",
            Q(f"sum(rate(dcsched_job_cpu_seconds_total{{{JOB}}}[$__rate_interval]))", "used"),
            Q(f"max(dcsched_job_allocated_cpus{{{JOB}}})", "allocated"),
        ),
        "Resident memory by node": timeseries_panel(
            "Resident memory of the job's processes.",
            Q(f"sum by (node) (dcsched_job_memory_rss_bytes{{{JOB}}})", NODE),
            unit="bytes",
        ),
        "Training loss": timeseries_panel(
            "Loss the job reports after each epoch.",
            Q(f"max(dcsched_job_training_loss{{{JOB}}})", "loss"),
        ),
        "Throughput": timeseries_panel(
            "Samples per second the job reports.",
            Q(f"max(dcsched_job_training_samples_per_second{{{JOB}}})", "samples/s"),
        ),
        "Its GPUs: temperature": timeseries_panel(
            "Temperature of the GPUs the job has memory on.",
            Q(its_gpus("dcsched_gpu_temperature_celsius"), GPU_LEGEND),
            unit="celsius",
        ),
        "Its GPUs: power": timeseries_panel(
            "Power draw of the GPUs the job has memory on (shared GPUs: the whole GPU's draw).",
            Q(its_gpus("dcsched_gpu_power_watts"), GPU_LEGEND),
            unit="watt",
        ),
    }
    return laid_out(board, panels)


DASHBOARDS = (overview, gpus, jobs, teams, job, serving)


def files() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in DASHBOARDS:
        board = make()
        encoded = JSONEncoder(sort_keys=False).encode(board)
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
