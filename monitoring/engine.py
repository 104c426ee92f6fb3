"""The interface every monitoring engine implements, and how a log is opened with one.

An engine reads a prediction log and computes, per window, only counts, sums, quantiles and keyed
samples; `monitoring.metrics.judge_windows` turns those into every metric, test and alert, so the
pandas engine (in memory) and the Spark engine (a cluster) reach the same verdicts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from common.prediction_dataset import COLLECTOR_SUFFIX, PART_SUFFIX, DatasetError, Part, filesystem, read_parts
from common.records import read_ground_truth
from common.reference import Reference
from common.spark import DEFAULT_SPARK_MASTER
from common.windows import DAILY_CLOCK, LeftOut, WindowClock, WindowError, with_windows
from monitoring.errors import MonitoringError
from monitoring.incremental import Increment, in_increment

if TYPE_CHECKING:
    from monitoring.model import ModelRef

logger = logging.getLogger(__name__)
ENGINES = ("auto", "pandas", "duckdb", "spark")


class LogEngine(Protocol):
    """What the monitoring job asks of a prediction log, whichever engine holds it."""

    engine: str
    clock: WindowClock  # how the records' windows were numbered
    left_out: LeftOut  # records the reading could not place in a window (counted, named)

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
    engine = chosen_engine(engine, path)
    if engine == "pandas":
        from monitoring.pandas_engine import PandasLog

        return PandasLog.read(path, clock, wall)
    if engine == "duckdb":
        from monitoring.duckdb_engine import DuckLog, DuckLogError

        try:
            return DuckLog.read(path, clock, wall)
        except (DuckLogError, WindowError) as err:
            raise MonitoringError(str(err)) from None
    if engine != "spark":
        raise MonitoringError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    from monitoring.spark_engine import SparkLog, SparkLogError

    try:
        return SparkLog.read(path, spark_master, clock, wall)
    except (SparkLogError, WindowError) as err:
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
    engine = chosen_engine(engine)
    fs, _ = filesystem(location)
    parts = list(increment.parts)
    clock = increment.clock
    if increment.through is None or not parts:
        raise MonitoringError(f"{location}: no complete window to judge yet (every window so far is judged or still open)")
    try:
        left_out = _left_out(fs, [part for part in parts if part.path not in set(increment.reread)], increment, location)
    except DatasetError as err:
        raise MonitoringError(str(err)) from None
    if engine == "pandas":
        from monitoring.pandas_engine import IMAGE_COLUMNS, JUDGED_COLUMNS, PandasLog

        def images(windows: list[int]) -> pd.DataFrame:
            frame, _ = with_windows(read_parts(fs, parts, IMAGE_COLUMNS), clock, location)
            return frame[frame["window"].isin(windows) & frame["image"].notna()]

        try:
            frame = read_parts(fs, parts, JUDGED_COLUMNS + ["timestamp"])
        except DatasetError as err:
            raise MonitoringError(str(err)) from None
        placed, _ = with_windows(frame, clock, location)
        keep = in_increment(placed["window"], increment)
        return PandasLog(placed[keep].drop(columns=["timestamp"]), images, clock, left_out)
    if engine == "duckdb":
        from monitoring.duckdb_engine import DuckLog, DuckLogError

        try:
            log = DuckLog.read_files(local_parquet(fs, parts, cache_dir), location, increment.after, increment.through, clock)
        except (DuckLogError, DatasetError) as err:
            raise MonitoringError(str(err)) from None
        log.left_out = left_out
        return log
    if engine != "spark":
        raise MonitoringError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    from monitoring.spark_engine import SparkLog, SparkLogError

    try:
        files = local_parquet(fs, parts, cache_dir)
        log = SparkLog.read_files(files, location, spark_master, increment.after, increment.through, clock)
    except (SparkLogError, DatasetError) as err:
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


def local_parquet(fs, parts: list[Part], cache_dir: Path) -> list[str]:
    """Local Parquet paths of `parts`: local Parquet parts as they are, others copied (and converted) once."""
    from fsspec.implementations.local import LocalFileSystem

    files = []
    for part in parts:
        if isinstance(fs, LocalFileSystem) and part.kind == "parquet":
            files.append(part.path)
            continue
        name = part.path.replace("/", "__")
        target = cache_dir / (name if part.kind == "parquet" else name.removesuffix(COLLECTOR_SUFFIX) + PART_SUFFIX)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(".tmp")
            if part.kind == "parquet":
                fs.get_file(part.path, str(temporary))
            else:
                read_parts(fs, [part]).to_parquet(temporary, index=False)
            temporary.replace(target)
        files.append(str(target))
    return files
