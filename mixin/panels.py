"""Panel, query and variable helpers over grafana-foundation-sdk's builders (pinned in the `dev` extra).

The SDK fills in the JSON's shape and defaults; these helpers fix the choices every dashboard here shares
(the `${datasource}` variable, legends, threshold lines, ids and explicit refIds), so the dashboards read
as a list of panels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import bargauge as bargauge_builder
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import heatmap as heatmap_builder
from grafana_foundation_sdk.builders import prometheus as prometheus_builder
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as c
from grafana_foundation_sdk.models import dashboard as d
from grafana_foundation_sdk.models import heatmap as h
from grafana_foundation_sdk.models import prometheus as p

GRID_WIDTH = 24
# Every panel, target and query variable reads from the dashboard's data source variable, never a concrete uid.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
DATASOURCE_REF = d.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])

Json = dict[str, Any]
Viz = timeseries_builder.Panel | stat_builder.Panel | bargauge_builder.Panel | heatmap_builder.Panel
Panel = Viz | dashboard_builder.Row
Variable = dashboard_builder.QueryVariable | dashboard_builder.DatasourceVariable


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: p.PromQueryFormat = p.PromQueryFormat.TIME_SERIES


@dataclass(frozen=True, slots=True)
class Step:
    """One threshold step: the colour from `value` upwards (None is the base step)."""

    color: str
    value: float | None = None


def thresholds(*steps: Step) -> dashboard_builder.ThresholdsConfig:
    base = steps or (Step("green"),)
    return (dashboard_builder.ThresholdsConfig().mode(d.ThresholdsMode.ABSOLUTE)
            .steps([d.Threshold(value=s.value, color=s.color) for s in base]))


def _query(target: Target, index: int) -> prometheus_builder.Dataquery:
    query = (prometheus_builder.Dataquery()
             .datasource(DATASOURCE_REF)
             .editor_mode(p.QueryEditorMode.CODE)
             .expr(target.expr)
             .format(target.fmt)
             .legend_format(target.legend or "__auto")
             # The SDK leaves refId empty; Grafana and the end-to-end test name queries A, B, ...
             .ref_id(chr(ord("A") + index)))
    return query.instant() if target.instant else query.range()


def _common(panel: Viz, title: str, description: str, targets: tuple[Target, ...], width: int,
            height: int) -> None:
    """What every visualisation shares: data source, queries and size (positions come from `layout`)."""
    panel.title(title).description(description).datasource(DATASOURCE_REF).span(width).height(height)
    panel.targets([_query(t, i) for i, t in enumerate(targets)])


def _reduce_last() -> common_builder.ReduceDataOptions:
    return common_builder.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries(title: str, description: str, *targets: Target, unit: str = "short", stack: bool = False,
               steps: tuple[Step, ...] = (), min_: float | None = 0, max_: float | None = None,
               width: int = 12, height: int = 8) -> timeseries_builder.Panel:
    panel = (timeseries_builder.Panel()
             .unit(unit)
             .color_scheme(dashboard_builder.FieldColor().mode(d.FieldColorModeId.PALETTE_CLASSIC))
             .thresholds(thresholds(*steps))
             .draw_style(c.GraphDrawStyle.LINE)
             .line_width(1)
             .fill_opacity(60 if stack else 10)
             .show_points(c.VisibilityMode.NEVER)
             .span_nulls(False)
             .stacking(common_builder.StackingConfig().group("A")
                       .mode(c.StackingMode.NORMAL if stack else c.StackingMode.NONE))
             # Draw the alert thresholds as dashed lines so "above the line" means "alert territory".
             .thresholds_style(common_builder.GraphThresholdsStyleConfig()
                               .mode(c.GraphThresholdsStyleMode.DASHED if steps else c.GraphThresholdsStyleMode.OFF))
             .legend(common_builder.VizLegendOptions().calcs(["lastNotNull", "max"])
                     .display_mode(c.LegendDisplayMode.TABLE).placement(c.LegendPlacement.BOTTOM)
                     .show_legend(True))
             .tooltip(common_builder.VizTooltipOptions().mode(c.TooltipDisplayMode.MULTI)
                      .sort(c.SortOrder.DESCENDING)))
    if min_ is not None:
        panel.min(min_)
    if max_ is not None:
        panel.max(max_)
    _common(panel, title, description, targets, width, height)
    return panel


def stat(title: str, description: str, *targets: Target, unit: str = "short", steps: tuple[Step, ...] = (),
         text_mode: c.BigValueTextMode = c.BigValueTextMode.AUTO, decimals: int | None = None, width: int = 4,
         height: int = 4) -> stat_builder.Panel:
    panel = (stat_builder.Panel()
             .unit(unit)
             .color_scheme(dashboard_builder.FieldColor().mode(d.FieldColorModeId.THRESHOLDS))
             .thresholds(thresholds(*steps))
             .mappings([])
             .color_mode(c.BigValueColorMode.VALUE)
             .graph_mode(c.BigValueGraphMode.AREA)
             .justify_mode(c.BigValueJustifyMode.AUTO)
             .orientation(c.VizOrientation.AUTO)
             .reduce_options(_reduce_last())
             .text_mode(text_mode))
    if decimals is not None:
        panel.decimals(decimals)
    _common(panel, title, description, targets, width, height)
    return panel


def bargauge(title: str, description: str, *targets: Target, unit: str = "short", width: int = 12,
             height: int = 8) -> bargauge_builder.Panel:
    panel = (bargauge_builder.Panel()
             .unit(unit)
             .min(0)
             .color_scheme(dashboard_builder.FieldColor().mode(d.FieldColorModeId.PALETTE_CLASSIC))
             .thresholds(thresholds())
             .display_mode(c.BarGaugeDisplayMode.GRADIENT)
             .orientation(c.VizOrientation.HORIZONTAL)
             .reduce_options(_reduce_last())
             .show_unfilled(True))
    _common(panel, title, description, targets, width, height)
    return panel


def heatmap(title: str, description: str, target: Target, unit: str = "s", width: int = 12,
            height: int = 8) -> heatmap_builder.Panel:
    panel = (heatmap_builder.Panel()
             .hide_from(common_builder.HideSeriesConfig().legend(False).tooltip(False).viz(False))
             .scale_distribution(common_builder.ScaleDistributionConfig().type(c.ScaleDistribution.LINEAR))
             .calculate(False)  # the exporter's buckets are already a histogram
             .cell_gap(1)
             .color(heatmap_builder.HeatmapColorOptions().exponent(0.5).fill("dark-orange")
                    .mode(h.HeatmapColorMode.SCHEME).reverse(False).scale(h.HeatmapColorScale.EXPONENTIAL)
                    .scheme("Oranges").steps(64))
             .exemplars_color("rgba(255,0,255,0.7)")
             .filter_values(heatmap_builder.FilterValueRange().le(1e-9))
             .show_legend()
             .rows_frame(heatmap_builder.RowsHeatmapOptions().layout(c.HeatmapCellLayout.AUTO))
             .mode(c.TooltipDisplayMode.SINGLE)
             .show_color_scale(False)
             .hide_y_histogram()
             .y_axis(heatmap_builder.YAxisConfig().axis_placement(c.AxisPlacement.LEFT).reverse(False).unit(unit)))
    _common(panel, title, description, (target,), width, height)
    return panel


def row(title: str) -> dashboard_builder.Row:
    return dashboard_builder.Row(title).collapsed(False)


def datasource_variable() -> dashboard_builder.DatasourceVariable:
    return (dashboard_builder.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .hide(d.VariableHide.DONT_HIDE).include_all(False).multi(False)
            .regex(""))


def query_variable(name: str, label: str, query: str) -> dashboard_builder.QueryVariable:
    return (dashboard_builder.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE_REF)
            .query({"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .hide(d.VariableHide.DONT_HIDE)
            .include_all(True)
            .multi(True)
            .all_value(".*")  # panels use =~, so "All" also matches series added after the page loaded
            .options([])
            # On time range change, so new assistants appear without a reload.
            .refresh(d.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .regex("")
            .sort(d.VariableSort.ALPHABETICAL_ASC))


def layout(panels: list[Panel]) -> list[Panel]:
    """Assign ids and flow panels left to right, wrapping at the grid width; rows start a new line.

    The SDK's own flow lets a panel that does not fit overhang the grid, so positions are set here.
    """
    x = y = line_height = 0
    for pid, panel in enumerate(panels, start=1):
        is_row = isinstance(panel, dashboard_builder.Row)
        built = panel.build()
        w, hgt = (GRID_WIDTH, 1) if is_row or built.grid_pos is None else (built.grid_pos.w, built.grid_pos.h)
        if is_row or x + w > GRID_WIDTH:
            y, x, line_height = y + line_height, 0, 0
        panel.id(pid).grid_pos(d.GridPos(h=hgt, w=w, x=x, y=y))
        x = GRID_WIDTH if is_row else x + w  # nothing shares a line with a row header
        line_height = max(line_height, hgt)
    return panels


def dashboard(uid: str, title: str, description: str, tags: list[str], variables: list[Variable],
              panels: list[Panel]) -> Json:
    board = (dashboard_builder.Dashboard(title)
             .uid(uid)
             .description(description)
             .tags(tags)
             .editable()
             .fiscal_year_start_month(0)
             .tooltip(d.DashboardCursorSync.CROSSHAIR)  # shared crosshair
             .link(dashboard_builder.DashboardLink("assistants-exporter").type(d.DashboardLinkType.DASHBOARDS)
                   .as_dropdown(False).icon("external link").include_vars(True).keep_time(True).tags(tags)
                   .target_blank(False))
             .refresh("30s")
             .time("now-3h", "now")
             # The SDK defaults to "browser"; empty means the viewer's profile setting, as before.
             .timezone("")
             .version(1)
             .week_start("")
             .annotations([])
             .variables(list(variables)))
    for panel in layout(panels):
        if isinstance(panel, dashboard_builder.Row):
            board.with_row(panel)
        else:
            board.with_panel(panel)
    return _plain(board.build())


def _plain(board: d.Dashboard) -> Json:
    """The dashboard as JSON types, plus the one field the SDK does not model: a query variable's
    `definition`, the text Grafana lists in the dashboard's variable settings."""
    doc: Json = json.loads(json.dumps(board, cls=JSONEncoder))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            var["definition"] = var["query"]["query"]
    return doc
