"""The loop's decisions: when labeling starts, which labels are in hand, when to retrain, what opened after a promotion."""

import pandas as pd

from loop.decisions import (
    incidents_after,
    labeling_since,
    labels_in_hand,
    retrain_due,
    serving_version,
    window_label_budget,
    windows_to_queue,
)


def test_labeling_starts_at_the_first_alert_and_goes_on_without_alerts():
    since = None
    started = []
    for window, alerted in enumerate([False, False, True, False, True]):
        since = labeling_since(since, window, alerted)
        started.append(since)
    assert started == [None, None, 2, 2, 2]


def test_labels_are_in_hand_once_they_have_arrived():
    answered = [
        pd.DataFrame(
            {"request_id": ["a", "b"], "image_index": [0, 0], "label": [1, 2], "window": [3, 3], "arrived_window": [4, 5]}
        ),
        pd.DataFrame({"request_id": ["c"], "image_index": [0], "label": [3], "window": [4], "arrived_window": [5]}),
    ]
    assert labels_in_hand(answered, 3).empty
    assert labels_in_hand(answered, 4)["request_id"].tolist() == ["a"]
    assert labels_in_hand(answered, 5)["request_id"].tolist() == ["a", "b", "c"]
    assert list(labels_in_hand([], 9).columns) == ["request_id", "image_index", "label", "window", "arrived_window"]


def test_a_retrain_is_due_after_enough_new_labeled_images_while_retrains_are_left():
    assert not retrain_due(99, 0, 0, retrain_after=100, max_retrains=3)
    assert retrain_due(100, 0, 0, retrain_after=100, max_retrains=3)
    assert not retrain_due(180, 100, 1, retrain_after=100, max_retrains=3)  # 80 new since the last one
    assert not retrain_due(500, 100, 3, retrain_after=100, max_retrains=3)  # none left


def test_the_version_of_a_window_split_by_a_switch_is_the_one_that_served_most_of_it():
    records = pd.DataFrame({"model_version": ["1", "2", "2", "1", "2"]})
    assert serving_version(records["model_version"]) == "2"


def test_incidents_after_the_first_promotion_are_counted_per_100_windows():
    incidents = [
        {"window": 3, "event": "opened"},
        {"window": 9, "event": "resolved"},
        {"window": 12, "event": "opened"},
        {"window": 30, "event": "opened"},
    ]
    after = incidents_after(incidents, 10, 41)
    assert after == {"windows": 30, "opened": 2, "opened_at": [12, 30], "per_100_windows": 6.67}
    assert incidents_after(incidents, None, 41) == {}


def test_each_judged_window_from_the_first_alert_is_queued_once():
    assert list(windows_to_queue(since=4, judged_through=None, queued_through=None)) == []  # nothing judged yet
    assert list(windows_to_queue(since=4, judged_through=7, queued_through=None)) == [4, 5, 6, 7]
    assert list(windows_to_queue(since=4, judged_through=7, queued_through=7)) == []  # no new window
    assert list(windows_to_queue(since=4, judged_through=9, queued_through=7)) == [8, 9]


def test_a_window_gets_fewer_labels_once_the_retrains_are_spent():
    assert window_label_budget(10, 5, retrains=2, max_retrains=3) == 10  # labels still feed a retrain
    assert window_label_budget(10, 5, retrains=3, max_retrains=3) == 5  # they only check the estimate now
    assert window_label_budget(4, 5, retrains=3, max_retrains=3) == 4  # never more than the budget
    assert window_label_budget(10, 0, retrains=3, max_retrains=3) == 0
