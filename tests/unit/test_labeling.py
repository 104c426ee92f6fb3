"""The loop back's pure parts: label files, the labeling queue, the simulated annotator, the label-assisted estimate."""

import numpy as np
import pandas as pd
import pytest

from common.labels import CLEAN_STRATUM, FOREIGN_STRATUM, UNSURE_STRATUM, LabelFileError, read_labels, strata_of, write_labels
from labeling.annotator import simulated_labels
from labeling.queue import select_for_labeling, spread_counts
from monitoring.label_assisted import label_assisted_accuracy


def traffic(windows=20, per_window=200, foreign_share=0.5, seed=0):
    """Served records with truth: MNIST-like (right 99%, unflagged) and foreign (wrong 70%, flagged foreign)."""
    rng = np.random.default_rng(seed)
    rows = []
    for window in range(windows):
        for index in range(per_window):
            foreign = rng.random() < foreign_share * window / windows
            label = int(rng.integers(10))
            right = rng.random() < (0.3 if foreign else 0.99)
            rows.append(
                {
                    "request_id": f"w{window}-{index}",
                    "image_index": 0,
                    "window": window,
                    "label": label,
                    "predicted": label if right else (label + 1) % 10,
                    "flags": "foreign" if foreign else ("low_confidence" if not right and rng.random() < 0.5 else ""),
                    "confidence": 0.97 if foreign else 0.999,
                    "foreign_score": 5.0 if foreign else 0.1,
                    "source": "devanagari" if foreign else "mnist",
                }
            )
    return pd.DataFrame(rows)


def test_a_label_file_round_trips_as_csv_and_jsonl(tmp_path):
    labels = pd.DataFrame(
        {"request_id": ["a", "b"], "image_index": [0, 3], "label": [7, 1], "window": [4, 5], "arrived_window": [5, 6]}
    )
    for name in ("labels.csv", "labels.jsonl"):
        back = read_labels(write_labels(labels, tmp_path / name))
        assert back[["request_id", "image_index", "label", "window", "arrived_window"]].astype(str).values.tolist() == (
            labels.astype(str).values.tolist()
        )


@pytest.mark.parametrize(
    "text, message",
    [
        ("request_id,image_index,label\nabc,0,10\n", "labels.csv:2: label 10 is out of range (expected 0..9)"),
        ("request_id,image_index,label\nabc,zero,1\n", "labels.csv:2: image_index 'zero' is not an integer"),
        ("request_id,image_index,label\n,0,1\n", "labels.csv:2: request_id is empty"),
        ("request_id,label\nabc,1\n", "labels.csv: the header lacks image_index"),
    ],
)
def test_a_bad_label_file_is_refused_naming_the_line_and_field(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelFileError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        read_labels(path)


def test_a_jsonl_line_that_is_not_an_object_is_refused_with_its_line_number(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"request_id": "a", "image_index": 0, "label": 3}\n[1, 2]\n')
    with pytest.raises(LabelFileError, match=r"labels\.jsonl:2: expected a JSON object"):
        read_labels(path)


def test_a_record_labeled_twice_keeps_the_last_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,image_index,label\na,0,3\na,0,5\n")
    assert read_labels(path)["label"].tolist() == [5]


def test_strata_come_from_the_flags():
    flags = pd.Series(["foreign", "low_confidence,foreign", "low_confidence", "", None])
    assert strata_of(flags).tolist() == [FOREIGN_STRATUM, FOREIGN_STRATUM, UNSURE_STRATUM, CLEAN_STRATUM, CLEAN_STRATUM]


def test_the_queue_spends_the_budget_per_window_mostly_on_flagged_images():
    records = traffic()
    queue = select_for_labeling(records, per_window=10, random_share=0.3, seed=1)
    assert queue.groupby("window").size().max() == 10
    late = queue[queue["window"] >= 10]
    assert (late["stratum"] != CLEAN_STRATUM).sum() == 7 * late["window"].nunique()
    assert (late["stratum"] == CLEAN_STRATUM).sum() == 3 * late["window"].nunique()
    # window 0 has no flagged foreign images: its budget goes to what there is
    assert len(queue[queue["window"] == 0]) == 10


def test_the_queue_is_reproducible_and_never_queues_an_image_twice():
    records = traffic()
    first = select_for_labeling(records, 10, 0.3, seed=1)
    assert first.equals(select_for_labeling(records, 10, 0.3, seed=1))
    second = select_for_labeling(records, 10, 0.3, seed=1, already=first)
    assert not set(zip(first.request_id, first.image_index)) & set(zip(second.request_id, second.image_index))


def test_the_simulated_annotator_answers_the_truth_some_windows_later():
    records = traffic(windows=4)
    queue = select_for_labeling(records, 5, 0.3, seed=0)
    labels = simulated_labels(queue, records, delay_windows=2)
    expected = records.set_index(["request_id", "image_index"]).loc[list(zip(labels.request_id, labels.image_index)), "label"]
    assert labels["label"].tolist() == expected.tolist()
    assert (labels["arrived_window"] == labels["window"] + 2).all()


def realised(records):
    return records.assign(correct=records.predicted == records.label).groupby("window")["correct"].mean()


def test_labels_bring_the_estimate_on_drifted_windows_close_to_the_realised_accuracy():
    records = traffic(windows=30, seed=3)
    p_correct = np.where(records["flags"] == "foreign", 0.95, 0.99)  # label-free: confidently wrong on foreign digits
    labels = simulated_labels(select_for_labeling(records, 10, 0.3, seed=0), records, delay_windows=1)
    estimate = label_assisted_accuracy(records, p_correct, labels, lag=1).set_index("window")
    truth = realised(records)
    drifted = truth.index[truth.index >= 10]
    label_free = records.assign(p=p_correct).groupby("window")["p"].mean()
    assisted_error = (estimate.loc[drifted, "label_assisted_accuracy"] - truth[drifted]).abs().mean()
    assert assisted_error < 0.03
    assert (label_free[drifted] - truth[drifted]).abs().mean() > 3 * assisted_error
    inside = (estimate["label_assisted_accuracy_low"] <= truth) & (truth <= estimate["label_assisted_accuracy_high"])
    assert inside.mean() >= 0.8


def test_without_labels_the_estimate_is_the_label_free_one_with_a_wide_interval():
    records = traffic(windows=3)
    p_correct = np.full(len(records), 0.9)
    empty = pd.DataFrame(columns=["request_id", "image_index", "label", "window", "arrived_window"])
    estimate = label_assisted_accuracy(records, p_correct, empty)
    assert np.allclose(estimate["label_assisted_accuracy"], 0.9)
    assert (estimate["labels_used"] == 0).all()
    assert (estimate["label_assisted_accuracy_high"] - estimate["label_assisted_accuracy_low"] > 0.5).all()


def test_labels_not_yet_back_are_not_used():
    records = traffic(windows=6, seed=2)
    labels = simulated_labels(select_for_labeling(records, 10, 0.3), records, delay_windows=3)
    estimate = label_assisted_accuracy(records, np.full(len(records), 0.99), labels, lag=0).set_index("window")
    assert estimate.loc[[0, 1, 2], "labels_used"].tolist() == [0, 0, 0]
    assert estimate.loc[3, "labels_used"] == 10  # window 0's labels, back at window 3


def test_the_queue_of_real_clients_records_spends_its_budget_per_window_of_time(tmp_path):
    from datetime import UTC, datetime

    from common.records import PredictionRecord
    from common.windows import WindowClock
    from labeling.__main__ import export_queue, judged_windows
    from serving.prediction_log import PredictionLog

    def record(number: int, hour: int) -> PredictionRecord:
        stamp = f"2026-12-01T{hour:02d}:{number % 60:02d}:00.000000+00:00"
        flags = ("low_confidence",) if number % 2 else ()
        return PredictionRecord(f"r{hour}-{number}", 0, "digits-cnn", "1", stamp, None, 3, (0.1,) * 10, 0.5, flags, "f")

    log = PredictionLog(tmp_path / "log.db")
    log.write([record(number, hour) for hour in (8, 9, 10) for number in range(30)])
    log.close()
    queue = export_queue(str(tmp_path / "log.db"), 4, 0.25, None, 0, tmp_path / "queue.csv", None, wall=WindowClock.wall("1h"))
    assert queue.groupby("window").size().tolist() == [4, 4, 4]
    assert queue["window_start"].drop_duplicates().tolist() == [f"2026-12-01T{hour:02d}:00:00+00:00" for hour in (8, 9, 10)]
    since = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)  # 09:00-10:00 started before it: only 10:00 on
    later = export_queue(
        str(tmp_path / "log.db"), 4, 0.25, None, 0, tmp_path / "q2.csv", None, wall=WindowClock.wall("1h"), since=since
    )
    assert later["window_start"].unique().tolist() == ["2026-12-01T10:00:00+00:00"]
    assert pd.read_csv(tmp_path / "q2.csv")["window_end"].unique().tolist() == ["2026-12-01T11:00:00+00:00"]
    # only what a monitoring run judged: the 09:00 window, by the number the monitor gave it
    run = tmp_path / "monitoring"
    run.mkdir()
    pd.DataFrame({"window": [int(queue["window"].unique()[1])], "volume": [30]}).to_csv(run / "window_metrics.csv")
    judged = export_queue(
        str(tmp_path / "log.db"),
        4,
        0.25,
        None,
        0,
        tmp_path / "q3.csv",
        None,
        wall=WindowClock.wall("1h"),
        windows=judged_windows(run),
    )
    assert judged["window_start"].unique().tolist() == ["2026-12-01T09:00:00+00:00"]


def test_a_monitoring_run_that_judged_nothing_queues_nothing_and_a_missing_one_is_named(tmp_path):
    from common.windows import WindowError
    from labeling.__main__ import export_queue, judged_windows

    (tmp_path / "quiet").mkdir()  # a run with nothing to judge writes no window_metrics.csv
    assert judged_windows(tmp_path / "quiet") == set()
    # a new deployment's collector has written nothing yet: an empty queue, not an error
    queue = export_queue(str(tmp_path / "no-collector-files"), 10, 0.3, None, 0, tmp_path / "queue.csv", None, windows=set())
    assert queue.empty and list(pd.read_csv(tmp_path / "queue.csv").columns)[:3] == ["request_id", "image_index", "window"]
    with pytest.raises(WindowError, match="--judged .*absent: no monitoring run's output folder here"):
        judged_windows(tmp_path / "absent")


def test_neyman_allocation_follows_size_times_spread_and_spends_the_whole_budget():
    from labeling.queue import neyman_counts

    group = pd.DataFrame(
        {
            "stratum": [FOREIGN_STRATUM] * 20 + [UNSURE_STRATUM] * 20 + [CLEAN_STRATUM] * 160,
            "confidence": [0.9] * 20 + [0.7] * 20 + [0.99] * 160,
        }
    )
    counts = neyman_counts(group, 10)
    # weights: 20 x 0.5 = 10, 20 x sqrt(0.21) = 9.2, 160 x sqrt(0.0099) = 15.9
    assert counts == {FOREIGN_STRATUM: 3, UNSURE_STRATUM: 3, CLEAN_STRATUM: 4}
    # a stratum too small passes what it cannot take to the others: here the foreign one would get 5 of 6
    small = pd.DataFrame({"stratum": [FOREIGN_STRATUM] * 4 + [CLEAN_STRATUM] * 4, "confidence": [0.9] * 4 + [0.99] * 4})
    assert neyman_counts(small, 6) == {FOREIGN_STRATUM: 4, UNSURE_STRATUM: 0, CLEAN_STRATUM: 2}
    assert sum(neyman_counts(group.iloc[:5], 10).values()) == 5


def test_the_queue_takes_neyman_allocation_and_refuses_an_unknown_one():
    records = traffic(windows=4)
    queue = select_for_labeling(records, 10, seed=0, allocation="neyman")
    assert queue.groupby("window").size().tolist() == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="allocation 'best' is not one of fixed, spread, neyman"):
        select_for_labeling(records, 10, allocation="best")


def test_the_interval_checked_every_window_is_wider_by_the_repeated_looks():
    records = traffic()
    labels = simulated_labels(select_for_labeling(records, 10, 0.3, seed=0), records, delay_windows=1)
    estimate = label_assisted_accuracy(records, np.full(len(records), 0.99), labels, lag=1)
    width = estimate["label_assisted_accuracy_high"] - estimate["label_assisted_accuracy_low"]
    every = estimate["label_assisted_accuracy_every_window_high"] - estimate["label_assisted_accuracy_every_window_low"]
    unclipped = (
        (estimate["label_assisted_accuracy_every_window_high"] < 1)
        & (estimate["label_assisted_accuracy_every_window_low"] > 0)
        & (width > 1e-9)
    )
    assert unclipped.sum() >= 10
    # 20 looks: z of 0.05 / 40 (3.02) against 1.96
    assert np.allclose(every[unclipped] / width[unclipped], 3.0233 / 1.96, rtol=1e-3)


def test_not_a_digit_answers_round_trip_and_stay_out_of_what_training_reads(tmp_path):
    from common.labels import NOT_A_DIGIT, NOT_A_DIGIT_LABEL

    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"request_id": "a", "image_index": 0, "label": 4, "labeled_by": "Ada", "labeled_at": "2026-12-06T10:00:00+00:00"}\n'
        f'{{"request_id": "b", "image_index": 1, "label": "{NOT_A_DIGIT}", "labeled_by": "Ada"}}\n'
    )
    assert read_labels(path)["request_id"].tolist() == ["a"]
    every = read_labels(path, not_a_digit=True)
    assert every["label"].tolist() == [4, NOT_A_DIGIT_LABEL] and every["labeled_by"].tolist() == ["Ada", "Ada"]
    back = write_labels(every, tmp_path / "again.csv")
    assert f"b,1,{NOT_A_DIGIT}" in back.read_text()
    assert read_labels(back, not_a_digit=True)["label"].tolist() == [4, NOT_A_DIGIT_LABEL]
    assert not list(tmp_path.glob(".*partial")), "the atomic write leaves no partial file behind"


def test_a_page_answer_is_parsed_or_refused_by_field():
    from labeling.store import AnswerError, parse_answer

    assert parse_answer({"label": 7, "labeled_by": " Ada "}) == (7, "Ada")
    assert parse_answer({"label": "not_a_digit", "labeled_by": "Ada"}) == (-1, "Ada")
    for body, field in (
        ([7], "JSON object"),
        ({"label": True, "labeled_by": "A"}, "label True"),
        ({"label": 10, "labeled_by": "A"}, "label 10"),
        ({"label": "7", "labeled_by": "A"}, "label '7'"),
        ({"label": 1, "labeled_by": ""}, "labeled_by ''"),
        ({"label": 1}, "labeled_by None"),
    ):
        with pytest.raises(AnswerError, match=field):
            parse_answer(body)


def test_the_label_store_replaces_an_answer_takes_one_back_and_keeps_them_across_restarts(tmp_path):
    from labeling.store import LabelStore

    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    assert store.put("a", 0, 3, 1, "Ada") is None
    assert store.put("b", 2, 3, -1, "Ada") is None
    previous = store.put("a", 0, 3, 8, "Grace")
    assert previous["label"] == 1 and previous["labeled_by"] == "Ada"
    assert store.remove("b", 2)["label"] == -1
    assert store.remove("b", 2) is None
    again = LabelStore(path).answers()
    assert list(again) == [("a", 0)] and again[("a", 0)]["label"] == 8 and again[("a", 0)]["labeled_by"] == "Grace"
    assert read_labels(path)[["request_id", "label", "window"]].values.tolist() == [["a", 8, 3]]


def test_the_label_store_keeps_the_columns_a_file_had_and_refuses_a_path_it_cannot_write(tmp_path):
    from common.labels import LabelFileError
    from labeling.store import LabelStore

    path = tmp_path / "labels.csv"
    path.write_text("request_id,image_index,label,window,arrived_window\na,0,4,2,5\n")
    store = LabelStore(path)
    store.put("b", 1, 3, 7, "Ada")
    back = read_labels(path).set_index("request_id")
    assert back.loc["a", "arrived_window"] == 5 and back.loc["b", "labeled_by"] == "Ada"
    for bad, message in ((tmp_path / "labels.txt", ".csv or .jsonl"), (tmp_path / "missing" / "l.jsonl", "cannot be written")):
        with pytest.raises(LabelFileError, match=message):
            LabelStore(bad)


def skewed_traffic(windows=12, per_window=200):
    """Half the traffic foreign and flagged: 90% of it read as an 8 and wrong, 10% read as a 0 and right; the
    label-free P(correct) says 0.95 for all of it. The rest clean and right."""
    rows = []
    for window in range(windows):
        for index in range(per_window):
            foreign, read_as_zero = index % 2 == 0, index % 20 == 0
            label = 0 if read_as_zero or not foreign else 4
            rows.append(
                {
                    "request_id": f"w{window}-{index}",
                    "image_index": 0,
                    "window": window,
                    "label": label,
                    "predicted": 0 if read_as_zero or not foreign else 8,
                    "flags": "foreign" if foreign else "",
                    "confidence": 0.95 if foreign else 0.999,
                    "foreign_score": 5.0 if foreign else 0.1,
                }
            )
    return pd.DataFrame(rows)


def test_spread_counts_share_the_budget_evenly_over_the_predicted_classes_within_their_sizes():
    rng = np.random.default_rng(0)
    assert spread_counts(np.array([8] * 90 + [0] * 6 + [3] * 4), 6, rng) == {0: 2, 3: 2, 8: 2}
    assert spread_counts(np.array([0] + [1] * 10), 6, rng) == {0: 1, 1: 5}  # what a small class cannot take passes on
    assert sum(spread_counts(np.array([2, 2, 5]), 10, rng).values()) == 3


def test_the_spread_queue_labels_the_rarer_readings_of_the_flagged_images_the_uniform_draw_misses():
    records = skewed_traffic()
    spread = select_for_labeling(records, 10, 0.3, seed=0, allocation="spread")
    fixed = select_for_labeling(records, 10, 0.3, seed=0)
    for queue in (spread, fixed):
        assert (queue.groupby("window")["stratum"].agg(lambda s: (s != CLEAN_STRATUM).sum()) == 7).all()
    flagged = records.set_index(["request_id", "image_index"])["predicted"]
    read_as_zero = {
        name: int(
            (flagged.loc[list(zip(queue.request_id, queue.image_index))].to_numpy()[queue.stratum != CLEAN_STRATUM] == 0).sum()
        )
        for name, queue in (("spread", spread), ("fixed", fixed))
    }
    assert read_as_zero["spread"] >= 3 * 12  # 3 or 4 of each window's 7
    assert read_as_zero["fixed"] < read_as_zero["spread"] / 2


def test_the_estimate_corrects_each_predicted_class_by_its_own_labels_when_they_were_spread():
    records = skewed_traffic()
    p_correct = np.where(records["flags"] == "foreign", 0.95, 0.999)
    labels = simulated_labels(select_for_labeling(records, 10, 0.3, seed=0, allocation="spread"), records, delay_windows=1)
    truth = realised(records)
    error = {}
    for by_prediction in (False, True):
        estimate = label_assisted_accuracy(records, p_correct, labels, lag=1, by_prediction=by_prediction)
        error[by_prediction] = (estimate.set_index("window")["label_assisted_accuracy"] - truth).abs().mean()
    assert error[True] < 0.01
    assert error[False] > 0.1  # pooled, the evenly drawn labels over-count the rare right readings
    # the first window's few labels per class (under MIN_CELL_LABELS) still correct it: their classes weighted by
    # size, not by labels (pooled, its 7 flagged labels, 4 of them right, put it 0.23 off)
    first = label_assisted_accuracy(records[records["window"] == 0], p_correct[:200], labels, lag=1, by_prediction=True)
    assert abs(first["label_assisted_accuracy"].iloc[0] - truth[0]) < 0.03


def test_split_by_prediction_without_labels_the_interval_is_as_wide_as_unsplit():
    records = skewed_traffic(windows=2)
    p_correct = np.where(records["flags"] == "foreign", 0.95, 0.999)
    empty = pd.DataFrame(columns=["request_id", "image_index", "label", "window", "arrived_window"])
    split, whole = (label_assisted_accuracy(records, p_correct, empty, by_prediction=flag) for flag in (True, False))
    columns = ["label_assisted_accuracy", "label_assisted_accuracy_low", "label_assisted_accuracy_high"]
    assert np.allclose(split[columns], whole[columns])  # the classes share one unknown correction, not one each
