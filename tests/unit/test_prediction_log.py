"""The prediction log: committed records, idempotent request ids, reading through common, Parquet export."""

import numpy as np
import pyarrow.parquet as pq

from common.records import PREDICTION_COLUMNS, read_prediction_log
from serving.core import ModelIdentity, flag_predictions, to_records
from serving.prediction_log import PredictionLog, export_parquet

IDENTITY = ModelIdentity("digits-cnn", "2", "champion", "models:/digits-cnn@champion", "keras")


def records_for(request_id, count, window=1):
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), size=count).astype(np.float32)
    images = np.random.default_rng(1).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    return to_records(flag_predictions(probabilities, 0.9), images, IDENTITY, request_id, window)


def test_records_are_committed_and_read_back_through_common(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    assert log.write(records_for("a", 3)) == 3
    assert log.write(records_for("b", 2, window=2)) == 2
    columns = read_prediction_log(tmp_path / "log.db")
    assert list(columns) == list(PREDICTION_COLUMNS)
    assert sorted(columns["request_id"]) == ["a", "a", "a", "b", "b"]
    assert set(columns["window"]) == {1, 2}
    assert np.allclose(np.stack([columns[f"prob_{d}"] for d in range(10)], axis=1).sum(axis=1), 1, atol=1e-5)
    assert all(flag in ("", "low_confidence") for flag in columns["flags"])


def test_a_retried_request_adds_nothing(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.write(records_for("same", 4))
    assert log.write(records_for("same", 4)) == 0
    assert log.count() == 4


def test_log_is_in_wal_mode(tmp_path):
    import sqlite3

    PredictionLog(tmp_path / "log.db")
    with sqlite3.connect(tmp_path / "log.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_parquet_export_holds_every_record_with_the_same_columns(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.write(records_for("a", 5))
    assert export_parquet(tmp_path / "log.db", tmp_path / "log.parquet", chunk_rows=2) == 5
    table = pq.read_table(tmp_path / "log.parquet")
    assert table.column_names == list(PREDICTION_COLUMNS) and table.num_rows == 5
    assert table.column("confidence").to_pylist() == list(read_prediction_log(tmp_path / "log.db")["confidence"])
