"""Azure ML custom monitoring signal: digitdrift's window metrics as the table Azure reads (group, metric, value, threshold)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from common.logs import configure_logging

log = logging.getLogger(__name__)

SIGNAL_COLUMNS = ["group", "metric_name", "metric_value", "threshold_value"]
# Each signal metric from a row of the monitor's window_metrics.csv; all grow as a window gets worse, since Azure
# raises a breach when a value passes its threshold.
SIGNAL_METRICS = {
    "low_confidence_rate": lambda row: row["low_confidence_rate"],
    "estimated_foreign_share": lambda row: row["estimated_foreign_share"],
    "estimated_error": lambda row: 1.0 - row["estimated_accuracy"],
    "embedding_mmd": lambda row: row["embedding_mmd"],
}
MLTABLE = """paths:
  - file: ./signal_metrics.csv
transformations:
  - read_delimited:
      delimiter: ","
      header: all_files_same_headers
      encoding: utf8
"""
CHAMPION_URI = "models:/digits-cnn@champion"  # resolved by tag where the registry has no aliases (Azure ML)


class SignalError(ValueError):
    """A threshold or a metrics table the signal cannot use; the message names it."""


def parse_thresholds(pairs: list[str]) -> dict[str, float]:
    """`metric=value` pairs, each metric one of SIGNAL_METRICS and each value a number."""
    thresholds = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in SIGNAL_METRICS:
            raise SignalError(f"--threshold {pair!r}: unknown metric {name!r}; expected one of {', '.join(SIGNAL_METRICS)}")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise SignalError(f"--threshold {pair!r}: {value!r} is not a number") from None
    return thresholds


def signal_table(window_metrics: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """One row per judged window and metric with a threshold: the window (its start when the monitor gives one) as
    the group. Windows too small to judge, and metrics a window could not compute (NaN), are left out."""
    group_column = "window_start" if "window_start" in window_metrics else "window"
    missing = [column for column in (group_column, "too_small") if column not in window_metrics]
    if missing:
        raise SignalError(f"window metrics lack column(s) {', '.join(missing)}")
    rows = []
    for _, row in window_metrics[~window_metrics["too_small"].astype(bool)].iterrows():
        for name, threshold in thresholds.items():
            value = float(SIGNAL_METRICS[name](row))
            if not math.isnan(value):
                rows.append((str(row[group_column]), name, value, threshold))
    return pd.DataFrame(rows, columns=SIGNAL_COLUMNS)


def write_mltable(table: pd.DataFrame, out: str) -> None:
    """The table as signal_metrics.csv with its MLTable file, in a local folder or an abfss:// output (adlfs)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/signal_metrics.csv", "w") as stream:
        table.to_csv(stream, index=False)
    with fs.open(f"{root}/MLTable", "w") as stream:
        stream.write(MLTABLE)


def monitor_location(url: str) -> tuple[str, dict[str, str]]:
    """The monitor's --log for a data input: abfss://container@account.dfs.core.windows.net/path (how Azure hands a
    direct-mode input to Spark) becomes az://container/path with the account in AZURE_STORAGE_ACCOUNT_NAME (the
    process's identity reads it); anything else is passed as it is."""
    found = re.fullmatch(r"abfss?://([^@/]+)@([^./]+)\.dfs\.core\.windows\.net/(.*)", url)
    if not found:
        return url, {}
    return f"az://{found.group(1)}/{found.group(3)}", {"AZURE_STORAGE_ACCOUNT_NAME": found.group(2)}


def monitor_windows(predictions: str, dataset_id: str, model: str, work: Path) -> pd.DataFrame:
    """Run digitdrift's monitor by day over the collector folder from its watermark on; its window metrics."""
    location, env = monitor_location(predictions)
    command = [
        sys.executable,
        "-m",
        "monitoring",
        "run",
        "--log",
        location,
        "--model",
        model,
        "--dataset-id",
        dataset_id,
        "--window",
        "1d",
        "--clock",
        "wall",
        "--out",
        str(work / "monitoring"),
    ]
    done = subprocess.run(
        command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, env={**os.environ, **env}
    )
    if done.returncode != 0:
        raise SignalError(f"the monitor failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    metrics = work / "monitoring" / "window_metrics.csv"
    return pd.read_csv(metrics) if metrics.is_file() else pd.DataFrame(columns=["window", "too_small"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud/window_signal.py", description=__doc__)
    parser.add_argument("--predictions", required=True, help="the collector's model_outputs folder (or its URL)")
    parser.add_argument("--production-data", help="Azure's production data window (unused: the monitor reads the folder)")
    parser.add_argument(
        "--threshold", action="append", default=[], help="metric=value, once per metric in the signal's metric_thresholds"
    )
    parser.add_argument("--dataset-id", default="digitdrift-azure-signal", help="the monitor's watermark key for this signal")
    parser.add_argument("--model", default=CHAMPION_URI, help="the served model whose reference the windows are judged by")
    parser.add_argument("--signal-metrics", required=True, help="the output folder (mltable) Azure reads")
    parser.add_argument("--window-metrics", help="a window_metrics.csv to convert instead of running the monitor")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        thresholds = parse_thresholds(args.threshold)
        if args.window_metrics:
            windows = pd.read_csv(args.window_metrics)
        else:
            with tempfile.TemporaryDirectory() as work:
                windows = monitor_windows(args.predictions, args.dataset_id, args.model, Path(work))
        table = signal_table(windows, thresholds)
    except SignalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_mltable(table, args.signal_metrics)
    print(f"{len(table)} signal metric(s) for {table['group'].nunique()} window(s) in {args.signal_metrics}")
    return 0


if __name__ == "__main__":
    # Azure runs the entry file as a script: the packages live one folder up
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
    sys.exit(main())
