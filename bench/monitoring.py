"""Monitoring speed on a big log: python -m bench.monitoring --source-log LOG [--records 1000000] [--windows 365].

The big log is made of real records of `--source-log` (a log the server or score.py wrote),
resampled with new request ids across `--windows` windows, written as SQLite and as Parquet.
Each stage of a monitoring run is timed, by the pandas engine on both files and by the DuckDB engine on the
Parquet one (the engine `--engine auto` takes for Parquet); the MLflow run goes to a scratch SQLite store made
beforehand. `--fixed-cost-windows 36 3650` also times the DuckDB engine's full run with the same records over
other numbers of windows, to show which outputs grow with the windows.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from bench.result_file import write_result
from common.logs import configure_logging
from common.records import PredictionRecord
from monitoring.engine import for_version, open_log
from monitoring.job import judge, monitor
from monitoring.metrics import DEFAULT_CONFIG
from monitoring.model import ModelRef, resolve_model
from monitoring.pandas_engine import read_log
from serving.prediction_log import PredictionLog, export_parquet

RESULTS = Path(__file__).parent / "results"


def build_big_log(source: pd.DataFrame, records: int, windows: int, path: Path, seed: int = 0) -> None:
    """`records` rows resampled from `source`, spread evenly over `windows` windows, in one SQLite log."""
    rng = np.random.default_rng(seed)
    picks = source.iloc[rng.integers(0, len(source), records)].reset_index(drop=True)
    picks["window"] = np.arange(records) * windows // records
    picks["request_id"] = [f"big-{index}" for index in range(records)]
    picks["image_index"] = 0
    prediction_log = PredictionLog(path, synchronous="NORMAL")
    columns = list(picks.columns)
    chunk = 50_000
    for start in range(0, records, chunk):
        rows = picks.iloc[start : start + chunk]
        prediction_log.write([_record(dict(zip(columns, values))) for values in rows.itertuples(index=False)])
    prediction_log.close()


def _record(row: dict) -> PredictionRecord:
    image = row["image"] if isinstance(row["image"], bytes) else None
    projection = tuple(row[f"emb_{i}"] for i in range(8)) if pd.notna(row["emb_0"]) else None
    return PredictionRecord(
        row["request_id"],
        row["image_index"],
        row["model_name"],
        str(row["model_version"]),
        row["timestamp"],
        int(row["window"]),
        int(row["predicted"]),
        tuple(row[f"prob_{d}"] for d in range(10)),
        row["confidence"],
        tuple(flag for flag in str(row["flags"]).split(",") if flag),
        row["fingerprint"],
        row["foreign_score"],
        projection,
        image,
    )


def timed(stage: dict, name: str, action):
    started = time.perf_counter()
    result = action()
    stage[name] = round(time.perf_counter() - started, 2)
    return result


def run(source: pd.DataFrame, model: ModelRef, records: int, windows: int) -> dict:
    figures: dict = {"records": records, "windows": windows}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        timed(figures, "build_log_seconds", lambda: build_big_log(source, records, windows, folder / "big.db"))
        timed(figures, "export_parquet_seconds", lambda: export_parquet(folder / "big.db", folder / "big.parquet"))
        measured = (("sqlite", "pandas", folder / "big.db"), ("parquet", "pandas", folder / "big.parquet"))
        for kind, engine, path in (*measured, ("parquet_duckdb", "duckdb", folder / "big.parquet")):
            stages: dict = {}
            frame = timed(
                stages, "read_seconds", lambda path=path, engine=engine: for_version(open_log(path, engine), model, path)
            )
            timed(stages, "window_metrics_and_alerts_seconds", lambda frame=frame: judge(frame, model, DEFAULT_CONFIG))
            scratch_store(folder / f"mlflow-{kind}.db")
            result = timed(
                stages,
                "full_monitoring_run_seconds",
                lambda frame=frame, kind=kind: monitor(frame, model, folder / f"out-{kind}", f"bench-{kind}"),
            )
            stages["full_monitoring_run_stages_seconds"] = result.stages
            stages["total_seconds"] = round(stages["read_seconds"] + stages["full_monitoring_run_seconds"], 2)
            figures[kind] = stages
    figures["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures


def scratch_store(path: Path) -> None:
    """A new SQLite tracking store for one run, its tables made before the clock starts: a deployment's store
    exists already, and making MLflow's tables (about 1 s) is no part of a monitoring run."""
    mlflow.set_tracking_uri(f"sqlite:///{path}")
    mlflow.search_experiments()


def fixed_costs(source: pd.DataFrame, model: ModelRef, records: int, windows: list[int]) -> dict:
    """The DuckDB engine's full run over the same number of records spread over each of `windows`: what the
    outputs cost as the windows grow (the report, dashboard and gallery are meant to stay flat)."""
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for count in windows:
            build_big_log(source, records, count, folder / f"big-{count}.db")
            export_parquet(folder / f"big-{count}.db", folder / f"big-{count}.parquet")
            path = folder / f"big-{count}.parquet"
            frame = for_version(open_log(path, "duckdb"), model, path)
            scratch_store(folder / f"mlflow-{count}.db")
            stages: dict = {}
            result = timed(
                stages,
                "full_monitoring_run_seconds",
                lambda frame=frame, count=count: monitor(frame, model, folder / f"out-{count}", "bench"),
            )
            figures[str(count)] = {**stages, "stages_seconds": result.stages}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source-log", type=Path, required=True)
    parser.add_argument("--model", default="models:/digits-cnn@champion")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--windows", type=int, default=365)
    parser.add_argument(
        "--fixed-cost-windows",
        type=int,
        nargs="*",
        default=[],
        help="also time the DuckDB engine's full run with the records spread over each of these window counts",
    )
    args = parser.parse_args()
    configure_logging()
    from common.settings import load_settings

    mlflow.set_tracking_uri(load_settings().tracking_uri)
    model = resolve_model(args.model, None, None, "digits-cnn")
    source = read_log(args.source_log, columns=None)  # every column, images too: the big logs are real ones
    figures = run(source, model, args.records, args.windows)
    if args.fixed_cost_windows:
        figures["duckdb_full_run_by_windows"] = fixed_costs(source, model, args.records, args.fixed_cost_windows)
    result = write_result(
        RESULTS / "monitoring_1m.json",
        "monitoring a big prediction log (real records resampled), each stage timed",
        {"model": args.model, **figures},
        "bench.monitoring",
        ("pandas", "numpy", "scipy", "duckdb", "mlflow", "evidently", "plotly"),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
