"""Monitoring engines compared: python -m bench.monitoring_engines --source-log LOG [--sizes 100000 1000000 10000000].

For each size, a Parquet log of that many real records (resampled from `--source-log`, spread over
`--windows` windows) is judged by the pandas, DuckDB and Spark engines, each in a fresh process:
read, select the model version, window metrics and alerts; and by the pandas engine as it was before it
left the image blobs on disk (`pandas-every-column`), the peer of its column pruning. `--skip ENGINE@SIZE`
leaves one out where it cannot finish (pandas past the machine's memory). Spark is timed cold (the JVM and session
start inside the measurement) and warm (the same work again on the running session). Peak memory is
the most resident memory of the measured process and its children (Spark's JVM), sampled every 0.1 s;
a process that passes `--memory-limit-gib` is stopped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.result_file import write_result
from common.logs import configure_logging

RESULTS = Path(__file__).parent / "results"
ENGINES = ("pandas", "duckdb", "spark")
EVERY_COLUMN = "pandas-every-column"  # the pandas engine before it left the image blobs on disk
MEASURED = (EVERY_COLUMN, *ENGINES)
log = logging.getLogger(__name__)


def build_parquet_log(source_parquet: Path, records: int, windows: int, path: Path, seed: int = 0) -> None:
    """`records` rows resampled from a Parquet log, with new request ids, spread evenly over `windows` windows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.read_table(source_parquet)
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with pq.ParquetWriter(str(path), source.schema) as writer:
        for start in range(0, records, chunk):
            count = min(chunk, records - start)
            rows = source.take(pa.array(rng.integers(0, source.num_rows, count)))
            ordinal = np.arange(start, start + count)
            replaced = {
                "request_id": pa.array([f"big-{index}" for index in ordinal], pa.string()),
                "image_index": pa.array(np.zeros(count, dtype=np.int64)),
                "window": pa.array(ordinal * windows // records),
            }
            for name, values in replaced.items():
                rows = rows.set_column(rows.schema.get_field_index(name), name, values)
            writer.write_table(rows)
            log.info("%s: %d of %d records written", path.name, start + count, records)


def measure(engine: str, log_path: str, model_uri: str) -> dict:
    """In this process: time the engine's read + version selection + window metrics and alerts."""
    import mlflow

    from common.settings import load_settings
    from monitoring.engine import for_version, open_log
    from monitoring.job import judge
    from monitoring.metrics import DEFAULT_CONFIG
    from monitoring.model import resolve_model

    mlflow.set_tracking_uri(load_settings().tracking_uri)
    model = resolve_model(model_uri, None, None, "digits-cnn")

    def once(figures: dict) -> float:
        started = time.perf_counter()
        if engine == EVERY_COLUMN:
            from monitoring.pandas_engine import PandasLog, read_log

            records = for_version(PandasLog(read_log(log_path, columns=None)), model, log_path)
        else:
            records = for_version(open_log(log_path, engine), model, log_path)
        metrics, alerts, _ = judge(records, model, DEFAULT_CONFIG)
        figures.update(windows=len(metrics), records=int(metrics["volume"].sum()), alerts=len(alerts))
        return time.perf_counter() - started

    figures: dict = {}
    if engine == "spark":
        from common.spark import spark_session

        started = time.perf_counter()
        spark_session()
        figures["session_start_seconds"] = round(time.perf_counter() - started, 2)
        figures["cold_seconds"] = round(figures["session_start_seconds"] + once(figures), 2)
        figures["warm_seconds"] = round(once(figures), 2)
    else:
        figures["seconds"] = round(once(figures), 2)
    return figures


def run_measured(engine: str, log_path: Path, model_uri: str, limit_gib: float) -> dict:
    """`measure` in a fresh process, sampling the memory of it and its children; stopped past `limit_gib`."""
    import psutil

    command = [sys.executable, "-m", "bench.monitoring_engines", "measure", "--engine", engine, "--log", str(log_path)]
    process = subprocess.Popen([*command, "--model", model_uri], stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    exceeded = False
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(member.memory_info().rss for member in tree if member.is_running()))
        except psutil.NoSuchProcess:
            pass
        if peak > limit_gib * 2**30:
            exceeded = True
            for member in [*watched.children(recursive=True), watched]:
                member.kill()
            break
        time.sleep(0.1)
    output, _ = process.communicate()
    result = {"peak_memory_mib": round(peak / 2**20)}
    if exceeded:
        return {**result, "failed": f"stopped: the process passed the {limit_gib} GiB memory limit"}
    if process.returncode != 0:
        return {**result, "failed": f"exit status {process.returncode}"}
    return {**json.loads(output.strip().splitlines()[-1]), **result}


def crossover(sizes: dict, key: str, embedded: str = "pandas") -> int | None:
    """The smallest size at which Spark's `key` time beats the embedded engine's, when that one was measured there
    and finished or failed (a skipped size says nothing)."""
    for size, row in sizes.items():
        if "skipped" in row[embedded]:
            continue
        embedded_seconds = row[embedded].get("seconds")
        spark_seconds = row["spark"].get(key)
        if spark_seconds is not None and (embedded_seconds is None or spark_seconds < embedded_seconds):
            return int(size)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("measure", help="(internal) measure one engine on one log in this process")
    one.add_argument("--engine", choices=MEASURED, required=True)
    one.add_argument("--log", required=True)
    one.add_argument("--model", required=True)
    parser.add_argument("--source-log", type=Path, help="a real prediction log (SQLite) to resample")
    parser.add_argument("--model", default="models:/digits-cnn@challenger")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--windows", type=int, default=365)
    parser.add_argument("--memory-limit-gib", type=float, default=20.0)
    parser.add_argument("--scratch", type=Path, default=None, help="where the big logs go (default: a temporary folder)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="ENGINE@SIZE", help="measurements to leave out")
    args = parser.parse_args()
    configure_logging()
    if args.command == "measure":
        print(json.dumps(measure(args.engine, args.log, args.model)))
        return
    if not args.source_log:
        parser.error("--source-log is required")
    from serving.prediction_log import export_parquet

    sizes: dict = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        folder = Path(scratch)
        export_parquet(args.source_log, folder / "source.parquet")
        for size in args.sizes:
            path = folder / f"log-{size}.parquet"
            build_parquet_log(folder / "source.parquet", size, args.windows, path)
            sizes[str(size)] = {"parquet_mib": round(path.stat().st_size / 2**20)}
            for engine in MEASURED:
                if f"{engine}@{size}" in args.skip:
                    sizes[str(size)][engine] = {"skipped": "left out by --skip"}
                    continue
                log.info("measuring %s on %d records", engine, size)
                sizes[str(size)][engine] = run_measured(engine, path, args.model, args.memory_limit_gib)
                log.info("%s on %d records: %s", engine, size, sizes[str(size)][engine])
            path.unlink()
    for row in sizes.values():
        pandas_seconds = row["pandas"].get("seconds")
        before = row[EVERY_COLUMN].get("seconds")
        if pandas_seconds and before:
            row["pandas_vs_every_column_time_ratio"] = round(pandas_seconds / before, 2)
            row["pandas_vs_every_column_memory_ratio"] = round(
                row["pandas"]["peak_memory_mib"] / row[EVERY_COLUMN]["peak_memory_mib"], 2
            )
        duckdb_seconds = row["duckdb"].get("seconds")
        if pandas_seconds and duckdb_seconds:
            row["duckdb_vs_pandas_time_ratio"] = round(duckdb_seconds / pandas_seconds, 2)
            row["duckdb_vs_pandas_memory_ratio"] = round(row["duckdb"]["peak_memory_mib"] / row["pandas"]["peak_memory_mib"], 2)
        for key in ("cold_seconds", "warm_seconds"):
            name = key.split("_")[0]
            if pandas_seconds and row["spark"].get(key):
                row[f"spark_{name}_vs_pandas_time_ratio"] = round(row["spark"][key] / pandas_seconds, 2)
            if duckdb_seconds and row["spark"].get(key):
                row[f"spark_{name}_vs_duckdb_time_ratio"] = round(row["spark"][key] / duckdb_seconds, 2)
    measured = {
        "model": args.model,
        "windows": args.windows,
        "measured": "read the Parquet log, select the model version, window metrics and alerts (default config); "
        f"{EVERY_COLUMN}: the pandas engine as it was, reading every column (image blobs too)",
        "sizes": sizes,
        "crossover_records_cold": crossover(sizes, "cold_seconds"),
        "crossover_records_warm": crossover(sizes, "warm_seconds"),
        "crossover_vs_duckdb_records_cold": crossover(sizes, "cold_seconds", "duckdb"),
        "crossover_vs_duckdb_records_warm": crossover(sizes, "warm_seconds", "duckdb"),
    }
    result = write_result(
        RESULTS / "monitoring_engines.json",
        "monitoring engines: pandas, DuckDB and Spark (local[*]) on Parquet prediction logs of real records",
        measured,
        "bench.monitoring_engines",
        ("pandas", "numpy", "scipy", "pyarrow", "duckdb", "pyspark", "mlflow"),
        drop=("--scratch",),  # where the temporary logs went on the machine that ran it changes nothing measured
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
