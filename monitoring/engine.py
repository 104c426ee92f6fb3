"""The interface every monitoring engine implements, the engines by name, and how a log is opened with one.

An engine reads a prediction log and computes, per window, only counts, sums, quantiles and keyed
samples; `monitoring.metrics.judge_windows` turns those into every metric, test and alert, so the
pandas engine (in memory) and the Spark engine (a cluster) reach the same verdicts.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from common.prediction_dataset import DatasetError, Part, filesystem, read_parts
from common.records import read_ground_truth
from common.reference import Reference
from common.spark import DEFAULT_SPARK_MASTER
from common.windows import DAILY_CLOCK, LeftOut, WindowClock, WindowError, with_windows
from monitoring.errors import MonitoringError
from monitoring.incremental import Increment

if TYPE_CHECKING:
    from monitoring.model import ModelRef

logger = logging.getLogger(__name__)
# Each engine by name: the module and class that read a log file (`read`) and a dataset's increment (`read_increment`)
ENGINE_CLASSES = {
    "pandas": ("monitoring.pandas_engine", "PandasLog"),
    "duckdb": ("monitoring.duckdb_engine", "DuckLog"),
    "spark": ("monitoring.spark_engine", "SparkLog"),
}
ENGINES = ("auto", *ENGINE_CLASSES)


class LogEngine(Protocol):
    """What the monitoring job asks of a prediction log, whichever engine holds it."""

    engine: str
    clock: WindowClock  # how the records' windows were numbered
    left_out: LeftOut  # records the reading could not place in a window (counted, named)

    @classmethod
    def read(cls, path: str | Path, clock: str, wall: WindowClock, spark_master: str) -> LogEngine:
        """A log file, each record in its window under the clock `clock` names (`wall`: the time windows' length
        and timezone); MonitoringError names a log it cannot read."""

    @classmethod
    def read_increment(
        cls, fs, parts: list[Part], increment: Increment, location: str, cache_dir: Path, spark_master: str
    ) -> LogEngine:
        """The records of the windows an increment judges, read from a dataset's `parts` (a blob or collector part
        copied into `cache_dir` first by engines that read local Parquet only); `left_out` is the caller's."""

    def versions(self) -> list[str]:
        """The model versions the log holds records of."""

    def of_version(self, name: str, version: str) -> LogEngine:
        """Only the records of one model version."""

    def is_empty(self) -> bool: ...

    def aggregates(self, reference: Reference) -> pd.DataFrame:
        """Per-window counts, sums and quantiles (`monitoring.metrics.AGGREGATE_COLUMNS`)."""

    def samples(self, size: int) -> pd.DataFrame:
        """Per window, the `size` records with the smallest sample keys (`monitoring.metrics.SAMPLE_COLUMNS`)."""

    def rows_of_windows(self, windows: list[int], limit: int) -> pd.DataFrame:
        """Up to `limit` records of `windows`: those with the smallest sample keys."""

    def least_confident(self, windows: list[int], per_window: int) -> pd.DataFrame:
        """The least confident flagged records of each window, with their images."""

    def flagged_records(self, windows: list[int]) -> pd.DataFrame:
        """Every record of `windows` flagged foreign or given a data-quality cause, with its image when it kept one."""

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        """Realised accuracy and true foreign share per window, from a ground-truth sidecar."""


def chosen_engine(engine: str, path: str | Path | None = None) -> str:
    """The engine `auto` stands for: DuckDB for Parquet (a file, a folder of parts, a dataset; `path` None), where
    it is the fastest in the smallest memory (bench/results/monitoring_engines.json), pandas for a SQLite log."""
    if engine != "auto":
        return engine
    if path is None or Path(path).suffix == ".parquet" or Path(path).is_dir():
        return "duckdb"
    return "pandas"


def engine_class(engine: str) -> type[LogEngine]:
    """The class of the engine named `engine` (not auto), imported now: Spark's import alone takes seconds."""
    if engine not in ENGINE_CLASSES:
        raise MonitoringError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    module, name = ENGINE_CLASSES[engine]
    return getattr(importlib.import_module(module), name)


def open_log(
    path: str | Path,
    engine: str = "auto",
    spark_master: str = DEFAULT_SPARK_MASTER,
    clock: str = "auto",
    wall: WindowClock = DAILY_CLOCK,
) -> LogEngine:
    """The prediction log at `path`, read by the pandas engine (SQLite or Parquet), DuckDB (Parquet) or Spark
    (Parquet), each record in its window under `clock` (auto, simulated or wall; `wall`: the time windows' length
    and timezone)."""
    try:
        return engine_class(chosen_engine(engine, path)).read(path, clock, wall, spark_master)
    except WindowError as err:
        raise MonitoringError(str(err)) from None


def for_version(log: LogEngine, model: ModelRef, path: str | Path) -> LogEngine:
    """Only the records of the model version the reference belongs to."""
    versions = log.versions()
    selected = log.of_version(model.name, model.version)
    if selected.is_empty():
        raise MonitoringError(
            f"{path}: no records of {model.name} version {model.version} (the log holds versions "
            f"{', '.join(versions)}); pass --model for the version that served them"
        )
    if len(versions) > 1:
        logger.warning("%s holds versions %s; monitoring version %s only", path, ", ".join(versions), model.version)
    return selected


def read_truth(path: str | Path) -> pd.DataFrame:
    """A simulation's ground-truth sidecar (request id, image index, window, source, label)."""
    try:
        return read_ground_truth(path)
    except FileNotFoundError as err:
        raise MonitoringError(str(err)) from None


def open_dataset(
    location: str, increment: Increment, engine: str, cache_dir: Path, spark_master: str = DEFAULT_SPARK_MASTER
) -> LogEngine:
    """The records an increment judges, read from a partitioned dataset by the pandas, DuckDB or Spark engine,
    each in its window under the increment's clock; records of windows an earlier run judged are counted as late.

    DuckDB and Spark read local Parquet parts where they are; parts in a blob container, and collector JSON
    lines, are first copied into `cache_dir` as Parquet (neither has an Azure connector here), once each.
    """
    fs, _ = filesystem(location)
    parts = list(increment.parts)
    if increment.through is None or not parts:
        raise MonitoringError(f"{location}: no complete window to judge yet (every window so far is judged or still open)")
    try:
        left_out = _left_out(fs, [part for part in parts if part.path not in set(increment.reread)], increment, location)
        log = engine_class(chosen_engine(engine)).read_increment(fs, parts, increment, location, cache_dir, spark_master)
    except DatasetError as err:
        raise MonitoringError(str(err)) from None
    log.left_out = left_out
    return log


def _left_out(fs, fresh: list[Part], increment: Increment, location: str) -> LeftOut:
    """What the parts read for the first time hold that no window of this run can take: unreadable timestamps,
    unstamped records under simulated windows, and late records (of windows an earlier run judged). Parts an
    earlier run read already were counted then."""
    frame = read_parts(fs, fresh, ["window", "timestamp"])
    placed, left_out = with_windows(frame, increment.clock, location)
    late = int((placed["window"] <= increment.after).sum()) if increment.after is not None else 0
    return left_out + LeftOut(late=late)
