"""A gallery of the least confident inputs of each flagged window (from the images the log keeps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.images import IMAGE_SIDE
from common.records import decompress_image
from common.windows import SIMULATED_CLOCK, WindowClock

CAPTION_HEIGHT = 12  # pixels above each image for its caption
GAP = 4  # pixels between images of a row


def least_confident(log: pd.DataFrame, windows: list[int], per_window: int) -> pd.DataFrame:
    """Per window, the `per_window` least confident records that kept their image."""
    kept = log[log["window"].isin(windows) & log["image"].notna()]
    return kept.sort_values(["window", "confidence"]).groupby("window").head(per_window)


def gallery_png(
    records: pd.DataFrame, title: str, path: Path, per_window: int, clock: WindowClock = SIMULATED_CLOCK
) -> Path | None:
    """The images of `records`, one row per window, each captioned with its window (its local start time for a
    window of wall-clock time), the predicted class and the confidence.

    The images are laid out as one mosaic in one axes: a grid of axes per image cost seconds per gallery."""
    if records.empty:
        return None
    import matplotlib  # here: a run with nothing flagged draws no gallery and skips matplotlib's import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = sorted(records["window"].unique())
    cell_height, cell_width = IMAGE_SIDE + CAPTION_HEIGHT, IMAGE_SIDE + GAP
    mosaic = np.full((len(windows) * cell_height, per_window * cell_width), np.nan)  # NaN: drawn white
    # a time window by its local start: to the second for windows under a minute
    shape = "%Y-%m-%d %H:%M:%S" if clock.length_s % 60 else "%Y-%m-%d %H:%M"
    names = {window: f"{clock.start(window):{shape}}" if clock.is_wall else f"w{window}" for window in windows}
    captions = []
    for row, window in enumerate(windows):
        for column, record in enumerate(records[records["window"] == window].head(per_window).itertuples()):
            top, left = row * cell_height + CAPTION_HEIGHT, column * cell_width
            mosaic[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE] = decompress_image(record.image)
            captions.append((left + IMAGE_SIDE / 2, top - 1, f"{names[window]}: {record.predicted} ({record.confidence:.2f})"))
    figure, axis = plt.subplots(figsize=(per_window * 1.2, len(windows) * 1.4))
    colours = plt.get_cmap("gray").with_extremes(bad="white")
    axis.imshow(mosaic, cmap=colours, vmin=0, vmax=255, interpolation="nearest")
    for x, y, text in captions:
        axis.text(x, y, text, fontsize=6, ha="center", va="bottom")
    axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
