"""The pandas engine: a prediction log (SQLite, or Parquet) in memory, judged window by window."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from common.prediction_dataset import Part, read_parts
from common.records import PREDICTION_COLUMNS, read_prediction_log
from common.reference import Reference
from common.windows import (
    DAILY_CLOCK,
    NOTHING_LEFT_OUT,
    SIMULATED_CLOCK,
    LeftOut,
    WindowClock,
    WindowError,
    choose_clock,
    utc_text,
    with_windows,
)
from monitoring.clusters import flagged_mask
from monitoring.errors import MonitoringError
from monitoring.gallery import least_confident
from monitoring.incremental import Increment, in_increment
from monitoring.metrics import sample_keys, truth_metrics, window_aggregates, window_samples

# What judging reads: every column but the image blobs, which only the gallery needs (for a few records of a
# few windows), and the timestamp strings, which no step reads once each record has its window (strings are what
# a pandas frame of a log spends most of its memory and read time on; the fingerprint counts duplicate bursts).
JUDGED_COLUMNS = [name for name in PREDICTION_COLUMNS if name not in ("image", "timestamp")]
IMAGE_COLUMNS = ["request_id", "image_index", "timestamp", "window", "image"]

# images of the given windows: (request_id, image_index, window, image) of the records that kept one
ImageReader = Callable[[list[int]], pd.DataFrame]


def read_log(path: str | Path, columns: list[str] | None = JUDGED_COLUMNS) -> pd.DataFrame:
    """A prediction log (SQLite, or Parquet exported from it) as a DataFrame of `columns` (None: all); an empty
    one is an error. Records keep their simulated window or none (NaN): see `PandasLog.read`."""
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
    return frame


def log_stamping(path: str | Path) -> tuple[int, int]:
    """How many records of a log file carry a simulated window and how many do not, without reading them."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            metadata = pq.ParquetFile(path).metadata
            column = metadata.schema.names.index("window")
            unstamped = 0
            for index in range(metadata.num_row_groups):
                statistics = metadata.row_group(index).column(column).statistics
                if statistics is None:
                    windows = pd.read_parquet(path, columns=["window"])["window"]
                    return int(windows.notna().sum()), int(windows.isna().sum())
                unstamped += statistics.null_count
            return metadata.num_rows - unstamped, unstamped
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            total, stamped = connection.execute('SELECT count(*), count("window") FROM predictions').fetchone()
        return int(stamped), int(total - stamped)
    except (sqlite3.DatabaseError, OSError, ValueError) as err:
        raise MonitoringError(f"{path}: not a readable prediction log ({err})") from None


def log_images(path: str | Path, clock: WindowClock = SIMULATED_CLOCK) -> ImageReader:
    """The image reader of a log file: reads the image column of the asked windows only (time windows: the records
    scored between their first start and last end, then placed in their windows)."""
    path = Path(path)

    def read(windows: list[int]) -> pd.DataFrame:
        if not windows:
            return pd.DataFrame(columns=IMAGE_COLUMNS)
        if clock.is_wall:
            since, until = utc_text(clock.start(min(windows))), utc_text(clock.end(max(windows)))
            if path.suffix == ".parquet":
                between = [("timestamp", ">=", since), ("timestamp", "<", until)]
                frame = pd.read_parquet(path, columns=IMAGE_COLUMNS, filters=between)
            else:
                frame = pd.DataFrame(read_prediction_log(path, IMAGE_COLUMNS, between=(since, until)))
            frame, _ = with_windows(frame, clock, str(path))
            frame = frame[frame["window"].isin(windows)]
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=IMAGE_COLUMNS, filters=[("window", "in", list(windows))])
        else:
            frame = pd.DataFrame(read_prediction_log(path, IMAGE_COLUMNS, windows))
        return frame[frame["image"].notna()]

    return read


class PandasLog:
    """A prediction log in memory (the LogEngine interface of monitoring.engine)."""

    engine = "pandas"

    def __init__(
        self,
        frame: pd.DataFrame,
        images: ImageReader | None = None,
        clock: WindowClock = SIMULATED_CLOCK,
        left_out: LeftOut = NOTHING_LEFT_OUT,
    ) -> None:
        self.frame = frame
        self.images = images  # where the images are when the frame was read without them
        self.clock = clock  # how the records' windows were numbered
        self.left_out = left_out  # records the reading could not place in a window

    @classmethod
    def read(cls, path: str | Path, clock: str = "auto", wall: WindowClock = DAILY_CLOCK, spark_master: str = "") -> PandasLog:
        """A log file's judged columns in memory, each record in its window under the clock `clock` names
        (auto, simulated, wall; `wall` is the time windows' length and timezone), its images left on disk
        until the gallery asks for some."""
        try:
            chosen = choose_clock(clock, *log_stamping(path), wall, str(path))
        except WindowError as err:
            raise MonitoringError(str(err)) from None
        frame = read_log(path, JUDGED_COLUMNS + (["timestamp"] if chosen.is_wall else []))
        placed, left_out = with_windows(frame, chosen, str(path))
        if placed.empty:
            raise MonitoringError(f"{path}: no record has a readable window ({'; '.join(left_out.messages())})")
        return cls(placed.drop(columns=["timestamp"], errors="ignore"), log_images(path, chosen), chosen, left_out)

    @classmethod
    def read_increment(
        cls, fs, parts: list[Part], increment: Increment, location: str, cache_dir: Path, spark_master: str = ""
    ) -> PandasLog:
        """The judged columns of a dataset's `parts` in memory, only the records of the windows the increment
        judges, their images left in the parts until the gallery asks for some."""

        def images(windows: list[int]) -> pd.DataFrame:
            frame, _ = with_windows(read_parts(fs, parts, IMAGE_COLUMNS), increment.clock, location)
            return frame[frame["window"].isin(windows) & frame["image"].notna()]

        placed, _ = with_windows(read_parts(fs, parts, JUDGED_COLUMNS + ["timestamp"]), increment.clock, location)
        keep = in_increment(placed["window"], increment)
        return cls(placed[keep].drop(columns=["timestamp"]), images, increment.clock)

    def versions(self) -> list[str]:
        return sorted(set(self.frame["model_version"].astype(str)))

    def of_version(self, name: str, version: str) -> PandasLog:
        frame = self.frame
        chosen = frame[(frame["model_version"].astype(str) == version) & (frame["model_name"] == name)]
        return PandasLog(chosen, self.images, self.clock, self.left_out)

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

    def flagged_records(self, windows: list[int]) -> pd.DataFrame:
        chosen = self.frame[self.frame["window"].isin(windows) & flagged_mask(self.frame["flags"])]
        if "image" in chosen or self.images is None:
            return chosen
        images = self.images(windows)[["request_id", "image_index", "image"]]
        return chosen.merge(images, on=["request_id", "image_index"], how="left")

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        return truth_metrics(self.frame, truth)
