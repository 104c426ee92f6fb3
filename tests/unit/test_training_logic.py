"""Pure training logic: evaluation figures, confusion matrix, worst errors, promotion decisions."""

import numpy as np

from training.evaluate import confusion_matrix, evaluate_probabilities, worst_misclassified
from training.registry import decide_promotion


def one_hot_probabilities(predicted, confidence):
    probabilities = np.full((len(predicted), 10), 0.0)
    for row, (cls, conf) in enumerate(zip(predicted, confidence)):
        probabilities[row] = (1 - conf) / 9
        probabilities[row, cls] = conf
    return probabilities


def test_evaluation_counts_accuracy_and_low_confidence():
    probabilities = one_hot_probabilities([1, 2, 3, 4], [0.99, 0.5, 0.95, 0.3])
    evaluation = evaluate_probabilities("x", probabilities, np.array([1, 2, 0, 0]), threshold=0.9)
    assert evaluation.accuracy == 0.5
    assert evaluation.low_confidence_share == 0.5
    assert np.isclose(evaluation.mean_confidence, (0.99 + 0.5 + 0.95 + 0.3) / 4)
    assert set(evaluation.metrics("japanese")) == {
        "japanese_accuracy",
        "japanese_low_confidence_share",
        "japanese_mean_confidence",
    }


def test_confusion_matrix_counts_true_by_predicted():
    matrix = confusion_matrix(np.array([0, 0, 1, 9]), np.array([0, 1, 1, 9]))
    assert matrix.shape == (10, 10) and matrix.sum() == 4
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 1 and matrix[9, 9] == 1


def test_worst_misclassified_puts_the_most_confident_error_first():
    probabilities = one_hot_probabilities([5, 5, 5, 2], [0.6, 0.99, 0.8, 0.9])
    labels = np.array([1, 1, 5, 3])
    assert list(worst_misclassified(probabilities, labels, 10)) == [1, 3, 0]
    assert list(worst_misclassified(probabilities, labels, 2)) == [1, 3]


def test_promotion_refuses_under_the_threshold_and_says_why():
    decision = decide_promotion("3", 0.981, 0.99, champion="2")
    assert not decision.promoted
    assert "0.9810, under the threshold 0.9900" in decision.reason


def test_promotion_moves_the_champion_when_the_bar_is_cleared():
    decision = decide_promotion("3", 0.995, 0.99, champion="2")
    assert decision.promoted and "champion moves from 2 to 3" in decision.reason


def test_promotion_without_the_metric_is_refused():
    assert not decide_promotion("4", None, 0.99, champion=None).promoted
