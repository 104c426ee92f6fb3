"""The Spark engine: per-window aggregates and samples of a Parquet prediction log, computed by Spark."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.images import NUM_CLASSES
from common.prediction_dataset import Part, local_parquet
from common.quality import DUPLICATE_MIN_COUNT, QUALITY_CAUSES
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG, PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from common.reference import CONFIDENCE_BINS, Reference
from common.spark import DEFAULT_SPARK_MASTER, spark_session
from common.windows import (
    DAILY_CLOCK,
    NOTHING_LEFT_OUT,
    ORIGIN_S,
    SIMULATED_CLOCK,
    LeftOut,
    WindowClock,
    choose_clock,
)
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


class SparkLog:
    """A prediction log as a Spark DataFrame: the methods the monitoring job asks of an engine."""

    engine = "spark"

    def __init__(
        self, frame, inventory: pd.DataFrame, clock: WindowClock = SIMULATED_CLOCK, left_out: LeftOut = NOTHING_LEFT_OUT
    ) -> None:
        self.frame = frame
        self.inventory = inventory  # records per model_name and model_version, counted once when the log is read
        self.clock = clock  # how the records' windows were numbered
        self.left_out = left_out  # records the reading could not place in a window

    @classmethod
    def read(
        cls, path: str | Path, clock: str = "auto", wall: WindowClock = DAILY_CLOCK, spark_master: str = DEFAULT_SPARK_MASTER
    ) -> SparkLog:
        """A Parquet log (a file, or a folder of part files as Spark writes), each record in its window under the
        clock `clock` names (auto, simulated, wall; `wall`: the time windows' length and timezone)."""
        path = Path(path)
        if path.suffix == ".db":
            raise MonitoringError(
                f"{path}: the Spark engine reads Parquet logs; export the SQLite log first "
                "(python -m serving --prediction-log LOG --export-parquet LOG.parquet), or use --engine pandas"
            )
        if not path.exists():
            raise MonitoringError(f"{path}: no prediction log here (a Parquet file or folder)")
        return cls._load([str(path)], str(path), spark_master, clock, wall)

    @classmethod
    def read_increment(
        cls, fs, parts: list[Part], increment: Increment, location: str, cache_dir: Path, spark_master: str
    ) -> SparkLog:
        """The records of the windows an increment judges, from a dataset's parts read where they are (local
        Parquet) or from their copies in `cache_dir`."""
        files = local_parquet(fs, parts, cache_dir)
        return cls.read_files(files, location, spark_master, increment.after, increment.through, increment.clock)

    @classmethod
    def read_files(
        cls, files: list[str], label: str, spark_master: str, after: int | None, through: int, clock: WindowClock
    ) -> SparkLog:
        """Parts of a partitioned dataset: records of windows after `after` through `through` under `clock`, one
        per (request_id, image_index) as replicas write at least once."""
        return cls._load(files, label, spark_master, clock.kind, clock, (after, through))

    @classmethod
    def _load(
        cls,
        paths: list[str],
        label: str,
        spark_master: str,
        clock: str,
        wall: WindowClock,
        windows: tuple[int | None, int] | None = None,
    ) -> SparkLog:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import AnalysisException
        from pyspark.sql import functions as F

        spark = spark_session(spark_master, "digitdrift-monitoring")  # after the checks: a JVM takes seconds to start
        try:
            frame = spark.read.parquet(*paths)
            missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
            if missing:
                raise MonitoringError(f"{label}: not a prediction log (missing column(s) {', '.join(missing)})")
            if windows is not None:
                frame = frame.dropDuplicates(["request_id", "image_index"])
            frame = frame.withColumn("model_version", F.col("model_version").cast("string"))
            stamped, total = frame.agg(F.count("window"), F.count(F.lit(1))).first()
            if not total:
                raise MonitoringError(f"{label}: the prediction log is empty: nothing to monitor yet")
            chosen = choose_clock(clock, stamped, total - stamped, wall, label)
            frame, left_out = _with_windows(frame, chosen, label)
            if windows is not None:
                after, through = windows
                keep = F.col("window") <= through
                frame = frame.where(keep if after is None else keep & (F.col("window") > after))
            # one pass answers: empty? which versions?
            inventory = frame.groupBy("model_name", "model_version").agg(F.count(F.lit(1)).alias("records")).toPandas()
        except (AnalysisException, Py4JJavaError) as err:
            reason = err.java_exception.getMessage() if isinstance(err, Py4JJavaError) else str(err)
            raise MonitoringError(f"{label}: not a readable Parquet log ({reason.splitlines()[0][:300]})") from None
        if inventory.empty:
            raise MonitoringError(f"{label}: no record has a readable window ({'; '.join(left_out.messages())})")
        for column in PREDICTION_COLUMNS:  # logs from before a column existed: NULLs
            if column not in frame.columns:
                frame = frame.withColumn(column, F.lit(None).cast("double"))
        return cls(frame, inventory, chosen, left_out)

    def versions(self) -> list[str]:
        return sorted(set(self.inventory["model_version"]))

    def of_version(self, name: str, version: str) -> SparkLog:
        from pyspark.sql import functions as F

        chosen = (self.inventory["model_version"] == version) & (self.inventory["model_name"] == name)
        frame = self.frame.where((F.col("model_version") == version) & (F.col("model_name") == name))
        return SparkLog(frame, self.inventory[chosen], self.clock, self.left_out)

    def is_empty(self) -> bool:
        return self.inventory.empty

    def aggregates(self, reference: Reference) -> pd.DataFrame:
        """AGGREGATE_COLUMNS per window, as monitoring.metrics.window_aggregates defines them."""
        from pyspark.sql import functions as F

        confidence = F.col("confidence").cast("double")
        entropy = sum(
            (-F.col(p) * F.log(F.least(F.greatest(F.col(p), F.lit(ENTROPY_FLOOR)), F.lit(1.0))) for p in PROBABILITY_COLUMNS),
            F.lit(0.0),
        )
        p_correct = expected_correct(confidence, reference)
        outside = F.lit(False)
        for flag in OUT_OF_REFERENCE_FLAGS:
            outside = outside | F.col("flags").contains(flag)
        sums = [
            F.count(F.lit(1)).alias("volume"),
            F.sum(F.col("flags").contains(LOW_CONFIDENCE_FLAG).cast("long")).alias("low_confidence_count"),
            F.sum(F.col("flags").contains(FOREIGN_FLAG).cast("long")).alias("foreign_count"),
            F.sum(confidence).alias("confidence_sum"),
            F.percentile(confidence, list(CONFIDENCE_QUANTILES.values())).alias("quantiles"),
            F.sum(entropy).alias("entropy_sum"),
            F.sum(p_correct).alias("expected_correct_sum"),
            F.sum(p_correct * (1 - p_correct)).alias("expected_correct_variance_sum"),
            F.sum(F.when(outside, 0.0).otherwise(p_correct)).alias("in_reference_expected_correct_sum"),
            F.sum(F.when(outside, 0.0).otherwise(p_correct * (1 - p_correct))).alias(
                "in_reference_expected_correct_variance_sum"
            ),
            F.sum(outside.cast("long")).alias("out_of_reference_count"),
            F.count("foreign_score").alias("foreign_score_count"),
            F.sum("foreign_score").alias("foreign_score_sum"),
            *(F.sum((F.col("predicted") == digit).cast("long")).alias(f"class_{digit}_count") for digit in range(NUM_CLASSES)),
            *(
                F.sum(F.col(f"prob_{digit}").cast("double")).alias(f"class_{digit}_probability_sum")
                for digit in range(NUM_CLASSES)
            ),
            *(
                F.sum(F.when(F.col("predicted") == digit, p_correct).otherwise(0.0)).alias(f"class_{digit}_expected_correct_sum")
                for digit in range(NUM_CLASSES)
            ),
            *(F.sum(F.col("flags").contains(cause).cast("long")).alias(f"{cause}_count") for cause in QUALITY_CAUSES),
        ]
        rows = self.frame.groupBy("window").agg(*sums).orderBy("window").toPandas()
        rows["duplicate_count"] = rows["window"].map(self._duplicates()).fillna(0).astype("int64")
        for index, name in enumerate(CONFIDENCE_QUANTILES):
            rows[name] = rows["quantiles"].map(lambda values, index=index: float(values[index]))
        rows["foreign_score_sum"] = rows["foreign_score_sum"].fillna(0.0)
        return rows[list(AGGREGATE_COLUMNS)]

    def _duplicates(self) -> dict[int, int]:
        """Per window, the records whose image (fingerprint) comes at least DUPLICATE_MIN_COUNT times in it."""
        from pyspark.sql import functions as F

        if "fingerprint" not in self.frame.columns:
            return {}
        bursts = (
            self.frame.where(F.col("fingerprint").isNotNull())  # as pandas, which leaves missing keys out of groups
            .groupBy("window", "fingerprint")
            .count()
            .where(F.col("count") >= DUPLICATE_MIN_COUNT)
            .groupBy("window")
            .agg(F.sum("count").alias("records"))
            .collect()
        )
        return {int(row["window"]): int(row["records"]) for row in bursts}

    def samples(self, size: int) -> pd.DataFrame:
        """Per window, the `size` records with the smallest sample keys, in key order (SAMPLE_COLUMNS).

        Keys are uniform, so only the records under a per-window cut (about `size` plus a margin of eight
        standard deviations) are collected and ranked, instead of sorting every record in Spark; a window the
        cut left short (in theory; never seen) is collected whole.
        """
        from pyspark.sql import functions as F

        keyed = self.with_sample_keys()
        volumes = {int(row["window"]): int(row["count"]) for row in keyed.groupBy("window").count().collect()}
        cuts = pd.DataFrame(
            [(window, key_cut(volume, size)) for window, volume in volumes.items()], columns=["window", "key_cut"]
        )
        candidates = keyed.join(F.broadcast(self.frame.sparkSession.createDataFrame(cuts)), "window")
        sample = _bottom_keys(candidates.where(F.col("sample_key") < F.col("key_cut")), size)
        found = sample.groupby("window").size()
        short = [window for window, volume in volumes.items() if found.get(window, 0) < min(size, volume)]
        if short:
            rest = _bottom_keys(keyed.where(F.col("window").isin(short)), size)
            sample = pd.concat([sample[~sample["window"].isin(short)], rest]).sort_values("window", kind="stable")
        return sample[list(SAMPLE_COLUMNS)].reset_index(drop=True)

    def with_sample_keys(self):
        from pyspark.sql import functions as F

        text = F.concat_ws(":", F.col("request_id"), F.col("image_index").cast("string"))
        key = F.conv(F.substring(F.sha2(text, 256), 1, SAMPLE_KEY_HEX_DIGITS), 16, 10).cast("long")
        return self.frame.withColumn("sample_key", key)

    def rows_of_windows(self, windows: list[int], limit: int) -> pd.DataFrame:
        """Up to `limit` records of `windows`: those with the smallest sample keys."""
        from pyspark.sql import functions as F

        chosen = self.with_sample_keys().where(F.col("window").isin([int(w) for w in windows]))
        return chosen.orderBy("sample_key", "request_id", "image_index").limit(limit).drop("sample_key").toPandas()

    def least_confident(self, windows: list[int], per_window: int) -> pd.DataFrame:
        """Per window, the `per_window` least confident records that kept their image."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        kept = self.frame.where(F.col("window").isin([int(w) for w in windows]) & F.col("image").isNotNull())
        order = Window.partitionBy("window").orderBy("confidence", "request_id", "image_index")
        ranked = kept.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= per_window)
        return ranked.orderBy("window", "rank").drop("rank").toPandas()

    def flagged_records(self, windows: list[int]) -> pd.DataFrame:
        """Every record of `windows` flagged foreign or given a data-quality cause, with its image."""
        from pyspark.sql import functions as F

        outside = F.lit(False)
        for flag in OUT_OF_REFERENCE_FLAGS:
            outside = outside | F.col("flags").contains(flag)
        chosen = self.frame.where(F.col("window").isin([int(w) for w in windows]) & outside)
        return chosen.orderBy("window", "request_id", "image_index").toPandas()

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        """Per window, from the simulator's sidecar: realised accuracy and the true share of foreign digits."""
        from pyspark.sql import functions as F

        sidecar = self.frame.sparkSession.createDataFrame(truth[["request_id", "image_index", "source", "label"]])
        joined = self.frame.join(sidecar, ["request_id", "image_index"])
        return (
            joined.groupBy("window")
            .agg(
                F.avg((F.col("predicted") == F.col("label")).cast("double")).alias("realised_accuracy"),
                F.avg((F.col("source") != "mnist").cast("double")).alias("true_foreign_share"),
            )
            .orderBy("window")
            .toPandas()
        )


def _with_windows(frame, clock: WindowClock, label: str):
    """common.windows.with_windows as Spark columns: the records with a window under `clock` and what was left out.

    A wall-clock window is numbered from the timestamp's local time in the clock's timezone, in whole seconds since
    the clock's origin, as common.windows numbers it (common.spark sets the session's timezone to UTC for this)."""
    from pyspark.sql import functions as F

    if not clock.is_wall:
        unstamped = frame.where(F.col("window").isNull()).count()
        placed = frame.where(F.col("window").isNotNull()).withColumn("window", F.col("window").cast("long"))
        return placed, LeftOut(unstamped=int(unstamped))
    moment = F.try_to_timestamp(F.col("timestamp"))
    local_seconds = F.unix_timestamp(F.from_utc_timestamp(moment, clock.timezone))
    window = F.floor((local_seconds - F.lit(ORIGIN_S)) / F.lit(clock.length_s)).cast("long")
    stamped = frame.withColumn("window", F.when(moment.isNotNull(), window))
    unreadable = stamped.where(F.col("window").isNull()).select("request_id", "image_index", "timestamp").limit(1).collect()
    left_out = LeftOut()
    if unreadable:
        first = unreadable[0]
        count = stamped.where(F.col("window").isNull()).count()
        example = f"{label}: request {first['request_id']} image {first['image_index']}, timestamp {first['timestamp']!r}"
        left_out = LeftOut(unreadable=int(count), unreadable_example=example)
    return stamped.where(F.col("window").isNotNull()), left_out


def _bottom_keys(frame, size: int) -> pd.DataFrame:
    """Per window, the `size` rows of `frame` with the smallest keys, in key order (collected, then ranked)."""
    order = ["window", "sample_key", "request_id", "image_index"]
    rows = frame.select(*order, *SAMPLE_COLUMNS[1:]).toPandas()
    return rows.sort_values(order, kind="stable").groupby("window", sort=True).head(size)


def expected_correct(confidence, reference: Reference):
    """common.reference.expected_accuracy as a Spark column: the calibration bin's accuracy for each confidence."""
    from pyspark.sql import functions as F

    edges_below = sum((F.when(confidence >= float(edge), 1).otherwise(0) for edge in CONFIDENCE_BINS), F.lit(0))
    last_bin = len(CONFIDENCE_BINS) - 2
    index = F.least(F.greatest(edges_below - 1, F.lit(0)), F.lit(last_bin))
    accuracies = F.array(*(F.lit(float(value)) for value in reference.confidence_bin_accuracy))
    return F.element_at(accuracies, index + 1)
