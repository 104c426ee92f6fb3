"""The partitioned prediction dataset: immutable Parquet parts under a folder or a blob container, and Azure's
data-collector files; its layout, its schema and how it is listed and read (writers live in serving).

Layout (Hive-style, by the hour the records were scored, UTC):

    <root>/date=YYYY-MM-DD/hour=HH/part-<writer>-<first sequence number>.parquet

Every scoring process is a writer with its own id, and numbers its records; a part's name is therefore
unique across replicas and the same when a writer publishes the same records again after a crash, so a
retried publication replaces a part instead of adding one. A part appears whole or not at all: a local part
is renamed into place, a blob is committed by one upload.

Azure ML's data collector writes JSON lines instead, under
`<root>/<endpoint>/<deployment>/model_outputs/YYYY/MM/DD/HH/<instance>.jsonl`, each line a CloudEvent whose
`data` holds one or more records (score.py collects the same record columns, the image base64-encoded).
Readers take either layout and keep one record per (request_id, image_index): replicas write at least once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.records import PREDICTION_COLUMNS, read_prediction_log
from common.windows import parse_moments, utc_text

logger = logging.getLogger(__name__)

ARROW_TYPES = {"TEXT": pa.string(), "INTEGER": pa.int64(), "REAL": pa.float64(), "BLOB": pa.binary()}
ARROW_SCHEMA = pa.schema([(name, ARROW_TYPES[kind.split()[0]]) for name, kind in PREDICTION_COLUMNS.items()])
PART_SUFFIX = ".parquet"
COLLECTOR_SUFFIX = ".jsonl"
COLLECTOR_OUTPUTS = "model_outputs"  # the collection score.py fills with prediction records
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
PART_NAME = re.compile(r"part-(?P<writer>[A-Za-z0-9_.-]+)-(?P<sequence>\d{12})\.parquet$")


class DatasetError(ValueError):
    """A dataset location or part that cannot be read; the message names it and what was expected."""


def is_dataset_url(location: str) -> bool:
    """A blob container (az://, abfs://) or a folder, as opposed to a single SQLite or Parquet file."""
    return location.startswith(("az://", "abfs://")) or os.path.isdir(location)


def filesystem(location: str):
    """The fsspec filesystem and root path of a dataset: a local folder, or az://container/prefix (adlfs).

    A blob container is reached with the connection string in AZURE_STORAGE_CONNECTION_STRING (a storage
    account's, or Azurite's) or, without one, the Azure identity of the process (DefaultAzureCredential).
    """
    import fsspec

    if location.startswith(("az://", "abfs://")):
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        connection = os.environ.get(CONNECTION_STRING_ENV)
        if not connection and not account:
            raise DatasetError(f"{location}: set {CONNECTION_STRING_ENV} (or AZURE_STORAGE_ACCOUNT_NAME) to reach the container")
        options = {"connection_string": connection} if connection else {"account_name": account, "anon": False}
        return fsspec.core.url_to_fs(location, **options)
    return fsspec.core.url_to_fs(os.path.abspath(location))


def partition_of(timestamp: str) -> str:
    """The partition folder of a record scored at an ISO-8601 UTC `timestamp`."""
    moment = datetime.fromisoformat(timestamp)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def part_name(writer: str, first_sequence: int) -> str:
    return f"part-{writer}-{first_sequence:012d}{PART_SUFFIX}"


def records_table(rows: Iterable[tuple]) -> pa.Table:
    """Rows in PREDICTION_COLUMNS order as an Arrow table of the dataset's schema."""
    columns = list(zip(*rows))
    if not columns:
        return ARROW_SCHEMA.empty_table()
    return pa.table([pa.array(column, type=field.type) for column, field in zip(columns, ARROW_SCHEMA)], schema=ARROW_SCHEMA)


@dataclass(frozen=True)
class Part:
    """One immutable file of a dataset."""

    path: str  # as the filesystem names it
    size: int

    @property
    def kind(self) -> str:
        return "collector" if self.path.endswith(COLLECTOR_SUFFIX) else "parquet"


def list_parts(fs, root: str) -> list[Part]:
    """Every published part under `root` (Parquet parts and collector JSON lines), in name order."""
    if not fs.exists(root):
        return []
    found = fs.find(root, detail=True)
    parts = [
        Part(path, int(info.get("size") or 0))
        for path, info in found.items()
        if path.endswith((PART_SUFFIX, COLLECTOR_SUFFIX)) and not os.path.basename(path).startswith(".")
    ]
    return sorted(parts, key=lambda part: part.path)


def collector_records(lines: Iterable[str], where: str, unreachable: list[str] | None = None) -> list[dict]:
    """The prediction records of data-collector JSON lines (each a CloudEvent whose `data` lists records).

    An event whose payload was over 4 MB holds no records: Azure writes `"datainblob": "true"` and the URL of a blob
    that holds them in `data`. Its records are read from that blob when it is reachable (a workspace blob with the
    process's Azure identity, a URL with a SAS token, a local file); an unreachable one is never taken for a record:
    it is named in a warning (without its query string, which may hold a SAS token) and added to `unreachable`.
    """
    from urllib.parse import unquote, urlsplit

    def blob_text(url: str) -> str:
        import fsspec

        parts = urlsplit(url)
        if (parts.hostname or "").endswith(".blob.core.windows.net") and not parts.query:
            # the workspace's own storage: adlfs with the process's Azure identity (DefaultAzureCredential)
            account = parts.hostname.split(".")[0]
            with fsspec.open(f"az://{unquote(parts.path.lstrip('/'))}", "rt", account_name=account, anon=False) as stream:
                return stream.read()
        with fsspec.open(url, "rt") as stream:
            return stream.read()

    def payload_records(text: str) -> list:
        try:
            payload = json.loads(text)
        except ValueError:  # JSON lines of events, as the collector files themselves
            return collector_records(text.splitlines(), where, unreachable)
        if isinstance(payload, dict) and "data" in payload:
            payload = payload["data"]
        return payload if isinstance(payload, list) else [payload]

    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            data = event["data"]
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f"{where}:{number}: not a data-collector event (a JSON object with 'data')") from None
        if str(event.get("datainblob", "")).lower() == "true":
            url = data if isinstance(data, str) else ""
            named = urlsplit(url)._replace(query="", fragment="").geturl() or "(no URL)"
            try:
                records.extend(payload_records(blob_text(url)))
            except Exception as err:  # any failure to reach or parse the blob: counted and named, never guessed at
                logger.warning("%s:%d: records in blob %s not read (%s: %s)", where, number, named, type(err).__name__, err)
                if unreachable is not None:
                    unreachable.append(named)
            continue
        records.extend(data if isinstance(data, list) else [data])
    return records


def collector_frame(records: list[dict], where: str) -> pd.DataFrame:
    """Collected records in the dataset's columns; the image comes back from base64. No records: an empty frame."""
    if not records:
        return ARROW_SCHEMA.empty_table().to_pandas()
    frame = pd.DataFrame.from_records(records)
    missing = [column for column in ("request_id", "image_index", "model_name", "model_version") if column not in frame]
    if missing:
        raise DatasetError(f"{where}: collected records lack column(s) {', '.join(missing)}")
    for column in PREDICTION_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["image"] = [base64.b64decode(value) if isinstance(value, str) else None for value in frame["image"]]
    return pa.Table.from_pandas(frame[list(PREDICTION_COLUMNS)], schema=ARROW_SCHEMA, preserve_index=False).to_pandas()


def read_parts(fs, parts: list[Part], columns: list[str] | None = None) -> pd.DataFrame:
    """The records of `parts` as one DataFrame (only `columns` when given), one per (request_id, image_index)."""
    wanted = list(PREDICTION_COLUMNS) if columns is None else list(dict.fromkeys(["request_id", "image_index", *columns]))
    frames = []
    for part in parts:
        try:
            if part.kind == "parquet":
                with fs.open(part.path, "rb") as stream:
                    frames.append(pq.read_table(stream, columns=wanted).to_pandas())
            else:
                with fs.open(part.path, "rt") as stream:
                    frames.append(collector_frame(collector_records(stream, part.path), part.path)[wanted])
        except (OSError, pa.ArrowInvalid, KeyError) as err:
            raise DatasetError(f"{part.path}: not a readable part of a prediction dataset ({err})") from None
    if not frames:
        return ARROW_SCHEMA.empty_table().to_pandas()[wanted]
    frame = pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates(subset=["request_id", "image_index"], keep="first").reset_index(drop=True)


def read_records(location: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Every record wherever a deployment wrote it, in scoring order: a SQLite prediction log, a Parquet file
    exported from one, or a prediction dataset (a folder of parts, az://container/prefix, Azure ML's collector
    folder). Only `columns` when given; DatasetError names a location holding none."""
    wanted = None if columns is None else list(dict.fromkeys([*columns, "timestamp", "request_id", "image_index"]))
    if is_dataset_url(location):
        fs, root = filesystem(location)
        parts = list_parts(fs, root)
        if not parts:
            raise DatasetError(f"{location}: no prediction dataset here (no {PART_SUFFIX} or {COLLECTOR_SUFFIX} parts)")
        frame = read_parts(fs, parts, wanted)
    elif not os.path.isfile(location):
        raise DatasetError(f"{location}: no prediction log, Parquet export or prediction dataset here")
    elif location.endswith(PART_SUFFIX):
        present = set(pq.read_schema(location).names)  # an older export may lack a newer column
        frame = pd.read_parquet(location, columns=None if wanted is None else [name for name in wanted if name in present])
    else:
        return pd.DataFrame(read_prediction_log(location, columns))  # in scoring order already
    frame = frame.sort_values(["timestamp", "request_id", "image_index"], kind="stable").reset_index(drop=True)
    return frame if columns is None else frame.reindex(columns=columns)


def local_parquet(fs, parts: list[Part], cache_dir: Path) -> list[str]:
    """Local Parquet paths of `parts` for engines that read local Parquet only (DuckDB, Spark): local Parquet parts
    as they are, blobs and collector JSON lines copied into `cache_dir` (as Parquet) once each."""
    from fsspec.implementations.local import LocalFileSystem

    files = []
    for part in parts:
        if isinstance(fs, LocalFileSystem) and part.kind == "parquet":
            files.append(part.path)
            continue
        name = part.path.replace("/", "__")
        target = cache_dir / (name if part.kind == "parquet" else name.removesuffix(COLLECTOR_SUFFIX) + PART_SUFFIX)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_suffix(".tmp")
            if part.kind == "parquet":
                fs.get_file(part.path, str(temporary))
            else:
                read_parts(fs, [part]).to_parquet(temporary, index=False)
            temporary.replace(target)
        files.append(str(target))
    return files


@dataclass(frozen=True)
class PartSummary:
    """What a planner needs of a part without reading its records: how many carry a simulated window, the span of
    those windows, and the span of the scoring timestamps (ISO-8601 text, which sorts as time)."""

    rows: int
    stamped: int
    windows: tuple[int, int] | None  # smallest and largest simulated window, None when no record has one
    times: tuple[str, str] | None  # earliest and latest timestamp, None when no record has one


def _column_span(metadata, name: str) -> tuple[tuple | None, int] | None:
    """(min, max) and null count of a column from Parquet's row-group statistics; None when a group has none."""
    column = metadata.schema.names.index(name)
    spans, nulls = [], 0
    for index in range(metadata.num_row_groups):
        statistics = metadata.row_group(index).column(column).statistics
        if statistics is None:
            return None
        nulls += statistics.null_count
        if statistics.has_min_max:
            spans.append((statistics.min, statistics.max))
        elif statistics.null_count != metadata.row_group(index).num_rows:
            return None
    return ((min(low for low, _ in spans), max(high for _, high in spans)) if spans else None), nulls


def part_summary(fs, part: Part) -> PartSummary:
    """A part's PartSummary, from Parquet's column statistics where they exist and its timestamps' extremes can be
    read (else from its two columns; timestamps that cannot be read are passed over here, counted when judged)."""
    if part.kind == "parquet":
        with fs.open(part.path, "rb") as stream:
            metadata = pq.ParquetFile(stream).metadata
        windows, times = _column_span(metadata, "window"), _column_span(metadata, "timestamp")
        if windows is not None and times is not None and (times[0] is None or parse_moments(times[0]).notna().all()):
            (window_span, unstamped), (time_span, _) = windows, times
            window_span = None if window_span is None else (int(window_span[0]), int(window_span[1]))
            time_span = None if time_span is None else tuple(utc_text(moment) for moment in parse_moments(time_span))
            return PartSummary(metadata.num_rows, metadata.num_rows - unstamped, window_span, time_span)
    frame = read_parts(fs, [part], ["window", "timestamp"])
    windows = frame["window"].dropna()
    moments = parse_moments(frame["timestamp"]).dropna()
    return PartSummary(
        len(frame),
        len(windows),
        (int(windows.min()), int(windows.max())) if len(windows) else None,
        (utc_text(moments.min()), utc_text(moments.max())) if len(moments) else None,
    )
