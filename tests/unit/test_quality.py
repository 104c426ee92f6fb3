"""Data-quality causes: bounds from held-out MNIST, the corruptions that trip them, and what they change downstream."""

import numpy as np
import pandas as pd
import pytest

from common.datasets import load_mnist
from common.quality import QUALITY_CAUSES, corrupt, fit_quality_bounds, quality_causes, quality_features
from common.records import FOREIGN_FLAG
from common.reference import load_reference, save_reference
from monitoring.alerts import Rule
from monitoring.evaluate import quality_figures
from monitoring.incidents import incident_events, window_checks
from monitoring.metrics import window_aggregates
from serving.core import flag_predictions
from simulation.scenario import ScenarioError, parse_scenario, plan_traffic


@pytest.fixture(scope="module")
def mnist(shared_data):
    """Bounds fitted on 3,000 images of MNIST's training split (as a training job's held-out split), and 1,000 test
    images to judge them on."""
    train, test = load_mnist(shared_data / "mnist", "train"), load_mnist(shared_data / "mnist", "test")
    return fit_quality_bounds(train.images[-3000:]), test.images[:1000]


def test_each_cause_is_named_with_high_precision_and_recall_on_corrupted_mnist(mnist):
    bounds, images = mnist
    figures = quality_figures(bounds, images, seed=3)
    for cause in QUALITY_CAUSES:
        assert figures[cause]["precision"] >= 0.95, (cause, figures[cause])
        assert figures[cause]["recall"] >= 0.90, (cause, figures[cause])
    assert figures["clean_flagged_share"] <= 0.001


def test_clean_mnist_is_almost_never_given_a_cause(mnist, shared_data):
    bounds, _ = mnist
    test = load_mnist(shared_data / "mnist", "test").images
    named = quality_causes(test, bounds)
    assert sum(bool(cause) for cause in named) / len(test) <= 0.001


def test_an_inverted_image_is_named_inverted_not_saturated_though_its_frame_is_white(mnist):
    bounds, images = mnist
    inverted = corrupt(images[:20], "inverted", np.random.default_rng(0))
    assert quality_features(inverted)[:, 0].min() > 0.9  # the frame is white
    assert set(quality_causes(inverted, bounds)) == {"inverted"}
    assert quality_causes(np.zeros((1, 28, 28), dtype=np.uint8), bounds) == ["blank"]


def test_a_duplicate_burst_repeats_the_first_image():
    images = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    burst = corrupt(images, "duplicate", np.random.default_rng(0))
    assert (burst == images[0]).all()
    with pytest.raises(ValueError, match="unknown corruption 'upside'"):
        corrupt(images, "upside", np.random.default_rng(0))


def test_a_cause_takes_the_place_of_the_foreign_flag():
    probabilities = np.full((3, 10), 0.01)
    probabilities[:, 3] = 0.91
    scored = flag_predictions(probabilities, 0.5, np.array([9.0, 9.0, 0.1]), 5.0, None, ["inverted", "", ""])
    assert scored.flags == [("inverted",), (FOREIGN_FLAG,), ()]


def test_the_bounds_travel_with_the_reference_and_an_older_reference_still_loads(reference, tmp_path):
    assert reference.quality_bounds.shape == (5,)
    saved = save_reference(reference, tmp_path / "reference.npz")
    assert np.array_equal(load_reference(saved).quality_bounds, reference.quality_bounds)
    with np.load(saved) as stored:
        older = {name: stored[name] for name in stored.files if name != "quality_bounds"}
    np.savez(tmp_path / "older.npz", **older)
    assert load_reference(tmp_path / "older.npz").quality_bounds.size == 0


def log_of(flags, fingerprints, windows):
    count = len(flags)
    probabilities = np.full((count, 10), 0.0)
    probabilities[:, 1] = 1.0
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(count)],
            "image_index": 0,
            "window": windows,
            "predicted": 1,
            **{f"prob_{digit}": probabilities[:, digit] for digit in range(10)},
            "confidence": 1.0,
            "flags": flags,
            "fingerprint": fingerprints,
            "foreign_score": 0.0,
        }
    )


def test_windows_count_each_cause_and_the_records_of_a_duplicate_burst(reference):
    flags = ["inverted", "low_confidence,blank", "", "", "", "", "", "off_centre"]
    fingerprints = ["a", "b", "c", "c", "c", "c", "c", "d"]
    aggregates = window_aggregates(log_of(flags, fingerprints, [0] * 7 + [1]), reference)
    first, second = aggregates.iloc[0], aggregates.iloc[1]
    assert (first["inverted_count"], first["blank_count"], first["off_centre_count"]) == (1, 1, 0)
    assert first["duplicate_count"] == 5 and second["duplicate_count"] == 0 and second["off_centre_count"] == 1
    # the same image five times, but across two windows, is no burst
    spread = window_aggregates(log_of([""] * 5, ["e"] * 5, [0, 0, 0, 1, 1]), reference)
    assert spread["duplicate_count"].tolist() == [0, 0]


def test_a_window_names_the_data_quality_cause_that_explains_its_drift_rules():
    rules = (
        Rule("confidence_drift", "confidence_p", 1e-4, True, ""),
        Rule("inverted_images", "inverted_rate", 0.02, False, "", severity="critical"),
    )
    metrics = pd.DataFrame(
        {
            "window": [0, 1, 2, 3, 4, 5],
            "too_small": False,
            "confidence_p": [0.5, 1e-6, 1e-6, 0.5, 0.5, 0.5],
            "inverted_rate": [0.0, 0.0, 0.05, 0.0, 0.0, 0.0],
        }
    )
    checks = window_checks(metrics, rules)
    assert checks["cause"].tolist() == ["", "drift", "inverted", "", "", ""]
    events = incident_events(checks, rules, resolve_after=3)
    assert [(event.event, event.cause) for event in events] == [
        ("opened", "drift"),
        ("updated", "inverted"),
        ("resolved", "inverted"),
    ]


SCENARIO = {
    "windows": 30,
    "requests_per_window": 100,
    "seed": 5,
    "sources": {"mnist": {"weight": 1.0}, "japanese": {"weight": 1.0}},
    "corruptions": {
        "inverted": {"rate": {"step": {"at": 10, "after": 0.2}}},
        "duplicate": {"rate": {"step": {"at": 20, "after": 0.1}}},
    },
}


def test_a_scenario_corrupts_its_share_of_images_from_its_curve_and_bursts_one_image():
    plan = plan_traffic(parse_scenario(dict(SCENARIO)), {"mnist": 500, "japanese": 300})
    frame = pd.DataFrame(
        [(r.window, s, i, f) for r in plan for s, i, f in zip(r.sources, r.pool_indices, r.corruptions)],
        columns=["window", "source", "index", "fault"],
    )
    before, inverted_phase = frame[frame["window"] < 10], frame[frame["window"].between(10, 19)]
    assert (before["fault"] == "").all()
    assert 0.15 < (inverted_phase["fault"] == "inverted").mean() < 0.25
    bursts = frame[frame["fault"] == "duplicate"]
    assert bursts["window"].min() >= 20 and len(bursts) > 50
    # one image per window, from the first source
    assert (bursts.groupby("window")["index"].nunique() == 1).all() and set(bursts["source"]) == {"mnist"}
    assert plan_traffic(parse_scenario(dict(SCENARIO)), {"mnist": 500, "japanese": 300}) == plan


def test_a_scenario_without_corruptions_plans_the_traffic_it_always_did():
    without = {key: value for key, value in SCENARIO.items() if key != "corruptions"}
    plain = plan_traffic(parse_scenario(dict(without)), {"mnist": 500, "japanese": 300})
    corrupted = plan_traffic(parse_scenario(dict(SCENARIO)), {"mnist": 500, "japanese": 300})
    assert all(request.corruptions == () for request in plain)
    # the corruptions draw from a stream of their own: the sources and images before any burst are the same
    assert [(r.sources, r.pool_indices) for r in plain if r.window < 20] == [
        (r.sources, r.pool_indices) for r in corrupted if r.window < 20
    ]


@pytest.mark.parametrize(
    ("corruptions", "message"),
    [
        ({"upside_down": {"rate": 0.1}}, "corruptions.upside_down: input should be 'inverted'"),
        ({"blank": {"rate": 0.7}, "inverted": {"rate": 0.5}}, "each rate must lie in 0..1 and together at most 1"),
        ({"blank": {"share": 0.1}}, "corruptions.blank.share: unknown field; expected one of rate"),
    ],
)
def test_a_bad_corruption_is_named(corruptions, message):
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_scenario({**SCENARIO, "corruptions": corruptions})


def flagged_window(reference, far: int, near: int, seed: int = 0) -> pd.DataFrame:
    """Flagged records of one window: `far` in a tight group away from the reference's flagged images, `near` drawn
    from the reference's own flagged ones."""
    from common.records import PROJECTION_COLUMNS

    rng = np.random.default_rng(seed)
    flagged_reference = reference.sample_projection[reference.sample_foreign_score > reference.threshold]
    points = np.vstack(
        [
            rng.normal(50.0, 0.5, (far, 8)),
            flagged_reference[rng.integers(0, len(flagged_reference), near)] + rng.normal(0, 0.01, (near, 8)),
        ]
    )
    return pd.DataFrame(
        {
            **{column: points[:, index] for index, column in enumerate(PROJECTION_COLUMNS)},
            "predicted": [3] * far + [7] * near,
            "confidence": [0.99] * far + [0.6] * near,
            "request_id": [f"r{i}" for i in range(far + near)],
            "image_index": 0,
            "source": ["devanagari"] * far + ["mnist"] * near,
            "label": [1] * far + [7] * near,
        }
    )


def test_the_over_represented_cluster_of_flagged_images_comes_first_with_its_mix(reference):
    from monitoring.clusters import window_clusters

    clusters = window_clusters(flagged_window(reference, far=30, near=10), 200, reference, window=4)
    top = clusters.iloc[0]
    assert top["significant"] and top["size"] == 30 and top["share"] == pytest.approx(0.15)
    assert top["class_mix"] == "3 100%" and top["true_mix"] == "devanagari 100%" and top["realised_accuracy"] == 0.0
    assert top["over_representation"] > clusters["over_representation"].iloc[1:].max()
    assert len(top["examples"].split(";")) == 16


def test_a_few_flagged_images_like_the_references_make_no_significant_cluster(reference):
    from monitoring.clusters import window_clusters

    clusters = window_clusters(flagged_window(reference, far=0, near=3), 200, reference, window=0)
    assert not clusters["significant"].any()


def test_identical_images_make_one_cluster_and_a_log_without_embeddings_none(reference):
    from common.records import PROJECTION_COLUMNS
    from monitoring.clusters import window_clusters

    same = flagged_window(reference, far=20, near=0)
    same[PROJECTION_COLUMNS] = 1.0  # twenty all-black images: one point
    clusters = window_clusters(same, 200, reference, window=0)
    assert len(clusters) == 1 and clusters["size"].tolist() == [20]
    assert window_clusters(same.drop(columns=PROJECTION_COLUMNS), 200, reference, window=0).empty


def test_a_sidecar_from_before_corruptions_takes_new_rows_when_resumed(tmp_path):
    import sqlite3

    from common.records import read_ground_truth
    from simulation.sidecar import GroundTruthSidecar

    path = tmp_path / "ground_truth.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE ground_truth (request_id TEXT NOT NULL, image_index INTEGER NOT NULL, window INTEGER NOT NULL, "
            "source TEXT NOT NULL, label INTEGER NOT NULL, PRIMARY KEY (request_id, image_index))"
        )
        old.execute("INSERT INTO ground_truth VALUES ('r0', 0, 0, 'mnist', 7)")
    sidecar = GroundTruthSidecar(path)
    sidecar.write([("r1", 0, 1, "mnist", 3, "inverted")])
    sidecar.close()
    truth = read_ground_truth(path).sort_values("request_id")
    assert truth["corruption"].tolist() == ["", "inverted"] and truth["label"].tolist() == [7, 3]
