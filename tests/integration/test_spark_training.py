"""The Spark ML training job against a real MLflow store, with Spark in local mode."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from common.datasets import load_source
from tests.helpers import write_png_classes
from training.spark_job import pixels_frame, probabilities_of, read_png_folders

pytestmark = pytest.mark.slow


def test_png_folders_read_through_spark_keep_their_labels_and_size(spark, tmp_path):
    write_png_classes(tmp_path / "devanagari" / "Test", "digit_{}", side=32, per_class=2)
    rows = read_png_folders(spark, tmp_path / "devanagari", "devanagari").toPandas()
    assert sorted(rows["label"]) == sorted(list(range(10)) * 2)
    assert {len(pixels) for pixels in rows["pixels"]} == {784}


def test_spark_job_logs_registers_and_the_logged_model_answers_its_probabilities(spark, spark_model, shared_data):
    mlflow.set_tracking_uri(spark_model.tracking_uri)
    run = mlflow.get_run(spark_model.run_id)
    assert run.data.params["classifier"] == "logistic" and run.data.params["pca_k"] == "20"
    for source in ("mnist_test", "devanagari", "japanese"):
        assert 0 <= run.data.metrics[f"{source}_accuracy"] <= 1
    assert run.data.metrics["mnist_test_accuracy"] > 0.8
    version = mlflow.MlflowClient().get_model_version_by_alias("digits-spark", "challenger")
    assert str(version.version) == spark_model.version and version.run_id == spark_model.run_id
    info = mlflow.models.get_model_info(spark_model.uri)
    assert info.signature.inputs.input_names() == ["pixels"] and "spark" in info.flavors
    assert info.signature.outputs.input_names() == ["prediction"]

    mnist = load_source("mnist", shared_data)
    sample = mnist.subset(np.arange(50))
    probabilities, _ = probabilities_of(spark_model.pipeline, spark.createDataFrame(pixels_frame(sample)))
    pyfunc = mlflow.pyfunc.load_model(spark_model.uri)
    answered = pyfunc.predict(pd.DataFrame({"pixels": [row.astype(float).tolist() for row in sample.images.reshape(50, 784)]}))
    answered = np.asarray(list(answered), dtype=float)
    assert answered.shape == (50, 10) and np.abs(answered - probabilities).max() < 1e-12
    assert np.allclose(answered.sum(axis=1), 1)
