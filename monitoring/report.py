"""An Evidently data-drift report: the reference's held-out MNIST against the drifted windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.records import PROJECTION_COLUMNS
from common.reference import Reference

REPORT_COLUMNS = ["confidence", "predicted", "foreign_score", *PROJECTION_COLUMNS]


def reference_frame(reference: Reference) -> pd.DataFrame:
    """The reference's calibration sample in the prediction log's columns."""
    frame = pd.DataFrame(
        {
            "confidence": reference.sample_confidence,
            "predicted": reference.sample_predicted.astype(int),
            "foreign_score": reference.sample_foreign_score,
        }
    )
    if len(reference.sample_projection):
        for index, column in enumerate(PROJECTION_COLUMNS):
            frame[column] = reference.sample_projection[:, index]
    return frame


def evidently_report(reference: Reference, current: pd.DataFrame, path: Path) -> Path:
    """Evidently's DataDriftPreset over confidence, predicted class, foreign score and embedding projection."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    baseline = reference_frame(reference)
    columns = [column for column in REPORT_COLUMNS if column in baseline and current[column].notna().any()]
    numerical = [column for column in columns if column != "predicted"]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=["predicted"])
    current = current[columns].astype({column: float for column in numerical}).assign(predicted=current["predicted"].astype(int))
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(baseline[columns], data_definition=definition),
    )
    snapshot.save_html(str(path))
    return path


def drifted_windows(metrics: pd.DataFrame, alerts_windows: list[int], fallback: int = 10) -> list[int]:
    """The windows to report on: those with alerts, else the last few."""
    if alerts_windows:
        return sorted(set(alerts_windows))
    return list(np.asarray(metrics["window"])[-fallback:])
