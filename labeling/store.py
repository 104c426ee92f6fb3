"""The label store a person writes through the labeling page: one label file, changed one answer at a time and
rewritten whole and atomically (common.labels), so the loop and a retrain always read a complete file."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from common.images import NUM_CLASSES
from common.labels import (
    LABEL_COLUMNS,
    LABEL_SUFFIXES,
    NOT_A_DIGIT,
    NOT_A_DIGIT_LABEL,
    PROVENANCE_COLUMNS,
    LabelFileError,
    read_labels,
    write_labels,
)

ANSWER_COLUMNS = (*LABEL_COLUMNS, "window", *PROVENANCE_COLUMNS)
MAX_NAME_LENGTH = 64


class AnswerError(ValueError):
    """An answer the store refuses; the message names the field and what was expected."""


def parse_answer(body: object) -> tuple[int, str]:
    """A page's answer ({"label": 0-9 or "not_a_digit", "labeled_by": name}) as (label, who)."""
    if not isinstance(body, dict):
        raise AnswerError(f'expected a JSON object {{"label": 0-{NUM_CLASSES - 1} or "{NOT_A_DIGIT}", "labeled_by": name}}')
    label = body.get("label")
    if label == NOT_A_DIGIT:
        label = NOT_A_DIGIT_LABEL
    elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
        raise AnswerError(f'label {label!r}: expected a whole number 0-{NUM_CLASSES - 1} or "{NOT_A_DIGIT}"')
    who = body.get("labeled_by")
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_NAME_LENGTH:
        raise AnswerError(f"labeled_by {who!r}: expected the labeler's name, 1-{MAX_NAME_LENGTH} characters")
    return label, who.strip()


def with_answer(labels: pd.DataFrame, answer: dict) -> pd.DataFrame:
    """`labels` with `answer` in place of any earlier answer for the same image."""
    return pd.concat(
        [without_answer(labels, answer["request_id"], answer["image_index"]), pd.DataFrame([answer])], ignore_index=True
    )


def without_answer(labels: pd.DataFrame, request_id: str, image_index: int) -> pd.DataFrame:
    """`labels` without the answer for one image."""
    same = (labels["request_id"] == request_id) & (labels["image_index"] == image_index)
    return labels[~same].reset_index(drop=True)


class LabelStore:
    """A label file (.csv or .jsonl) held in memory and rewritten on every change, one change at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        if path.suffix not in LABEL_SUFFIXES:
            raise LabelFileError(f"{path}: a label file is .csv or .jsonl")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise LabelFileError(f"{path}: its folder does not exist or cannot be written")
        labels = read_labels(path, not_a_digit=True) if path.is_file() else pd.DataFrame(columns=list(ANSWER_COLUMNS))
        # the page's columns, and any the file had already (arrived_window of a simulated annotator's file)
        self.labels = labels.reindex(columns=list(dict.fromkeys([*ANSWER_COLUMNS, *labels.columns])))

    def answers(self) -> dict[tuple[str, int], dict]:
        """Every answer by (request_id, image_index)."""
        with self.lock:
            rows = self.labels.astype(object).where(self.labels.notna(), None).to_dict("records")
        return {(row["request_id"], int(row["image_index"])): row for row in rows}

    def put(self, request_id: str, image_index: int, window: int | None, label: int, who: str) -> dict | None:
        """Record one answer now; the answer it replaced, if any."""
        answer = {
            "request_id": request_id,
            "image_index": image_index,
            "label": label,
            "window": window,
            "labeled_by": who,
            "labeled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self.lock:
            previous = self._answer(request_id, image_index)
            self._write(with_answer(self.labels, answer))
        return previous

    def remove(self, request_id: str, image_index: int) -> dict | None:
        """Take one image's answer back; the answer removed, if any."""
        with self.lock:
            previous = self._answer(request_id, image_index)
            self._write(without_answer(self.labels, request_id, image_index))
        return previous

    def _answer(self, request_id: str, image_index: int) -> dict | None:
        same = self.labels[(self.labels["request_id"] == request_id) & (self.labels["image_index"] == image_index)]
        return None if same.empty else same.astype(object).where(same.notna(), None).iloc[-1].to_dict()

    def _write(self, labels: pd.DataFrame) -> None:
        whole = {column: "Int64" for column in ("window", "arrived_window") if column in labels}
        write_labels(labels.astype({**whole, "image_index": int, "label": int}), self.path)
        self.labels = labels
