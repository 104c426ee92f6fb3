"""Pure training logic: evaluation figures, confusion matrix, worst errors, promotion decisions."""

import numpy as np
import pandas as pd
import pytest

from training.evaluate import confusion_matrix, evaluate_probabilities, replay_log_loss, worst_misclassified
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
    assert not decision.promoted and "fails MLflow's model validation" in decision.reason
    assert "mnist_test_accuracy = 0.981, mnist_test_accuracy threshold = 0.99" in decision.reason


def test_promotion_moves_the_champion_when_the_bar_is_cleared():
    decision = decide_promotion("3", 0.995, 0.99, champion="2")
    assert decision.promoted and "champion moves from 2 to 3" in decision.reason


def test_promotion_without_the_metric_is_refused():
    assert not decide_promotion("4", None, 0.99, champion=None).promoted


def test_a_retrained_challenger_must_beat_its_parent_on_the_replay_set():
    from training.registry import ReplayFigures

    better = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(0.94, 0.31, "2", 12))
    assert better.promoted and "0.9400 on 12 replay images against the champion's 0.3100" in better.reason
    baseline = {"version": "2", "mnist_test_accuracy": None, "replay_images": 12, "replay_accuracy": 0.31}
    assert better.gate["baseline"] == baseline  # an unknown accuracy: null
    assert better.gate["thresholds"]["replay_accuracy"]["greater_is_better"] is True
    worse = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(0.30, 0.31, "2", 12), champion_accuracy=0.99)
    assert not worse.promoted and "baseline model replay_accuracy = 0.31" in worse.reason
    tie = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(0.0, 0.0, "2", 12), champion_accuracy=0.99)
    assert not tie.promoted, "no better than the champion on the replay set is no reason to switch"
    assert "replay_log_loss" not in tie.gate["thresholds"]  # a run from before the losses were logged: the tie stands
    floor = decide_promotion("3", 0.990, 0.993, champion="2", replay=ReplayFigures(0.94, 0.31, "2", 12))
    assert not floor.promoted and "mnist_test_accuracy threshold = 0.993" in floor.reason


def test_a_retrained_challenger_with_too_few_replay_images_fails_the_gate():
    from training.registry import ReplayFigures

    none = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(None, None, "2", 0))
    assert not none.promoted and "candidate model replay_images = 0, replay_images threshold = 5" in none.reason
    assert "too few labeled images held out" in none.reason and "replay_accuracy" not in none.gate["thresholds"]
    lucky = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(1 / 3, 0.0, "2", 3))
    assert not lucky.promoted and "replay_images = 3" in lucky.reason and lucky.gate["candidate"]["replay_images"] == 3
    enough = decide_promotion("3", 0.995, 0.993, champion="2", replay=ReplayFigures(0.4, 0.0, "2", 5), min_replay_images=5)
    assert enough.promoted and "0.4000 on 5 replay images" in enough.reason


def test_a_refusal_for_several_metrics_is_one_line_naming_each():
    from training.registry import ReplayFigures

    both = decide_promotion("3", 0.990, 0.993, champion="2", replay=ReplayFigures(0.30, 0.31, "2", 12), champion_accuracy=0.99)
    assert not both.promoted and "\n" not in both.reason, "the loop reads the decision from the promote command's line"
    assert "mnist_test_accuracy threshold = 0.993" in both.reason and "baseline model replay_accuracy = 0.31" in both.reason


def test_the_champion_as_challenger_still_has_to_clear_the_floor():
    from training.registry import ReplayFigures

    kept = decide_promotion("3", 0.995, 0.993, champion="3", replay=ReplayFigures(0.94, 0.31, "2", 12))
    assert kept.promoted and "already the champion" in kept.reason
    under = decide_promotion("3", 0.990, 0.999, champion="3")
    assert not under.promoted and "mnist_test_accuracy threshold = 0.999" in under.reason


def test_a_challenger_retrained_from_a_former_champion_is_not_promoted():
    from training.registry import ReplayFigures

    decision = decide_promotion("4", 0.996, 0.993, champion="3", replay=ReplayFigures(0.95, 0.30, "2", 12))
    assert not decision.promoted and "retrained from version 2, but the champion is now 3" in decision.reason


def test_labeled_images_are_the_labeled_records_whose_image_the_log_kept():
    from common.records import compress_image
    from training.data import labeled_images

    images = [np.full((28, 28), value, dtype=np.uint8) for value in (10, 20)]
    log = {
        "request_id": np.array(["a", "b", "c"]),
        "image_index": np.array([0, 0, 1]),
        "window": np.array([4, 5, 5]),
        "fingerprint": np.array(["fa", "fb", "fc"]),
        "image": np.array([compress_image(images[0]), None, compress_image(images[1])], dtype=object),
    }
    labels = pd.DataFrame({"request_id": ["a", "b", "c", "zz"], "image_index": [0, 0, 1, 0], "label": [3, 4, 5, 6]})
    found, without_image = labeled_images(log, labels)
    assert without_image == 2  # b has no image kept, zz is not in the log
    assert found.digits.labels.tolist() == [3, 5]
    assert found.fingerprints.tolist() == ["fa", "fc"]
    assert (found.digits.images[1] == 20).all()


def test_the_replay_split_is_stable_and_about_its_share():
    from training.data import replay_mask

    ids = np.array([f"request-{n}" for n in range(4000)])
    mask = replay_mask(ids, np.zeros(4000, dtype=int), 0.25)
    assert 0.22 < mask.mean() < 0.28
    assert (replay_mask(ids[:100], np.zeros(100, dtype=int), 0.25) == mask[:100]).all()


def test_labeled_images_are_repeated_to_about_a_tenth_of_an_epoch():
    from training.data import repeats_for

    assert repeats_for(100, 55000) == 61
    assert repeats_for(10000, 1000) == 1


def _served_log(versions, flags, fingerprints):
    from common.records import compress_image

    count = len(flags)
    return {
        "request_id": np.array([f"r{n}" for n in range(count)]),
        "image_index": np.zeros(count, dtype=int),
        "timestamp": np.array([f"2026-12-01T00:{n // 60:02d}:{n % 60:02d}Z" for n in range(count)]),
        "model_version": np.array(versions),
        "flags": np.array(flags),
        "fingerprint": np.array(fingerprints),
        "image": np.array(
            [compress_image(np.full((28, 28), n % 250, np.uint8)) if flag else None for n, flag in enumerate(flags)],
            dtype=object,
        ),
    }


def test_incident_traffic_is_the_images_unlike_mnist_between_the_first_and_last_labels():
    from training.data import incident_traffic

    count = 1200
    flags = ["foreign" if n % 2 else "" for n in range(count)]  # half the traffic foreign
    flags[3] = "foreign,low_confidence"
    flags[5] = "inverted"  # a data-quality cause is a fault, not a kind of digit
    for n in range(1001, count, 2):  # a version trained for that traffic calls it learned, not foreign
        flags[n] = "learned"
    fingerprints = [f"f{n}" for n in range(count)]
    fingerprints[9] = fingerprints[7]  # one image twice
    log = _served_log(["1"] * 1000 + ["2"] * 200, flags, fingerprints)
    labels = pd.DataFrame({"request_id": ["r2", "r1100"], "image_index": [0, 0], "label": [1, 2]})
    traffic = incident_traffic(log, labels, {"f1", "f11"})
    # records r2..r1100: the odd ones are unlike MNIST, less r5 (inverted), r9 (r7's image again) and r11 (trained on)
    assert len(traffic.images) == len(range(3, 1101, 2)) - 3
    assert not {"f1", "f5", "f11"} & set(traffic.fingerprints) and "f1001" in set(traffic.fingerprints)
    assert traffic.share == pytest.approx((0.5 - 0.01) / 0.99, abs=0.01)
    assert traffic.records == 1099 and traffic.first_timestamp < traffic.last_timestamp


def test_labeled_traffic_with_few_foreign_images_is_no_incident_to_reference():
    from training.data import incident_traffic

    flags = ["foreign" if n % 50 == 0 else "" for n in range(1000)]  # 2%: about the flag's false alarms
    log = _served_log(["1"] * 1000, flags, [f"f{n}" for n in range(1000)])
    labels = pd.DataFrame({"request_id": ["r0", "r999"], "image_index": [0, 0], "label": [1, 2]})
    assert incident_traffic(log, labels, set()) is None
    assert incident_traffic(log, labels.iloc[:0], set()) is None


def test_augmented_copies_keep_the_first_as_it_is_and_move_the_others_a_little():
    from tests.helpers import synthetic_digits
    from training.data import augmented_copies

    images, _ = synthetic_digits(5, 0, thickness=3)
    copies = augmented_copies(images, 4, seed=0)
    assert copies.shape == (20, 28, 28) and copies.dtype == np.uint8
    assert (copies[::4] == images).all()
    for index in range(20):
        if index % 4:
            original = images[index // 4].astype(float)
            moved = copies[index].astype(float)
            assert not (copies[index] == images[index // 4]).all()
            # still the same digit: about as much ink, mostly where it was
            assert abs(moved.sum() - original.sum()) < 0.35 * original.sum()
            assert np.corrcoef(moved.ravel(), original.ravel())[0, 1] > 0.2
    assert (augmented_copies(images, 4, seed=0) == copies).all()


def test_a_retrained_runs_replay_figures_come_from_its_metrics_or_older_runs_param_and_a_fresh_run_has_none():
    from types import SimpleNamespace

    from training.registry import replay_figures

    def run(tags, metrics, params):
        return SimpleNamespace(data=SimpleNamespace(tags=tags, metrics=metrics, params=params))

    assert replay_figures(run({}, {"mnist_test_accuracy": 0.99}, {})) is None  # trained from scratch
    tag = {"digitdrift.parent_version": "2"}
    figures = replay_figures(run(tag, {"replay_images": 12, "replay_accuracy": 0.9, "replay_parent_accuracy": 0.3}, {}))
    assert (figures.images, figures.challenger, figures.parent, figures.parent_version) == (12, 0.9, 0.3, "2")
    older = replay_figures(run(tag, {"replay_accuracy": 0.9, "replay_parent_accuracy": 0.3}, {"labeled_replay_images": "7"}))
    assert older.images == 7
    none_held_out = replay_figures(run(tag, {"replay_images": 0}, {"labeled_replay_images": "0"}))
    assert (none_held_out.images, none_held_out.challenger) == (0, None)
    assert not decide_promotion("3", 0.995, 0.993, champion="2", replay=none_held_out).promoted


def test_a_tie_on_the_replay_set_is_broken_by_the_log_loss_on_it():
    from training.registry import ReplayFigures

    surer = ReplayFigures(10 / 11, 10 / 11, "2", 11, challenger_loss=0.21, parent_loss=0.35)
    promoted = decide_promotion("3", 0.995, 0.993, champion="2", replay=surer, champion_accuracy=0.99)
    assert promoted.promoted and "(a tie: log loss 0.2100 against the champion's 0.3500)" in promoted.reason
    assert promoted.gate["thresholds"]["replay_accuracy"]["threshold"] == 10 / 11
    assert promoted.gate["thresholds"]["replay_log_loss"]["greater_is_better"] is False
    assert (promoted.gate["candidate"]["replay_log_loss"], promoted.gate["baseline"]["replay_log_loss"]) == (0.21, 0.35)
    less_sure = ReplayFigures(10 / 11, 10 / 11, "2", 11, challenger_loss=0.35, parent_loss=0.35)
    refused = decide_promotion("3", 0.995, 0.993, champion="2", replay=less_sure, champion_accuracy=0.99)
    assert not refused.promoted and "baseline model replay_log_loss = 0.35" in refused.reason
    # the loss only breaks a tie: a challenger less accurate on the replay set stays refused however sure it is
    worse = ReplayFigures(9 / 11, 10 / 11, "2", 11, challenger_loss=0.01, parent_loss=0.35)
    assert not decide_promotion("3", 0.995, 0.993, champion="2", replay=worse, champion_accuracy=0.99).promoted


def test_the_replay_log_loss_is_the_mean_negative_log_probability_of_the_true_labels():
    probabilities = one_hot_probabilities([3, 5], [0.9, 0.6])
    assert replay_log_loss(probabilities, np.array([3, 5])) == pytest.approx(-(np.log(0.9) + np.log(0.6)) / 2)
    wrong = replay_log_loss(one_hot_probabilities([3], [1.0]), np.array([4]))
    assert np.isfinite(wrong) and wrong > 20  # a sure wrong answer: clipped, not infinite
