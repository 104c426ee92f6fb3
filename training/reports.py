"""Artifacts a reviewer opens in the MLflow UI: confusion matrix and misclassified digits."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from common.images import CLASS_NAMES  # noqa: E402


def confusion_matrix_html(matrix: np.ndarray, title: str, path: Path) -> Path:
    """A self-contained Plotly heatmap of the confusion matrix."""
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=CLASS_NAMES,
            y=CLASS_NAMES,
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", width=650, height=600
    )
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def confusion_matrix_png(matrix: np.ndarray, title: str, path: Path) -> Path:
    """The same confusion matrix as a PNG, for previews."""
    figure, axes = plt.subplots(figsize=(6.5, 6))
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    axes.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def digit_grid_png(images: np.ndarray, captions: list[str], title: str, path: Path, columns: int = 8) -> Path:
    """A grid of digits with one caption each (e.g. 'true 4 / pred 9 (0.98)')."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.set_title(caption, fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
