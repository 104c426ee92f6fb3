"""A gallery of the least confident inputs of each flagged window (from the images the log keeps)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from common.records import decompress_image  # noqa: E402
from common.windows import SIMULATED_CLOCK, WindowClock  # noqa: E402


def least_confident(log: pd.DataFrame, windows: list[int], per_window: int) -> pd.DataFrame:
    """Per window, the `per_window` least confident records that kept their image."""
    kept = log[log["window"].isin(windows) & log["image"].notna()]
    return kept.sort_values(["window", "confidence"]).groupby("window").head(per_window)


def gallery_png(
    records: pd.DataFrame, title: str, path: Path, per_window: int, clock: WindowClock = SIMULATED_CLOCK
) -> Path | None:
    """The images of `records`, one row per window, each titled with its window (its local start time for a window
    of wall-clock time), the predicted class and the confidence."""
    if records.empty:
        return None
    windows = sorted(records["window"].unique())
    figure, axes = plt.subplots(len(windows), per_window, figsize=(per_window * 1.2, len(windows) * 1.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    # a time window by its local start: to the second for windows under a minute
    shape = "%Y-%m-%d %H:%M:%S" if clock.length_s % 60 else "%Y-%m-%d %H:%M"
    names = {window: f"{clock.start(window):{shape}}" if clock.is_wall else f"w{window}" for window in windows}
    for row, window in enumerate(windows):
        for column, record in enumerate(records[records["window"] == window].itertuples()):
            axes[row, column].imshow(decompress_image(record.image), cmap="gray", vmin=0, vmax=255)
            axes[row, column].set_title(f"{names[window]}: {record.predicted} ({record.confidence:.2f})", fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
