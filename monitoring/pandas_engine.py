"""The pandas engine: a prediction log (SQLite, or Parquet) in memory, judged window by window."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from common.records import PREDICTION_COLUMNS, read_prediction_log
from common.reference import Reference
from monitoring.engine import MonitoringError
from monitoring.gallery import least_confident
from monitoring.metrics import sample_keys, truth_metrics, window_aggregates, window_samples

# What judging reads: every column but the image blobs, which only the gallery needs (for a few records of a
# few windows), and the timestamp and fingerprint strings, which no step reads (strings are what a pandas
# frame of a log spends most of its memory and read time on).
JUDGED_COLUMNS = [name for name in PREDICTION_COLUMNS if name not in ("image", "timestamp", "fingerprint")]
IMAGE_COLUMNS = ["request_id", "image_index", "window", "image"]

# images of the given windows: (request_id, image_index, window, image) of the records that kept one
ImageReader = Callable[[list[int]], pd.DataFrame]


def read_log(path: str | Path, columns: list[str] | None = JUDGED_COLUMNS) -> pd.DataFrame:
    """A prediction log (SQLite, or Parquet exported from it) as a DataFrame of `columns` (None: all); an empty
    one is an error."""
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"{path}: no prediction log here (the server writes one with --prediction-log)")
    try:
        if path.suffix == ".parquet":
            present = set(pq.read_schema(path).names)
            frame = pd.read_parquet(path, columns=None if columns is None else [name for name in columns if name in present])
        else:
            frame = pd.DataFrame(read_prediction_log(path, columns))
    except (sqlite3.DatabaseError, OSError, ValueError) as err:
        raise MonitoringError(f"{path}: not a readable prediction log ({err})") from None
    if frame.empty:
        raise MonitoringError(f"{path}: the prediction log is empty: nothing to monitor yet")
    if frame["window"].isna().all():
        raise MonitoringError(f"{path}: no record carries a window (send X-Window or 'window' with each request)")
    return frame.dropna(subset=["window"]).astype({"window": int})


def log_images(path: str | Path) -> ImageReader:
    """The image reader of a log file: reads the image column of the asked windows only."""
    path = Path(path)

    def read(windows: list[int]) -> pd.DataFrame:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=IMAGE_COLUMNS, filters=[("window", "in", list(windows))])
        else:
            frame = pd.DataFrame(read_prediction_log(path, IMAGE_COLUMNS, windows))
        return frame[frame["image"].notna()]

    return read


class PandasLog:
    """A prediction log in memory (the LogEngine interface of monitoring.engine)."""

    engine = "pandas"

    def __init__(self, frame: pd.DataFrame, images: ImageReader | None = None) -> None:
        self.frame = frame
        self.images = images  # where the images are when the frame was read without them

    @classmethod
    def read(cls, path: str | Path) -> PandasLog:
        """A log file's judged columns in memory, its images left on disk until the gallery asks for some."""
        return cls(read_log(path), log_images(path))

    def versions(self) -> list[str]:
        return sorted(set(self.frame["model_version"].astype(str)))

    def of_version(self, name: str, version: str) -> PandasLog:
        frame = self.frame
        return PandasLog(frame[(frame["model_version"].astype(str) == version) & (frame["model_name"] == name)], self.images)

    def is_empty(self) -> bool:
        return self.frame.empty

    def aggregates(self, reference: Reference) -> pd.DataFrame:
        return window_aggregates(self.frame, reference)

    def samples(self, size: int) -> pd.DataFrame:
        return window_samples(self.frame, size)

    def rows_of_windows(self, windows: list[int], limit: int) -> pd.DataFrame:
        chosen = self.frame[self.frame["window"].isin(windows)]
        if len(chosen) <= limit:
            return chosen
        return chosen.assign(sample_key=sample_keys(chosen["request_id"], chosen["image_index"])).nsmallest(limit, "sample_key")

    def least_confident(self, windows: list[int], per_window: int) -> pd.DataFrame:
        if "image" in self.frame:
            return least_confident(self.frame, windows, per_window)
        if self.images is None:  # read without its images and without a way back to them: no gallery
            return self.frame.iloc[:0]
        images = self.images(windows)[["request_id", "image_index", "image"]]
        return least_confident(self.frame.merge(images, on=["request_id", "image_index"]), windows, per_window)

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        return truth_metrics(self.frame, truth)
