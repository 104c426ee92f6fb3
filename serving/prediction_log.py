"""The durable prediction log: SQLite in WAL mode, one transaction per batch, Parquet export."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pyarrow.parquet as pq

from common.prediction_dataset import ARROW_SCHEMA, records_table
from common.records import PREDICTION_COLUMNS, PREDICTIONS_DDL, PredictionRecord, insert_sql

log = logging.getLogger(__name__)

INSERT = insert_sql("predictions", PREDICTION_COLUMNS)


class PredictionLog:
    """Appends prediction records; a write returns only once its transaction is committed.

    Records are keyed by (request_id, image_index): a retried request adds nothing twice.
    `synchronous` is SQLite's: FULL survives power loss, NORMAL survives process crashes.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA synchronous={synchronous}")
        self._connection.execute(PREDICTIONS_DDL)

    def __str__(self) -> str:
        return str(self.path)

    def write(self, records: list[PredictionRecord]) -> int:
        """Commit `records` in one transaction; return how many were new."""
        if not records:
            return 0
        with self._lock:
            before = self._connection.total_changes
            self._connection.execute("BEGIN")
            try:
                self._connection.executemany(INSERT, [record.row() for record in records])
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            return self._connection.total_changes - before

    def withdraw(self, request_ids: list[str]) -> set[str]:
        """Nothing: a reader of the log may have read a record the moment it was committed."""
        return set()

    def count(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def export_parquet(log_path: str | Path, parquet_path: str | Path, chunk_rows: int = 500_000) -> int:
    """Write the SQLite log to one Parquet file (columns as in common.records); return the row count."""
    rows_written = 0
    with sqlite3.connect(f"file:{Path(log_path)}?mode=ro", uri=True) as connection:
        cursor = connection.execute(
            "SELECT " + ", ".join(f'"{name}"' for name in PREDICTION_COLUMNS) + " FROM predictions ORDER BY rowid"
        )
        with pq.ParquetWriter(str(parquet_path), ARROW_SCHEMA) as writer:
            while rows := cursor.fetchmany(chunk_rows):
                writer.write_table(records_table(rows))
                rows_written += len(rows)
    log.info("exported %d records from %s to %s", rows_written, log_path, parquet_path)
    return rows_written
