"""The Spark engine's window samples: the same records in the same order as pandas, on windows big enough to cut."""

import numpy as np
import pandas as pd
import pytest

from common.records import PROJECTION_COLUMNS
from monitoring import metrics, spark_engine
from monitoring.errors import MonitoringError
from monitoring.metrics import window_samples
from monitoring.spark_engine import SparkLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_windows(tmp_path_factory):
    """Three windows of 1,500 records (a sample of 30 keeps a small share of each), as a Parquet log."""
    rng = np.random.default_rng(4)
    count = 4500
    frame = pd.DataFrame(
        {
            "request_id": [f"r-{index}" for index in rng.permutation(count)],
            "image_index": rng.integers(0, 3, count),
            "model_name": "digits-cnn",
            "model_version": "1",
            "window": np.repeat([0, 1, 2], 1500),
            "predicted": rng.integers(0, 10, count),
            "confidence": rng.uniform(0.3, 1.0, count),
            "flags": "",
            **{column: rng.normal(size=count) for column in PROJECTION_COLUMNS},
        }
    )
    path = tmp_path_factory.mktemp("sampling") / "log.parquet"
    frame.to_parquet(path)
    return frame, path


def test_spark_samples_the_records_pandas_samples_in_the_same_order(spark, big_windows):
    frame, path = big_windows
    assert spark_engine.key_cut(1500, 30) < metrics.KEY_SPACE  # the cut is taken, not everything collected
    expected = window_samples(frame, 30)
    sampled = SparkLog.read(path).samples(30)
    assert len(sampled) == 90 and sampled.equals(expected)


def test_a_window_the_cut_leaves_short_is_sampled_whole(spark, big_windows, monkeypatch):
    frame, path = big_windows
    monkeypatch.setattr(spark_engine, "key_cut", lambda volume, size: metrics.KEY_SPACE // 1000)
    assert SparkLog.read(path).samples(30).equals(window_samples(frame, 30))


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("log.db", lambda path: path.write_bytes(b"SQLite format 3\0"), "the Spark engine reads Parquet logs"),
        ("missing.parquet", None, "no prediction log here"),
        ("text.parquet", lambda path: path.write_text("request_id,window\nr-1,0\n"), "not a readable Parquet log"),
        (
            "no-flags.parquet",
            lambda path: pd.DataFrame({"request_id": ["r"], "window": [0]}).to_parquet(path),
            "missing column(s)",
        ),
        ("empty.parquet", "empty", "the prediction log is empty"),
        ("no-time.parquet", "no-time", "no record has a readable window (3 records with an unreadable timestamp"),
    ],
)
def test_a_log_the_spark_engine_cannot_read_is_named_with_what_was_expected(spark, big_windows, tmp_path, name, write, message):
    frame, _ = big_windows
    path = tmp_path / name
    if write == "empty":
        frame.iloc[:0].to_parquet(path)
    elif write == "no-time":  # no simulated window, so judged by time, and no timestamp to judge by
        frame.head(3).assign(window=None, timestamp="never").to_parquet(path)
    elif write is not None:
        write(path)
    with pytest.raises(MonitoringError) as raised:
        SparkLog.read(path)
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)


def test_the_spark_log_knows_its_versions_from_one_count_when_read(spark, big_windows):
    _, path = big_windows
    log = SparkLog.read(path)
    assert log.versions() == ["1"] and int(log.inventory["records"].sum()) == 4500
    assert log.of_version("digits-cnn", "77").is_empty() and not log.of_version("digits-cnn", "1").is_empty()
    assert log.of_version("digits-cnn", "1").frame.count() == 4500
