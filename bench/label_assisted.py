"""The label-assisted accuracy estimate on the scorecard's simulated traffic, at several label budgets.

    python -m bench.label_assisted --log .digitdrift/demo-<stamp>-predictions.db --runs .digitdrift/simulations/<run> ...

For each run and budget (labels per window), the labeling queue draws within flag strata, the run's
ground-truth sidecar answers one window later, and each window's accuracy is estimated as it closes (lag 0:
only labels already back) and once its own labels are in (lag 1). Every error is set beside the label-free
estimate's and the best constant guess's (the median realised accuracy, known only in hindsight) on the same
windows. Writes bench/results/label_assisted_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.result_file import write_result
from common.logs import configure_logging
from common.records import read_ground_truth, read_prediction_log
from common.reference import expected_accuracy, load_reference
from common.settings import load_settings
from common.tracking import download_reference, resolve_registered, use_tracking
from labeling.annotator import simulated_labels
from labeling.queue import select_for_labeling
from monitoring.evaluate import CLEAN_SHARE
from monitoring.label_assisted import label_assisted_accuracy

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger(__name__)


def errors(table: pd.DataFrame, column: str) -> dict:
    """MAE in points on clean and drifted windows, beside the best constant guess's on the same windows."""
    out = {}
    for name, chosen in (("clean", table[table["share"] < CLEAN_SHARE]), ("drifted", table[table["share"] >= CLEAN_SHARE])):
        if len(chosen):
            out[name] = {
                "windows": len(chosen),
                "mae_points": round(float((chosen[column] - chosen["realised"]).abs().mean() * 100), 2),
                "best_constant_mae_points": round(
                    float((chosen["realised"] - chosen["realised"].median()).abs().mean() * 100), 2
                ),
            }
    return out


def run_figures(records: pd.DataFrame, truth: pd.DataFrame, p_correct: np.ndarray, budget: int, delay: int) -> dict:
    labels = simulated_labels(select_for_labeling(records, budget, 0.3, seed=0), truth, delay)
    joined = records.merge(truth[["request_id", "image_index", "source", "label"]], on=["request_id", "image_index"])
    table = (
        joined.assign(correct=joined["predicted"] == joined["label"], foreign=joined["source"] != "mnist", p=p_correct)
        .groupby("window")
        .agg(realised=("correct", "mean"), share=("foreign", "mean"), label_free=("p", "mean"))
        .reset_index()
    )
    figures = {"labels_per_window": round(len(labels) / table["window"].nunique(), 2), "label_free": errors(table, "label_free")}
    for lag, name in ((0, "label_assisted_as_the_window_closes"), (delay, "label_assisted_once_labels_are_back")):
        estimate = label_assisted_accuracy(records, p_correct, labels, lag=lag).merge(table, on="window")
        inside = (estimate["label_assisted_accuracy_low"] <= estimate["realised"]) & (
            estimate["realised"] <= estimate["label_assisted_accuracy_high"]
        )
        figures[name] = {**errors(estimate, "label_assisted_accuracy"), "interval_coverage": round(float(inside.mean()), 3)}
    return figures


def served_runs(log_path: Path, model: str, runs: list[Path]):
    """The model version, and for each simulation run its records in the log (with the true label), its sidecar
    and each record's label-free P(correct): what both label benches read."""
    use_tracking(load_settings())
    registered = resolve_registered(model)
    reference = load_reference(download_reference(registered.run_id))
    log_frame = pd.DataFrame(read_prediction_log(log_path))

    def each():
        for run in runs:
            truth = read_ground_truth(run / "ground_truth.db")
            records = log_frame.merge(truth[["request_id", "image_index", "label"]], on=["request_id", "image_index"])
            records = records.astype({"window": int, "image_index": int})
            yield run, records, truth, expected_accuracy(reference, records["confidence"].to_numpy(dtype=float))

    return registered, each()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True, help="the prediction log the runs' traffic went to")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="simulation run folders (with ground_truth.db)")
    parser.add_argument("--model", default="models:/digits-cnn@champion", help="the version that served them")
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20], help="labels per window to try")
    parser.add_argument("--delay", type=int, default=1, help="windows before labels come back")
    args = parser.parse_args()
    configure_logging()
    registered, runs = served_runs(args.log, args.model, args.runs)
    results = {}
    for run, records, truth, p_correct in runs:
        records = records.drop(columns=["label"])
        results[run.name] = {str(budget): run_figures(records, truth, p_correct, budget, args.delay) for budget in args.budgets}
        log.info("%s: done", run.name)
    measured = {
        "model": f"{registered.name} v{registered.version}",
        "label_delay_windows": args.delay,
        "random_share": 0.3,
        "clean_means_true_foreign_share_under": CLEAN_SHARE,
        "runs": results,
    }
    figures = write_result(
        RESULTS / "label_assisted_accuracy.json",
        "label-assisted accuracy estimate on simulated traffic: error against realised accuracy, per label budget",
        measured,
        "bench.label_assisted",
        ("numpy", "pandas", "mlflow"),
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
