"""Label-assisted accuracy: per stratum of flags, the label-free estimate corrected by what a few labels say of it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from common.labels import CLEAN_STRATUM, STRATA, strata_of

HORIZON_WINDOWS = 10  # labels of this many windows (the judged one and those before) correct a window's estimate
UNKNOWN_RESIDUAL_VARIANCE = 0.25  # a stratum without labels: its correction could be anything (Bernoulli's maximum)
MIN_CELL_LABELS = 5  # labels a predicted class needs to be corrected by its own (fewer agree by chance too often)
Z95 = 1.96


def label_assisted_accuracy(
    records: pd.DataFrame,
    p_correct: np.ndarray,
    labels: pd.DataFrame,
    horizon: int = HORIZON_WINDOWS,
    lag: int = 0,
    looks: int | None = None,
    by_prediction: bool = False,
) -> pd.DataFrame:
    """Per window: the estimated accuracy with a 95% interval, the same estimate's interval that holds in every
    window at once when each is checked (95% over `looks` windows, by default all of them: Bonferroni's
    correction for repeated looks, `label_assisted_accuracy_every_window_low/high`), and how many labels it used.

    A difference estimator per stratum (foreign-flagged, low-confidence, clean): the stratum's label-free
    accuracy in the window (mean P(correct) of its records) plus the mean of (correct - P(correct)) over the
    labeled records of that stratum from the last `horizon` windows; a labeled record of the window counts as
    what its label says. A window uses the labels that had come back by `lag` windows after it (`arrived_window`,
    else its own window): lag 0 is the estimate as the window closes, lag = the annotator's delay the estimate
    once the window's own labels are in. `records`: window, request_id, image_index, predicted, flags.

    `by_prediction`: the flagged strata are split by predicted class (`_stratum_terms`), as the queue's "spread"
    allocation draws them: evenly over the predicted classes, so that a stratum's labels are no uniform sample of it
    but each cell's are of that cell.
    """
    frame = records[["window", "request_id", "image_index", "predicted"]].copy()
    frame["window"] = frame["window"].astype(int)
    frame["stratum"] = strata_of(records["flags"]).to_numpy()
    frame["p_correct"] = np.asarray(p_correct, dtype=float)
    known = labels.assign(arrived_window=labels.get("arrived_window", labels.get("window")))
    frame = frame.merge(
        known[["request_id", "image_index", "label", "arrived_window"]], on=["request_id", "image_index"], how="left"
    )
    frame["correct"] = (frame["predicted"] == frame["label"]).astype(float).where(frame["label"].notna())
    labeled = frame[frame["label"].notna()]
    looks = looks or max(1, frame["window"].nunique())
    z_every = float(stats.norm.ppf(1 - 0.05 / (2 * looks)))
    rows = []
    for window, group in frame.groupby("window", sort=True):
        usable = labeled[
            (labeled["window"] > window - horizon) & (labeled["window"] <= window) & (labeled["arrived_window"] <= window + lag)
        ]
        in_window = group["label"].notna() & (group["arrived_window"] <= window + lag)
        correct_count, variance = 0.0, 0.0
        for stratum in STRATA:
            members = group[group["stratum"] == stratum]
            if members.empty:
                continue
            mine = usable[usable["stratum"] == stratum]
            split = by_prediction and stratum != CLEAN_STRATUM
            count, spread = _stratum_terms(members, mine, in_window.loc[members.index], split)
            correct_count += count
            variance += spread
        volume = len(group)
        estimate = correct_count / volume
        spread = Z95 * np.sqrt(variance) / volume
        spread_every = z_every * np.sqrt(variance) / volume
        rows.append(
            {
                "window": int(window),
                "label_assisted_accuracy": estimate,
                "label_assisted_accuracy_low": max(0.0, estimate - spread),
                "label_assisted_accuracy_high": min(1.0, estimate + spread),
                "label_assisted_accuracy_every_window_low": max(0.0, estimate - spread_every),
                "label_assisted_accuracy_every_window_high": min(1.0, estimate + spread_every),
                "labels_used": len(usable),
            }
        )
    return pd.DataFrame(rows)


def _stratum_terms(members: pd.DataFrame, labeled: pd.DataFrame, known: pd.Series, split: bool) -> tuple[float, float]:
    """One stratum's expected correct count in the window and its variance. Unsplit: one cell, corrected by the mean
    residual of its labels. Split by predicted class: a cell with MIN_CELL_LABELS labels or more is corrected by its
    own; the others share one, each labeled cell's mean residual weighted by the cell's size in the window (its
    labels are a uniform sample of their cell, not of the stratum), and so share its error: its variance counts once
    for all their unknown records together."""
    cells, shared = [(members, labeled)], 0.0
    if split:
        cells = [(cell, labeled[labeled["predicted"] == predicted]) for predicted, cell in members.groupby("predicted")]
        sized = [(len(cell), _residuals(mine).mean()) for cell, mine in cells if len(mine)]
        shared = float(np.average([mean for _, mean in sized], weights=[size for size, _ in sized])) if sized else 0.0
    count, variance, sharing = 0.0, 0.0, 0
    for cell, mine in cells:
        own = not split or len(mine) >= MIN_CELL_LABELS
        correction, residual_variance = _correction(_residuals(mine)) if own else (shared, 0.0)
        cell_count, unknown, bernoulli = _cell_terms(cell, known.loc[cell.index], correction)
        count += cell_count
        variance += unknown**2 * residual_variance + bernoulli
        sharing += 0 if own else unknown
    return count, variance + (sharing**2 * _correction(_residuals(labeled))[1] if sharing else 0.0)


def _cell_terms(cell: pd.DataFrame, known: pd.Series, correction: float) -> tuple[float, int, float]:
    """Records of one cell: their expected correct count (labeled ones as their label says, the others at their
    P(correct) plus `correction`), how many are not labeled, and the Bernoulli variance of those."""
    unknown = cell[~known]
    rates = np.clip(unknown["p_correct"].to_numpy() + correction, 0, 1)
    return float(cell.loc[known, "correct"].sum() + rates.sum()), len(unknown), float(np.sum(rates * (1 - rates)))


def _residuals(labeled: pd.DataFrame) -> np.ndarray:
    return (labeled["correct"] - labeled["p_correct"]).to_numpy()


def _correction(residuals: np.ndarray) -> tuple[float, float]:
    """The mean of (correct - P(correct)) over some labeled records, and that mean's variance (UNKNOWN_RESIDUAL_VARIANCE
    with fewer than two: no spread to measure)."""
    correction = float(residuals.mean()) if len(residuals) else 0.0
    variance = float(residuals.var(ddof=1)) / len(residuals) if len(residuals) > 1 else UNKNOWN_RESIDUAL_VARIANCE
    return correction, variance
