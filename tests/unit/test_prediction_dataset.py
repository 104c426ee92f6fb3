"""The partitioned prediction dataset: parts published once under stable names, crashes recovered, both layouts read."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pandas as pd
import pytest

from common.prediction_dataset import DatasetError, Part, filesystem, list_parts, part_summary, read_parts
from common.records import PredictionRecord, compress_image
from monitoring.incremental import Increment, Watermark, advance, plan_increment
from serving.collector_sink import outputs_frame
from serving.dataset_sink import DatasetSink


def record(number: int, window: int | None, hour: int = 10, flagged: bool = False) -> PredictionRecord:
    image = np.full((28, 28), number % 256, dtype=np.uint8)
    return PredictionRecord(
        request_id=f"req-{number}",
        image_index=0,
        model_name="digits-cnn",
        model_version="1",
        timestamp=f"2026-11-22T{hour:02d}:00:00.000000+00:00",
        window=window,
        predicted=number % 10,
        probabilities=tuple(0.1 for _ in range(10)),
        confidence=0.5 if flagged else 0.99,
        flags=("low_confidence",) if flagged else (),
        fingerprint=f"{number:016x}",
        foreign_score=float(number),
        projection=tuple(float(i) for i in range(8)),
        image=compress_image(image) if flagged else None,
    )


def published(location) -> list[str]:
    fs, root = filesystem(str(location))
    return [part.path.removeprefix(root).lstrip("/") for part in list_parts(fs, root)]


def test_staged_records_are_published_as_parts_by_hour_once_each(tmp_path):
    sink = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    assert sink.write([record(i, i // 5) for i in range(10)]) == 10
    assert sink.write([record(3, 0)]) == 0  # a retried request adds nothing twice
    sink.write([record(20, 2, hour=11, flagged=True)])
    assert sink.publish() == 11 and sink.staged() == 0
    sink.close()
    names = published(tmp_path / "dataset")
    assert [name.split("/part-")[0] for name in names] == ["date=2026-11-22/hour=10", "date=2026-11-22/hour=11"]
    fs, root = filesystem(str(tmp_path / "dataset"))
    frame = read_parts(fs, list_parts(fs, root))
    assert sorted(frame["request_id"]) == sorted({f"req-{i}" for i in (*range(10), 20)})
    assert frame.loc[frame["request_id"] == "req-20", "image"].iloc[0] == record(20, 2, flagged=True).image
    summary = part_summary(fs, list_parts(fs, root)[0])
    assert summary.windows == (0, 1) and summary.stamped == summary.rows == 10
    assert summary.times[0] <= summary.times[1] and summary.times[0].startswith("2026-11-22T10:")


def test_a_writer_that_died_before_publishing_publishes_its_staged_records_on_restart_less_those_retried_elsewhere(
    tmp_path,
):
    first = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    first.write([record(i, 0) for i in range(4)])
    first._stop.set()  # gone without close(): its staged records stay in staging.db
    assert published(tmp_path / "dataset") == []
    # the proxy retried two of its requests on another replica, which published them
    other = DatasetSink(str(tmp_path / "dataset"), tmp_path / "other-staging", flush_seconds=3600)
    other.write([record(1, 0), record(3, 0)])
    other.close()
    second = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=1.0)
    assert second.writer_id == first.writer_id and second.staged() == 4  # held back two rounds
    time.sleep(1.0)
    assert second.staged() == 4
    deadline = time.monotonic() + 30
    while second.staged():  # its publisher's first round after the hold-back
        assert time.monotonic() < deadline, "the held-back records were never published"
        time.sleep(0.1)
    second.close()
    fs, root = filesystem(str(tmp_path / "dataset"))
    by_writer = read_parts(fs, [part for part in list_parts(fs, root) if second.writer_id in part.path])
    assert sorted(by_writer["request_id"]) == ["req-0", "req-2"]
    assert sorted(read_parts(fs, list_parts(fs, root))["request_id"]) == ["req-0", "req-1", "req-2", "req-3"]


class FailingUpload(DatasetSink):
    """Dies after uploading the first of two parts, as a process killed mid-publication would."""

    def _upload(self, partition, name, records):
        super()._upload(partition, name, records)
        raise KeyboardInterrupt("killed")


def test_a_publication_cut_short_is_finished_under_the_same_names_without_duplicates(tmp_path):
    sink = FailingUpload(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    sink._stop.set()
    sink.write([record(1, 0, hour=10), record(2, 0, hour=11)])
    with pytest.raises(KeyboardInterrupt):
        sink.publish()
    half = published(tmp_path / "dataset")
    assert len(half) == 1
    sink.write([record(3, 1, hour=10)])  # staged after the cut: published later, in a part of its own
    restarted = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=0.5)
    restarted.close()  # after waiting out the hold-back of what it found staged (two rounds: 1 s)
    names = published(tmp_path / "dataset")
    assert half[0] in names and len(names) == 3
    fs, root = filesystem(str(tmp_path / "dataset"))
    frame = read_parts(fs, list_parts(fs, root))
    assert sorted(frame["request_id"]) == ["req-1", "req-2", "req-3"]


def test_staged_records_are_withdrawn_until_they_are_cut_for_publication_a_whole_request_at_a_time(tmp_path):
    sink = FailingUpload(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    sink._stop.set()
    two_images = record(2, 0)
    sink.write([record(1, 0, hour=10), two_images, two_images._replace(image_index=1)])
    assert sink.withdraw(["req-1", "req-unknown"]) == {"req-1"}
    with pytest.raises(KeyboardInterrupt):  # req-2 is cut for publication (its part uploaded), not yet forgotten
        sink.publish()
    sink.write([record(3, 1, hour=10)])
    assert sink.withdraw(["req-2", "req-3"]) == {"req-3"}
    restarted = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=0.5)
    restarted.close()  # after waiting out the hold-back of what it found staged (two rounds: 1 s)
    fs, root = filesystem(str(tmp_path / "dataset"))
    frame = read_parts(fs, list_parts(fs, root))
    assert sorted(zip(frame["request_id"], frame["image_index"])) == [("req-2", 0), ("req-2", 1)]


def collector_line(records: list[PredictionRecord], hour: int) -> str:
    """One CloudEvent as Azure ML's data collector stores it, batching several requests."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"event-{hour}-{records[0].request_id}",
            "source": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws/"
            "onlineEndpoints/digitdrift-digits/deployments/blue",
            "type": "azureml.inference.model_outputs",
            "datacontenttype": "application/json",
            "time": f"2026-11-22T{hour:02d}:00:00Z",
            "data": json.loads(outputs_frame(records).to_json(orient="records")),
            "correlationid": records[0].request_id,
            "modelversion": "default",
            "collectdatatype": "pandas.core.frame.DataFrame",
            "agent": "azureml-ai-monitoring/1.0.0",
        }
    )


def test_data_collector_files_in_azures_layout_read_as_records(tmp_path):
    root = tmp_path / "modelDataCollector" / "digitdrift-digits" / "blue" / "model_outputs"
    for hour, numbers in ((10, [1, 2, 3]), (11, [4, 5, 3])):  # request 3 collected twice
        folder = root / "2026" / "11" / "22" / f"{hour:02d}"
        folder.mkdir(parents=True)
        records = [record(n, n // 2, hour, flagged=n == 4) for n in numbers]
        (folder / "instance-a.jsonl").write_text(
            collector_line(records[:2], hour) + "\n" + collector_line(records[2:], hour) + "\n"
        )
    fs, path = filesystem(str(root))
    parts = list_parts(fs, path)
    assert [part.kind for part in parts] == ["collector", "collector"]
    frame = read_parts(fs, parts)
    assert sorted(frame["request_id"]) == [f"req-{n}" for n in (1, 2, 3, 4, 5)]
    assert frame.loc[frame["request_id"] == "req-4", "image"].iloc[0] == record(4, 2, flagged=True).image
    assert frame["window"].tolist() == [0, 1, 1, 2, 2] and part_summary(fs, parts[1]).windows == (1, 2)
    assert part_summary(fs, parts[1]).times[0].startswith("2026-11-22T11:")  # collector files: read, not from statistics
    assert base64.b64decode(json.loads(collector_line([record(4, 2, flagged=True)], 1))["data"][0]["image"])


def test_a_collector_file_that_is_not_cloud_events_is_named_with_its_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"data": []}\nnot json\n')
    fs, root = filesystem(str(tmp_path))
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not a data-collector event"):
        read_parts(fs, list_parts(fs, root))


def test_an_increment_reads_new_parts_and_judges_windows_once_the_next_one_has_begun():
    parts = [Part(f"p{i}", 100) for i in range(4)]
    spans = {"p0": (0, 1), "p1": (1, 2), "p2": (2, 2), "p3": None}
    first = plan_increment(parts[:3], spans, Watermark())
    assert (first.after, first.through) == (None, 1)  # window 2 may still grow
    assert first.done == ("p0",)  # p1 and p2 hold window 2: read again next time
    metrics = pd.DataFrame({"window": [0, 1], "too_small": [False, False], "foreign_p": [0.5, 0.4]})
    mark = advance(Watermark(), first, metrics, ["foreign_p"])
    assert mark.judged_through == 1 and mark.consumed == ("p0",) and len(mark.history) == 2
    second = plan_increment(parts, spans, mark, close_all=True)
    assert [part.path for part in second.parts] == ["p1", "p2", "p3"] and (second.after, second.through) == (1, 2)
    nothing = plan_increment(parts, spans, advance(mark, second, metrics, ["foreign_p"]))
    assert nothing.through is None and isinstance(nothing, Increment)


def test_records_read_alike_from_a_log_its_parquet_export_a_dataset_and_the_collector(tmp_path):
    from common.prediction_dataset import read_records
    from serving.prediction_log import PredictionLog, export_parquet

    records = [record(n, n // 3, hour=10 + n % 2, flagged=n % 2 == 0) for n in range(6)]
    log = PredictionLog(tmp_path / "log.db")
    log.write(records)
    log.close()
    export_parquet(tmp_path / "log.db", tmp_path / "log.parquet")
    sink = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    sink.write(records)
    sink.close()
    collector = tmp_path / "collector" / "2026" / "11" / "22" / "10"
    collector.mkdir(parents=True)
    (collector / "a.jsonl").write_text(collector_line(records, 10) + "\n")
    columns = ["request_id", "image_index", "window", "image"]
    expected = read_records(str(tmp_path / "log.db"), columns)
    assert expected["request_id"].tolist() == [f"req-{n}" for n in (0, 2, 4, 1, 3, 5)]  # scoring order
    for location in ("log.parquet", "dataset", "collector"):
        frame = read_records(str(tmp_path / location), columns)
        assert list(frame.columns) == columns, location
        assert frame["request_id"].tolist() == expected["request_id"].tolist(), location
        assert frame["image"].tolist() == expected["image"].tolist(), location
    assert set(read_records(str(tmp_path / "dataset")).columns) >= {"fingerprint", "foreign_score", "image"}
    (tmp_path / "empty").mkdir()
    for missing in ("empty", "nothing.db"):
        with pytest.raises(DatasetError, match=missing):
            read_records(str(tmp_path / missing))


def test_a_sink_whose_storage_fails_says_behind_once_keeps_the_records_and_publishes_them_when_it_works(tmp_path, caplog):
    sink = DatasetSink(str(tmp_path / "dataset"), tmp_path / "staging", flush_seconds=3600)
    working = sink._upload

    def refuse(*args):
        raise OSError("Cannot connect to host 127.0.0.1:10000")

    sink._upload = refuse
    sink.write([record(n, 0) for n in range(4)])
    with caplog.at_level("INFO", logger="serving.dataset_sink"):
        sink._publish_noting_failure()
        sink._publish_noting_failure()
        state = sink.status()
        assert state["status"] == "behind" and state["staged_records"] == 4 and "Cannot connect" in state["error"]
        assert state["since"] and state["oldest_staged"] == record(0, 0).timestamp
        sink._upload = working
        sink._publish_noting_failure()
    assert sink.status() == {"status": "ok", "staged_records": 0, "oldest_staged": None}
    messages = [entry.getMessage() for entry in caplog.records]
    assert sum(" failed (" in message for message in messages) == 1, messages  # once per outage
    assert any("again (it had failed since" in message for message in messages)
    sink.close()
    fs, root = filesystem(str(tmp_path / "dataset"))
    assert sorted(read_parts(fs, list_parts(fs, root))["request_id"]) == [f"req-{n}" for n in range(4)]
