"""The DuckDB engine: per-window aggregates and samples of Parquet prediction logs, computed by DuckDB in
bounded memory at the speed of the columnar read (the records never become a pandas frame)."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pandas as pd

from common.images import NUM_CLASSES
from common.prediction_dataset import Part, local_parquet
from common.quality import DUPLICATE_MIN_COUNT, QUALITY_CAUSES
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG, PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from common.reference import CONFIDENCE_BINS, Reference
from common.windows import DAILY_CLOCK, NOTHING_LEFT_OUT, ORIGIN_S, SIMULATED_CLOCK, LeftOut, WindowClock, choose_clock
from monitoring.errors import MonitoringError
from monitoring.incremental import Increment
from monitoring.metrics import (
    AGGREGATE_COLUMNS,
    CONFIDENCE_QUANTILES,
    ENTROPY_FLOOR,
    OUT_OF_REFERENCE_FLAGS,
    REQUIRED_COLUMNS,
    SAMPLE_COLUMNS,
    SAMPLE_KEY_HEX_DIGITS,
    key_cut,
)

# DuckDB's own limit is 80% of the machine's memory; the engine's promise is a bounded footprint, spilling past it
MEMORY_LIMIT = os.environ.get("DIGITDRIFT_DUCKDB_MEMORY", "2GB")
_views = itertools.count()


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _connect():
    import duckdb

    # a folder of this process's own for what spills past the limit (DuckDB's default is .tmp in the working folder)
    spill = Path(tempfile.gettempdir()) / f"digitdrift-duckdb-{os.getpid()}"
    connection = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(spill)})
    # no progress bar: DuckDB draws it from native code, past Python's redirection of a run's output
    connection.execute("SET enable_progress_bar = false")
    connection.execute("SET TimeZone = 'UTC'")  # a timestamp without an offset is UTC, as common.windows reads it
    connection.execute("SET preserve_insertion_order = false")  # lets aggregations stream; every query orders itself
    return connection


class DuckLog:
    """A prediction log as a DuckDB view: the methods the monitoring job asks of an engine."""

    engine = "duckdb"

    def __init__(
        self,
        connection,
        view: str,
        inventory: pd.DataFrame,
        clock: WindowClock = SIMULATED_CLOCK,
        left_out: LeftOut = NOTHING_LEFT_OUT,
    ) -> None:
        self.connection = connection
        self.view = view  # the records, each with its window
        self.inventory = inventory  # records per model_name and model_version, counted once when the log is read
        self.clock = clock  # how the records' windows were numbered
        self.left_out = left_out  # records the reading could not place in a window

    @classmethod
    def read(cls, path: str | Path, clock: str = "auto", wall: WindowClock = DAILY_CLOCK, spark_master: str = "") -> DuckLog:
        """A Parquet log (a file, or a folder of part files), each record in its window under the clock `clock`
        names (auto, simulated, wall; `wall`: the time windows' length and timezone)."""
        path = Path(path)
        if path.suffix == ".db":
            raise MonitoringError(
                f"{path}: the DuckDB engine reads Parquet logs; export the SQLite log first "
                "(python -m serving --prediction-log LOG --export-parquet LOG.parquet), or use --engine pandas"
            )
        if not path.exists():
            raise MonitoringError(f"{path}: no prediction log here (a Parquet file or folder)")
        files = [str(path / "**" / "*.parquet")] if path.is_dir() else [str(path)]
        return cls._load(files, str(path), clock, wall)

    @classmethod
    def read_increment(
        cls, fs, parts: list[Part], increment: Increment, location: str, cache_dir: Path, spark_master: str = ""
    ) -> DuckLog:
        """The records of the windows an increment judges, from a dataset's parts read where they are (local
        Parquet) or from their copies in `cache_dir`."""
        files = local_parquet(fs, parts, cache_dir)
        return cls.read_files(files, location, increment.after, increment.through, increment.clock)

    @classmethod
    def read_files(cls, files: list[str], label: str, after: int | None, through: int, clock: WindowClock) -> DuckLog:
        """Parts of a partitioned dataset: records of windows after `after` through `through` under `clock`, the
        first of each (request_id, image_index) in part order, as replicas write at least once."""
        return cls._load(files, label, clock.kind, clock, (after, through))

    @classmethod
    def _load(
        cls, files: list[str], label: str, clock: str, wall: WindowClock, windows: tuple[int | None, int] | None = None
    ) -> DuckLog:
        import duckdb

        connection = _connect()
        raw = f"raw_{next(_views)}"
        try:
            listed = f"[{', '.join(literal(file) for file in files)}]"
            source = f"read_parquet({listed}, union_by_name = true"
            if windows is None:
                connection.execute(f"CREATE TEMP VIEW {raw} AS SELECT * FROM {source})")
            else:  # the first copy of a record in part order, as common.prediction_dataset.read_parts keeps
                connection.execute(
                    f"CREATE TEMP VIEW {raw} AS SELECT * EXCLUDE (filename, file_row_number) FROM "
                    f"{source}, filename = true, file_row_number = true) QUALIFY row_number() OVER "
                    "(PARTITION BY request_id, image_index ORDER BY "
                    f"list_position({listed}, filename), file_row_number) = 1"
                )
            present = [row[0] for row in connection.execute(f"DESCRIBE {raw}").fetchall()]
            missing = [column for column in REQUIRED_COLUMNS if column not in present]
            if missing:
                raise MonitoringError(f"{label}: not a prediction log (missing column(s) {', '.join(missing)})")
            stamped, total = connection.execute(f'SELECT count("window"), count(*) FROM {raw}').fetchone()
            if not total:
                raise MonitoringError(f"{label}: the prediction log is empty: nothing to monitor yet")
            chosen = choose_clock(clock, stamped, total - stamped, wall, label)
            # logs from before a column existed: NULLs
            absent = ", ".join(f"NULL::DOUBLE AS {column}" for column in PREDICTION_COLUMNS if column not in present)
            placed, left_out = _with_windows(connection, raw, chosen, label)
            view = f"records_{next(_views)}"
            keep = "TRUE"
            if windows is not None:
                after, through = windows
                keep = f'"window" <= {int(through)}' + ("" if after is None else f' AND "window" > {int(after)}')
            connection.execute(
                f"CREATE TEMP VIEW {view} AS SELECT * REPLACE (CAST(model_version AS VARCHAR) AS model_version)"
                f"{', ' + absent if absent else ''} FROM ({placed}) WHERE {keep}"
            )
            inventory = connection.execute(
                f"SELECT model_name, model_version, count(*) AS records FROM {view} GROUP BY ALL ORDER BY ALL"
            ).df()
        except duckdb.Error as err:
            connection.close()
            raise MonitoringError(f"{label}: not a readable Parquet log ({str(err).splitlines()[0][:300]})") from None
        if inventory.empty:
            raise MonitoringError(f"{label}: no record has a readable window ({'; '.join(left_out.messages())})")
        return cls(connection, view, inventory, chosen, left_out)

    def query(self, sql: str) -> pd.DataFrame:
        """A query's rows as the pandas engine gives them: images as bytes (DuckDB gives bytearray)."""
        frame = self.connection.execute(sql).df()
        if "image" in frame:
            frame["image"] = [bytes(image) if isinstance(image, bytearray | memoryview) else image for image in frame["image"]]
        return frame

    def versions(self) -> list[str]:
        return sorted(set(self.inventory["model_version"]))

    def of_version(self, name: str, version: str) -> DuckLog:
        chosen = (self.inventory["model_version"] == version) & (self.inventory["model_name"] == name)
        view = f"records_{next(_views)}"
        self.connection.execute(
            f"CREATE TEMP VIEW {view} AS SELECT * FROM {self.view} "
            f"WHERE model_version = {literal(version)} AND model_name = {literal(name)}"
        )
        return DuckLog(self.connection, view, self.inventory[chosen], self.clock, self.left_out)

    def is_empty(self) -> bool:
        return self.inventory.empty

    def aggregates(self, reference: Reference) -> pd.DataFrame:
        """AGGREGATE_COLUMNS per window, as monitoring.metrics.window_aggregates defines them."""
        flags = "coalesce(flags, '')"
        outside = " OR ".join(f"contains({flags}, {literal(flag)})" for flag in OUT_OF_REFERENCE_FLAGS)
        entropy = " + ".join(f"-{p} * ln(least(greatest({p}, {ENTROPY_FLOOR!r}), 1.0))" for p in PROBABILITY_COLUMNS)
        counts = [
            f"count_if(contains({flags}, {literal(LOW_CONFIDENCE_FLAG)})) AS low_confidence_count",
            f"count_if(contains({flags}, {literal(FOREIGN_FLAG)})) AS foreign_count",
            *(f"count_if(predicted = {digit}) AS class_{digit}_count" for digit in range(NUM_CLASSES)),
            *(f"count_if(contains({flags}, {literal(cause)})) AS {cause}_count" for cause in QUALITY_CAUSES),
        ]
        sums = [
            "count(*) AS volume",
            "sum(confidence) AS confidence_sum",
            *(f"quantile_cont(confidence, {q}) AS {name}" for name, q in CONFIDENCE_QUANTILES.items()),
            "sum(entropy) AS entropy_sum",
            "sum(p_correct) AS expected_correct_sum",
            "sum(p_correct * (1 - p_correct)) AS expected_correct_variance_sum",
            "sum(CASE WHEN outside THEN 0.0 ELSE p_correct END) AS in_reference_expected_correct_sum",
            "sum(CASE WHEN outside THEN 0.0 ELSE p_correct * (1 - p_correct) END) AS in_reference_expected_correct_variance_sum",
            "count_if(outside) AS out_of_reference_count",
            "count(foreign_score) AS foreign_score_count",
            "coalesce(sum(foreign_score), 0.0) AS foreign_score_sum",
            *(f"sum(CAST(prob_{digit} AS DOUBLE)) AS class_{digit}_probability_sum" for digit in range(NUM_CLASSES)),
            *(
                f"sum(CASE WHEN predicted = {digit} THEN p_correct ELSE 0.0 END) AS class_{digit}_expected_correct_sum"
                for digit in range(NUM_CLASSES)
            ),
        ]
        rows = self.query(
            f'SELECT "window", {", ".join(sums + counts)} FROM ('
            f"SELECT *, {expected_correct('CAST(confidence AS DOUBLE)', reference)} AS p_correct, ({entropy}) AS entropy, "
            f'({outside}) AS outside FROM {self.view}) GROUP BY "window" ORDER BY "window"'
        )
        duplicates = self._duplicates()
        rows["duplicate_count"] = rows["window"].map(duplicates).fillna(0).astype("int64")
        integers = [name for name in AGGREGATE_COLUMNS if name.endswith("_count") or name in ("window", "volume")]
        return rows[list(AGGREGATE_COLUMNS)].astype(dict.fromkeys(integers, "int64"))

    def _duplicates(self) -> dict[int, int]:
        """Per window, the records whose image (fingerprint) comes at least DUPLICATE_MIN_COUNT times in it."""
        if "fingerprint" not in self.columns():
            return {}
        bursts = self.connection.execute(
            f'SELECT "window", sum(n) FROM (SELECT "window", count(*) AS n FROM {self.view} '
            f'WHERE fingerprint IS NOT NULL GROUP BY "window", fingerprint HAVING n >= {DUPLICATE_MIN_COUNT}) '
            'GROUP BY "window"'
        ).fetchall()
        return {int(window): int(records) for window, records in bursts}

    def columns(self) -> list[str]:
        return [row[0] for row in self.connection.execute(f"DESCRIBE {self.view}").fetchall()]

    def _keyed(self) -> str:
        text = "concat(request_id, ':', CAST(image_index AS VARCHAR))"
        key = f"CAST('0x' || substr(sha256({text}), 1, {SAMPLE_KEY_HEX_DIGITS}) AS BIGINT)"
        return f"SELECT *, {key} AS sample_key FROM {self.view}"

    def samples(self, size: int) -> pd.DataFrame:
        """Per window, the `size` records with the smallest sample keys, in key order (SAMPLE_COLUMNS).

        Keys are uniform, so only the records under a per-window cut (`monitoring.metrics.key_cut`) are ranked;
        a window the cut left short (in theory; never seen) is ranked whole."""
        volumes = dict(self.connection.execute(f'SELECT "window", count(*) FROM {self.view} GROUP BY "window"').fetchall())
        cuts = ", ".join(f"({int(window)}, {key_cut(volume, size)})" for window, volume in volumes.items())
        order = '"window", sample_key, request_id, image_index'
        columns = ", ".join(f'"{column}"' for column in SAMPLE_COLUMNS)

        def ranked(where: str) -> pd.DataFrame:
            return self.query(
                f"SELECT {columns} FROM ({self._keyed()}) AS keyed {where} "
                f'QUALIFY row_number() OVER (PARTITION BY "window" ORDER BY sample_key, request_id, image_index) <= {int(size)} '
                f"ORDER BY {order}"
            )

        sample = ranked(
            f'JOIN (VALUES {cuts}) AS cuts(cut_window, key_cut) ON keyed."window" = cuts.cut_window '
            "WHERE sample_key < cuts.key_cut"
        )
        found = sample.groupby("window").size()
        short = [int(window) for window, volume in volumes.items() if found.get(window, 0) < min(size, volume)]
        if short:
            rest = ranked(f'WHERE "window" IN ({", ".join(map(str, short))})')
            sample = pd.concat([sample[~sample["window"].isin(short)], rest]).sort_values("window", kind="stable")
        return sample.astype({"window": "int64"}).reset_index(drop=True)

    def rows_of_windows(self, windows: list[int], limit: int) -> pd.DataFrame:
        """Up to `limit` records of `windows`: those with the smallest sample keys."""
        return self.query(
            f"SELECT * EXCLUDE (sample_key) FROM ({self._keyed()}) WHERE {_in_windows(windows)} "
            f"ORDER BY sample_key, request_id, image_index LIMIT {int(limit)}"
        )

    def least_confident(self, windows: list[int], per_window: int) -> pd.DataFrame:
        """Per window, the `per_window` least confident records that kept their image."""
        return self.query(
            f"SELECT * FROM {self.view} WHERE {_in_windows(windows)} AND image IS NOT NULL "
            'QUALIFY row_number() OVER (PARTITION BY "window" ORDER BY confidence, request_id, image_index) '
            f"<= {int(per_window)} "
            'ORDER BY "window", confidence, request_id, image_index'
        )

    def flagged_records(self, windows: list[int]) -> pd.DataFrame:
        """Every record of `windows` flagged foreign or given a data-quality cause, with its image."""
        outside = " OR ".join(f"contains(coalesce(flags, ''), {literal(flag)})" for flag in OUT_OF_REFERENCE_FLAGS)
        return self.query(
            f'SELECT * FROM {self.view} WHERE {_in_windows(windows)} AND ({outside}) ORDER BY "window", request_id, image_index'
        )

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        """Per window, from the simulator's sidecar: realised accuracy and the true share of foreign digits."""
        sidecar = truth[["request_id", "image_index", "source", "label"]]
        self.connection.register("truth_sidecar", sidecar)
        try:
            return self.query(
                'SELECT "window", avg(CAST(predicted = label AS DOUBLE)) AS realised_accuracy, '
                "avg(CAST(source != 'mnist' AS DOUBLE)) AS true_foreign_share "
                f'FROM {self.view} JOIN truth_sidecar USING (request_id, image_index) GROUP BY "window" ORDER BY "window"'
            ).astype({"window": "int64"})
        finally:
            self.connection.unregister("truth_sidecar")


def _in_windows(windows: list[int]) -> str:
    return f'"window" IN ({", ".join(str(int(window)) for window in windows) or "NULL"})'


def _with_windows(connection, raw: str, clock: WindowClock, label: str) -> tuple[str, LeftOut]:
    """common.windows.with_windows in SQL: a query of the records with a window under `clock`, and what was left
    out. A wall-clock window is numbered from the timestamp's local time in the clock's timezone, in whole seconds
    since the clock's origin, as common.windows numbers it."""
    if not clock.is_wall:
        unstamped = connection.execute(f'SELECT count(*) FROM {raw} WHERE "window" IS NULL').fetchone()[0]
        placed = f'SELECT * REPLACE (CAST("window" AS BIGINT) AS "window") FROM {raw} WHERE "window" IS NOT NULL'
        return placed, LeftOut(unstamped=int(unstamped))
    moment = 'try_cast("timestamp" AS TIMESTAMPTZ)'
    local_seconds = f"epoch(timezone({literal(clock.timezone)}, {moment}))"
    window = f"CAST(floor(({local_seconds} - {ORIGIN_S}) / {clock.length_s}) AS BIGINT)"
    stamped = f'SELECT * REPLACE ({window} AS "window") FROM {raw}'
    unreadable = connection.execute(
        f'SELECT request_id, image_index, "timestamp", count(*) OVER () FROM ({stamped}) WHERE "window" IS NULL LIMIT 1'
    ).fetchall()
    left_out = LeftOut()
    if unreadable:
        request_id, image_index, timestamp, count = unreadable[0]
        example = f"{label}: request {request_id} image {image_index}, timestamp {timestamp!r}"
        left_out = LeftOut(unreadable=int(count), unreadable_example=example)
    return f'SELECT * FROM ({stamped}) WHERE "window" IS NOT NULL', left_out


def expected_correct(confidence: str, reference: Reference) -> str:
    """common.reference.expected_accuracy in SQL: the calibration bin's accuracy for each confidence."""
    edges_below = " + ".join(f"CAST({confidence} >= {float(edge)!r} AS INTEGER)" for edge in CONFIDENCE_BINS)
    index = f"least(greatest(({edges_below}) - 1, 0), {len(CONFIDENCE_BINS) - 2})"
    accuracies = ", ".join(f"{float(value)!r}" for value in reference.confidence_bin_accuracy)
    return f"([{accuracies}])[{index} + 1]"
