"""The partitioned prediction dataset against the SQLite log, and incremental monitoring against a full scan.

    python -m bench.prediction_dataset --source-log LOG [--records 200000] [--days 365] [--per-day 2000]

1. Publishing: `--records` real records (resampled from `--source-log`) written in batches of 8, as the
   server's micro-batches at 8 connections form them, by one process: into the SQLite log, and into the
   dataset through local staging with parts published to a local folder and to Azurite (started here, on
   loopback). Records per second at the durability point (the commit before an answer), and until the
   last part is published.
2. Monitoring: a dataset of `--days` daily parts of `--per-day` records each. A full scan judges every
   day; a daily incremental run, after a run that judged the first days, reads the new day (and the
   part of the day still open) only. Both through the command line, each in a fresh process, timed. Then two
   more days judged by two runs in this one process, as `python -m monitoring run --every` runs them: the
   second timed, what a period of a monitor that stays up costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.monitoring import _record
from bench.result_file import write_result
from common.logs import configure_logging
from common.prediction_dataset import filesystem
from common.settings import PROJECT_ROOT
from devtools.azurite import azurite_command, connection_string
from monitoring.pandas_engine import read_log
from serving.dataset_sink import DatasetSink
from serving.prediction_log import PredictionLog

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("bench.prediction_dataset")


def real_records(source_log: Path, count: int, seed: int = 0) -> list:
    source = read_log(source_log, columns=None)
    rng = np.random.default_rng(seed)
    picks = source.iloc[rng.integers(0, len(source), count)].reset_index(drop=True)
    picks["request_id"] = [f"bench-{index}" for index in range(count)]
    picks["image_index"] = 0
    columns = list(picks.columns)
    return [_record(dict(zip(columns, values))) for values in picks.itertuples(index=False)]


def publish_rate(make_sink, records: list, batch: int = 8) -> dict:
    sink = make_sink()
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        sink.write(records[start : start + batch])
    committed = time.perf_counter() - started
    sink.close()
    total = time.perf_counter() - started
    return {
        "records_per_s_committed": round(len(records) / committed),
        "records_per_s_published": round(len(records) / total),
        "seconds_committed": round(committed, 2),
        "seconds_published": round(total, 2),
    }


def start_azurite(folder: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(azurite_command(port, folder), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(300):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    return process, connection_string(port)


def publishing(records: list, folder: Path) -> dict:
    figures = {"records": len(records), "batch": 8}
    log.info("SQLite log")
    figures["sqlite_log"] = publish_rate(lambda: PredictionLog(folder / "log.db"), records)
    log.info("dataset in a local folder")
    figures["dataset_local_folder"] = publish_rate(
        lambda: DatasetSink(str(folder / "dataset"), folder / "staging-local"), records
    )
    azurite, connection = start_azurite(folder / "azurite")
    try:
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection
        fs, _ = filesystem("az://bench")
        fs.mkdir("bench")
        log.info("dataset in an Azurite container")
        figures["dataset_azurite"] = publish_rate(lambda: DatasetSink("az://bench/predictions", folder / "staging-blob"), records)
    finally:
        azurite.terminate()
        azurite.wait()
    base = figures["sqlite_log"]["records_per_s_committed"]
    for kind in ("dataset_local_folder", "dataset_azurite"):
        figures[kind]["committed_ratio_to_sqlite_log"] = round(figures[kind]["records_per_s_committed"] / base, 2)
    return figures


def build_daily_dataset(records: list, location: Path, days: int, per_day: int, first_day: int = 0) -> None:
    """`days` daily parts: day d's records carry window d and are stamped as scored on that day."""
    sink = DatasetSink(str(location), location.parent / f"staging-days-{first_day}", flush_seconds=3600)
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for day in range(first_day, first_day + days):
        stamp = (start + timedelta(days=day)).isoformat(timespec="microseconds")
        chosen = records[(day * per_day) % len(records) :][:per_day]
        sink.write(
            [record._replace(request_id=f"d{day}-{number}", window=day, timestamp=stamp) for number, record in enumerate(chosen)]
        )
        sink.publish()
    sink.close()


def monitor_cli(location: Path, out: Path, *extra: str) -> dict:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "monitoring", "run", "--log", str(location), "--out", str(out), "--no-mlflow", *extra],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    read = re.search(r"read (\d+) of (\d+) parts \((\d+) bytes\)", run.stdout)
    windows = len((out / "window_metrics.csv").read_text().splitlines()) - 1
    # the run's own account of its steps after reading (monitoring.job.monitor logs them)
    logged = re.search(r"monitoring run in [\d.]+ s: (.*)", run.stderr)
    stages = {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", logged[1])} if logged else {}
    return {
        "seconds": round(seconds, 2),
        "parts_read": int(read[1]),
        "parts": int(read[2]),
        "bytes_read": int(read[3]),
        "windows_judged": windows,
        "run_stages_seconds": stages,
        "before_the_run_seconds": round(seconds - sum(stages.values()), 2),
    }


def import_seconds(repeats: int = 3) -> float:
    """What `python -m monitoring` spends before it does anything: the interpreter and its imports (the median)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import monitoring.__main__"], cwd=PROJECT_ROOT, check=True)
        times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2], 2)


def daily_runs_in_one_process(records: list, location: Path, watermark: Path, folder: Path, days: int, per_day: int) -> dict:
    """Two more days, each judged by a run of `python -m monitoring run` in this one process, as `--every` runs them:
    the first pays the imports, the second (timed, from the command line's parsing to its report) what a period of
    a monitor that stays up costs."""
    from monitoring.__main__ import main as monitoring_main

    arguments = ["run", "--log", str(location), "--no-mlflow", "--watermark", str(watermark)]
    build_daily_dataset(records, location, 1, per_day, first_day=days)
    if monitoring_main([*arguments, "--out", str(folder / "stays-up-1")]) != 0:
        raise RuntimeError("the first run in this process failed")
    build_daily_dataset(records, location, 1, per_day, first_day=days + 1)
    started = time.perf_counter()
    if monitoring_main([*arguments, "--out", str(folder / "stays-up-2")]) != 0:
        raise RuntimeError("the second run in this process failed")
    seconds = time.perf_counter() - started
    windows = len((folder / "stays-up-2" / "window_metrics.csv").read_text().splitlines()) - 1
    return {"seconds": round(seconds, 2), "windows_judged": windows}


def monitoring(records: list, folder: Path, days: int, per_day: int) -> dict:
    location = folder / "daily"
    log.info("dataset of %d days x %d records", days - 1, per_day)
    build_daily_dataset(records, location, days - 1, per_day)
    watermark = folder / "watermark.json"
    log.info("first run: every day so far, keeping the watermark")
    first = monitor_cli(location, folder / "first", "--watermark", str(watermark))
    build_daily_dataset(records, location, 1, per_day, first_day=days - 1)
    log.info("the daily incremental run after one more day")
    daily = monitor_cli(location, folder / "daily-run", "--watermark", str(watermark))
    log.info("a full scan of the same dataset")
    full = monitor_cli(location, folder / "full", "--full")
    daily["interpreter_and_imports_seconds"] = import_seconds()
    log.info("daily runs in a monitor that stays up (python -m monitoring run --every 1d)")
    warm = daily_runs_in_one_process(records, location, watermark, folder, days, per_day)
    return {
        "days": days,
        "records_per_day": per_day,
        "first_run_up_to_day_before": first,
        "daily_incremental_run": daily,
        "full_scan": full,
        "daily_run_in_a_monitor_that_stays_up": warm,
        "incremental_time_ratio_to_full": round(daily["seconds"] / full["seconds"], 3),
        "incremental_bytes_ratio_to_full": round(daily["bytes_read"] / full["bytes_read"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-log", type=Path, required=True, help="a SQLite prediction log the server or score.py wrote")
    parser.add_argument("--records", type=int, default=200_000, help="records published per sink (default: %(default)s)")
    parser.add_argument("--days", type=int, default=365, help="daily parts in the monitoring dataset (default: %(default)s)")
    parser.add_argument("--per-day", type=int, default=2000, help="records per day (default: %(default)s)")
    args = parser.parse_args()
    configure_logging()
    records = real_records(args.source_log, max(args.records, args.per_day * 10))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        figures = {
            "publishing": publishing(records[: args.records], folder),
            "monitoring": monitoring(records, folder, args.days, args.per_day),
        }
    result = write_result(
        RESULTS / "prediction_dataset.json",
        "prediction dataset: publishing against the SQLite log; incremental monitoring against a full scan",
        figures,
        "bench.prediction_dataset",
        ("pyarrow", "fsspec", "adlfs", "pandas", "mlflow"),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
