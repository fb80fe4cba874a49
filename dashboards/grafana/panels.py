"""Small typed helpers over the Grafana Foundation SDK, so every panel is built the same way.

Every panel and query points at one Prometheus datasource with a fixed uid (the one the
provisioning file creates), gets a stable id and refIds, and carries a description that
says which question it answers: the panel list in `PANELS.md` is generated from those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, table
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

DATASOURCE_UID = "watcher-prometheus"
DATASOURCE = dashboard_m.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
# The scrape job name in dashboards/prometheus/prometheus.yml; `up` and process metrics
# are filtered by it so other targets in a shared Prometheus do not leak in.
JOB = 'job="watcher"'

_REF_IDS = "ABCDEFGHIJ"

# Every panel builder of the SDK has the same chainable datasource/span/target/unit methods.
P = TypeVar("P", timeseries_b.Panel, stat.Panel, bargauge.Panel, statetimeline.Panel, table.Panel)


@dataclass(frozen=True)
class Q:
    """One PromQL query of a panel, with the legend Grafana shows for its series."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass
class PanelDoc:
    """What the README says about a panel."""

    section: str
    title: str
    question: str


@dataclass
class Board:
    """A dashboard under construction: hands out panel ids and records the panel docs."""

    title: str
    uid: str
    description: str
    builder: dashboard_b.Dashboard = field(init=False)
    docs: list[PanelDoc] = field(default_factory=list)
    _next_id: int = 1
    _section: str = ""
    _annotation_extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.builder = (
            dashboard_b.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["watcher"])
            .editable()
            .timezone("browser")
            .time("now-24h", "now")
            .refresh("30s")
            .tooltip(dashboard_m.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard_b.DashboardLink("watcher dashboards")
                .type(dashboard_m.DashboardLinkType.DASHBOARDS)
                .tags(["watcher"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def annotation(self, name: str, expr: str, color: str, title: str) -> None:
        """Events drawn on every time series of the dashboard, from a PromQL expression.

        The SDK has no fields for the Prometheus-specific step and title format, so they are
        added to the JSON by `render`.
        """
        self.builder.annotation(
            dashboard_b.AnnotationQuery()
            .name(name)
            .datasource(DATASOURCE)
            .enable(True)
            .hide(False)
            .icon_color(color)
            .expr(expr)
        )
        self._annotation_extras[name] = {
            "step": "60s",
            "titleFormat": title,
            "tagKeys": "model",
            "useValueForTime": False,
        }

    def variable(self, name: str, label: str, metric: str) -> None:
        """A single-choice variable listing the values of label `name` on `metric`."""
        self.builder.with_variable(
            dashboard_b.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(f"label_values({metric}, {name})")
            .refresh(dashboard_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(False)
            .include_all(False)
        )

    def row(self, title: str) -> None:
        self._section = title
        self.builder.with_row(dashboard_b.Row(title).id(self._take_id()))

    def add(self, panel: Any, question: str) -> None:
        """Add a panel built by one of the helpers below; `question` becomes its description."""
        title = panel._internal.title
        panel.id(self._take_id()).description(question)
        self.builder.with_panel(panel)
        self.docs.append(PanelDoc(self._section, title, question))

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def events_in_range(selector: str, by: str) -> str:
    """PromQL: how many times a counter went up in the dashboard's time range, by labels.

    `increase()` cannot see the first event of a labelled counter whose label values are
    not known in advance (a rejection reason, an alert kind): its series first appears
    already at 1. Subtracting the value at the start of the range, or 0 for a series that
    did not exist then, counts that event too; `clamp_min` turns the drop of a daemon
    restart into 0 (events before a restart in the range are then not counted).
    """
    start = f"{selector} offset $__range or {selector} * 0"
    return f"sum by ({by}) (clamp_min({selector} - ({start}), 0))"


# Replicas (watcher.replicas): every replica is its own target (`instance`), and reads of
# a per-model metric must neither add two replicas' copies nor show a stale one.
#
# - Counters: each replica counts what it did itself (a model that moves keeps its old
#   owner's counter, frozen, and starts one on the new owner), so `sum by` over rates,
#   increases and `events_in_range` adds the replicas' shares up to the fleet's total.
# - "Last batch" gauges (drift share, streak, rows, per-feature scores, performance...):
#   `owned`. A replica that loses a model forgets the gauges it keeps in ModelFamilies,
#   but the labelled prometheus_client gauges (per feature, per metric) stay behind
#   frozen, and a `max by` over them would mix the owner's value with a stale one. So a
#   series counts only while its replica owns the model: `unless ... watcher_model_owned
#   == 0` (not `and ... == 1`, so a lone SQLite daemon, which exports no
#   watcher_model_owned, keeps all its series). The `max by` around it drops `instance`,
#   so a model that moved stays one line across the move, and the instant of a hand-over
#   (both replicas scraped as owners) is not counted twice.
# - Timestamps (last batch, last successful retrain) only grow: `newest`, the max across
#   replicas, is the true one; a stale copy is older and never wins, and it stays right
#   in the moment after a hand-over before the new owner's first batch.
# - The run tracker's gauges (watcher_retrain_runs) are exported by the replica on the
#   fleet duties, for every model, from the shared runs table: `on_duty` keeps that
#   replica's series (a former duty holder's copies are frozen). A lone daemon exports
#   watcher_replicas_live 0, and keeps them all.
OWNER_ONLY = "unless on (job, instance, model) (watcher_model_owned == 0)"
ON_DUTY_ONLY = (
    "unless on (job, instance) "
    "((watcher_replica_duties == 0) and on (job, instance) (watcher_replicas_live > 0))"
)


def owned(selector: str, by: str = "model") -> str:
    """PromQL: a per-model gauge as its owner exports it, one series per `by`."""
    return f"max by ({by}) ({selector} {OWNER_ONLY})"


def on_duty(selector: str, by: str = "model") -> str:
    """PromQL: a fleet-wide gauge as the replica on duty exports it, one series per `by`."""
    return f"max by ({by}) ({selector} {ON_DUTY_ONLY})"


def newest(selector: str, by: str = "model") -> str:
    """PromQL: a timestamp gauge's newest value across replicas, one series per `by`."""
    return f"max by ({by}) ({selector})"


def _target(q: Q, ref_id: str) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .expr(q.expr)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .legend_format(q.legend or "__auto")
    )
    target = target.instant() if q.instant else target.range()
    if q.table:
        target = target.format(prometheus_m.PromQueryFormat.TABLE)
    return target


def _with_targets(panel: P, queries: list[Q], w: int, h: int, unit: str | None) -> P:
    panel = panel.datasource(DATASOURCE).span(w).height(h)
    for q, ref_id in zip(queries, _REF_IDS, strict=False):
        panel = panel.with_target(_target(q, ref_id))
    if unit is not None:
        panel = panel.unit(unit)
    return panel


def _thresholds(steps: list[tuple[float | None, str]]) -> dashboard_b.ThresholdsConfig:
    return (
        dashboard_b.ThresholdsConfig()
        .mode(dashboard_m.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_m.Threshold(value=v, color=c) for v, c in steps])
    )


def timeseries(
    title: str,
    queries: list[Q],
    *,
    unit: str | None = None,
    w: int = 12,
    h: int = 8,
    bars: bool = False,
    stack: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    dashed: str | None = None,
) -> timeseries_b.Panel:
    """A time series; `dashed` is a regex of series names drawn dashed (e.g. thresholds)."""
    panel = timeseries_b.Panel().title(title)
    panel = _with_targets(panel, queries, w, h, unit)
    panel = panel.legend(
        common_b.VizLegendOptions()
        .display_mode(common_m.LegendDisplayMode.TABLE)
        .placement(common_m.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    ).tooltip(
        common_b.VizTooltipOptions()
        .mode(common_m.TooltipDisplayMode.MULTI)
        .sort(common_m.SortOrder.DESCENDING)
    )
    if bars:
        panel = panel.draw_style(common_m.GraphDrawStyle.BARS).fill_opacity(60)
    else:
        panel = panel.fill_opacity(10).show_points(common_m.VisibilityMode.AUTO)
    if stack:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    if dashed is not None:
        panel = panel.override_by_regexp(
            dashed,
            [
                dashboard_m.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                )
            ],
        )
    return panel


def stat_panel(
    title: str,
    queries: list[Q],
    *,
    unit: str | None = None,
    w: int = 4,
    h: int = 4,
    steps: list[tuple[float | None, str]] | None = None,
    mappings: dict[str, tuple[str, str]] | None = None,
    text_mode: common_m.BigValueTextMode = common_m.BigValueTextMode.AUTO,
    no_value: str | None = None,
) -> stat.Panel:
    """A big number; `mappings` turns values into words ("1" -> ("up", "green"))."""
    panel = stat.Panel().title(title)
    panel = _with_targets(panel, queries, w, h, unit)
    panel = (
        panel.reduce_options(
            common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("")
        )
        .color_mode(common_m.BigValueColorMode.BACKGROUND)
        .graph_mode(common_m.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .thresholds(_thresholds(steps or [(None, "green")]))
    )
    if mappings:
        panel = panel.mappings(
            [
                dashboard_m.ValueMap(
                    options={
                        value: dashboard_m.ValueMappingResult(text=text, color=color)
                        for value, (text, color) in mappings.items()
                    }
                )
            ]
        )
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel


def bar_gauge(
    title: str,
    queries: list[Q],
    *,
    unit: str | None = None,
    w: int = 12,
    h: int = 8,
    minimum: float | None = None,
    maximum: float | None = None,
    steps: list[tuple[float | None, str]] | None = None,
) -> bargauge.Panel:
    """Horizontal bars, one per series, for ranking things (features, models)."""
    panel = bargauge.Panel().title(title)
    panel = _with_targets(panel, queries, w, h, unit)
    panel = (
        panel.reduce_options(
            common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("")
        )
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .thresholds(_thresholds(steps or [(None, "green")]))
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def state_timeline(
    title: str,
    queries: list[Q],
    *,
    w: int = 12,
    h: int = 8,
    mappings: dict[str, tuple[str, str]],
) -> statetimeline.Panel:
    """Coloured bands over time for 0/1 metrics (up/down, drifted/not)."""
    panel = statetimeline.Panel().title(title)
    panel = _with_targets(panel, queries, w, h, None)
    return (
        panel.show_value(common_m.VisibilityMode.NEVER)
        .merge_values(True)
        .legend(common_b.VizLegendOptions().show_legend(False))
        .mappings(
            [
                dashboard_m.ValueMap(
                    options={
                        value: dashboard_m.ValueMappingResult(text=text, color=color)
                        for value, (text, color) in mappings.items()
                    }
                )
            ]
        )
    )


def table_panel(
    title: str,
    queries: list[Q],
    *,
    w: int = 12,
    h: int = 8,
    hide: list[str] | None = None,
    rename: dict[str, str] | None = None,
    sort_by: str | None = None,
) -> table.Panel:
    """Instant queries merged into one table on their common labels."""
    panel = table.Panel().title(title)
    panel = _with_targets(panel, queries, w, h, None)
    panel = panel.show_header(True).cell_height(common_m.TableCellHeight.SM)
    if len(queries) > 1:
        merge = dashboard_m.DataTransformerConfig(id_val="merge", options={})
        panel = panel.with_transformation(merge)
    excluded = {"Time": True, **{name: True for name in hide or []}}
    panel = panel.with_transformation(
        dashboard_m.DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": excluded, "renameByName": rename or {}},
        )
    )
    if sort_by is not None:
        panel = panel.sort_by([common_b.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def render(board: Board) -> str:
    """The dashboard as stable JSON text (sorted keys) so regenerating gives the same bytes."""
    model = json.loads(json.dumps(board.builder.build(), cls=JSONEncoder))
    # Grafana expects lists under templating and annotations even when they are empty.
    model.setdefault("templating", {}).setdefault("list", [])
    model.setdefault("annotations", {}).setdefault("list", [])
    for annotation in model.get("annotations", {}).get("list", []):
        annotation.update(board._annotation_extras.get(annotation["name"], {}))
    return json.dumps(model, indent=2, sort_keys=True) + "\n"
