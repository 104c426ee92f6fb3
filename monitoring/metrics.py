"""Per-window metrics and drift tests against a model's reference: the pandas engine, and the judging both engines share."""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from common.images import NUM_CLASSES
from common.quality import DUPLICATE_CAUSE, DUPLICATE_MIN_COUNT, QUALITY_CAUSES
from common.records import FOREIGN_FLAG, LOW_CONFIDENCE_FLAG, PROBABILITY_COLUMNS, PROJECTION_COLUMNS
from common.reference import FOREIGN_FALSE_ALARM_RATE, Reference, expected_accuracy


@dataclass(frozen=True)
class MonitorConfig:
    """How windows are judged; the alert thresholds live in monitoring.alerts."""

    min_window_size: int = 50  # fewer records: metrics are shown, tests and alerts skipped
    # window sample size for the KS test on confidence: the reference's sample size (2,500), which bounds the
    # test's power whatever the window holds
    ks_max_window: int = 2500
    mmd_max_window: int = 200  # window sample size for the MMD test
    mmd_reference_size: int = 300
    mmd_permutations: int = 400
    seed: int = 0

    @property
    def sample_size(self) -> int:
        """Records per window that the tests read: the window's sample (by sample key), or all of a smaller window."""
        return max(self.ks_max_window, self.mmd_max_window)


DEFAULT_CONFIG = MonitorConfig()
JUDGE_THREADS = min(8, len(os.sched_getaffinity(0)))  # the cores this process may run on
ENTROPY_FLOOR = 1e-12
CONFIDENCE_QUANTILES = {"confidence_p10": 0.10, "confidence_p50": 0.50}
SAMPLE_KEY_HEX_DIGITS = 15  # 60 bits: a signed 64-bit integer in both engines
# What an engine computes per window; judge_windows turns these into the metrics.
AGGREGATE_COLUMNS = (
    "window",
    "volume",
    "low_confidence_count",
    "foreign_count",
    "confidence_sum",
    *CONFIDENCE_QUANTILES,
    "entropy_sum",
    "expected_correct_sum",
    "expected_correct_variance_sum",
    "in_reference_expected_correct_sum",
    "in_reference_expected_correct_variance_sum",
    "out_of_reference_count",
    "foreign_score_count",
    "foreign_score_sum",
    *(f"class_{digit}_count" for digit in range(NUM_CLASSES)),
    # per class: its expected true count (the summed probability of it) and the expected correct among those
    # predicted as it, for the label-free recall
    *(f"class_{digit}_probability_sum" for digit in range(NUM_CLASSES)),
    *(f"class_{digit}_expected_correct_sum" for digit in range(NUM_CLASSES)),
    *(f"{cause}_count" for cause in QUALITY_CAUSES),
    "duplicate_count",
)
DATA_QUALITY_CAUSES = (*QUALITY_CAUSES, DUPLICATE_CAUSE)  # each gives a window its `<cause>_rate`
# Flags that put an image outside what the reference's confidence calibration vouches for: its accuracy is unknown
OUT_OF_REFERENCE_FLAGS = (FOREIGN_FLAG, *QUALITY_CAUSES)
MAX_ESTIMABLE_WIDTH = 0.10  # a label-free interval wider than this: the window's accuracy is not estimable without labels
SAMPLE_COLUMNS = ("window", "confidence", *PROJECTION_COLUMNS)
# What a Parquet log must hold for the DuckDB and Spark engines to read it
REQUIRED_COLUMNS = ("request_id", "image_index", "model_name", "model_version", "window", "predicted", "confidence", "flags")


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


def sample_keys(request_ids: pd.Series, image_indexes: pd.Series) -> np.ndarray:
    """Each record's place in its window's sample: sha256 of "request_id:image_index", first 15 hex digits.

    Both engines compute the same key, so a window's sample does not depend on who reads the log or its row order.
    """
    return np.fromiter(
        (
            int(hashlib.sha256(f"{request_id}:{index}".encode()).hexdigest()[:SAMPLE_KEY_HEX_DIGITS], 16)
            for request_id, index in zip(request_ids, image_indexes)
        ),
        dtype=np.int64,
        count=len(request_ids),
    )


KEY_SPACE = 16**SAMPLE_KEY_HEX_DIGITS


def key_cut(volume: int, size: int) -> int:
    """A sample-key bound under which a window of `volume` uniform keys keeps its `size` smallest, but for
    a chance of about 1e-15: the expected count under it is `size` plus eight standard deviations. Engines that
    cannot afford to sort every record rank only the records under it."""
    expected = size + 8 * math.sqrt(size) + 64
    return KEY_SPACE if expected >= volume else int(KEY_SPACE * expected / volume)


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    return -np.sum(probabilities * np.log(np.clip(probabilities, ENTROPY_FLOOR, 1)), axis=1)


def _flag_tester(flags: pd.Series):
    """A test of every record's flags against a pattern, run once per distinct flags text (a log holds a handful of
    them) rather than once per record: eight patterns over a million records cost what two did."""
    categories = pd.Categorical(flags)
    return lambda pattern: np.asarray(categories.categories.str.contains(pattern))[categories.codes]


def window_aggregates(log: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """The pandas engine's per-window sums and counts (AGGREGATE_COLUMNS), one row per window in order."""
    confidence = log["confidence"].to_numpy(dtype=float)
    flags = log["flags"].fillna("").astype(str)
    p_correct = expected_accuracy(reference, confidence)
    predicted = log["predicted"].to_numpy().astype(int)
    has_flag = _flag_tester(flags)
    outside = has_flag("|".join(OUT_OF_REFERENCE_FLAGS))
    scores = log["foreign_score"].to_numpy(dtype=float) if "foreign_score" in log else np.full(len(log), np.nan)
    per_record = pd.DataFrame(
        {
            "window": log["window"].to_numpy().astype(int),
            "low_confidence": has_flag(LOW_CONFIDENCE_FLAG).astype(int),
            "foreign": has_flag(FOREIGN_FLAG).astype(int),
            "confidence": confidence,
            "entropy": _entropy(log[PROBABILITY_COLUMNS].to_numpy(dtype=float)),
            "expected_correct": p_correct,
            "expected_correct_variance": p_correct * (1 - p_correct),
            "in_reference_expected_correct": np.where(outside, 0.0, p_correct),
            "in_reference_expected_correct_variance": np.where(outside, 0.0, p_correct * (1 - p_correct)),
            "out_of_reference": outside.astype(int),
            "foreign_score": scores,
            **{f"class_{digit}": (predicted == digit).astype(int) for digit in range(NUM_CLASSES)},
            **{f"class_{digit}_probability": log[f"prob_{digit}"].to_numpy(dtype=float) for digit in range(NUM_CLASSES)},
            **{f"class_{digit}_expected_correct": np.where(predicted == digit, p_correct, 0.0) for digit in range(NUM_CLASSES)},
            **{cause: has_flag(cause).astype(int) for cause in QUALITY_CAUSES},
        }
    )
    if "fingerprint" in log:
        keys = [per_record["window"].to_numpy(), log["fingerprint"].to_numpy()]
        repeats = pd.Series(1, index=per_record.index).groupby(keys).transform("size")
        per_record["duplicate"] = (repeats.to_numpy() >= DUPLICATE_MIN_COUNT).astype(int)
    else:
        per_record["duplicate"] = 0
    grouped = per_record.groupby("window", sort=True)
    aggregates = grouped.agg(
        volume=("confidence", "size"),
        low_confidence_count=("low_confidence", "sum"),
        foreign_count=("foreign", "sum"),
        confidence_sum=("confidence", "sum"),
        entropy_sum=("entropy", "sum"),
        expected_correct_sum=("expected_correct", "sum"),
        expected_correct_variance_sum=("expected_correct_variance", "sum"),
        in_reference_expected_correct_sum=("in_reference_expected_correct", "sum"),
        in_reference_expected_correct_variance_sum=("in_reference_expected_correct_variance", "sum"),
        out_of_reference_count=("out_of_reference", "sum"),
        foreign_score_count=("foreign_score", "count"),
        foreign_score_sum=("foreign_score", "sum"),
        **{f"class_{digit}_count": (f"class_{digit}", "sum") for digit in range(NUM_CLASSES)},
        **{f"class_{d}_probability_sum": (f"class_{d}_probability", "sum") for d in range(NUM_CLASSES)},
        **{f"class_{d}_expected_correct_sum": (f"class_{d}_expected_correct", "sum") for d in range(NUM_CLASSES)},
        **{f"{cause}_count": (cause, "sum") for cause in DATA_QUALITY_CAUSES},
    )
    quantiles = grouped["confidence"].quantile(list(CONFIDENCE_QUANTILES.values())).unstack()
    for name, q in CONFIDENCE_QUANTILES.items():
        aggregates[name] = quantiles[q]
    return aggregates.reset_index()[list(AGGREGATE_COLUMNS)]


def window_samples(log: pd.DataFrame, size: int) -> pd.DataFrame:
    """The pandas engine's per-window samples: the `size` records of each window with the smallest sample keys,
    in key order (SAMPLE_COLUMNS)."""
    keyed = log.assign(sample_key=sample_keys(log["request_id"], log["image_index"]))
    for column in PROJECTION_COLUMNS:
        if column not in keyed:
            keyed[column] = np.nan
    keyed = keyed.sort_values(["window", "sample_key", "request_id", "image_index"], kind="stable")
    return keyed.groupby("window", sort=True).head(size)[list(SAMPLE_COLUMNS)].reset_index(drop=True)


def window_metrics(log: pd.DataFrame, reference: Reference, config: MonitorConfig = DEFAULT_CONFIG) -> pd.DataFrame:
    """One row per window of an in-memory log (the pandas engine)."""
    return judge_windows(window_aggregates(log, reference), window_samples(log, config.sample_size), reference, config)


def judge_windows(
    aggregates: pd.DataFrame, samples: pd.DataFrame, reference: Reference, config: MonitorConfig = DEFAULT_CONFIG
) -> pd.DataFrame:
    """One row per window: volume, confidence, entropy, class mix, drift tests, foreign share, estimated accuracy.

    Whichever engine read the log, this judges its aggregates and samples, so both engines give the same metrics.
    """
    rng = np.random.default_rng(config.seed)
    reference_projection = reference.sample_projection
    if len(reference_projection) > config.mmd_reference_size:
        reference_projection = reference_projection[
            rng.choice(len(reference_projection), config.mmd_reference_size, replace=False)
        ]
    by_window = {int(window): group for window, group in samples.groupby("window", sort=True)}
    empty = samples.iloc[:0]

    def one(sums: dict) -> dict:
        return _one_window(sums, by_window.get(int(sums["window"]), empty), reference, reference_projection, config)

    # each window's tests are seeded by the window alone, so windows can be judged side by side: a thread per
    # core, each with one BLAS thread (NumPy lets go of the GIL in the permutation test's matrix work)
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(JUDGE_THREADS) as pool:
        return pd.DataFrame(list(pool.map(one, aggregates.sort_values("window").to_dict("records"))))


def _one_window(
    sums: dict,
    sample: pd.DataFrame,
    reference: Reference,
    reference_projection: np.ndarray,
    config: MonitorConfig,
) -> dict:
    volume = int(sums["volume"])
    class_counts = np.array([int(sums[f"class_{digit}_count"]) for digit in range(NUM_CLASSES)])
    estimated = float(sums["expected_correct_sum"]) / volume
    spread = 1.96 * float(np.sqrt(sums["expected_correct_variance_sum"])) / volume
    low, high = accuracy_bounds(sums, volume)
    row = {
        "window": int(sums["window"]),
        "volume": volume,
        "low_confidence_rate": int(sums["low_confidence_count"]) / volume,
        "confidence_mean": float(sums["confidence_sum"]) / volume,
        **{name: float(sums[name]) for name in CONFIDENCE_QUANTILES},
        "entropy_mean": float(sums["entropy_sum"]) / volume,
        **{f"class_{digit}_share": float(class_counts[digit] / volume) for digit in range(NUM_CLASSES)},
        "estimated_accuracy": estimated,
        "estimated_accuracy_low": low,
        "estimated_accuracy_high": high,
        "accuracy_estimable": high - low <= MAX_ESTIMABLE_WIDTH,
        "confidence_accuracy_low": max(0.0, estimated - spread),
        "confidence_accuracy_high": min(1.0, estimated + spread),
        "too_small": volume < config.min_window_size,
        **{f"{cause}_rate": int(sums.get(f"{cause}_count", 0)) / volume for cause in DATA_QUALITY_CAUSES},
        **class_recalls(sums),
    }
    has_scores = int(sums["foreign_score_count"]) > 0
    foreign_count = int(sums["foreign_count"]) if has_scores else 0
    alpha = FOREIGN_FALSE_ALARM_RATE
    row.update(
        foreign_rate=foreign_count / volume if has_scores else np.nan,
        foreign_score_mean=float(sums["foreign_score_sum"]) / int(sums["foreign_score_count"]) if has_scores else np.nan,
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
    confidence = sample["confidence"].to_numpy(dtype=float)[: config.ks_max_window]
    row["confidence_p"] = float(stats.ks_2samp(confidence, reference.sample_confidence).pvalue)
    projection = sample[PROJECTION_COLUMNS].to_numpy(dtype=float)[: config.mmd_max_window]
    if len(projection) and not np.isnan(projection).any() and len(reference_projection):
        # permutations seeded by the window: its p-value does not depend on which other windows a run judges
        window_rng = np.random.default_rng([config.seed, int(row["window"])])
        row["embedding_mmd"], row["embedding_p"] = mmd_permutation_test(
            projection, reference_projection, config.mmd_permutations, window_rng
        )
    else:
        row["embedding_mmd"] = row["embedding_p"] = np.nan
    return row


def class_recalls(sums: dict) -> dict:
    """Per class, the label-free recall: the expected correct among images predicted as it over its expected true
    count (the summed probability of it); NaN for a class the window holds almost none of (under one image). Like
    the accuracy estimate it trusts the calibrated confidence, so it means little where foreign images are many."""
    recalls = {}
    for digit in range(NUM_CLASSES):
        expected = float(sums.get(f"class_{digit}_probability_sum", 0.0))
        correct = float(sums.get(f"class_{digit}_expected_correct_sum", 0.0))
        recalls[f"class_{digit}_recall_estimated"] = min(1.0, correct / expected) if expected >= 1 else np.nan
    return recalls


def accuracy_bounds(sums: dict, volume: int) -> tuple[float, float]:
    """A 95% interval for a window's accuracy that holds on drifted windows too: the images the reference vouches
    for (no foreign flag, no data-quality cause) count with their calibrated P(correct) and its normal spread; the
    others, whose accuracy no label-free estimate knows, count as wrong for the low bound and right for the high.
    On clean windows it is the calibrated interval widened by the 1% of MNIST flagged foreign; with many foreign or
    faulty images it widens to what their share allows (not estimable without labels past MAX_ESTIMABLE_WIDTH)."""
    known = float(sums["in_reference_expected_correct_sum"])
    spread = 1.96 * float(np.sqrt(sums["in_reference_expected_correct_variance_sum"]))
    unknown = int(sums["out_of_reference_count"])
    return max(0.0, (known - spread) / volume), min(1.0, (known + spread + unknown) / volume)


def truth_metrics(log: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per window, from the simulator's sidecar: realised accuracy and the true share of foreign digits."""
    joined = log.merge(truth[["request_id", "image_index", "source", "label"]], on=["request_id", "image_index"])
    joined["correct"] = joined["predicted"] == joined["label"]
    joined["foreign"] = joined["source"] != "mnist"
    grouped = joined.groupby("window")
    return pd.DataFrame(
        {"realised_accuracy": grouped["correct"].mean(), "true_foreign_share": grouped["foreign"].mean()}
    ).reset_index()
