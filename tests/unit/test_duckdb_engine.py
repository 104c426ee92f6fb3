"""The DuckDB engine reads a Parquet log and judges it as the pandas engine does, to 1e-9 on every window metric."""

import numpy as np
import pandas as pd
import pytest

from common.prediction_dataset import Part, filesystem, read_parts
from common.records import PROBABILITY_COLUMNS, PROJECTION_COLUMNS
from common.windows import WindowClock, with_windows
from monitoring.duckdb_engine import DuckLog
from monitoring.engine import open_log
from monitoring.errors import MonitoringError
from monitoring.metrics import AGGREGATE_COLUMNS, MonitorConfig, judge_windows
from monitoring.pandas_engine import PandasLog
from tests.helpers import assert_same_frames

COUNTS = [column for column in AGGREGATE_COLUMNS if column.endswith("_count") or column in ("window", "volume")]
FLAGS = ["", "", "", "low_confidence", "foreign", "low_confidence,foreign", "blank", "learned", "inverted,low_confidence"]


def synthetic_log(records: int, windows: int, seed: int = 0) -> pd.DataFrame:
    """A log with every column a server writes: flags of each kind, bursts of one image, missing foreign scores,
    flagged images with their pixels, and timestamps over three days."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(records, 10)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flags = rng.choice(FLAGS, records)
    fingerprints = np.where(rng.random(records) < 0.1, "burst", [f"f{index}" for index in range(records)])
    seconds = np.sort(rng.integers(0, 3 * 86_400, records))
    timestamps = pd.to_datetime(1_790_000_000 + seconds, unit="s", utc=True).map(lambda t: t.isoformat(timespec="microseconds"))
    return pd.DataFrame(
        {
            "request_id": [f"req-{index // 2}" for index in range(records)],
            "image_index": np.arange(records) % 2,
            "model_name": "digits-cnn",
            "model_version": "3",
            "timestamp": timestamps,
            "window": rng.integers(0, windows, records),
            "predicted": probabilities.argmax(axis=1),
            **{column: probabilities[:, digit] for digit, column in enumerate(PROBABILITY_COLUMNS)},
            "confidence": probabilities.max(axis=1),
            "flags": flags,
            "fingerprint": fingerprints,
            "foreign_score": np.where(rng.random(records) < 0.05, np.nan, rng.random(records)),
            **{column: rng.normal(size=records) for column in PROJECTION_COLUMNS},
            "image": [bytes([index % 256] * 4) if "foreign" in flag else None for index, flag in enumerate(flags)],
        }
    )


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("duckdb") / "log.parquet"
    frame = synthetic_log(6000, 5)
    frame.to_parquet(path, index=False)
    return path, frame


def test_duckdb_aggregates_samples_and_window_metrics_match_the_pandas_engine(log_file, reference):
    path, frame = log_file
    by_duckdb, by_pandas = DuckLog.read(path), PandasLog.read(path)
    assert by_duckdb.versions() == by_pandas.versions() == ["3"]
    duck = by_duckdb.of_version("digits-cnn", "3")
    assert_same_frames(by_pandas.aggregates(reference), duck.aggregates(reference), exact=COUNTS)
    assert duck.aggregates(reference)["duplicate_count"].sum() > 0
    config = MonitorConfig(min_window_size=10, ks_max_window=300, mmd_max_window=60, mmd_permutations=50)
    samples = duck.samples(config.sample_size)
    assert_same_frames(by_pandas.samples(config.sample_size), samples, exact=["window"])
    assert samples.groupby("window").size().tolist() == [300] * 5  # the key cut left no window short
    judged = judge_windows(duck.aggregates(reference), samples, reference, config)
    expected = judge_windows(by_pandas.aggregates(reference), by_pandas.samples(config.sample_size), reference, config)
    assert_same_frames(expected, judged, exact=["window", "volume", "too_small", "accuracy_estimable"])


def test_duckdb_picks_the_same_rows_gallery_and_flagged_records_with_their_images(log_file):
    path, _ = log_file
    by_duckdb, by_pandas = DuckLog.read(path), PandasLog.read(path)
    columns = ["request_id", "image_index", "window", "confidence"]
    rows = [
        engine.rows_of_windows([1, 2], 40)[columns].sort_values(columns[:2]).reset_index(drop=True)
        for engine in (by_pandas, by_duckdb)
    ]
    assert len(rows[0]) == 40 and rows[0].equals(rows[1])
    gallery = [engine.least_confident([0, 4], 3)[[*columns, "image"]].reset_index(drop=True) for engine in (by_pandas, by_duckdb)]
    assert len(gallery[0]) == 6 and gallery[0].equals(gallery[1])
    flagged = [engine.flagged_records([3]).sort_values(columns[:2]).reset_index(drop=True) for engine in (by_pandas, by_duckdb)]
    assert len(flagged[0]) > 100 and flagged[0][columns].equals(flagged[1][columns])
    assert flagged[0]["image"].notna().sum() == flagged[1]["image"].notna().sum() > 0


def test_duckdb_places_records_in_wall_clock_windows_as_common_windows_does(tmp_path):
    frame = synthetic_log(2000, 1).assign(window=None)
    frame.loc[7, "timestamp"] = "not a time"
    frame.loc[8, "timestamp"] = "2026-09-21T22:30:00"  # no offset: UTC
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    clock = WindowClock.wall("6h", "Asia/Tokyo")
    expected, left_out = with_windows(frame, clock, str(tmp_path / "log.parquet"))
    duck = DuckLog.read(tmp_path / "log.parquet", "wall", clock)
    assert duck.clock == clock and duck.left_out == left_out and left_out.unreadable == 1
    placed = duck.query(f'SELECT request_id, image_index, "window" FROM {duck.view} ORDER BY request_id, image_index')
    expected = expected.sort_values(["request_id", "image_index"])[["request_id", "image_index", "window"]]
    assert placed.reset_index(drop=True).equals(expected.reset_index(drop=True))


def test_duckdb_keeps_the_first_copy_of_a_record_written_twice_across_parts(tmp_path):
    frame = synthetic_log(400, 2)
    frame.iloc[:300].to_parquet(tmp_path / "a.parquet", index=False)
    again = frame.iloc[250:].copy()
    again.loc[again.index < 300, "confidence"] = 0.0  # a second copy of 50 records, which must not be read
    again.to_parquet(tmp_path / "b.parquet", index=False)
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    fs, _ = filesystem(str(tmp_path))
    expected = read_parts(fs, [Part(path, 0) for path in files])
    duck = DuckLog.read_files(files, str(tmp_path), None, 1, WindowClock())
    read = duck.query(f"SELECT request_id, image_index, confidence FROM {duck.view} ORDER BY request_id, image_index")
    expected = expected.sort_values(["request_id", "image_index"])[["request_id", "image_index", "confidence"]]
    assert len(read) == 400 and (read["confidence"] > 0).all()
    assert read.reset_index(drop=True).equals(expected.reset_index(drop=True))


def test_a_sqlite_log_or_a_missing_one_is_named_with_what_to_do(tmp_path):
    with pytest.raises(MonitoringError, match=r"log\.db: the DuckDB engine reads Parquet logs; export"):
        open_log(tmp_path / "log.db", "duckdb")
    with pytest.raises(MonitoringError, match=r"nothing\.parquet: no prediction log here"):
        open_log(tmp_path / "nothing.parquet", "duckdb")
    pd.DataFrame({"request_id": ["a"], "confidence": [0.5]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(MonitoringError, match=r"other\.parquet: not a prediction log \(missing column\(s\) image_index"):
        DuckLog.read(tmp_path / "other.parquet")
