"""The label-assisted interval checked every window, over seeded label draws, and the spread and Neyman allocations
of the label budget against the fixed 70/30 split, on the scorecard's simulated traffic.

    python -m bench.label_intervals --log .digitdrift/demo-<stamp>-predictions.db --runs .digitdrift/simulations/<run> ...

For each run, each seed (the labeling queue's draw) and each allocation, the queue takes the same number of labels
per window, the run's sidecar answers one window later, and each window's accuracy is estimated once its labels
are back. A seeded run counts as held when the interval corrected for repeated looks holds the realised accuracy
in every one of its windows. Writes bench/results/label_intervals.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.label_assisted import served_runs
from bench.result_file import write_result
from common.logs import configure_logging
from labeling.annotator import simulated_labels
from labeling.queue import ALLOCATIONS, select_for_labeling
from monitoring.label_assisted import label_assisted_accuracy

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger(__name__)


def seeded_figures(
    records: pd.DataFrame, realised: pd.Series, p_correct: np.ndarray, budget: int, delay: int, seed: int, allocation: str
) -> dict:
    """One seeded run: per-window coverage, whether every window held at once, the mean widths, labels used."""
    queue = select_for_labeling(records, budget, 0.3, seed=seed, allocation=allocation)
    labels = simulated_labels(queue, records, delay)
    spread = allocation == "spread"  # labels drawn evenly over the predicted classes: each class corrected by its own
    estimate = label_assisted_accuracy(records, p_correct, labels, lag=delay, by_prediction=spread).set_index("window")
    truth = realised.reindex(estimate.index)
    inside = estimate["label_assisted_accuracy_low"].le(truth) & truth.le(estimate["label_assisted_accuracy_high"])
    every = estimate["label_assisted_accuracy_every_window_low"].le(truth) & truth.le(
        estimate["label_assisted_accuracy_every_window_high"]
    )
    return {
        "labels": len(labels),
        "per_window_coverage": float(inside.mean()),
        "every_window_held": bool(every.all()),
        "width_points": float((estimate["label_assisted_accuracy_high"] - estimate["label_assisted_accuracy_low"]).mean() * 100),
        "every_window_width_points": float(
            (estimate["label_assisted_accuracy_every_window_high"] - estimate["label_assisted_accuracy_every_window_low"]).mean()
            * 100
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True, help="the prediction log the runs' traffic went to")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="simulation run folders (with ground_truth.db)")
    parser.add_argument("--model", default="models:/digits-cnn@champion", help="the version that served them")
    parser.add_argument("--budget", type=int, default=10, help="labels per window")
    parser.add_argument("--seeds", type=int, default=20, help="seeded label draws per run and allocation")
    parser.add_argument("--delay", type=int, default=1, help="windows before labels come back")
    args = parser.parse_args()
    configure_logging()
    registered, runs = served_runs(args.log, args.model, args.runs)
    results = {}
    for run, records, _, p_correct in runs:
        realised = (records["predicted"] == records["label"]).groupby(records["window"]).mean()
        by_allocation = {}
        for allocation in ALLOCATIONS:
            seeded = [
                seeded_figures(records, realised, p_correct, args.budget, args.delay, seed, allocation)
                for seed in range(args.seeds)
            ]
            by_allocation[allocation] = {
                "seeded_runs": len(seeded),
                "labels_per_run": float(np.mean([one["labels"] for one in seeded])),
                "share_of_runs_held_in_every_window": float(np.mean([one["every_window_held"] for one in seeded])),
                "per_window_coverage_mean": float(np.mean([one["per_window_coverage"] for one in seeded])),
                "mean_width_points": float(np.mean([one["width_points"] for one in seeded])),
                "mean_every_window_width_points": float(np.mean([one["every_window_width_points"] for one in seeded])),
            }
            log.info("%s %s: %s", run.name, allocation, by_allocation[allocation])
        fixed, neyman = by_allocation["fixed"]["mean_width_points"], by_allocation["neyman"]["mean_width_points"]
        results[run.name] = {**by_allocation, "neyman_width_over_fixed": neyman / fixed if fixed else None}
    measured = {
        "model": f"{registered.name} v{registered.version}",
        "labels_per_window": args.budget,
        "label_delay_windows": args.delay,
        "runs": results,
    }
    figures = write_result(
        RESULTS / "label_intervals.json",
        "label-assisted interval checked every window over seeded label draws; Neyman allocation against the fixed 70/30 split",
        measured,
        "bench.label_intervals",
        ("numpy", "pandas", "scipy"),
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
