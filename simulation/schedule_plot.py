"""The picture of a schedule: intended and realised share of each source per window (Plotly HTML)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def schedule_figure(names: list[str], intended: np.ndarray, realised: np.ndarray, title: str, window_unit: str) -> go.Figure:
    windows = np.arange(len(intended))
    figure = go.Figure()
    for index, name in enumerate(names):
        colour = COLOURS[index % len(COLOURS)]
        figure.add_scatter(
            x=windows,
            y=intended[:, index],
            name=f"{name} intended",
            mode="lines",
            line={"color": colour, "width": 2},
            legendgroup=name,
        )
        figure.add_scatter(
            x=windows,
            y=realised[:, index],
            name=f"{name} realised",
            mode="markers",
            marker={"color": colour, "size": 5, "opacity": 0.6},
            legendgroup=name,
        )
    figure.update_layout(
        title=title,
        xaxis_title=window_unit,
        yaxis_title="share of traffic",
        yaxis_range=[0, 1.02],
        hovermode="x unified",
        template="plotly_white",
    )
    return figure


def write_schedule_html(figure: go.Figure, path: Path) -> Path:
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path
