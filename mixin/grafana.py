"""Small builders for Grafana dashboard JSON (schemaVersion 39) as plain dicts, no grafanalib needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 39
GRID_WIDTH = 24
# Every panel and target reads from the dashboard's data source variable, never a concrete uid.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"  # time_series | heatmap | table


@dataclass(frozen=True, slots=True)
class Step:
    """One threshold step: the colour from `value` upwards (None is the base step)."""

    color: str
    value: float | None = None


def thresholds(*steps: Step) -> Json:
    base = steps or (Step("green"),)
    return {"mode": "absolute", "steps": [{"color": s.color, "value": s.value} for s in base]}


def _targets(targets: tuple[Target, ...]) -> list[Json]:
    out = []
    for i, t in enumerate(targets):
        out.append({
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": t.expr,
            "format": t.fmt,
            "instant": t.instant,
            "legendFormat": t.legend or "__auto",
            "range": not t.instant,
            "refId": chr(ord("A") + i),
        })
    return out


def _panel(kind: str, title: str, description: str, targets: tuple[Target, ...], width: int, height: int,
           field_defaults: Json, options: Json) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(targets),
        "fieldConfig": {"defaults": field_defaults, "overrides": []},
        "options": options,
        # Filled in by `layout`; kept here so every panel has the same keys.
        "id": 0,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
    }


def timeseries(title: str, description: str, *targets: Target, unit: str = "short", stack: bool = False,
               steps: tuple[Step, ...] = (), min_: float | None = 0, max_: float | None = None,
               width: int = 12, height: int = 8) -> Json:
    custom: Json = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 60 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        # Draw the alert thresholds as dashed lines so "above the line" means "alert territory".
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"}, "custom": custom,
                      "thresholds": thresholds(*steps)}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    options = {
        "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom",
                   "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, targets, width, height, defaults, options)


def stat(title: str, description: str, *targets: Target, unit: str = "short", steps: tuple[Step, ...] = (),
         text_mode: str = "auto", decimals: int | None = None, width: int = 4, height: int = 4) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": thresholds(*steps),
                      "mappings": []}
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
    }
    return _panel("stat", title, description, targets, width, height, defaults, options)


def bargauge(title: str, description: str, *targets: Target, unit: str = "short", width: int = 12,
             height: int = 8) -> Json:
    defaults: Json = {"unit": unit, "min": 0, "color": {"mode": "palette-classic"},
                      "thresholds": thresholds()}
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
    }
    return _panel("bargauge", title, description, targets, width, height, defaults, options)


def heatmap(title: str, description: str, target: Target, unit: str = "s", width: int = 12,
            height: int = 8) -> Json:
    defaults: Json = {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                 "scaleDistribution": {"type": "linear"}}}
    options = {
        "calculate": False,  # the exporter's buckets are already a histogram
        "cellGap": 1,
        "color": {"exponent": 0.5, "fill": "dark-orange", "mode": "scheme", "reverse": False,
                  "scale": "exponential", "scheme": "Oranges", "steps": 64},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": False},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
    }
    return _panel("heatmap", title, description, (target,), width, height, defaults, options)


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "id": 0,
            "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": 0}}


def layout(panels: list[Json]) -> list[Json]:
    """Assign ids and flow panels left to right, wrapping at the grid width; rows start a new line."""
    x = y = line_height = 0
    for pid, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > GRID_WIDTH:
            y, x, line_height = y + line_height, 0, 0
        pos["x"], pos["y"] = x, y
        panel["id"] = pid
        x += pos["w"]
        line_height = max(line_height, pos["h"])
        if panel["type"] == "row":
            x = GRID_WIDTH  # nothing shares a line with a row header
    return panels


def datasource_variable() -> Json:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",  # panels use =~, so "All" also matches series added after the page loaded
        "options": [],
        "refresh": 2,  # on time range change, so new assistants appear without a reload
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def dashboard(uid: str, title: str, description: str, tags: list[str], variables: list[Json],
              panels: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # shared crosshair
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": True, "keepTime": True,
                   "tags": tags, "targetBlank": False, "title": "assistants-exporter", "type": "dashboards"}],
        "annotations": {"list": []},
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "templating": {"list": variables},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "version": 1,
        "weekStart": "",
    }
