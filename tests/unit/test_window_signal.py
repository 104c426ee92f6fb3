"""The custom monitoring signal's table: digitdrift's window metrics in Azure ML's signal_metrics schema."""

import math

import pandas as pd
import pytest

from cloud.window_signal import MLTABLE, SIGNAL_COLUMNS, SignalError, main, monitor_location, parse_thresholds, signal_table


def windows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "window": [0, 1, 2],
            "too_small": [False, False, True],
            "low_confidence_rate": [0.02, 0.3, 0.5],
            "estimated_foreign_share": [0.0, 0.4, 0.9],
            "estimated_accuracy": [0.99, 0.7, 0.5],
            "embedding_mmd": [0.01, math.nan, 0.2],
        }
    )


def test_each_judged_window_gives_one_row_per_metric_in_azures_schema():
    table = signal_table(windows(), {"low_confidence_rate": 0.1, "estimated_error": 0.05, "embedding_mmd": 0.05})
    assert list(table.columns) == SIGNAL_COLUMNS == ["group", "metric_name", "metric_value", "threshold_value"]
    assert set(table["group"]) == {"0", "1"}  # window 2 was too small to judge
    window_1 = table[table["group"] == "1"].set_index("metric_name")["metric_value"]
    assert window_1["estimated_error"] == pytest.approx(0.3)
    assert "embedding_mmd" not in window_1  # not computed for that window: left out
    assert table["threshold_value"].tolist() == [0.1, 0.05, 0.05, 0.1, 0.05]


def test_a_bad_threshold_is_named():
    assert parse_thresholds(["estimated_error=0.05"]) == {"estimated_error": 0.05}
    with pytest.raises(SignalError, match=r"--threshold 'accuracy=0.9': unknown metric 'accuracy'"):
        parse_thresholds(["accuracy=0.9"])
    with pytest.raises(SignalError, match=r"'estimated_error=high': 'high' is not a number"):
        parse_thresholds(["estimated_error=high"])


def test_the_signal_writes_a_table_azure_reads_as_mltable(tmp_path):
    windows().to_csv(tmp_path / "window_metrics.csv", index=False)
    out = tmp_path / "signal_metrics"
    code = main(
        ["--predictions", str(tmp_path), "--window-metrics", str(tmp_path / "window_metrics.csv"),
         "--threshold", "low_confidence_rate=0.1", "--signal-metrics", str(out)]
    )  # fmt: skip
    assert code == 0 and (out / "MLTable").read_text() == MLTABLE
    assert pd.read_csv(out / "signal_metrics.csv").to_dict("list") == {
        "group": [0, 1],
        "metric_name": ["low_confidence_rate"] * 2,
        "metric_value": [0.02, 0.3],
        "threshold_value": [0.1, 0.1],
    }


def test_a_direct_mode_input_url_becomes_a_location_the_monitor_reads():
    url = "abfss://azureml-blobstore-1@ws1store.dfs.core.windows.net/modelDataCollector/e/blue/model_outputs"
    assert monitor_location(url) == (
        "az://azureml-blobstore-1/modelDataCollector/e/blue/model_outputs",
        {"AZURE_STORAGE_ACCOUNT_NAME": "ws1store"},
    )
    assert monitor_location("/mnt/inputs/predictions") == ("/mnt/inputs/predictions", {})
