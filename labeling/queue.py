"""The labeling queue: per window, a budget of images drawn at random within strata (mostly flagged, a random share unflagged)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.labels import CLEAN_STRATUM, strata_of

QUEUE_COLUMNS = ("request_id", "image_index", "window", "stratum", "confidence", "foreign_score")


def select_for_labeling(
    records: pd.DataFrame, per_window: int, random_share: float = 0.3, seed: int = 0, already: pd.DataFrame | None = None
) -> pd.DataFrame:
    """At most `per_window` records of each window to label (QUEUE_COLUMNS), drawn uniformly within strata.

    `1 - random_share` of the budget goes to flagged records (foreign or low confidence), the rest to unflagged
    ones; a stratum too small passes its share to the other. Drawing at random inside each stratum, not the
    most extreme first, keeps each stratum's labeled accuracy an unbiased sample of it. Records in `already`
    (request_id, image_index) are not drawn again. The draw of a window depends only on the seed and the window.
    """
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
        flagged = group[group["stratum"] != CLEAN_STRATUM]
        clean = group[group["stratum"] == CLEAN_STRATUM]
        want_clean = min(len(clean), round(per_window * random_share))
        want_flagged = min(len(flagged), per_window - want_clean)
        want_clean = min(len(clean), per_window - want_flagged)
        for part, count in ((flagged, want_flagged), (clean, want_clean)):
            if count:
                picked.append(part.iloc[np.sort(rng.choice(len(part), count, replace=False))])
    if not picked:
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))
    queue = pd.concat(picked, ignore_index=True)
    if "foreign_score" not in queue:
        queue["foreign_score"] = np.nan
    return queue[list(QUEUE_COLUMNS)].reset_index(drop=True)
