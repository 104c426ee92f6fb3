"""Azure's data-collector files as Azure writes them: batched events, payloads over 4 MB as blob references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.prediction_dataset import collector_frame, collector_records, filesystem, list_parts, read_parts
from common.records import PredictionRecord
from devtools.processes import free_port
from serving.collector_sink import INPUT_FEATURES, inputs_frame, outputs_frame, pixel_statistics


def record(number: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{number}",
        image_index=0,
        model_name="digits-cnn",
        model_version="3",
        timestamp="2026-12-02T10:00:00.000000+00:00",
        window=None,
        predicted=number % 10,
        probabilities=tuple(0.1 for _ in range(10)),
        confidence=0.99,
        flags=(),
        fingerprint=f"{number:016x}",
        foreign_score=float(number),
        projection=tuple(float(i) for i in range(8)),
    )


def rows(numbers: list[int]) -> list[dict]:
    return json.loads(outputs_frame([record(n) for n in numbers]).to_json(orient="records"))


def event(data, **extra) -> str:
    return json.dumps({"specversion": "1.0", "type": "azureml.inference.model_outputs", "data": data, **extra})


def test_batched_events_and_a_blob_reference_read_as_records_and_an_unreachable_blob_is_named(tmp_path):
    """A payload over 4 MB is an event with datainblob and the blob's URL: its records come from the blob, and an
    unreachable blob is counted and named (without its SAS token), never read as a record."""
    blob = tmp_path / "blobs" / "modeldata" / "big-payload"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps(rows([3, 4])))
    unreachable_url = f"http://127.0.0.1:{free_port()}/modeldata/mdc/gone?sv=2024&sig=secret"
    folder = tmp_path / "model_outputs" / "2026" / "12" / "02" / "10"
    folder.mkdir(parents=True)
    lines = [
        event(rows([1, 2]), correlationid="batch-of-two"),  # two requests batched into one event
        event(blob.as_uri(), datainblob="true", datacontenttype="text/plain"),
        event(unreachable_url, datainblob="true", datacontenttype="text/plain"),
    ]
    (folder / "instance-a.jsonl").write_text("\n".join(lines) + "\n")

    unreachable: list[str] = []
    records = collector_records((folder / "instance-a.jsonl").read_text().splitlines(), "instance-a.jsonl", unreachable)
    assert sorted(item["request_id"] for item in records) == ["req-1", "req-2", "req-3", "req-4"]
    assert unreachable == [unreachable_url.split("?")[0]] and "secret" not in unreachable[0]

    fs, root = filesystem(str(tmp_path / "model_outputs"))
    frame = read_parts(fs, list_parts(fs, root))
    assert sorted(frame["request_id"]) == ["req-1", "req-2", "req-3", "req-4"]
    assert set(frame["model_version"]) == {"3"}


def test_a_file_of_unreachable_references_only_is_no_records_not_an_error():
    lines = [event("https://nowhere.invalid/modeldata/x", datainblob="true")]
    unreachable: list[str] = []
    assert collector_records(lines, "f.jsonl", unreachable) == [] and len(unreachable) == 1
    assert collector_frame([], "f.jsonl").empty


def test_model_inputs_carry_the_image_features_azures_drift_signal_compares():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1, 4:24, 10:14] = 255  # a stroke 20 rows high and 4 columns wide
    statistics = pixel_statistics(images)
    assert statistics.loc[0].tolist() == [0.0, 0.0, 0.0, 0, 0]
    assert statistics.loc[1, "ink_share"] == 80 / 784 and statistics.loc[1, ["ink_rows", "ink_columns"]].tolist() == [20, 4]
    inputs = inputs_frame(outputs_frame([record(1), record(2)]), statistics)
    assert set(INPUT_FEATURES) <= set(inputs.columns) and inputs["foreign_score"].tolist() == [1.0, 2.0]
    assert not inputs[INPUT_FEATURES].isna().any().any()
    assert isinstance(inputs_frame(outputs_frame([record(1)]), None), pd.DataFrame)


def test_the_collector_files_path_layout_is_what_list_parts_finds(tmp_path):
    folder = tmp_path / "2026" / "12" / "02" / "23"
    folder.mkdir(parents=True)
    (folder / "i.jsonl").write_text(event(rows([1])) + "\n")
    fs, root = filesystem(str(tmp_path))
    assert [Path(part.path).name for part in list_parts(fs, root)] == ["i.jsonl"]
