"""Keras training against real MLflow stores: a real `mlflow server`, and the CLI on the SQLite default."""

import os
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from common.datasets import load_source
from common.images import to_model_input
from common.settings import PROJECT_ROOT
from tests.helpers import settings_for
from training.configs import AUTO, MIXED_BFLOAT16, PRECISIONS, KerasJobConfig
from training.keras_job import batches, run_keras_job
from training.model import (
    FusedBatchNormalization,
    build_cnn,
    resolve_precision,
    servable_copy,
)

pytestmark = pytest.mark.slow

SMALL = dict(epochs=1, train_limit=2000, validation_size=500, foreign_limit_per_class=5, batch_size=64)


@pytest.fixture(scope="module")
def trained_on_server(mlflow_server, shared_data, tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("keras-home"), tracking_uri=mlflow_server, data_dir=shared_data)
    config = KerasJobConfig(data_dir=str(shared_data), run_name="test-keras", **SMALL)
    result = run_keras_job(config, settings)
    return settings, result


def test_training_batches_are_the_ones_keras_makes_of_arrays_without_tf_data_autotuning():
    import keras
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    images, labels = np.zeros((100, 28, 28), dtype=np.uint8), np.arange(100)

    def label_batches(dataset):
        return [batch_labels.tolist() for _, batch_labels in dataset.as_numpy_iterator()]

    keras.utils.set_random_seed(0)
    ours = batches(images, labels, 32, shuffle=True)
    keras.utils.set_random_seed(0)
    keras_own = ArrayDataAdapter(to_model_input(images), labels, batch_size=32, shuffle=True).get_tf_dataset()
    assert label_batches(ours) == label_batches(keras_own)
    assert [len(batch) for batch in label_batches(ours)] == [32, 32, 32, 4]
    order = sum(label_batches(ours), [])
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert ours.cardinality() == 4  # fit knows its steps per epoch
    assert ours.options().autotune.enabled is False  # its thread made epochs start after up to a minute idle
    assert sum(label_batches(batches(images, labels, 32)), []) == list(range(100))


def test_run_logs_parameters_and_per_epoch_and_evaluation_metrics(trained_on_server):
    _, result = trained_on_server
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.info.run_name == "test-keras" and run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "1" and run.data.params["train_size"] == "2000"
    metrics = run.data.metrics
    for name in ("accuracy", "loss", "val_accuracy", "val_loss"):
        assert name in metrics, name
    assert metrics["mnist_test_accuracy"] == pytest.approx(result.test_accuracy)
    for source in ("mnist_test", "devanagari", "japanese"):
        assert 0 <= metrics[f"{source}_accuracy"] <= 1
        assert 0 <= metrics[f"{source}_low_confidence_share"] <= 1
        assert 0.1 <= metrics[f"{source}_mean_confidence"] <= 1
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val_accuracy")
    assert [point.step for point in history] == [0]
    inputs = {item.dataset.name: item.tags[0].value for item in run.inputs.dataset_inputs}
    assert inputs == {
        "mnist-train": "training",
        "mnist-validation": "validation",
        "mnist_test": "evaluation",
        "devanagari": "evaluation",
        "japanese": "evaluation",
    }
    assert "Keras CNN trained on 2000 MNIST images" in run.data.tags["mlflow.note.content"]
    # MLflow's system metrics, sampled while the job ran
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_run_has_the_review_artifacts(trained_on_server):
    _, result = trained_on_server
    client = mlflow.MlflowClient()
    names = {item.path for item in client.list_artifacts(result.run_id, "evaluation")}
    assert names == {"evaluation/confusion_matrix.html", "evaluation/confusion_matrix.png", "evaluation/misclassified.png"}
    html = mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/confusion_matrix.html")
    assert "plotly" in html.lower() and "MNIST test confusion matrix" in html
    assert "model_summary.txt" in {item.path for item in client.list_artifacts(result.run_id)}


def test_model_is_registered_with_challenger_alias_signature_and_example(trained_on_server):
    _, result = trained_on_server
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("digits-cnn", "challenger")
    assert str(version.version) == result.model_version and version.run_id == result.run_id
    info = mlflow.models.get_model_info("models:/digits-cnn@challenger")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 784)
    assert info.saved_input_example_info is not None
    example = mlflow.models.Model.load("models:/digits-cnn@challenger").load_input_example()
    assert np.asarray(example).shape == (2, 784)


def test_model_loaded_back_predicts_exactly_what_the_trained_one_did(trained_on_server, shared_data):
    _, result = trained_on_server
    images = to_model_input(load_source("mnist", shared_data).images[:64])
    expected = result.model.predict(images, verbose=0)
    loaded = mlflow.keras.load_model("models:/digits-cnn@challenger")
    assert np.array_equal(loaded.predict(images, verbose=0), expected)
    pyfunc = mlflow.pyfunc.load_model("models:/digits-cnn@challenger")
    assert np.array_equal(np.asarray(pyfunc.predict(images)), expected)


def test_registered_model_keeps_the_batch_norm_momentum_it_was_trained_with(trained_on_server):
    import keras

    _, result = trained_on_server
    logged = float(mlflow.MlflowClient().get_run(result.run_id).data.params["batch_norm_momentum"])
    loaded = mlflow.keras.load_model("models:/digits-cnn@challenger")
    momenta = {layer.momentum for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {logged} == {KerasJobConfig.batch_norm_momentum}


def test_a_model_trained_with_fused_batch_norm_is_registered_float32_with_keras_batch_norm(trained_on_server):
    import keras

    _, result = trained_on_server
    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert (params["precision"], params["fused_batch_norm"]) == (resolve_precision("auto"), "True")
    loaded = mlflow.keras.load_model("models:/digits-cnn@challenger")
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    normalizations = [layer for layer in loaded.layers if "normalization" in layer.name]
    assert len(normalizations) == 5 and {type(layer) for layer in normalizations} == {keras.layers.BatchNormalization}


@pytest.mark.parametrize("shape", [(16, 6, 6, 4), (16, 8)], ids=["images", "dense"])
def test_fused_batch_norm_trains_and_scores_as_keras_batch_norm_does(shape):
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    inputs = rng.normal(3.0, 2.0, size=shape).astype(np.float32)
    # A weight per output element: with one weight per channel the loss would not depend on the batch at all (batch
    # norm removes each channel's shift and scale), and the batch and gamma gradients would be rounding noise around
    # zero, whose size follows the CPU's kernels (up to 5e-3 on an AVX2-only EPYC).
    weights = rng.normal(size=shape).astype(np.float32)
    ours, theirs = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))

    def step(layer):
        batch = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(batch)
            outputs = layer(batch, training=True)
            loss = tf.reduce_sum(outputs * weights)
        return outputs, tape.gradient(loss, [batch, layer.gamma, layer.beta])

    for _ in range(3):
        (our_outputs, our_gradients), (their_outputs, their_gradients) = step(ours), step(theirs)
        np.testing.assert_allclose(our_outputs, their_outputs, rtol=1e-4, atol=1e-4)
        for our_gradient, their_gradient in zip(our_gradients, their_gradients):
            np.testing.assert_allclose(our_gradient, their_gradient, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(ours(inputs, training=False), theirs(inputs, training=False), rtol=1e-5, atol=1e-5)


def test_the_servable_copy_of_a_bfloat16_model_scores_with_its_weights_in_float32():
    images = np.random.default_rng(1).integers(0, 256, size=(32, 784)).astype(np.float32)
    trained = build_cnn(precision=MIXED_BFLOAT16, fused_batch_norm=True)
    copy = servable_copy(trained)
    plain = build_cnn()
    plain.set_weights(trained.get_weights())
    assert [(type(layer), layer.dtype_policy.name) for layer in copy.layers] == [
        (type(layer), "float32") for layer in plain.layers
    ]
    np.testing.assert_array_equal(copy.predict(images, verbose=0), plain.predict(images, verbose=0))
    np.testing.assert_allclose(copy.predict(images, verbose=0), trained.predict(images, verbose=0), atol=0.02)


def test_cli_trains_on_the_sqlite_default_and_promote_guards_the_champion(shared_data, tmp_path):
    env = {**os.environ, "DIGITDRIFT_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "keras",
            "--data-dir",
            str(shared_data),
            "--epochs",
            "1",
            "--train-limit",
            "1000",
            "--validation-size",
            "500",
            "--foreign-limit-per-class",
            "3",
            "--run-name",
            "cli-run",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert re.search(r"^\d+/\d+ - \d+s - .*val_accuracy: [0-9.]+", train.stdout, re.MULTILINE), "no per-epoch line"
    assert "registered digits-cnn version 1 as @challenger" in train.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in train.stdout
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()

    refused = subprocess.run(
        [sys.executable, "-m", "training", "promote", "--min-accuracy", "1.01"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "not promoted: version 1 fails MLflow's model validation" in refused.stdout
    assert "mnist_test_accuracy threshold = 1.01" in refused.stdout
    promoted = subprocess.run(
        [sys.executable, "-m", "training", "promote", "--min-accuracy", "0"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert promoted.returncode == 0 and "champion moves from none to 1" in promoted.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    champion = mlflow.MlflowClient().get_model_version_by_alias("digits-cnn", "champion")
    assert str(champion.version) == "1"
    gate = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/promotion/gate.json")
    assert gate["promoted"] and gate["thresholds"]["mnist_test_accuracy"]["threshold"] == 0


def test_auto_precision_is_bfloat16_only_on_a_cpu_only_machine_with_bfloat16_instructions():
    assert resolve_precision("auto", frozenset({"avx2", "avx512_bf16"}), has_gpu=False) == MIXED_BFLOAT16
    assert resolve_precision("auto", frozenset({"amx_bf16"}), has_gpu=False) == MIXED_BFLOAT16
    assert resolve_precision("auto", frozenset({"avx2", "avx512f"}), has_gpu=False) == "float32"
    assert resolve_precision("auto", frozenset({"avx512_bf16"}), has_gpu=True) == "float32"
    assert resolve_precision("float32", frozenset({"avx512_bf16"}), has_gpu=False) == "float32"
    with pytest.raises(ValueError, match="'float16' is not one of auto, float32, mixed_bfloat16"):
        resolve_precision("float16")


def test_the_command_line_takes_every_precision_the_job_knows_and_defaults_to_auto(tmp_path, capsys):
    from training.__main__ import build_parser

    parser = build_parser(settings_for(tmp_path))
    assert parser.parse_args(["keras"]).precision == AUTO
    assert [parser.parse_args(["keras", "--precision", name]).precision for name in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(SystemExit):
        parser.parse_args(["keras", "--precision", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
