"""Per-window metrics and drift tests of a prediction log against a model's reference; pure pandas/numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from common.images import NUM_CLASSES
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG, PROBABILITY_COLUMNS, PROJECTION_COLUMNS
from common.reference import FOREIGN_FALSE_ALARM_RATE, Reference, expected_accuracy


@dataclass(frozen=True)
class MonitorConfig:
    """How windows are judged; the alert thresholds live in monitoring.alerts."""

    min_window_size: int = 50  # fewer records: metrics are shown, tests and alerts skipped
    mmd_max_window: int = 200  # window sample size for the MMD test
    mmd_reference_size: int = 300
    mmd_permutations: int = 400
    seed: int = 0


DEFAULT_CONFIG = MonitorConfig()


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Squared MMD (RBF kernel, median-distance bandwidth) of x against y, and its permutation p-value."""
    pooled = np.vstack([x, y])
    squared = np.sum(pooled**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    bandwidth = np.median(distances[distances > 0]) or 1.0
    kernel = np.exp(-distances / bandwidth)
    n, total = len(x), len(pooled)
    # column 0: the observed split; the others: random relabellings (all at once, as one matrix product)
    membership = np.zeros((total, permutations + 1))
    membership[:n, 0] = 1
    for column in range(1, permutations + 1):
        membership[rng.choice(total, n, replace=False), column] = 1
    m = total - n
    outside = 1 - membership
    to_inside = kernel @ membership  # the one product: kernel @ outside = row sums - this
    to_outside = kernel.sum(axis=1, keepdims=True) - to_inside
    within_x = (membership * to_inside).sum(0)
    within_y = (outside * to_outside).sum(0)
    across = (membership * to_outside).sum(0)
    statistic = within_x / n**2 + within_y / m**2 - 2 * across / (n * m)
    p_value = (1 + np.sum(statistic[1:] >= statistic[0])) / (permutations + 1)
    return float(statistic[0]), float(p_value)


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    return -np.sum(probabilities * np.log(np.clip(probabilities, 1e-12, 1)), axis=1)


def window_metrics(log: pd.DataFrame, reference: Reference, config: MonitorConfig = DEFAULT_CONFIG) -> pd.DataFrame:
    """One row per window: volume, confidence, entropy, class mix, drift tests, foreign share, estimated accuracy."""
    rng = np.random.default_rng(config.seed)
    reference_projection = reference.sample_projection
    if len(reference_projection) > config.mmd_reference_size:
        reference_projection = reference_projection[
            rng.choice(len(reference_projection), config.mmd_reference_size, replace=False)
        ]
    rows = []
    for window, group in log.groupby("window", sort=True):
        rows.append(_one_window(int(window), group, reference, reference_projection, config, rng))
    return pd.DataFrame(rows)


def _one_window(
    window: int,
    group: pd.DataFrame,
    reference: Reference,
    reference_projection: np.ndarray,
    config: MonitorConfig,
    rng: np.random.Generator,
) -> dict:
    volume = len(group)
    confidence = group["confidence"].to_numpy()
    probabilities = group[PROBABILITY_COLUMNS].to_numpy()
    flags = group["flags"].astype(str)
    class_counts = np.bincount(group["predicted"].to_numpy().astype(int), minlength=NUM_CLASSES)
    p_correct = expected_accuracy(reference, confidence)
    estimated = float(p_correct.mean())
    spread = 1.96 * float(np.sqrt(np.sum(p_correct * (1 - p_correct)))) / volume
    row = {
        "window": window,
        "volume": volume,
        "low_confidence_rate": float(flags.str.contains(LOW_CONFIDENCE_FLAG).mean()),
        "confidence_mean": float(confidence.mean()),
        "confidence_p10": float(np.quantile(confidence, 0.10)),
        "confidence_p50": float(np.quantile(confidence, 0.50)),
        "entropy_mean": float(_entropy(probabilities).mean()),
        **{f"class_{digit}_share": float(class_counts[digit] / volume) for digit in range(NUM_CLASSES)},
        "estimated_accuracy": estimated,
        "estimated_accuracy_low": max(0.0, estimated - spread),
        "estimated_accuracy_high": min(1.0, estimated + spread),
        "too_small": volume < config.min_window_size,
    }
    scores = group["foreign_score"].to_numpy(dtype=float) if "foreign_score" in group else np.full(volume, np.nan)
    has_scores = not np.isnan(scores).all()
    foreign_count = int(flags.str.contains(FOREIGN_FLAG).sum()) if has_scores else 0
    alpha = FOREIGN_FALSE_ALARM_RATE
    row.update(
        foreign_rate=foreign_count / volume if has_scores else np.nan,
        foreign_score_mean=float(np.nanmean(scores)) if has_scores else np.nan,
        estimated_foreign_share=max(0.0, (foreign_count / volume - alpha) / (1 - alpha)) if has_scores else np.nan,
    )
    if row["too_small"]:
        row.update(foreign_p=np.nan, class_mix_p=np.nan, confidence_p=np.nan, embedding_mmd=np.nan, embedding_p=np.nan)
        return row
    row["foreign_p"] = (
        float(stats.binomtest(foreign_count, volume, alpha, alternative="greater").pvalue) if has_scores else np.nan
    )
    shares = np.maximum(reference.class_shares, 1e-9)
    row["class_mix_p"] = float(stats.chisquare(class_counts, shares / shares.sum() * volume).pvalue)
    row["confidence_p"] = float(stats.ks_2samp(confidence, reference.sample_confidence).pvalue)
    projection = group[PROJECTION_COLUMNS].to_numpy(dtype=float) if PROJECTION_COLUMNS[0] in group else None
    if projection is not None and not np.isnan(projection).any() and len(reference_projection):
        if len(projection) > config.mmd_max_window:
            projection = projection[rng.choice(len(projection), config.mmd_max_window, replace=False)]
        row["embedding_mmd"], row["embedding_p"] = mmd_permutation_test(
            projection, reference_projection, config.mmd_permutations, rng
        )
    else:
        row["embedding_mmd"] = row["embedding_p"] = np.nan
    return row


def truth_metrics(log: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per window, from the simulator's sidecar: realised accuracy and the true share of foreign digits."""
    joined = log.merge(truth[["request_id", "image_index", "source", "label"]], on=["request_id", "image_index"])
    joined["correct"] = joined["predicted"] == joined["label"]
    joined["foreign"] = joined["source"] != "mnist"
    grouped = joined.groupby("window")
    return pd.DataFrame(
        {"realised_accuracy": grouped["correct"].mean(), "true_foreign_share": grouped["foreign"].mean()}
    ).reset_index()
