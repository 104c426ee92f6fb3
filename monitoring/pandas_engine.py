"""The pandas engine: a prediction log (SQLite, or Parquet) in memory, judged window by window."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

from common.records import read_prediction_log
from common.reference import Reference
from monitoring.engine import MonitoringError
from monitoring.gallery import least_confident
from monitoring.metrics import sample_keys, truth_metrics, window_aggregates, window_samples


def read_log(path: str | Path) -> pd.DataFrame:
    """A prediction log (SQLite, or Parquet exported from it) as a DataFrame; an empty one is an error."""
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"{path}: no prediction log here (the server writes one with --prediction-log)")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.DataFrame(read_prediction_log(path))
    except (sqlite3.DatabaseError, OSError, ValueError) as err:
        raise MonitoringError(f"{path}: not a readable prediction log ({err})") from None
    if frame.empty:
        raise MonitoringError(f"{path}: the prediction log is empty: nothing to monitor yet")
    if frame["window"].isna().all():
        raise MonitoringError(f"{path}: no record carries a window (send X-Window or 'window' with each request)")
    return frame.dropna(subset=["window"]).astype({"window": int})


class PandasLog:
    """A prediction log in memory (the LogEngine interface of monitoring.engine)."""

    engine = "pandas"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def versions(self) -> list[str]:
        return sorted(set(self.frame["model_version"].astype(str)))

    def of_version(self, name: str, version: str) -> PandasLog:
        frame = self.frame
        return PandasLog(frame[(frame["model_version"].astype(str) == version) & (frame["model_name"] == name)])

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
        return least_confident(self.frame, windows, per_window)

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        return truth_metrics(self.frame, truth)
