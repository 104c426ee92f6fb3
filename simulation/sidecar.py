"""The ground-truth sidecar: per request id and image, window, source and true label. Never sent to the server."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from common.records import GROUND_TRUTH_COLUMNS, create_table_sql, insert_sql

DDL = create_table_sql("ground_truth", GROUND_TRUTH_COLUMNS)
INSERT = insert_sql("ground_truth", GROUND_TRUTH_COLUMNS)


class GroundTruthSidecar:
    """SQLite rows written only after the server acknowledged the request; also the resume journal."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(DDL)
        present = {row[1] for row in self._connection.execute("PRAGMA table_info(ground_truth)")}
        if "corruption" not in present:  # a run started before corruptions existed, resumed now
            self._connection.execute("ALTER TABLE ground_truth ADD COLUMN corruption TEXT NOT NULL DEFAULT ''")

    def write(self, rows: list[tuple]) -> None:
        """Rows in GROUND_TRUTH_COLUMNS order, in one transaction."""
        if rows:
            self._connection.execute("BEGIN")
            self._connection.executemany(INSERT, rows)
            self._connection.execute("COMMIT")

    def done_request_ids(self) -> set[str]:
        return {row[0] for row in self._connection.execute("SELECT DISTINCT request_id FROM ground_truth")}

    def count(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM ground_truth").fetchone()[0]

    def close(self) -> None:
        self._connection.close()


def acknowledged_images(path: str | Path) -> set[tuple[str, int]]:
    """The (request id, image index) pairs a run's sidecar at `path` holds: the images the server acknowledged.
    It may be read while the run writes (WAL); empty before the run made it."""
    if not Path(path).is_file():
        return set()
    with closing(sqlite3.connect(path)) as connection:
        try:
            return set(connection.execute("SELECT request_id, image_index FROM ground_truth"))
        except sqlite3.OperationalError:  # the table is not made yet
            return set()
