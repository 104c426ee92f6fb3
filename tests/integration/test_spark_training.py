"""The Spark ML training job against a real MLflow store, with Spark in local mode."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from common.datasets import load_source
from tests.helpers import settings_for, write_png_classes
from training.spark_job import SparkJobConfig, pixels_frame, probabilities_of, read_png_folders, run_spark_job

pytestmark = pytest.mark.slow


def test_png_folders_read_through_spark_keep_their_labels_and_size(spark, tmp_path):
    write_png_classes(tmp_path / "devanagari" / "Test", "digit_{}", side=32, per_class=2)
    rows = read_png_folders(spark, tmp_path / "devanagari", "devanagari").toPandas()
    assert sorted(rows["label"]) == sorted(list(range(10)) * 2)
    assert {len(pixels) for pixels in rows["pixels"]} == {784}


def test_spark_job_logs_registers_and_the_logged_model_predicts_like_the_trained_one(spark, shared_data, tmp_path):
    settings = settings_for(tmp_path, data_dir=shared_data)
    config = SparkJobConfig(
        data_dir=str(shared_data),
        classifier="logistic",
        pca_k=20,
        max_iter=20,
        train_limit=2000,
        validation_size=500,
        foreign_limit_per_class=3,
        spark_master="local[2]",
        run_name="spark-test",
    )
    result = run_spark_job(config, settings)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["classifier"] == "logistic" and run.data.params["pca_k"] == "20"
    for source in ("mnist_test", "devanagari", "japanese"):
        assert 0 <= run.data.metrics[f"{source}_accuracy"] <= 1
    assert run.data.metrics["mnist_test_accuracy"] > 0.8
    version = mlflow.MlflowClient().get_model_version_by_alias("digits-spark", "challenger")
    assert str(version.version) == result.model_version and version.run_id == result.run_id
    info = mlflow.models.get_model_info("models:/digits-spark@challenger")
    assert info.signature.inputs.input_names() == ["pixels"] and "spark" in info.flavors

    mnist = load_source("mnist", shared_data)
    sample = mnist.subset(np.arange(50))
    probabilities, _ = probabilities_of(result.model, spark.createDataFrame(pixels_frame(sample)))
    pyfunc = mlflow.pyfunc.load_model("models:/digits-spark@challenger")
    predicted = pyfunc.predict(pd.DataFrame({"pixels": [row.astype(float).tolist() for row in sample.images.reshape(50, 784)]}))
    assert np.array_equal(np.asarray(predicted).astype(int), probabilities.argmax(axis=1))
