"""The monitoring dashboard: one self-contained Plotly HTML page of every window metric over time."""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from monitoring.alerts import Alert
from monitoring.catalog import ACCURACY, CLASS_MIX, CONFIDENCE, DRIFT_TESTS, FOREIGN, PANELS, RATES, drawn_in, label

BLUE, GREEN = (31, 119, 180), (44, 160, 44)  # Plotly's first and third default colours


def window_axis(metrics: pd.DataFrame) -> pd.Series:
    """Where each window stands on the x axis: the local date and time it starts at for a window of wall-clock time
    (Plotly's date axes take no UTC offset), else its number."""
    if len(metrics) and "window_start" in metrics and (metrics["window_start"].astype(str) != "").all():
        starts = [datetime.fromisoformat(text).replace(tzinfo=None) for text in metrics["window_start"]]
        return pd.Series(starts, index=metrics.index, dtype=object)
    return metrics["window"]


def dashboard_figure(
    metrics: pd.DataFrame,
    alerts: list[Alert],
    title: str,
    window_unit: str = "window",
    versions: list[tuple[int, int, str]] | None = None,
    incidents: list[tuple[int, int]] | None = None,
    notes: dict[int, str] | None = None,
) -> go.Figure:
    """Every window metric over the windows, alerts marked; a window of wall-clock time is drawn at its start.
    Over a history, `versions` (first window, last window, version) marks where the serving version changed and
    `incidents` (opened, last window) shades each incident; `notes` adds a line to a window's alert marks (what
    drifted in it)."""
    metrics = metrics.assign(x=window_axis(metrics))
    figure = make_subplots(
        rows=len(PANELS),
        cols=1,
        shared_xaxes=True,
        subplot_titles=PANELS,
        vertical_spacing=0.04,
        specs=[[{"secondary_y": index == 0}] for index in range(len(PANELS))],
    )
    x = metrics["x"]
    row = {panel: index + 1 for index, panel in enumerate(PANELS)}
    volume, low_confidence, foreign, *causes = drawn_in(RATES)
    figure.add_bar(x=x, y=metrics[volume.column], name=volume.label, marker_color="#c7d3e3", row=1, col=1, secondary_y=True)
    figure.add_scatter(x=x, y=metrics[low_confidence.column], name=low_confidence.label, row=1, col=1)
    if metrics[foreign.column].notna().any():
        figure.add_scatter(x=x, y=metrics[foreign.column], name=foreign.label, row=1, col=1)
    for metric in causes:  # only the causes some window holds: a clean history draws none
        if metric.column in metrics and (metrics[metric.column].fillna(0) > 0).any():
            figure.add_scatter(x=x, y=metrics[metric.column], name=metric.label, line_dash="dash", row=1, col=1)
    for metric in drawn_in(CONFIDENCE):
        figure.add_scatter(x=x, y=metrics[metric.column], name=metric.label, row=row[CONFIDENCE], col=1)
    for metric in drawn_in(CLASS_MIX):
        figure.add_scatter(
            x=x,
            y=metrics[metric.column],
            name=metric.label,
            stackgroup="classes",
            mode="none",
            row=row[CLASS_MIX],
            col=1,
            legendgroup="classes",
        )
    for metric in drawn_in(DRIFT_TESTS):
        if metrics[metric.column].notna().any():
            p_values = metrics[metric.column].clip(lower=1e-12)
            figure.add_scatter(
                x=x, y=p_values, name=metric.label, mode="lines+markers", marker_size=4, row=row[DRIFT_TESTS], col=1
            )
    figure.update_yaxes(type="log", row=row[DRIFT_TESTS], col=1)
    # the estimate is drawn only where its interval is narrow enough to mean something; the interval always
    estimable = metrics["accuracy_estimable"].fillna(True).astype(bool) if "accuracy_estimable" in metrics else True
    shown = metrics.assign(estimated_accuracy=metrics["estimated_accuracy"].where(estimable))
    estimate, truth = drawn_in(ACCURACY)
    _estimate_with_interval(figure, shown, estimate.column, estimate.label, "95% interval", BLUE, row=row[ACCURACY])
    _truth_line(figure, metrics, truth.column, truth.label, row=row[ACCURACY])
    estimate, truth = drawn_in(FOREIGN)
    if metrics[estimate.column].notna().any():
        figure.add_scatter(x=x, y=metrics[estimate.column], name=estimate.label, row=row[FOREIGN], col=1)
    _truth_line(figure, metrics, truth.column, truth.label, row=row[FOREIGN])
    at = dict(zip(metrics["window"], metrics["x"]))
    _mark_alerts(figure, alerts, at, notes or {})
    changes = [(at.get(first, first), version) for first, _, version in (versions or [])[1:]]
    spans = [(at.get(opened, opened), at.get(last, last)) for opened, last in incidents or []]
    # one shape per mark across all panels, set at once: plotly's add_vline adds one per panel and re-validates
    # every shape on each call, which cost seconds over a year of windows
    figure.update_layout(
        shapes=[*figure.layout.shapes, *_full_height_marks(changes, spans, [at.get(a.window, a.window) for a in alerts])],
        annotations=[
            *figure.layout.annotations,
            *(
                {
                    "x": x,
                    "y": 1,
                    "xref": "x",
                    "yref": "paper",
                    "text": f"v{version} serves",
                    "showarrow": False,
                    "xanchor": "left",
                    "font": {"color": "green"},
                }
                for x, version in changes
            ),
        ],
    )
    figure.update_xaxes(title_text=window_unit, row=len(PANELS), col=1)
    figure.update_layout(title=title, height=300 * len(PANELS), template="plotly_white", hovermode="x unified")
    return figure


def _estimate_with_interval(
    figure: go.Figure, frame: pd.DataFrame, column: str, name: str, band_name: str, rgb: tuple[int, int, int], row: int
) -> None:
    """An estimate's line over its shaded 95% interval (`<column>_low` to `<column>_high`)."""
    x = frame["x"] if "x" in frame else frame["window"]
    figure.add_scatter(x=x, y=frame[f"{column}_high"], line_width=0, showlegend=False, hoverinfo="skip", row=row, col=1)
    fill = f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.2)"
    figure.add_scatter(
        x=x, y=frame[f"{column}_low"], fill="tonexty", line_width=0, name=band_name, fillcolor=fill, row=row, col=1
    )
    figure.add_scatter(x=x, y=frame[column], name=name, line_color=f"rgb{rgb}", row=row, col=1)


def _truth_line(figure: go.Figure, metrics: pd.DataFrame, column: str, name: str, row: int) -> None:
    """A dotted black line of a figure only the simulator's sidecar knows, when evaluating."""
    if column in metrics:
        x = metrics["x"] if "x" in metrics else metrics["window"]
        figure.add_scatter(x=x, y=metrics[column], name=name, line={"color": "black", "dash": "dot"}, row=row, col=1)


def _mark_alerts(figure: go.Figure, alerts: list[Alert], at: dict, notes: dict[int, str]) -> None:
    """A marker at each alert's window (`at`: window -> x) in the first panel, the rule on hover; the red dotted
    line across the panels is one of `_full_height_marks`."""
    if alerts:
        figure.add_scatter(
            x=[at.get(a.window, a.window) for a in alerts],
            y=np.ones(len(alerts)),
            mode="markers",
            name="alerts",
            marker={"color": "red", "symbol": "triangle-down", "size": 10},
            text=[
                f"{a.rule}: {a.message}"
                + (f" ({a.window_start} to {a.window_end})" * bool(a.window_start))
                + (f"<br>{notes[a.window]}" if a.window in notes else "")
                for a in alerts
            ],
            hoverinfo="text",
            row=1,
            col=1,
        )


def _full_height_marks(changes: list, spans: list[tuple], alert_xs: list) -> list[dict]:
    """Shapes from the top panel to the bottom one: a green line where the serving version changed, a red shade
    over each incident, a red dotted line at each alert."""
    whole = {"xref": "x", "yref": "paper", "y0": 0, "y1": 1}
    return [
        *(
            {"type": "rect", "x0": x0, "x1": x1, "fillcolor": "rgba(214,39,40,0.08)", "line": {"width": 0}, **whole}
            for x0, x1 in spans
        ),
        *({"type": "line", "x0": x, "x1": x, "line": {"color": "green", "width": 2}, **whole} for x, _ in changes),
        *({"type": "line", "x0": x, "x1": x, "line": {"color": "red", "dash": "dot", "width": 1}, **whole} for x in alert_xs),
    ]


def write_dashboard(
    figure: go.Figure,
    path: Path,
    links: list[tuple[str, str]] | None = None,
    explained: list[tuple[str, str, str]] | None = None,
) -> Path:
    """The figure as one self-contained HTML page; `links` (text, href), e.g. each window's run outputs, below it;
    `explained` (window, cause, what drifted) as a table of the alerted windows above them."""
    page = figure.to_html(include_plotlyjs=True, full_html=True)
    if explained:
        rows = "".join(
            f"<tr><td>{escape(window)}</td><td>{escape(cause)}</td><td>{escape(what)}</td></tr>"
            for window, cause, what in explained
        )
        page = page.replace(
            "</body>",
            '<h3 style="font-family:sans-serif">Alerted windows: cause and what drifted '
            '(<a href="clusters.png">examples</a>, <a href="clusters.csv">every cluster</a>)</h3>'
            '<table id="explained" style="font-family:sans-serif;font-size:13px" border="1" cellpadding="4">'
            "<tr><th>window</th><th>cause</th><th>most over-represented cluster of flagged images</th></tr>"
            f"{rows}</table></body>",
        )
    if links:
        items = "".join(f'<li><a href="{escape(href)}">{escape(text)}</a></li>' for text, href in links)
        page = page.replace("</body>", f'<h3 style="font-family:sans-serif">Runs and their outputs</h3><ul>{items}</ul></body>')
    path.write_text(page)
    return path


LOOP_PANELS = ("Accuracy: realised, label-free and label-assisted", "Foreign digits: true share", "Labels per window")


def closed_loop_figure(
    windows: pd.DataFrame, promotions: list[tuple[int, str]], alert_windows: list[int], title: str
) -> go.Figure:
    """The closed loop over time: accuracy and its estimates, the foreign share, labels queued and back, the
    serving model version (shaded), alerts (red dotted) and promotions (green, with the new version)."""
    figure = make_subplots(rows=len(LOOP_PANELS), cols=1, shared_xaxes=True, subplot_titles=LOOP_PANELS, vertical_spacing=0.07)
    x = windows["window"]
    label_assisted = ("label_assisted_accuracy", "label-assisted estimate", "label-assisted 95% interval")
    _estimate_with_interval(figure, windows, *label_assisted, GREEN, row=1)
    figure.add_scatter(x=x, y=windows["label_free_accuracy"], name="label-free estimate", line_color="#1f77b4", row=1, col=1)
    _truth_line(figure, windows, "realised_accuracy", label("realised_accuracy"), row=1)
    _truth_line(figure, windows, "true_foreign_share", label("true_foreign_share"), row=2)
    figure.add_bar(x=x, y=windows["labels_queued"], name="labels queued", marker_color="#c7d3e3", row=3, col=1)
    figure.add_bar(x=x, y=windows["labels_arrived"], name="labels back", marker_color="#ff7f0e", row=3, col=1)
    shades = ("rgba(0,0,0,0)", "rgba(44,160,44,0.07)")
    for index, (_, group) in enumerate(windows.groupby((windows["model_version"] != windows["model_version"].shift()).cumsum())):
        first, last = int(group["window"].min()), int(group["window"].max())
        figure.add_vrect(
            x0=first - 0.5,
            x1=last + 0.5,
            fillcolor=shades[index % 2],
            line_width=0,
            annotation_text=f"v{group['model_version'].iloc[0]}",
            annotation_position="top left",
        )
    for window in alert_windows:
        figure.add_vline(x=window, line={"color": "red", "dash": "dot", "width": 1})
    for window, version in promotions:
        figure.add_vline(
            x=window + 0.5,
            line={"color": "green", "width": 2},
            annotation_text=f"promoted v{version}",
            annotation_position="bottom right",
        )
    figure.update_xaxes(title_text="window", row=len(LOOP_PANELS), col=1)
    figure.update_layout(
        title=title, height=300 * len(LOOP_PANELS), template="plotly_white", hovermode="x unified", barmode="overlay"
    )
    return figure
