"""The one scoring path of every door (/score, /invocations, score.py): score, build records, write the log."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.prediction_dataset import DatasetError
from common.records import PredictionRecord
from serving.core import Scored, ScoringCore, to_records


class RecordSink(Protocol):
    """Where scored records go: the SQLite log (one process) or the partitioned dataset (any number of replicas).

    `write` returns only once the records are durable; a door answers only after it returns.
    """

    def write(self, records: list[PredictionRecord]) -> int: ...

    def withdraw(self, request_ids: list[str]) -> set[str]:
        """Take back committed records that no reader can have seen yet; return the request ids taken back whole."""
        ...

    def close(self) -> None: ...


class ImageRequest(Protocol):
    """One request's images and what its records carry; the batcher's jobs are ImageRequests too."""

    images: np.ndarray
    request_id: str
    window: int | None


@dataclass(frozen=True)
class SingleRequest:
    """An ImageRequest for a door that scores one request at a time (score.py)."""

    images: np.ndarray
    request_id: str
    window: int | None


def split_scored(scored: Scored, sizes: list[int]) -> list[Scored]:
    """Cut one batch's Scored back into per-request pieces of `sizes` images."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(scored[start : start + size])
        start += size
    return pieces


def score_requests(core: ScoringCore, requests: Sequence[ImageRequest]) -> list[Scored]:
    """Score every request's images in one model call; one Scored per request, each naming the model that scored it."""
    images = np.concatenate([request.images for request in requests])
    return split_scored(core.score(images), [len(request.images) for request in requests])


class LogUnavailable(RuntimeError):
    """The records could not be made durable (the disk full, the file locked or failing): nothing is acknowledged,
    and the client may retry later."""


def log_scored(prediction_log: RecordSink | None, requests: Sequence[ImageRequest], pieces: Sequence[Scored]) -> None:
    """Commit the records of scored requests to the log (when one is kept); returns once they are durable."""
    if prediction_log is None:
        return
    records = [
        record
        for request, piece in zip(requests, pieces)
        for record in to_records(piece, request.images, piece.identity, request.request_id, request.window)
    ]
    try:
        prediction_log.write(records)
    except (sqlite3.OperationalError, OSError) as err:  # SQLite's "database or disk is full" among them
        raise LogUnavailable(f"the prediction log cannot be written ({err}); nothing was recorded, retry later") from err


def score_and_log(core: ScoringCore, prediction_log: RecordSink | None, requests: Sequence[ImageRequest]) -> list[Scored]:
    """Score every request's images in one model call and commit their records to the log (when one is kept).

    Returns one Scored per request, only after the log's transaction is committed: a caller that answers
    with it never acknowledges a prediction the log could lose.
    """
    pieces = score_requests(core, requests)
    log_scored(prediction_log, requests, pieces)
    return pieces


def open_sink(
    log_path: str | None, dataset: str | None, staging_dir: str | None, flush_seconds: float = 5.0
) -> RecordSink | None:
    """The dataset sink when a dataset location is given (staged in `staging_dir`), else the SQLite log, else none."""
    if dataset:
        from serving.dataset_sink import DatasetSink

        if not staging_dir:
            raise DatasetError(f"a prediction dataset ({dataset}) needs a staging folder of this replica's own")
        return DatasetSink(dataset, staging_dir, flush_seconds=flush_seconds)
    if log_path and log_path != "none":
        from serving.prediction_log import PredictionLog

        return PredictionLog(log_path)
    return None
