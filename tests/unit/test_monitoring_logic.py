"""Monitoring's pure parts: the reference and foreign score, MMD, window metrics, alert rules, the scorecard."""

import numpy as np
import pandas as pd
import pytest

from common.records import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, PROJECTION_COLUMNS
from common.reference import foreign_scores, image_statistics, load_reference, project, save_reference
from monitoring.alerts import Alert, Rule, evaluate_rules, firing_windows
from monitoring.catalog import CATALOG, LOGGED_METRICS, PANELS
from monitoring.evaluate import accuracy_error, detection_delay
from monitoring.metrics import MonitorConfig, mmd_permutation_test, window_metrics
from tests.helpers import synthetic_digits


def test_the_threshold_flags_about_one_percent_of_held_out_digits(reference):
    images, labels = synthetic_digits(2000, 5, thickness=3)
    embeddings = np.random.default_rng(6).normal(size=(2000, 16)) + labels[:, None] * 0.5
    rate = (foreign_scores(reference, images, embeddings) > reference.threshold).mean()
    assert rate < 0.04


def test_digits_drawn_differently_score_as_foreign(reference):
    thin, labels = synthetic_digits(300, 7, thickness=1)
    same, _ = synthetic_digits(300, 8, thickness=3)
    embeddings = np.random.default_rng(9).normal(size=(300, 16)) + labels[:, None] * 0.5
    assert np.median(foreign_scores(reference, thin, embeddings)) > np.median(foreign_scores(reference, same, embeddings))
    assert (foreign_scores(reference, thin, embeddings) > reference.threshold).mean() > 0.5


def test_reference_round_trips_and_a_wrong_file_is_named(reference, tmp_path):
    loaded = load_reference(save_reference(reference, tmp_path / "reference.npz"))
    assert loaded.threshold == reference.threshold and loaded.has_embeddings
    assert project(loaded, np.zeros((2, 16))).shape == (2, 8)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a digitdrift reference"):
        load_reference(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="no monitoring reference here"):
        load_reference(tmp_path / "missing.npz")


def test_mmd_finds_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8))
    _, same_p = mmd_permutation_test(rng.normal(size=(100, 8)), reference, 200, rng)
    _, shifted_p = mmd_permutation_test(rng.normal(size=(100, 8)) + 0.8, reference, 200, rng)
    assert same_p > 0.01 and shifted_p == pytest.approx(1 / 201)


def log_frame(reference, windows, per_window, foreign_from=None, seed=0):
    """A prediction log in the record columns, with thin 'foreign' digits from window `foreign_from` on."""
    rng = np.random.default_rng(seed)
    rows = []
    for window in range(windows):
        thickness = 1 if foreign_from is not None and window >= foreign_from else 3
        images, labels = synthetic_digits(per_window, seed + window, thickness)
        embeddings = rng.normal(size=(per_window, 16)) + labels[:, None] * 0.5
        scores = foreign_scores(reference, images, embeddings)
        projection = project(reference, embeddings)
        logits = rng.normal(size=(per_window, 10))
        logits[np.arange(per_window), labels] += 6
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for index in range(per_window):
            flags = ",".join(
                f
                for f, on in (
                    ("low_confidence", probabilities[index].max() < 0.9),
                    ("foreign", scores[index] > reference.threshold),
                )
                if on
            )
            rows.append(
                {
                    "request_id": f"w{window}-{index}",
                    "image_index": 0,
                    "model_name": "digits-cnn",
                    "model_version": "1",
                    "timestamp": "",
                    "window": window,
                    "predicted": int(probabilities[index].argmax()),
                    **dict(zip(PROBABILITY_COLUMNS, probabilities[index])),
                    "confidence": probabilities[index].max(),
                    "flags": flags,
                    "fingerprint": "",
                    "foreign_score": scores[index],
                    **dict(zip(PROJECTION_COLUMNS, projection[index])),
                    "image": None,
                }
            )
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def test_window_metrics_judge_windows_and_skip_tests_on_small_ones(reference):
    frame = log_frame(reference, 4, 80, foreign_from=2)
    frame = frame[~((frame["window"] == 3) & (frame.index % 80 >= 20))]  # window 3 keeps 20 records
    metrics = window_metrics(frame, reference, MonitorConfig(min_window_size=50, mmd_permutations=100))
    assert list(metrics["volume"]) == [80, 80, 80, 20]
    assert np.allclose(metrics[[f"class_{d}_share" for d in range(10)]].sum(axis=1), 1)
    assert metrics.loc[3, "too_small"] and np.isnan(metrics.loc[3, "foreign_p"])
    assert metrics.loc[2, "foreign_p"] < 1e-6 < metrics.loc[0, "foreign_p"]
    assert metrics.loc[2, "estimated_foreign_share"] > 0.5 > metrics.loc[0, "estimated_foreign_share"]
    assert (metrics["estimated_accuracy_low"] <= metrics["estimated_accuracy"]).all()


def test_every_window_metric_the_judge_writes_is_in_the_catalog_with_an_mlflow_section(reference):
    metrics = window_metrics(log_frame(reference, 2, 60), reference, MonitorConfig(min_window_size=50, mmd_permutations=20))
    numeric = {column for column in metrics.select_dtypes(["number", "bool"]) if column not in ("window", "too_small")}
    sidecar = {"realised_accuracy", "true_foreign_share"}  # a ground-truth sidecar adds these when evaluating
    assert numeric - set(LOGGED_METRICS) == set()
    assert set(LOGGED_METRICS) - numeric == sidecar
    assert all(
        metric.logged.split("/")[0] in ("traffic", "confidence", "foreign", "drift", "accuracy", "quality") for metric in CATALOG
    )
    assert len({metric.logged for metric in CATALOG}) == len(CATALOG)
    assert {metric.panel for metric in CATALOG} - {None} == set(PANELS)


def test_rules_deduplicate_cool_down_and_skip_small_windows():
    metrics = pd.DataFrame(
        {
            "window": range(12),
            "too_small": [False] * 11 + [True],
            "foreign_p": [0.5, 1e-6, 1e-6, 1e-6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1e-6, 1e-9],
        }
    )
    rule = Rule("foreign_digits", "foreign_p", 1e-4, True, "m")
    alerts = evaluate_rules(metrics, (rule,), "digits-cnn", "1", cooldown_windows=5)
    assert [alert.window for alert in alerts] == [1, 10]  # once for 1-3, again after 6 quiet windows; 11 too small
    assert firing_windows(metrics, (rule,)) == [1, 2, 3, 10]


def test_detection_delay_counts_from_the_twenty_percent_window():
    metrics = pd.DataFrame({"window": range(10), "true_foreign_share": [0, 0, 0.05, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]})
    alert = Alert(5, "foreign_digits", "foreign_p", 1e-9, 1e-4, "m", "digits-cnn", "1")
    early = Alert(0, "confidence_drift", "confidence_p", 1e-9, 1e-4, "m", "digits-cnn", "1")
    assert detection_delay(metrics, [early, alert]) == 1  # the alert before foreign traffic began does not count
    assert detection_delay(metrics, []) is None


def test_accuracy_error_splits_clean_and_drifted_windows_and_scores_the_interval():
    metrics = pd.DataFrame(
        {
            "estimated_accuracy": [0.99, 0.98, 0.9],
            "estimated_accuracy_low": [0.985, 0.95, 0.5],
            "estimated_accuracy_high": [0.995, 0.99, 0.95],
            "accuracy_estimable": [True, True, False],
            "realised_accuracy": [0.98, 0.98, 0.6],
            "true_foreign_share": [0.0, 0.02, 0.4],
        }
    )
    errors = accuracy_error(metrics)
    assert errors["label_free_accuracy_mae_points"] == pytest.approx(0.5)
    assert errors["label_free_accuracy_mae_points_drifted"] == pytest.approx(30)
    assert errors["best_constant_mae_points"] == pytest.approx(0.0)  # both clean windows realised 0.98
    assert errors["label_free_interval_holds_share_clean"] == pytest.approx(0.5)  # 0.98 is under the first's 0.985
    assert errors["label_free_interval_holds_share_drifted"] == 1.0 and errors["not_estimable_windows_drifted"] == 1
    assert errors["label_free_interval_width_points_drifted"] == pytest.approx(45)


def test_the_accuracy_interval_counts_foreign_and_faulty_images_as_unknown():
    from monitoring.metrics import accuracy_bounds

    # 100 images: 80 the reference vouches for (P(correct) 0.99 each), 20 flagged foreign or faulty
    sums = {
        "in_reference_expected_correct_sum": 79.2,
        "in_reference_expected_correct_variance_sum": 80 * 0.99 * 0.01,
        "out_of_reference_count": 20,
    }
    low, high = accuracy_bounds(sums, 100)
    spread = 1.96 * np.sqrt(80 * 0.99 * 0.01) / 100
    assert accuracy_bounds({**sums, "out_of_reference_count": 10}, 100)[1] == pytest.approx(0.892 + spread)
    assert low == pytest.approx(0.792 - spread) and high == 1.0  # 0.992 + spread, capped
    # none flagged: the calibrated interval itself
    clean = {
        "in_reference_expected_correct_sum": 99.0,
        "in_reference_expected_correct_variance_sum": 0.99,
        "out_of_reference_count": 0,
    }
    assert accuracy_bounds(clean, 100) == pytest.approx((0.99 - 1.96 * np.sqrt(0.99) / 100, 1.0))


def test_a_rule_needing_two_windows_in_a_row_ignores_a_lone_one():
    metrics = pd.DataFrame({"window": range(6), "too_small": [False] * 6, "embedding_p": [0.5, 0.001, 0.5, 0.001, 0.001, 0.5]})
    rule = Rule("embedding_drift", "embedding_p", 0.0025, True, "m", consecutive=2)
    assert [alert.window for alert in evaluate_rules(metrics, (rule,), "digits-cnn", "1")] == [4]
    assert firing_windows(metrics, (rule,)) == [4]  # a lone window is not a firing either


def test_the_whitened_class_distance_equals_the_mahalanobis_formula(reference):
    from common.reference import _class_distance

    embeddings = np.random.default_rng(4).normal(size=(5, 16))
    direct = np.min(
        [[(e - m) @ reference.embedding_precision @ (e - m) for m in reference.class_means] for e in embeddings], axis=1
    )
    assert np.allclose(_class_distance(embeddings, *reference.whitening), direct)


def test_image_statistics_count_ink_at_the_half_and_five_percent_thresholds():
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4, 10] = 128  # just over half: strong ink
    image[4, 11] = 127  # just under half: faint ink
    image[20, 10] = 13  # just over 5%: faint ink
    image[20, 11] = 12  # under 5%: ink, but neither strong nor faint
    ink = (128 + 127 + 13 + 12) / 255
    centre_row = (4 * (128 + 127) + 20 * (13 + 12)) / 255 / ink
    centre_column = (10 * (128 + 13) + 11 * (127 + 12)) / 255 / ink
    # rows 4 and 20 each sum to over 0.05 (a used row), so the digit is 17 rows high; columns 10 and 11: 2 wide
    expected = [ink, 1, 128 / 255, 2, centre_row, centre_column, 17, 2]
    assert np.allclose(image_statistics(image[None]), [expected], rtol=1e-12)


def test_image_statistics_of_a_blank_image_have_no_ink_and_a_full_one_fills_the_frame():
    blank, full = np.zeros((28, 28), dtype=np.uint8), np.full((28, 28), 255, dtype=np.uint8)
    statistics = image_statistics(np.stack([blank, full]))
    assert np.array_equal(statistics[0], [0, 0, 0, 0, 0, 0, 28, 28])  # no used row or column: the extent is the frame
    assert np.allclose(statistics[1], [784, 784, 1, 0, 13.5, 13.5, 28, 28], rtol=1e-12)


def _synthetic_model_outputs(labels, seed, shift=0.0):
    """Embeddings and probabilities a model might give: class-separated embeddings, moved by `shift` for another
    population, and a confident top class."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(len(labels), 16)) + labels[:, None] * 0.5 + shift
    logits = rng.normal(size=(len(labels), 10))
    logits[np.arange(len(labels)), labels] += 6
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), embeddings


def test_a_reference_that_takes_in_served_images_no_longer_calls_their_kind_foreign():
    from common.reference import ServedImages, fit_reference, scores_and_learned

    images, labels = synthetic_digits(1000, 0, thickness=3)
    probabilities, embeddings = _synthetic_model_outputs(labels, 1)
    served, served_labels = synthetic_digits(600, 2, thickness=1)  # another stroke, another embedding region
    served_probabilities, served_embeddings = _synthetic_model_outputs(served_labels, 3, shift=8.0)
    mnist_only = fit_reference(images, labels, probabilities, embeddings, seed=0)
    mixed = fit_reference(
        images, labels, probabilities, embeddings, seed=0,
        served=ServedImages(served, served_probabilities, served_embeddings, share=0.4),
    )  # fmt: skip
    new, new_labels = synthetic_digits(400, 4, thickness=1)
    _, new_embeddings = _synthetic_model_outputs(new_labels, 5, shift=8.0)
    assert (foreign_scores(mnist_only, new, new_embeddings) > mnist_only.threshold).mean() > 0.9
    assert (foreign_scores(mixed, new, new_embeddings) > mixed.threshold).mean() < 0.05
    # the first population stays in, accuracy is MNIST's alone, and the samples hold both at the share asked
    clean, clean_labels = synthetic_digits(400, 6, thickness=3)
    _, clean_embeddings = _synthetic_model_outputs(clean_labels, 7)
    assert (foreign_scores(mixed, clean, clean_embeddings) > mixed.threshold).mean() < 0.05
    assert np.array_equal(mixed.confidence_bin_accuracy, mnist_only.confidence_bin_accuracy)
    assert np.array_equal(mixed.quality_bounds, mnist_only.quality_bounds)
    assert float(mixed.accuracy) == float(mnist_only.accuracy)
    assert float(mixed.served_share) == pytest.approx(0.4, abs=0.01)
    assert mixed.class_means.shape[0] == 20 and mnist_only.class_means.shape[0] == 10
    assert float(mnist_only.served_share) == 0.0
    # serving marks the new kind as learned, the first population not
    _, learned = scores_and_learned(mixed, new, new_embeddings)
    assert learned.mean() > 0.9
    assert scores_and_learned(mixed, clean, clean_embeddings)[1].mean() < 0.05
    assert scores_and_learned(mnist_only, new, new_embeddings)[1] is None


def test_a_reference_refuses_served_images_without_embeddings_and_a_class_it_cannot_measure():
    from common.reference import ServedImages, fit_reference

    images, labels = synthetic_digits(400, 0, thickness=3)
    probabilities, embeddings = _synthetic_model_outputs(labels, 1)
    served = ServedImages(images[:100], probabilities[:100], None, share=0.3)
    with pytest.raises(ValueError, match="need embeddings exactly when"):
        fit_reference(images, labels, probabilities, embeddings, served=served)
    labels = np.where(labels == 3, 4, labels)  # no 3 at all
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] are missing"):
        fit_reference(images, labels, probabilities, embeddings)


def test_mixture_sizes_keep_the_share_with_as_many_images_as_the_two_allow():
    from common.reference import mixture_sizes

    assert mixture_sizes(5000, 1000, 0.5) == (1000, 1000)  # MNIST is cut to match the served images
    assert mixture_sizes(5000, 9000, 0.5) == (5000, 5000)  # served images are cut when MNIST runs out
    assert mixture_sizes(5000, 1000, 0.2) == (4000, 1000)
    assert mixture_sizes(5000, 50, 0.95) == (300, 50)  # never so little MNIST that a class mean goes unmeasured
    assert mixture_sizes(200, 100, 0.5) == (200, 100)
    with pytest.raises(ValueError, match="served share 1.0"):
        mixture_sizes(5000, 1000, 1.0)
