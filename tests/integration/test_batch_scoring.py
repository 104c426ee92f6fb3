"""Batch scoring with Spark through MLflow's spark_udf: the records match the scoring core's."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from common.datasets import load_source
from common.records import PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from serving.batch import batch_score, images_frame, main
from serving.core import load_core

pytestmark = pytest.mark.slow


def test_batch_records_have_the_log_schema_and_the_cores_answers(spark, champion, shared_data, tmp_path):
    mlflow.set_tracking_uri(champion.tracking_uri)
    digits = load_source("mnist", shared_data).subset(np.arange(40))
    pd.DataFrame({"pixels": list(digits.images.reshape(40, 784).astype(float))}).to_parquet(tmp_path / "images.parquet")
    images = images_frame(str(tmp_path / "images.parquet"), None)
    records = batch_score(spark, champion.uri, images, window=7, threshold=0.9).toPandas()
    assert list(records.columns) == list(PREDICTION_COLUMNS)
    assert set(records["window"]) == {7} and set(records["model_version"]) == {champion.version}
    core = load_core(champion.uri)
    scored = core.score(digits.images)
    records = records.set_index("request_id").loc[[f"images-{index}" for index in range(40)]]
    assert (records["predicted"].to_numpy() == scored.predicted).all()
    assert np.abs(records[PROBABILITY_COLUMNS].to_numpy() - scored.probabilities).max() < 1e-5
    assert records["foreign_score"].isna().all()


def test_batch_cli_refuses_a_folder_without_a_layout_and_an_existing_output(tmp_path, capsys):
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "say how the folder is laid out with --layout" in capsys.readouterr().err
    assert main(["--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "already exists; batch scoring never overwrites" in capsys.readouterr().err
