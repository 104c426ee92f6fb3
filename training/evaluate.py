"""Pure evaluation of class probabilities against true labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics

from common.images import NUM_CLASSES


@dataclass(frozen=True)
class SetEvaluation:
    """What a run logs per evaluation set."""

    source: str
    count: int
    accuracy: float
    low_confidence_share: float
    mean_confidence: float

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_low_confidence_share": self.low_confidence_share,
            f"{prefix}_mean_confidence": self.mean_confidence,
        }


def evaluate_probabilities(source: str, probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> SetEvaluation:
    """Accuracy, share of top probabilities under `threshold`, and mean top probability."""
    confidence = probabilities.max(axis=1)
    return SetEvaluation(
        source=source,
        count=len(labels),
        accuracy=float((probabilities.argmax(axis=1) == labels).mean()),
        low_confidence_share=float((confidence < threshold).mean()),
        mean_confidence=float(confidence.mean()),
    )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts (true class, predicted class), 10x10 even when a class never occurs (scikit-learn's)."""
    return metrics.confusion_matrix(labels, predicted, labels=np.arange(NUM_CLASSES))


def worst_misclassified(probabilities: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of wrong predictions, most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:count]


def replay_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log P(true label) (scikit-learn's log loss over the ten classes, probabilities clipped off 0 and 1)."""
    exact = probabilities.astype(np.float64)
    exact /= exact.sum(axis=1, keepdims=True)  # float32 softmax rows miss 1 by more than scikit-learn lets pass
    return float(metrics.log_loss(labels, exact, labels=np.arange(NUM_CLASSES)))
