"""The labeling queue: per window, a budget of images drawn at random within strata: a fixed split (mostly
flagged, a random share unflagged), the same split with the flagged share spread over the predicted classes, or
Neyman's allocation (each stratum in proportion to its size times its spread)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.labels import CLEAN_STRATUM, FOREIGN_STRATUM, STRATA, strata_of

QUEUE_COLUMNS = ("request_id", "image_index", "window", "stratum", "confidence", "foreign_score")
ALLOCATIONS = ("fixed", "spread", "neyman")


def neyman_counts(group: pd.DataFrame, budget: int) -> dict[str, int]:
    """Labels per stratum of one window in proportion to N_h * S_h (Neyman's allocation, which minimises the
    stratified estimate's variance for a budget), rounded by largest remainder and capped at each stratum's size.
    S_h is the spread of a label's correctness: sqrt(c(1 - c)) with c the stratum's mean confidence, and 0.5 (the
    most a yes/no can spread) for foreign or faulty images, whose confidence says nothing of their accuracy."""
    sizes = {stratum: int((group["stratum"] == stratum).sum()) for stratum in STRATA}
    spreads = {}
    for stratum in STRATA:
        confidence = float(group.loc[group["stratum"] == stratum, "confidence"].mean()) if sizes[stratum] else 0.0
        spreads[stratum] = 0.5 if stratum == FOREIGN_STRATUM else float(np.sqrt(max(confidence * (1 - confidence), 1e-4)))
    counts = dict.fromkeys(STRATA, 0)
    left = min(budget, sum(sizes.values()))
    while left > 0:  # hand out what is left among the strata not yet full, by weight
        open_strata = [stratum for stratum in STRATA if counts[stratum] < sizes[stratum]]
        weights = np.array([sizes[stratum] * spreads[stratum] for stratum in open_strata])
        shares = weights / weights.sum() * left if weights.sum() > 0 else np.full(len(open_strata), left / len(open_strata))
        whole = np.floor(shares).astype(int)
        for index in np.argsort(-(shares - whole))[: left - whole.sum()]:
            whole[index] += 1
        for stratum, extra in zip(open_strata, whole):
            counts[stratum] += min(int(extra), sizes[stratum] - counts[stratum])
        left = min(budget, sum(sizes.values())) - sum(counts.values())
    return counts


def spread_counts(predicted: np.ndarray, budget: int, rng: np.random.Generator) -> dict[int, int]:
    """`budget` labels spread as evenly as they go over the predicted classes present (each capped at its size,
    what a small class cannot take passed on; ties broken at random): few labels still reach every way the model
    reads the drifted images, where a uniform draw leaves its rarer readings unlabeled."""
    classes, sizes = np.unique(predicted, return_counts=True)
    counts = np.zeros(len(classes), dtype=int)
    order = rng.permutation(len(classes))
    left = min(budget, int(sizes.sum()))
    while left > 0:
        for index in order:
            if left and counts[index] < sizes[index]:
                counts[index] += 1
                left -= 1
    return {int(cls): int(count) for cls, count in zip(classes, counts) if count}


def select_for_labeling(
    records: pd.DataFrame,
    per_window: int,
    random_share: float = 0.3,
    seed: int = 0,
    already: pd.DataFrame | None = None,
    allocation: str = "fixed",
) -> pd.DataFrame:
    """At most `per_window` records of each window to label (QUEUE_COLUMNS), drawn uniformly within strata.

    Fixed allocation: `1 - random_share` of the budget goes to flagged records (foreign or low confidence), the
    rest to unflagged ones; a stratum too small passes its share to the other. Spread allocation: the same shares,
    the flagged one spread evenly over the predicted classes (`spread_counts`; the records need `predicted`), and
    the label-assisted estimate corrects each (stratum, predicted class) cell by its own labels (`by_prediction`).
    Neyman allocation (`neyman_counts`) ignores `random_share`. Drawing at random inside each stratum (each cell,
    spread), not the most extreme first, keeps its labeled accuracy an unbiased sample of it. Records in `already`
    (request_id, image_index) are not drawn again. The draw of a window depends only on the seed and the window.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation {allocation!r} is not one of {', '.join(ALLOCATIONS)}")
    if not 0 <= random_share <= 1:
        raise ValueError(f"random_share {random_share} is not in 0..1")
    if per_window < 0:
        raise ValueError(f"per_window {per_window} is negative")
    frame = records.assign(stratum=strata_of(records["flags"]))
    if already is not None and len(already):
        taken = pd.MultiIndex.from_frame(already[["request_id", "image_index"]])
        frame = frame[~pd.MultiIndex.from_frame(frame[["request_id", "image_index"]]).isin(taken)]
    picked = []
    for window, group in frame.groupby("window", sort=True):
        rng = np.random.default_rng([seed, int(window)])
        if allocation == "neyman":
            for stratum, count in neyman_counts(group, per_window).items():
                part = group[group["stratum"] == stratum]
                if count:
                    picked.append(part.iloc[np.sort(rng.choice(len(part), count, replace=False))])
            continue
        flagged = group[group["stratum"] != CLEAN_STRATUM]
        clean = group[group["stratum"] == CLEAN_STRATUM]
        want_clean = min(len(clean), round(per_window * random_share))
        want_flagged = min(len(flagged), per_window - want_clean)
        want_clean = min(len(clean), per_window - want_flagged)
        draws = [(flagged, want_flagged), (clean, want_clean)]
        if allocation == "spread":  # the flagged share drawn evenly over the predicted classes, uniformly within each
            counts = spread_counts(flagged["predicted"].to_numpy(), want_flagged, rng)
            draws[:1] = [(flagged[flagged["predicted"] == predicted], count) for predicted, count in counts.items()]
        for part, count in draws:
            if count:
                picked.append(part.iloc[np.sort(rng.choice(len(part), count, replace=False))])
    if not picked:
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))
    queue = pd.concat(picked, ignore_index=True)
    if "foreign_score" not in queue:
        queue["foreign_score"] = np.nan
    return queue[list(QUEUE_COLUMNS)].reset_index(drop=True)
