"""The controller's files: ids kept as written, kept images added once, labels counted against them."""

import pandas as pd

from loop.controller import KEPT_FILE, kept_images, labeled_with_image, read_keyed_csv


def test_request_ids_come_back_from_the_controllers_csvs_exactly_as_written(tmp_path):
    path = tmp_path / "queue.csv"
    pd.DataFrame({"request_id": ["NA", "00123", "null"], "image_index": [0, 1, 2], "window": [4, 4, 5]}).to_csv(path, index=False)
    read = read_keyed_csv(path)
    assert read["request_id"].tolist() == ["NA", "00123", "null"] and read["image_index"].tolist() == [0, 1, 2]
    assert read_keyed_csv(tmp_path / "none.csv").empty


def test_kept_images_are_added_once_and_labels_count_only_against_them(tmp_path):
    records = pd.DataFrame({"request_id": ["a", "a", "NA", "c"], "image_index": [0, 1, 0, 0], "image": [b"x", None, b"y", b"z"]})
    first = kept_images(tmp_path, records)
    again = kept_images(tmp_path, records.iloc[2:])  # a part read again (it held an open window)
    assert len(first) == len(again) == 3 and (tmp_path / KEPT_FILE).is_file()
    assert kept_images(tmp_path).equals(again)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["a", "a", "NA", "zz"], "image_index": [0, 1, 0, 0], "label": [1, 2, 3, 4]}).to_csv(
        labels, index=False
    )
    assert labeled_with_image(labels, again) == 2  # ("a", 1) kept no image; "zz" is not in the dataset
    assert labeled_with_image(tmp_path / "nobody-answered.csv", again) == 0
