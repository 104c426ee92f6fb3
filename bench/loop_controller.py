"""The loop's controller following a growing dataset: the time of one cycle per new window, early and late.

    python -m bench.loop_controller [--windows 60] [--per-window 200]

In a scratch folder: a small champion trained and promoted in a store of its own; `--windows` windows of traffic
(Devanagari digits half of it from window 5 on) scored in process by score.py; then the windows published to a
prediction dataset one by one, each followed by one controller cycle (`loop.controller.run_cycle`, one MLflow run
as `python -m loop run --every` keeps), timed. Labels come in for every queued image (the model's guess stands in for
the label: only how many there are matters here) and no retrain is due, so each cycle judges, queues and counts.
Beside each cycle, in the same run: how long reading the whole dataset takes, which a cycle did before it read
only the parts new to it. Writes bench/results/loop_controller.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from bench.result_file import write_result
from common.labels import write_labels
from common.logs import configure_logging
from common.prediction_dataset import read_records
from common.records import read_prediction_log, records_of_frame
from common.settings import MODEL_NAME, load_settings
from loop.controller import ControllerConfig, ControllerState, read_keyed_csv, record, run_command, run_cycle
from serving.dataset_sink import DatasetSink

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("bench.loop_controller")
EARLY, LATE = range(10, 20), range(50, 60)  # the windows whose cycles are compared


def scenario(windows: int, per_window: int) -> dict:
    return {
        "name": "controller-cost",
        "windows": windows,
        "requests_per_window": per_window,
        "seed": 3,
        "mode": "mix",
        "sources": {"mnist": {"weight": {"constant": 1.0}}, "devanagari": {"weight": {"step": {"at": 5, "after": 1.0}}}},
    }


def scratch_environment(scratch: Path) -> dict[str, str]:
    """The environment of a store and state in `scratch`, reading the datasets where they are."""
    data = str(load_settings().data_dir)
    return {"DIGITDRIFT_HOME": str(scratch), "DIGITDRIFT_DATA": data, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}


def run_part(scratch: Path, name: str, *arguments: str) -> None:
    """A part's command (`python -m <arguments>`) in the scratch environment, its output in scratch/<name>.log."""
    code, last = run_command([sys.executable, "-m", *arguments], scratch / f"{name}.log")
    if code != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} failed ({last}): see {scratch / f'{name}.log'}")


def traffic(scratch: Path, windows: int, per_window: int) -> pd.DataFrame:
    """A small champion, then the scenario scored by it in process; its records."""
    run_part(scratch, "train", "training", "keras", "--epochs", "1", "--train-limit", "5000", "--foreign-limit-per-class", "20")
    run_part(scratch, "promote", "training", "promote", "--model-name", MODEL_NAME, "--min-accuracy", "0")
    (scratch / "scenario.yaml").write_text(yaml.safe_dump(scenario(windows, per_window)))
    command = ["simulation", "run", "--scenario", str(scratch / "scenario.yaml"), "--url", "inprocess"]
    command += ["--model", f"models:/{MODEL_NAME}@champion", "--prediction-log", str(scratch / "traffic.db")]
    run_part(scratch, "traffic", *command, "--run-dir", str(scratch / "run"), "--no-mlflow")
    return pd.DataFrame(read_prediction_log(scratch / "traffic.db"))


def answer_queue(config: ControllerConfig, records: pd.DataFrame) -> None:
    """Every queued image labeled (with the model's guess: the count is what the cycle reads)."""
    if not config.queue.is_file():
        return
    queued = read_keyed_csv(config.queue)[["request_id", "image_index"]]
    guesses = queued.merge(records[["request_id", "image_index", "predicted"]], on=["request_id", "image_index"])
    write_labels(guesses.rename(columns={"predicted": "label"}), config.labels)


def follow(records: pd.DataFrame, scratch: Path) -> list[dict]:
    """Each window published, then one controller cycle: its seconds, and the whole dataset's read beside it."""
    dataset = scratch / "dataset"
    config = ControllerConfig(
        dataset=str(dataset), labels=scratch / "labels.csv", out=scratch / "controller", retrain_after=10**9, clock="simulated"
    )
    config.out.mkdir()
    state, every, cycles = ControllerState(), [], []
    sink = DatasetSink(str(dataset), scratch / "staging", flush_seconds=3600)
    with mlflow.start_run(run_name="loop-controller"):
        for window, frame in records.groupby("window", sort=True):
            sink.write(records_of_frame(frame))
            sink.publish()
            started = time.perf_counter()
            decisions = run_cycle(config, state)
            seconds = time.perf_counter() - started
            every += decisions
            record(config, state, decisions, every)
            answer_queue(config, records)
            started = time.perf_counter()
            whole = len(read_records(str(dataset)))
            cycles.append(
                {
                    "window": int(window),
                    "cycle_seconds": round(seconds, 3),
                    "decisions": [decision.decision for decision in decisions],
                    "whole_dataset_records": whole,
                    "whole_dataset_read_seconds": round(time.perf_counter() - started, 3),
                }
            )
            log.info("window %d: cycle %.2f s (%s)", window, seconds, ", ".join(cycles[-1]["decisions"]))
    sink.close()
    return cycles


def summary(cycles: list[dict]) -> dict:
    def median(windows: range, key: str) -> float:
        return round(statistics.median(c[key] for c in cycles if c["window"] in windows), 3)

    figures = {}
    for key in ("cycle_seconds", "whole_dataset_read_seconds"):
        early, late = median(EARLY, key), median(LATE, key)
        figures[key] = {"windows_10_19_median": early, "windows_50_59_median": late, "late_over_early": round(late / early, 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_controller", description=__doc__)
    parser.add_argument("--windows", type=int, default=60, help="windows of traffic (at least 60; default: %(default)s)")
    parser.add_argument("--per-window", type=int, default=200, help="requests per window (default: %(default)s)")
    args = parser.parse_args()
    if args.windows < LATE.stop:
        parser.error(f"--windows {args.windows}: the comparison needs windows up to {LATE.stop - 1}")
    configure_logging()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        os.environ.update(scratch_environment(scratch))  # the parts' commands and the controller's inherit it
        records = traffic(scratch, args.windows, args.per_window)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        cycles = follow(records, scratch)
    result = write_result(
        RESULTS / "loop_controller.json",
        "the loop's controller following a growing dataset: one cycle per new window, early against late",
        {"windows": args.windows, "requests_per_window": args.per_window, **summary(cycles), "cycles": cycles},
        "bench.loop_controller",
        ("pandas", "pyarrow", "mlflow"),
    )
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}, indent=2))


if __name__ == "__main__":
    main()
