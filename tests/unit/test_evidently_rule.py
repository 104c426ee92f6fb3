"""The Evidently report's rule: any signal column different from the reference, at about 1% false alarms per report."""

import numpy as np
import pandas as pd

from monitoring.report import FALSE_ALARM_RATE, _run, column_threshold, drifted_column_count

COLUMNS = ["foreign_score", "confidence", "predicted", *(f"emb_{i}" for i in range(8))]


def frame(rng, rows, shift=0.0):
    data = {column: rng.normal(0, 1, rows) for column in COLUMNS if column != "predicted"}
    data["foreign_score"] = data["foreign_score"] + shift
    data["emb_7"] = data["emb_7"] - shift
    data["predicted"] = rng.integers(0, 10, rows)
    return pd.DataFrame(data)


def test_two_shifted_signal_columns_are_drift_though_under_evidentlys_default_share_of_half():
    rng = np.random.default_rng(0)
    drifted, total = drifted_column_count(_run(frame(rng, 2500), frame(rng, 1500, shift=0.5), COLUMNS))
    assert total == len(COLUMNS) and 2 <= drifted < total / 2


def test_traffic_like_the_reference_is_rarely_drift():
    rng = np.random.default_rng(1)
    alarms = sum(drifted_column_count(_run(frame(rng, 2500), frame(rng, 2000), COLUMNS))[0] > 0 for _ in range(10))
    assert alarms <= 1  # 1% expected per report; 10 reports
    assert column_threshold(len(COLUMNS) - 1) == FALSE_ALARM_RATE / 10
