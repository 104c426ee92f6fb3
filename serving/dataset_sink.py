"""The partitioned prediction dataset's writer: records staged durably on local disk, published as immutable parts.

The durability point is the local staging commit: `write` returns, and the server answers, only once the
records are committed to this writer's staging SQLite file (WAL, synchronous FULL). A publisher thread
turns staged records into parts of the dataset (a folder or a blob container) every few seconds. It first
writes down which staged records it is about to publish, then uploads, then forgets them; a writer killed
at any point (SIGKILL included) publishes on its next start exactly the parts it had begun, under the same
names, before anything newer. Nothing the client was told is lost, and a part is never written twice.

Records a killed predecessor staged but never began to publish are held back: some were committed just before the
kill, their answers never left, and the proxy retried those requests on another replica. They are published after
a few rounds, less those another writer has published meanwhile (same request id and image index), so that a
retried request is in the dataset once. A publication the kill cut short is finished at start, as it was cut.

A staged record not yet cut for publication can be withdrawn: a replica stopped between a commit and its answer
(a proxy meanwhile had the request answered by another) takes it back when it wakes, before its publisher (which
wakes too, and waits a moment after such a stall) publishes it.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from common.files import write_whole
from common.prediction_dataset import (
    PART_NAME,
    filesystem,
    list_parts,
    part_name,
    partition_of,
    read_parts,
    records_table,
)
from common.records import PREDICTION_COLUMNS, PredictionRecord, create_table_sql, insert_sql

log = logging.getLogger(__name__)

STAGING_FILE = "staging.db"
STAGED_COLUMNS = {"sequence": "INTEGER NOT NULL", **PREDICTION_COLUMNS}
STAGING_DDL = [
    # keyed like the SQLite log: a retried request to the same writer adds nothing twice
    create_table_sql("staged", STAGED_COLUMNS),
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
INSERT = insert_sql("staged", STAGED_COLUMNS)
TIMESTAMP_INDEX = list(PREDICTION_COLUMNS).index("timestamp")
STAGED_NAMES = ", ".join(f'"{name}"' for name in PREDICTION_COLUMNS)
SELECT_STAGED = f"SELECT sequence, {STAGED_NAMES} FROM staged WHERE sequence <= ? ORDER BY sequence"
# a slice of the publisher's wait took this much longer than asked: the process was stopped or starved, and the
# requests it held wake with it; it waits STALL_GRACE_S before the next cut so that late answers withdraw first
STALL_S = 1.0
STALL_GRACE_S = 2.0
HEARTBEAT_S = 0.5  # the publisher waits in slices this long, so that a stall shows however its round falls
LEFTOVER_ROUNDS = 2  # a killed predecessor's staged records wait this many rounds for the other writers to publish
LEFTOVER_CLOSE_WAIT_S = 30.0  # at most this long, when the writer is closed first


class DatasetSink:
    """Appends prediction records to a partitioned dataset at `location` through local staging in `staging_dir`.

    `staging_dir` belongs to one writer: give each replica its own, and the same one again after a restart
    (its writer id lives there). Parts are published every `flush_seconds`, or sooner once `flush_records`
    are staged, and on close.
    """

    def __init__(
        self,
        location: str,
        staging_dir: str | Path,
        flush_seconds: float = 5.0,
        flush_records: int = 20_000,
        writer_id: str | None = None,
    ) -> None:
        self.location = location
        self.fs, self.root = filesystem(location)
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.staging_dir / STAGING_FILE
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self._lock = threading.Lock()  # staging writes
        self._publishing = threading.Lock()  # one publication at a time
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        for statement in STAGING_DDL:
            self._connection.execute(statement)
        self.writer_id = self._meta("writer_id") or self._set_meta("writer_id", writer_id or uuid.uuid4().hex[:12])
        self._next_sequence = int(self._meta("next_sequence") or 0)
        self._staged_since_publish = 0
        self.published_parts = 0
        self.published_records = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.failure: str | None = None  # why the last publication failed; None once one works
        self.failing_since: str | None = None  # when publications started failing (UTC, ISO 8601)
        self._leftovers_through = self._connection.execute("SELECT MAX(sequence) FROM staged").fetchone()[0]
        self._leftovers_due = time.monotonic() + LEFTOVER_ROUNDS * flush_seconds
        self._publish_noting_failure(finish_only=True)  # what a killed predecessor began to publish; storage may be down
        self._thread = threading.Thread(target=self._run, name="dataset-publisher", daemon=True)
        self._thread.start()

    def __str__(self) -> str:
        return f"{self.location} (staged in {self.path})"

    def _meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return value

    def write(self, records: list[PredictionRecord]) -> int:
        """Commit `records` to local staging in one transaction; return how many were new."""
        if not records:
            return 0
        with self._lock:
            before = self._connection.total_changes
            first = self._next_sequence
            self._connection.execute("BEGIN")
            try:
                self._connection.executemany(INSERT, [(first + offset, *record.row()) for offset, record in enumerate(records)])
                self._set_meta("next_sequence", str(first + len(records)))
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._next_sequence = first + len(records)
            added = self._connection.total_changes - before - 1  # the meta row counts as one change
            self._staged_since_publish += added
            full = self._staged_since_publish >= self.flush_records
        if full:
            self._wake.set()
        return added

    def withdraw(self, request_ids: list[str]) -> set[str]:
        """Delete the staged records of these requests where none of a request's records is published or cut for
        publication yet; return the ids whose records were taken back (an id with no staged record is not)."""
        withdrawn = set()
        with self._lock:
            cut = int(self._meta("publishing_through") or -1)
            self._connection.execute("BEGIN")
            try:
                for request_id in request_ids:
                    first = self._connection.execute(
                        "SELECT MIN(sequence) FROM staged WHERE request_id = ?", (request_id,)
                    ).fetchone()[0]
                    if first is not None and first > cut:
                        self._connection.execute("DELETE FROM staged WHERE request_id = ?", (request_id,))
                        withdrawn.add(request_id)
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        return withdrawn

    def staged(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM staged").fetchone()[0]

    def status(self) -> dict:
        """What /ready reports of publishing: ok, or behind (since when, why); and what waits in staging, from when.

        Behind means the last publication failed, or the oldest staged record has waited longer than three
        rounds (a storage outage can take the storage SDK's retries, a minute or more, to surface as a failure).
        """
        # a reader of its own (WAL): /ready, probed every second, never waits on or holds up a staging commit
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as reader:
            count = reader.execute("SELECT COUNT(*) FROM staged").fetchone()[0]
            first = reader.execute("SELECT timestamp FROM staged ORDER BY rowid LIMIT 1").fetchone()  # oldest by insertion
        oldest = first[0] if first else None
        waited = (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        late = waited > 3 * self.flush_seconds + 10
        answer = {"status": "behind" if self.failure or late else "ok", "staged_records": count, "oldest_staged": oldest}
        if self.failure:
            answer |= {"since": self.failing_since, "error": self.failure}
        return answer

    def publish(self, finish_only: bool = False) -> int:
        """Publish every staged record as parts (finishing a publication a crash interrupted first, and only that with
        `finish_only`); return the count."""
        with self._publishing:
            with self._lock:
                cut = self._meta("publishing_through")
            if cut is None and finish_only:
                return 0
            if cut is None and self._leftovers_through is not None:
                self._drop_published_elsewhere(self._leftovers_through)
                self._leftovers_through = None
            with self._lock:
                pending = self._meta("publishing_through")
                if pending is None:
                    top = self._connection.execute("SELECT MAX(sequence) FROM staged").fetchone()[0]
                    if top is None:
                        return 0
                    pending = self._set_meta("publishing_through", str(top))  # before the upload: a retry uses the same cut
                through = int(pending)
                rows = self._connection.execute(SELECT_STAGED, (through,)).fetchall()
                self._staged_since_publish = 0
            by_partition: dict[str, list[tuple]] = defaultdict(list)
            first_of: dict[str, int] = {}
            for sequence, *record in rows:
                partition = partition_of(record[TIMESTAMP_INDEX])
                first_of.setdefault(partition, sequence)
                by_partition[partition].append(tuple(record))
            for partition, records in by_partition.items():
                self._upload(partition, part_name(self.writer_id, first_of[partition]), records)
            with self._lock:
                self._connection.execute("BEGIN")
                self._connection.execute("DELETE FROM staged WHERE sequence <= ?", (through,))
                self._connection.execute("DELETE FROM meta WHERE key = 'publishing_through'")
                self._set_meta("published_through", str(through))
                self._connection.execute("COMMIT")
            self.published_parts += len(by_partition)
            self.published_records += len(rows)
            if rows:
                log.info("published %d records in %d part(s) to %s", len(rows), len(by_partition), self.location)
            return len(rows)

    def _drop_published_elsewhere(self, through: int) -> None:
        """Forget staged records up to `through` that another writer has published (a retried request)."""
        with self._lock:
            staged = self._connection.execute(
                "SELECT request_id, image_index, timestamp FROM staged WHERE sequence <= ?", (through,)
            ).fetchall()
        # the retry was stamped by the other replica, in the same hour or, across its end, the next
        hours = {moment for _, _, timestamp in staged for moment in _this_and_next_hour(timestamp)}
        elsewhere: set[tuple[str, int]] = set()
        for partition in sorted({partition_of(moment) for moment in hours}):
            parts = [part for part in list_parts(self.fs, f"{self.root}/{partition}") if _writer_of(part.path) != self.writer_id]
            if parts:
                keys = read_parts(self.fs, parts, [])
                elsewhere |= set(zip(keys["request_id"], keys["image_index"].astype(int)))
        duplicates = [(request_id, index) for request_id, index, _ in staged if (request_id, index) in elsewhere]
        if duplicates:
            with self._lock:
                self._connection.execute("BEGIN")
                try:
                    self._connection.executemany("DELETE FROM staged WHERE request_id = ? AND image_index = ?", duplicates)
                    self._connection.execute("COMMIT")
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
            log.info("%d records staged before a restart were published by another writer meanwhile; not again", len(duplicates))

    def _upload(self, partition: str, name: str, records: list[tuple]) -> None:
        buffer = io.BytesIO()
        pq.write_table(records_table(records), buffer, compression="zstd")
        folder = f"{self.root}/{partition}"
        final = f"{folder}/{name}"
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(folder, exist_ok=True)
            write_whole(final, buffer.getvalue())  # readers see the whole part or none
        else:
            self.fs.pipe_file(final, buffer.getvalue())  # one committed blob: whole or none

    def _publish_noting_failure(self, finish_only: bool = False) -> None:
        """One round: publish, or note why not (once per outage in the log; /ready says it meanwhile)."""
        try:
            self.publish(finish_only)
        except Exception as err:  # the records stay staged; the next round tries again
            first = self.failure is None
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            self.failing_since = self.failing_since or datetime.now(UTC).isoformat(timespec="seconds")
            if first:
                log.warning("publishing to %s failed (%s); records stay staged in %s", self.location, self.failure, self.path)
            return
        if self.failure is not None:
            log.info("publishing to %s again (it had failed since %s)", self.location, self.failing_since)
            self.failure = self.failing_since = None

    def _run(self) -> None:
        if self._leftovers_through is not None:  # the other writers publish what they were retried meanwhile
            self._stop.wait(LEFTOVER_ROUNDS * self.flush_seconds)
        while not self._stop.is_set():
            stalled = self._wait_round()
            if self._stop.is_set():  # close() publishes the last round
                break
            if stalled > STALL_S:
                log.info("the process stalled %.1f s; waiting %g s for late answers first", stalled, STALL_GRACE_S)
                self._stop.wait(STALL_GRACE_S)
            self._publish_noting_failure()

    def _wait_round(self) -> float:
        """Wait for the next round (flush_seconds, or a wake-up); return the longest stall seen meanwhile: how much
        longer than asked one slice of the wait took (the process stopped or starved)."""
        deadline = time.monotonic() + self.flush_seconds
        stalled = 0.0
        while (remaining := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            began, asked = time.monotonic(), min(HEARTBEAT_S, remaining)
            woken = self._wake.wait(asked)
            stalled = max(stalled, time.monotonic() - began - asked)
            if woken:
                break
        self._wake.clear()
        return stalled

    def close(self) -> None:
        """Publish what is staged and stop; with storage down, what is staged waits for the next start. Held-back
        leftovers of a killed predecessor wait out their rounds first (at most LEFTOVER_CLOSE_WAIT_S)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)
        if self._leftovers_through is not None:
            time.sleep(min(max(0.0, self._leftovers_due - time.monotonic()), LEFTOVER_CLOSE_WAIT_S))
        self._publish_noting_failure()
        if self.failure is not None:
            log.warning("%d records stay staged in %s for this writer's next start", self.staged(), self.path)
        with self._lock:
            self._connection.close()


def _this_and_next_hour(timestamp: str) -> tuple[str, str]:
    moment = datetime.fromisoformat(timestamp)
    return timestamp, (moment + timedelta(hours=1)).isoformat()


def _writer_of(path: str) -> str | None:
    named = PART_NAME.search(path)
    return named["writer"] if named else None
