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


def test_records_carry_each_image_scored_values_as_plain_python_numbers():
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(10), size=3).astype(np.float32)
    foreign, projection = np.array([0.5, 3.0, 9.0]), rng.normal(size=(3, 8))
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    scored = flag_predictions(probabilities, 0.9, foreign, 5.0, projection)
    for index, record in enumerate(to_records(scored, images, IDENTITY, "r", 4, first_index=10)):
        assert (record.request_id, record.image_index, record.window) == ("r", 10 + index, 4)
        assert type(record.predicted) is int and record.predicted == probabilities[index].argmax()
        assert record.probabilities == tuple(float(p) for p in probabilities[index])
        assert all(type(value) is float for value in (*record.probabilities, record.confidence, *record.projection))
        assert record.confidence == float(probabilities[index].max()) and record.foreign_score == foreign[index]
        assert record.projection == tuple(projection[index]) and record.flags == scored.flags[index]
        assert (record.image is None) == (not record.flags)
    assert to_records(flag_predictions(probabilities, 0.9), images, IDENTITY, "r", None)[0].projection is None


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
