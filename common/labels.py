"""The label-file contract: what an annotator answers for queued images (request id, image index, label), as CSV or JSONL."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.files import write_whole
from common.images import NUM_CLASSES
from common.quality import QUALITY_CAUSES
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG

# Columns of a label file; `window` (when the image was served) and `arrived_window` (when its label came
# back) are optional: the simulated annotator writes them, a person's file may not. The labeling page writes
# who labeled and when (`labeled_by`, `labeled_at`, ISO-8601 UTC).
LABEL_COLUMNS = ("request_id", "image_index", "label")
OPTIONAL_LABEL_COLUMNS = ("window", "arrived_window")
PROVENANCE_COLUMNS = ("labeled_by", "labeled_at")
# A label file may answer "not a digit" for a queued image: the label field holds this word. Such an image has
# no class to train or score against, so `read_labels` leaves it out unless asked (as NOT_A_DIGIT_LABEL).
NOT_A_DIGIT = "not_a_digit"
NOT_A_DIGIT_LABEL = -1
LABEL_SUFFIXES = (".csv", ".jsonl")
# Strata of served images by their flags: the labeling queue draws within them, the label-assisted estimate
# corrects each with its own labels.
FOREIGN_STRATUM = "foreign"  # flagged foreign or given a data-quality cause (whatever its confidence)
UNSURE_STRATUM = "low_confidence"  # flagged low confidence only
CLEAN_STRATUM = "clean"  # no flag
STRATA = (FOREIGN_STRATUM, UNSURE_STRATUM, CLEAN_STRATUM)


def strata_of(flags: pd.Series) -> pd.Series:
    """Each record's stratum from its flags: foreign (flagged foreign, or given a data-quality cause: either way
    outside what the reference vouches for), low_confidence (only), or clean."""
    text = flags.fillna("").astype(str)
    foreign = text.str.contains("|".join((FOREIGN_FLAG, *QUALITY_CAUSES)))
    unsure = text.str.contains(LOW_CONFIDENCE_FLAG)
    stratum = np.where(foreign, FOREIGN_STRATUM, np.where(unsure, UNSURE_STRATUM, CLEAN_STRATUM))
    return pd.Series(stratum, index=flags.index, name="stratum")


class LabelFileError(ValueError):
    """A label file that cannot be read; the message names the file, the line and the field."""


def _rows(path: Path) -> list[tuple[int, dict]]:
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in LABEL_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise LabelFileError(f"{path}: the header lacks {', '.join(missing)} (expected {','.join(LABEL_COLUMNS)})")
            return [(number, row) for number, row in enumerate(reader, start=2)]
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabelFileError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise LabelFileError(f"{path}:{number}: expected a JSON object with {', '.join(LABEL_COLUMNS)}")
        rows.append((number, row))
    return rows


def _integer(value: object, path: Path, number: int, field: str, low: int, high: int | None) -> int:
    text = str(value).strip() if value is not None else ""
    if isinstance(value, bool) or not text.lstrip("-").isdigit():
        raise LabelFileError(f"{path}:{number}: {field} {value!r} is not an integer")
    number_value = int(text)
    if number_value < low or (high is not None and number_value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise LabelFileError(f"{path}:{number}: {field} {number_value} is out of range (expected {bound})")
    return number_value


def _label(value: object, path: Path, number: int) -> int:
    if str(value).strip() == NOT_A_DIGIT:
        return NOT_A_DIGIT_LABEL
    return _integer(value, path, number, "label", 0, NUM_CLASSES - 1)


def read_labels(path: str | Path, not_a_digit: bool = False) -> pd.DataFrame:
    """A label file as a frame (request_id, image_index, label, and window / arrived_window / labeled_by /
    labeled_at when present).

    Every row is checked before any is returned: a bad file is refused whole, naming its first bad line.
    A (request id, image index) labeled twice keeps its last label, as a correction would. Images answered "not
    a digit" are left out, or with `not_a_digit` kept with the label NOT_A_DIGIT_LABEL.
    """
    path = Path(path)
    if path.suffix not in LABEL_SUFFIXES:
        raise LabelFileError(f"{path}: a label file is .csv or .jsonl")
    if not path.is_file():
        raise LabelFileError(f"{path}: no label file here")
    parsed = []
    for number, row in _rows(path):
        request_id = str(row.get("request_id") or "").strip()
        if not request_id:
            raise LabelFileError(f"{path}:{number}: request_id is empty")
        entry = {
            "request_id": request_id,
            "image_index": _integer(row.get("image_index"), path, number, "image_index", 0, None),
            "label": _label(row.get("label"), path, number),
        }
        for column in OPTIONAL_LABEL_COLUMNS:
            if row.get(column) not in (None, ""):
                entry[column] = _integer(row[column], path, number, column, 0, None)
        for column in PROVENANCE_COLUMNS:
            if row.get(column) not in (None, ""):
                entry[column] = str(row[column])
        parsed.append(entry)
    frame = pd.DataFrame(parsed, columns=[*LABEL_COLUMNS, *OPTIONAL_LABEL_COLUMNS, *PROVENANCE_COLUMNS])
    frame = frame.drop_duplicates(["request_id", "image_index"], keep="last")
    if not not_a_digit:
        frame = frame[frame["label"] != NOT_A_DIGIT_LABEL]
    return frame.reset_index(drop=True)


def write_labels(labels: pd.DataFrame, path: str | Path) -> Path:
    """Write labels as CSV or JSONL (by suffix), the contract's columns first; NOT_A_DIGIT_LABEL as NOT_A_DIGIT."""
    path = Path(path)
    if path.suffix not in LABEL_SUFFIXES:
        raise LabelFileError(f"{path}: a label file is .csv or .jsonl")
    optional = (*OPTIONAL_LABEL_COLUMNS, *PROVENANCE_COLUMNS)
    columns = [*LABEL_COLUMNS, *(column for column in optional if column in labels and labels[column].notna().any())]
    if (labels["label"] == NOT_A_DIGIT_LABEL).any():
        labels = labels.assign(label=labels["label"].astype(object).where(labels["label"] != NOT_A_DIGIT_LABEL, NOT_A_DIGIT))
    path.parent.mkdir(parents=True, exist_ok=True)
    # replaced whole: a reader (the loop, a retrain) sees the old file or the new one, never half
    text = labels[columns].to_csv(index=False) if path.suffix == ".csv" else labels[columns].to_json(orient="records", lines=True)
    return write_whole(path, text)
