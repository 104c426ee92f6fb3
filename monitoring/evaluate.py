"""Evaluation mode: join the simulator's sidecar with the log and score the monitor itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from common.quality import QUALITY_CAUSES, corrupt, quality_causes
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG
from common.reference import Reference
from monitoring.alerts import Alert
from monitoring.clusters import flagged_mask, window_clusters

DRIFT_ONSET_SHARE = 0.20  # detection delay counts from the first window whose true foreign share reaches this
CLEAN_SHARE = 0.05  # windows under this true foreign share judge the label-free accuracy


@dataclass(frozen=True)
class JudgedRun:
    """One simulated traffic run, monitored: its scenario, records joined with truth, windows and alerts."""

    scenario: str
    label: str  # the simulation run's folder name: unique even when a scenario runs twice
    records: pd.DataFrame  # log records joined with the sidecar (source, label)
    metrics: pd.DataFrame  # window metrics with realised_accuracy and true_foreign_share
    alerts: list[Alert]
    firing_windows: list[int]  # windows where any rule fired, alerted or held back by cooldown


def per_image_figures(records: pd.DataFrame) -> dict:
    """AUROC of the foreign score (and of the original top-probability flag) per foreign source against MNIST."""
    figures: dict = {}
    mnist = records[records["source"] == "mnist"]
    figures["mnist_images"] = len(mnist)
    figures["mnist_foreign_flag_rate"] = float(mnist["flags"].str.contains(FOREIGN_FLAG).mean())
    figures["mnist_low_confidence_flag_rate"] = float(mnist["flags"].str.contains(LOW_CONFIDENCE_FLAG).mean())
    for source in sorted(set(records["source"]) - {"mnist"}):
        foreign = records[records["source"] == source]
        labels = np.r_[np.zeros(len(mnist)), np.ones(len(foreign))]
        figures[f"{source}_images"] = len(foreign)
        figures[f"auroc_{source}"] = float(roc_auc_score(labels, np.r_[mnist["foreign_score"], foreign["foreign_score"]]))
        figures[f"auroc_{source}_top_probability_baseline"] = float(
            roc_auc_score(labels, np.r_[-mnist["confidence"], -foreign["confidence"]])
        )
        figures[f"{source}_foreign_flag_rate"] = float(foreign["flags"].str.contains(FOREIGN_FLAG).mean())
        figures[f"{source}_low_confidence_flag_rate"] = float(foreign["flags"].str.contains(LOW_CONFIDENCE_FLAG).mean())
    return figures


def quality_figures(bounds: np.ndarray, images: np.ndarray, seed: int = 0) -> dict:
    """Image-level precision and recall of each data-quality cause on `images` (held-out MNIST, clean) together with
    a corrupted copy of them per cause, and the share of the clean images given any cause."""
    rng = np.random.default_rng(seed)
    truth = np.array([""] * len(images) + [cause for cause in QUALITY_CAUSES for _ in images], dtype=object)
    named = np.array(
        quality_causes(np.concatenate([images, *(corrupt(images, cause, rng) for cause in QUALITY_CAUSES)]), bounds),
        dtype=object,
    )
    figures: dict = {"images_per_cause": len(images), "clean_flagged_share": float((named[: len(images)] != "").mean())}
    for cause in QUALITY_CAUSES:
        flagged = named == cause
        figures[cause] = {
            "precision": float((truth[flagged] == cause).mean()) if flagged.any() else None,
            "recall": float((named[truth == cause] == cause).mean()),
        }
    return figures


def corruption_figures(runs: list[JudgedRun]) -> dict:
    """For each run with corrupted images: per cause, windows from its first corrupted window to its rule's first
    alert (None: never alerted), and the foreign-digit alerts raised (there should be none without foreign digits);
    and the share of clean MNIST records the server gave a data-quality cause."""
    records = pd.concat([run.records for run in runs], ignore_index=True)
    clean = records[(records["source"] == "mnist") & (records["corruption"] == "")]
    causes = "|".join(QUALITY_CAUSES)
    figures: dict = {
        "clean_mnist_records_given_a_cause": float(clean["flags"].str.contains(causes).mean()) if len(clean) else None
    }
    for run in runs:
        corrupted = run.records[run.records["corruption"] != ""]
        if corrupted.empty:
            continue
        delays = {}
        for cause, rows in corrupted.groupby("corruption"):
            onset = int(rows["window"].min())
            alerted = [alert.window for alert in run.alerts if alert.metric == f"{cause}_rate" and alert.window >= onset]
            delays[cause] = min(alerted) - onset if alerted else None
        figures[run.label] = {
            "alert_delay_windows": delays,
            "foreign_digit_alerts": [alert.window for alert in run.alerts if alert.metric == "foreign_p"],
        }
    return figures


def class_recall_error(runs: list[JudgedRun], min_images: int = 5) -> dict:
    """Mean absolute error in points of the label-free per-class recall against the realised one (windows and
    classes with at least `min_images` true images of the class), on clean and on drifted windows; a MNIST image
    counts by its label, a foreign one by the value it stands for."""
    errors: dict[str, list[float]] = {"clean": [], "drifted": []}
    for run in runs:
        shares = dict(zip(run.metrics["window"], run.metrics["true_foreign_share"]))
        estimated = run.metrics.set_index("window")
        for (window, label), group in run.records.groupby(["window", "label"]):
            column = f"class_{int(label)}_recall_estimated"
            if len(group) < min_images or column not in estimated or pd.isna(estimated.at[window, column]):
                continue
            realised = float((group["predicted"] == label).mean())
            kind = "clean" if shares.get(window, 0) < CLEAN_SHARE else "drifted"
            errors[kind].append(abs(float(estimated.at[window, column]) - realised) * 100)
    return {f"class_recall_mae_points_{kind}": float(np.mean(values)) if values else None for kind, values in errors.items()} | {
        f"class_recall_pairs_{kind}": len(values) for kind, values in errors.items()
    }


def cluster_figures(runs: list[JudgedRun], reference: Reference) -> dict:
    """What drifted, against the truth: per run, in its firing windows, how many have a significant cluster of
    flagged images and how pure the most over-represented one is in its main source (mean, lowest, that source);
    on runs with neither foreign digits nor corruptions, the share of all windows with a significant cluster."""
    figures: dict = {}
    for run in runs:
        clean = (run.metrics["true_foreign_share"] == 0).all() and (run.records["corruption"] == "").all()
        windows = list(run.metrics["window"]) if clean else run.firing_windows
        volumes = dict(zip(run.metrics["window"], run.metrics["volume"]))
        flagged = run.records[run.records["window"].isin(windows) & flagged_mask(run.records["flags"])]
        tops = []
        for window, group in flagged.groupby("window"):
            clusters = window_clusters(group, int(volumes[window]), reference, int(window))
            significant = clusters[clusters["significant"]] if not clusters.empty else clusters
            if not significant.empty:
                tops.append(significant.iloc[0])
        entry: dict = {"windows": len(windows), "windows_with_a_significant_cluster": len(tops)}
        if clean:
            entry["share_of_windows_with_a_significant_cluster"] = len(tops) / len(windows) if windows else None
        elif tops:
            shares = [float(top["top_source_share"]) for top in tops]
            entry.update(
                top_cluster_main_source=pd.Series([top["top_source"] for top in tops]).value_counts().to_dict(),
                top_cluster_purity_mean=float(np.mean(shares)),
                top_cluster_purity_min=float(np.min(shares)),
                windows_top_cluster_at_least_90_percent_one_source=int(sum(share >= 0.9 for share in shares)),
                windows_top_cluster_at_least_80_percent_one_source=int(sum(share >= 0.8 for share in shares)),
            )
        figures[run.label] = entry
    return figures


def detection_delay(metrics: pd.DataFrame, alerts: list[Alert]) -> int | None:
    """Windows from the first window whose true foreign share reaches 20% to the first alert after foreign
    traffic began (negative: caught earlier); None when foreign traffic never reaches 20% or no alert came."""
    onset_rows = metrics[metrics["true_foreign_share"] >= DRIFT_ONSET_SHARE]
    if onset_rows.empty:
        return None
    onset = int(onset_rows["window"].min())
    began = int(metrics.loc[metrics["true_foreign_share"] > 0, "window"].min())
    after = [alert.window for alert in alerts if alert.window >= began]
    return min(after) - onset if after else None


def accuracy_error(metrics: pd.DataFrame) -> dict:
    """How the label-free accuracy fares against the realised one: its mean absolute error in points on clean and on
    drifted windows (beside the best constant's on clean windows: the clean windows' mean realised accuracy), and
    how often its 95% interval holds the realised accuracy, how wide it is, and how many windows it marks not
    estimable without labels."""
    if "volume" in metrics:
        metrics = metrics[metrics["volume"] > 0]  # an empty window of time has nothing to estimate
    error = (metrics["estimated_accuracy"] - metrics["realised_accuracy"]).abs() * 100
    clean = metrics["true_foreign_share"] < CLEAN_SHARE
    held = metrics["realised_accuracy"].between(metrics["estimated_accuracy_low"], metrics["estimated_accuracy_high"])
    width = (metrics["estimated_accuracy_high"] - metrics["estimated_accuracy_low"]) * 100
    estimable = metrics["accuracy_estimable"].astype(bool) if "accuracy_estimable" in metrics else pd.Series(True, metrics.index)
    figures = {
        "label_free_accuracy_mae_points": float(error[clean].mean()) if clean.any() else None,
        "label_free_accuracy_mae_points_drifted": float(error[~clean].mean()) if (~clean).any() else None,
        "clean_windows": int(clean.sum()),
        "drifted_windows": int((~clean).sum()),
    }
    if clean.any():
        constant = metrics.loc[clean, "realised_accuracy"].mean()
        figures["best_constant_mae_points"] = float((metrics.loc[clean, "realised_accuracy"] - constant).abs().mean() * 100)
    for name, rows in (("clean", clean), ("drifted", ~clean)):
        if rows.any():
            figures[f"label_free_interval_holds_share_{name}"] = float(held[rows].mean())
            figures[f"label_free_interval_width_points_{name}"] = float(width[rows].mean())
            figures[f"not_estimable_windows_{name}"] = int((~estimable[rows]).sum())
            figures[f"label_free_interval_holds_share_{name}_estimable"] = (
                float(held[rows & estimable].mean()) if (rows & estimable).any() else None
            )
            if "confidence_accuracy_low" in metrics:  # the calibrated confidence's own interval, for comparison
                calibrated = metrics["realised_accuracy"].between(
                    metrics["confidence_accuracy_low"], metrics["confidence_accuracy_high"]
                )
                figures[f"confidence_interval_holds_share_{name}"] = float(calibrated[rows].mean())
    return figures


def evaluation_figures(runs: list[JudgedRun]) -> dict:
    """The monitor's scorecard over all runs, with keys that name each figure."""
    figures = per_image_figures(pd.concat([run.records for run in runs], ignore_index=True))
    delays = {}
    for run in runs:
        if (run.metrics["true_foreign_share"] >= DRIFT_ONSET_SHARE).any():
            delays[run.label] = detection_delay(run.metrics, run.alerts)
    # on traffic without a single foreign digit, every alert is a false alarm, and so is every window where a
    # rule fired (the cooldown can hide repeated firings behind one alert)
    clean_runs = [
        run for run in runs if (run.metrics["true_foreign_share"] == 0).all() and (run.records["corruption"] == "").all()
    ]
    if clean_runs:
        windows = sum(len(run.metrics) for run in clean_runs)
        figures["false_alarms_per_100_stable"] = 100 * sum(len(run.alerts) for run in clean_runs) / windows
        figures["firing_windows_per_100_stable"] = 100 * sum(len(run.firing_windows) for run in clean_runs) / windows
        figures["stable_windows"] = windows
    figures["detection_delay_windows"] = delays
    figures["detection_delay_windows_max"] = max((d for d in delays.values() if d is not None), default=None)
    all_metrics = pd.concat([run.metrics for run in runs], ignore_index=True)
    figures.update(accuracy_error(all_metrics))
    figures["alerts_per_run"] = {run.label: [(a.window, a.rule) for a in run.alerts] for run in runs}
    figures["firing_windows_per_run"] = {run.label: run.firing_windows for run in runs}
    figures["data_quality_traffic"] = corruption_figures(runs)
    figures.update(class_recall_error(runs))
    return figures
