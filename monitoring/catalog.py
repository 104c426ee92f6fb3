"""The window metrics by name: each one's column, MLflow name, dashboard panel and label, for logging and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from common.images import NUM_CLASSES
from monitoring.metrics import DATA_QUALITY_CAUSES

# The dashboard's panels, top to bottom
RATES, CONFIDENCE, CLASS_MIX, DRIFT_TESTS, ACCURACY, FOREIGN = (
    "Volume, flag rates and data-quality causes",
    "Confidence",
    "Predicted-class mix",
    "Drift tests (p-values, log scale)",
    "Accuracy: estimated without labels",
    "Foreign digits: estimated share",
)
PANELS = (RATES, CONFIDENCE, CLASS_MIX, DRIFT_TESTS, ACCURACY, FOREIGN)


@dataclass(frozen=True)
class WindowMetric:
    """One column of window_metrics.csv."""

    column: str
    logged: str  # its MLflow name: the prefix is the section the MLflow UI groups a run's charts into
    label: str  # how the dashboard names it
    panel: str | None = None  # the dashboard panel that draws it (None: logged, not drawn as a line of its own)


CATALOG = (
    WindowMetric("volume", "traffic/volume", "volume", RATES),
    WindowMetric("low_confidence_rate", "confidence/low_confidence_rate", "low-confidence rate", RATES),
    WindowMetric("foreign_rate", "foreign/flag_rate", "foreign-flag rate", RATES),
    WindowMetric("foreign_score_mean", "foreign/score_mean", "mean foreign score"),
    *(
        WindowMetric(f"{cause}_rate", f"quality/{cause}_rate", f"{cause.replace('_', '-')} rate", RATES)
        for cause in DATA_QUALITY_CAUSES
    ),
    WindowMetric("confidence_p10", "confidence/p10", "confidence p10", CONFIDENCE),
    WindowMetric("confidence_p50", "confidence/p50", "confidence median", CONFIDENCE),
    WindowMetric("confidence_mean", "confidence/mean", "confidence mean", CONFIDENCE),
    WindowMetric("entropy_mean", "confidence/entropy_mean", "entropy mean"),
    *(WindowMetric(f"class_{d}_share", f"traffic/class_{d}_share", f"class {d}", CLASS_MIX) for d in range(NUM_CLASSES)),
    WindowMetric("foreign_p", "drift/foreign_p", "foreign-flag test", DRIFT_TESTS),
    WindowMetric("class_mix_p", "drift/class_mix_p", "class mix (chi-square)", DRIFT_TESTS),
    WindowMetric("confidence_p", "drift/confidence_p", "confidence (KS)", DRIFT_TESTS),
    WindowMetric("embedding_p", "drift/embedding_p", "embeddings (MMD)", DRIFT_TESTS),
    WindowMetric("embedding_mmd", "drift/embedding_mmd", "embedding MMD"),
    WindowMetric("estimated_accuracy", "accuracy/estimated", "estimated accuracy (where estimable)", ACCURACY),
    WindowMetric("estimated_accuracy_low", "accuracy/estimated_low", "estimated accuracy, 95% interval low"),
    WindowMetric("estimated_accuracy_high", "accuracy/estimated_high", "estimated accuracy, 95% interval high"),
    WindowMetric("accuracy_estimable", "accuracy/estimable", "accuracy estimable without labels"),
    WindowMetric("confidence_accuracy_low", "accuracy/confidence_low", "calibrated confidence's interval low"),
    WindowMetric("confidence_accuracy_high", "accuracy/confidence_high", "calibrated confidence's interval high"),
    WindowMetric("realised_accuracy", "accuracy/realised", "realised accuracy (sidecar)", ACCURACY),
    *(
        WindowMetric(f"class_{d}_recall_estimated", f"accuracy/class_{d}_recall_estimated", f"class {d} recall, estimated")
        for d in range(NUM_CLASSES)
    ),
    WindowMetric("estimated_foreign_share", "foreign/estimated_share", "estimated foreign share", FOREIGN),
    WindowMetric("true_foreign_share", "foreign/true_share", "true foreign share (sidecar)", FOREIGN),
)
METRICS = {metric.column: metric for metric in CATALOG}
LOGGED_METRICS = {metric.column: metric.logged for metric in CATALOG}  # window metric -> its MLflow name


def label(column: str) -> str:
    """How the dashboard names a window metric."""
    return METRICS[column].label


def drawn_in(panel: str) -> list[WindowMetric]:
    """The metrics a dashboard panel draws, in the catalog's order."""
    return [metric for metric in CATALOG if metric.panel == panel]
