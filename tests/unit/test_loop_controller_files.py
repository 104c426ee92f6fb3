"""The controller's files: ids kept as written, kept images added once, labels counted against them; a part run in the
controller's process writes its own log."""

import logging
import sys

import pandas as pd

from loop.controller import KEPT_FILE, kept_images, labeled_with_image, read_keyed_csv, run_in_process


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


def test_a_part_run_in_process_writes_its_output_to_its_log_and_ends_as_its_process_would(tmp_path):
    def says(argv: list[str]) -> int:
        logging.getLogger("monitoring.job").warning("judged %s", argv[1])
        print("the last line")
        return 3

    def refuses(argv: list[str]) -> int:
        sys.exit(None)

    def breaks(argv: list[str]) -> int:
        raise RuntimeError("the store is gone")

    handlers = logging.getLogger().handlers
    assert run_in_process(says, ["run", "window 4"], tmp_path / "says.log", "python -m part") == (3, "the last line")
    assert "judged window 4" in (tmp_path / "says.log").read_text()
    assert run_in_process(refuses, ["run"], tmp_path / "refuses.log", "python -m part")[0] == 0
    code, last = run_in_process(breaks, ["run"], tmp_path / "breaks.log", "python -m part")
    assert code == 1 and last == "RuntimeError: the store is gone"
    assert "python -m part run failed" in (tmp_path / "breaks.log").read_text()
    assert logging.getLogger().handlers == handlers  # the controller's own logging is back
