"""What drifted: a window's flagged images (foreign, or given a data-quality cause) grouped into clusters on the
model's own embedding, ranked by how over-represented each is against the reference's flagged held-out images.
Pure: records in, cluster rows out; the monitoring job writes them as clusters.csv and clusters.png."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from common.images import NUM_CLASSES
from common.records import PROJECTION_COLUMNS
from common.reference import Reference, expected_accuracy
from monitoring.metrics import OUT_OF_REFERENCE_FLAGS

MAX_CLUSTERS = 4
MIN_PER_CLUSTER = 5  # clusters asked for: one per this many flagged images (on average), up to MAX_CLUSTERS
EXAMPLES = 16
SIGNIFICANT_P = 1e-4  # a cluster's count against its reference share, one-sided binomial test


def flagged_mask(flags: pd.Series) -> pd.Series:
    """Records the reference does not vouch for: flagged foreign, or given a data-quality cause."""
    return flags.fillna("").astype(str).str.contains("|".join(OUT_OF_REFERENCE_FLAGS))


def window_clusters(
    flagged: pd.DataFrame, volume: int, reference: Reference, window: int, truth: pd.DataFrame | None = None, seed: int = 0
) -> pd.DataFrame:
    """One row per cluster of a window's flagged records (PROJECTION_COLUMNS, predicted, confidence, request_id,
    image_index; `source` and `label` when `truth` joined them), most over-represented first: its size, share of
    the window, the reference's share in it (flagged held-out images nearest to it, smoothed), the ratio, the
    binomial p-value of its count and whether that is significant, its predicted-class mix, mean confidence,
    the confidence-calibrated accuracy, and (with truth) the realised accuracy, its sources; 16 example keys and
    every member's (request_id, image_index)."""
    from sklearn.cluster import KMeans

    if any(column not in flagged for column in PROJECTION_COLUMNS) or len(reference.sample_projection) == 0:
        return pd.DataFrame()  # a log of a model without embeddings: nothing to cluster on
    points = flagged[PROJECTION_COLUMNS].to_numpy(dtype=float)
    if len(points) == 0 or np.isnan(points).any():
        return pd.DataFrame()
    distinct = len(np.unique(points, axis=0))
    count = max(1, min(MAX_CLUSTERS, len(points) // MIN_PER_CLUSTER, distinct))
    model = KMeans(n_clusters=count, n_init=4, random_state=seed).fit(points)
    members = model.labels_
    reference_points = np.asarray(reference.sample_projection, dtype=float)
    reference_flagged = reference_points[np.asarray(reference.sample_foreign_score) > reference.threshold]
    nearest = model.predict(reference_flagged) if len(reference_flagged) else np.zeros(0, dtype=int)
    rows = []
    for index in range(count):
        rows_in = flagged[members == index]
        size = len(rows_in)
        if size == 0:
            continue
        reference_share = (int((nearest == index).sum()) + 1) / (len(reference_points) + 1)
        p_value = float(stats.binomtest(size, volume, reference_share, alternative="greater").pvalue)
        predicted = rows_in["predicted"].to_numpy(dtype=int)
        row = {
            "window": window,
            "cluster": index,
            "size": size,
            "share": size / volume,
            "reference_share": reference_share,
            "over_representation": size / volume / reference_share,
            "p_value": p_value,
            "significant": p_value < SIGNIFICANT_P,
            "class_mix": _mix(pd.Series(predicted).map(str)),
            "top_class": int(np.bincount(predicted, minlength=NUM_CLASSES).argmax()),
            "mean_confidence": float(rows_in["confidence"].mean()),
            "calibrated_accuracy": float(expected_accuracy(reference, rows_in["confidence"].to_numpy(dtype=float)).mean()),
            "examples": ";".join(f"{r}:{i}" for r, i in zip(rows_in["request_id"][:EXAMPLES], rows_in["image_index"][:EXAMPLES])),
            "members": list(zip(rows_in["request_id"], rows_in["image_index"].astype(int))),
        }
        known = rows_in[rows_in["source"].notna()] if "source" in rows_in else rows_in.iloc[:0]
        if len(known):
            row["true_mix"] = _mix(known["source"])
            row["top_source"] = known["source"].value_counts().index[0]
            row["top_source_share"] = float(known["source"].value_counts(normalize=True).iloc[0])
            row["realised_accuracy"] = float((known["label"] == known["predicted"]).mean())
        rows.append(row)
    return pd.DataFrame(rows).sort_values("over_representation", ascending=False, ignore_index=True)


def cluster_members(clusters: pd.DataFrame) -> pd.DataFrame:
    """One row per clustered record: window, cluster, request_id, image_index (what a labeling queue can draw from)."""
    rows = [
        (int(row.window), int(row.cluster), request_id, image_index)
        for row in clusters.itertuples(index=False)
        for request_id, image_index in row.members
    ]
    return pd.DataFrame(rows, columns=["window", "cluster", "request_id", "image_index"])


def _mix(values: pd.Series) -> str:
    """'a 60%, b 40%': the shares of each value, largest first."""
    shares = values.value_counts(normalize=True)
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
