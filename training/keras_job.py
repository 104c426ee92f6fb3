"""The Keras training job: MNIST train -> CNN -> one MLflow run, registered as digits-cnn@challenger."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo

from common.datasets import FOREIGN_LAYOUTS, Digits, load_mnist, load_source
from common.images import to_model_input
from common.reference import EMBEDDING_LAYER, Reference, ServedImages, fit_reference, save_reference
from common.settings import (
    CHALLENGER_ALIAS,
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE,
    SERVED_GRAPH_DIR,
    SERVED_GRAPH_FILE,
    Settings,
)
from common.tracking import describe_run, is_azure_workspace, log_digit_sets, resolve_registered, set_role, use_tracking
from training.configs import KerasJobConfig
from training.data import split_train_validation
from training.evaluate import SetEvaluation, confusion_matrix, evaluate_probabilities, worst_misclassified
from training.model import build_cnn, compile_cnn, resolve_precision, servable_copy
from training.reports import confusion_matrix_html, confusion_matrix_png, digit_grid_png
from training.tracking import log_files, log_keras_model, save_keras_model, start_training_run

log = logging.getLogger(__name__)
SERVED_IMAGES_FILE = "served_images.npz"  # beside reference.npz: the served images a retrained version's reference took in

SERVING_REQUIREMENTS = ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas")


class ModelKeptNowhere(ValueError):
    """A training job asked to keep its model nowhere: not registered in MLflow, and no model output folder."""


@dataclass(frozen=True)
class KerasJobResult:
    run_id: str
    run_name: str
    model_uri: str
    model_version: str | None
    test_accuracy: float
    train_seconds: float
    evaluations: dict[str, SetEvaluation]
    model: keras.Model  # the trained model, in memory


def run_keras_job(
    config: KerasJobConfig, settings: Settings, callbacks: Sequence[keras.callbacks.Callback] = ()
) -> KerasJobResult:
    """Train, evaluate on MNIST test and the foreign sets, log everything to one MLflow run, register.

    `callbacks` join the fit's own (a benchmark's clock, for one)."""
    config = replace(config, precision=resolve_precision(config.precision))
    check_model_kept(config.register, config.model_output)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    data_dir = Path(config.data_dir)
    train, validation = split_train_validation(
        load_mnist(data_dir / "mnist", "train"), config.validation_size, config.seed, config.train_limit
    )
    evaluation_sets = {"mnist_test": load_source("mnist", data_dir)}
    for source in FOREIGN_LAYOUTS:
        evaluation_sets[source] = load_source(source, data_dir, config.foreign_limit_per_class)
    log.info(
        "data: %d train, %d validation, %s",
        len(train),
        len(validation),
        ", ".join(f"{len(d)} {name}" for name, d in evaluation_sets.items()),
    )

    use_tracking(settings)
    registers = registers_in_mlflow(config.register, config.model_output)
    model = build_cnn(
        augment=config.augment,
        batch_norm_momentum=config.batch_norm_momentum,
        precision=config.precision,
        fused_batch_norm=config.fused_batch_norm,
    )
    steps_per_epoch = -(-len(train) // config.batch_size)
    compile_cnn(model, config.learning_rate, steps_per_epoch * config.epochs)
    with start_training_run(config.run_name) as run:
        mlflow.set_tags({"digitdrift.job": "train-keras", "model_name": config.model_name})
        mlflow.log_params({key: value for key, value in asdict(config).items() if key != "run_name"})
        mlflow.log_params({"train_size": len(train), "model_parameters": model.count_params()})
        sets = {"mnist-train": (train, "training"), "mnist-validation": (validation, "validation")}
        log_digit_sets({**sets, **{name: (digits, "evaluation") for name, digits in evaluation_sets.items()}}, str(data_dir))
        describe_run(
            f"Keras CNN trained on {len(train)} MNIST images for {config.epochs} epochs (augmentation "
            f"{'on' if config.augment else 'off'}), evaluated on MNIST test and the foreign sets; registered as "
            f"{config.model_name} @{CHALLENGER_ALIAS}, with its monitoring reference (reference/reference.npz)."
        )
        train_seconds = fit_cnn(model, train.images, train.labels, validation, config.epochs, config.batch_size, run, callbacks)
        model = servable_copy(model)  # evaluated, referenced and logged as it will be served

        evaluations, probabilities = evaluate_and_log(model, evaluation_sets, config.low_confidence_threshold)
        _log_review_artifacts(evaluation_sets["mnist_test"], probabilities["mnist_test"])
        reference = fit_model_reference(model, validation, config.seed)
        log_reference(reference, run.info.run_id)
        log_served_graph(model, run.info.run_id)

        example = to_model_input(evaluation_sets["mnist_test"].images[:2])
        info = register_challenger(model, example, config.model_name) if registers else None
        if config.model_output:  # e.g. an Azure ML job's mlflow_model output, registered from there
            save_model_output(Path(config.model_output), model, example, reference)
        model_version = str(info.registered_model_version) if info and info.registered_model_version else None
        return KerasJobResult(
            run_id=run.info.run_id,
            run_name=run.info.run_name,
            model_uri=info.model_uri if info else str(Path(config.model_output).resolve()),
            model_version=model_version,
            test_accuracy=evaluations["mnist_test"].accuracy,
            train_seconds=train_seconds,
            evaluations=evaluations,
            model=model,
        )


def evaluate_and_log(
    model: keras.Model, evaluation_sets: dict[str, Digits], low_confidence_threshold: float
) -> tuple[dict[str, SetEvaluation], dict[str, np.ndarray]]:
    """Each set scored by `model`, evaluated and logged to the active run (its metrics and a line); the evaluations
    and the probabilities, by set name."""
    evaluations, probabilities = {}, {}
    for name, digits in evaluation_sets.items():
        probabilities[name] = model.predict(to_model_input(digits.images), batch_size=512, verbose=0)
        evaluations[name] = evaluate_probabilities(name, probabilities[name], digits.labels, low_confidence_threshold)
        mlflow.log_metrics(evaluations[name].metrics(name))
        evaluation = evaluations[name]
        log.info(
            "%s: accuracy %.4f on %d images, low-confidence share %.4f, mean confidence %.4f",
            name,
            evaluation.accuracy,
            evaluation.count,
            evaluation.low_confidence_share,
            evaluation.mean_confidence,
        )
    return evaluations, probabilities


def check_model_kept(register: bool, model_output: str | None) -> None:
    """ModelKeptNowhere when a job would neither register its model nor write it to a model output folder."""
    if not register and not model_output:
        raise ModelKeptNowhere("--no-register needs --model-output: the model would be kept nowhere")


def registers_in_mlflow(register: bool, model_output: str | None) -> bool:
    """Whether a training job logs and registers its model in MLflow (the tracking set up already): when asked to,
    and not on an Azure ML workspace. Inside an Azure ML job MLflow 3's log_model calls the logged-models API, which
    the workspace's tracking service has answered with 404: there the job's model output folder is the model, and
    `python -m cloud submit` registers it. ModelKeptNowhere when the model would then be kept nowhere."""
    check_model_kept(register, model_output)
    registers = register and not is_azure_workspace(mlflow.get_tracking_uri())
    if not registers and not model_output:
        raise ModelKeptNowhere(
            f"MLflow tracks to {mlflow.get_tracking_uri()}, where the model is not logged: give --model-output"
        )
    return registers


def save_model_output(folder: Path, model: keras.Model, example: np.ndarray, reference: Reference) -> Path:
    """The model as a job's model output: the MLflow model folder log_model would log (signature, input example,
    pinned requirements) with the version's monitoring reference beside MLmodel (REFERENCE_FILE), which an Azure ML
    deployment and the monitor job read; the active run is tagged with where it went."""
    signature, requirements = serving_signature(model, example)
    save_keras_model(folder, model, signature, example, requirements)
    save_reference(reference, folder / REFERENCE_FILE)
    mlflow.set_tag("model_output", str(folder))
    return folder


def serving_signature(model: keras.Model, example: np.ndarray) -> tuple[ModelSignature, list[str]]:
    """The model's MLflow signature on `example`, and the pinned packages it is served with."""
    signature = infer_signature(example, model.predict(example, verbose=0))
    return signature, [f"{package}=={version(package)}" for package in SERVING_REQUIREMENTS]


def register_challenger(model: keras.Model, example: np.ndarray, model_name: str) -> ModelInfo:
    """Log `model` to the active run, register it as a new version of `model_name` and alias it @challenger (the
    run is tagged with the version)."""
    signature, requirements = serving_signature(model, example)
    info = log_keras_model(model, signature, example, model_name, requirements)
    if info.registered_model_version:
        set_role(mlflow.MlflowClient(), model_name, CHALLENGER_ALIAS, str(info.registered_model_version))
        mlflow.set_tag("registered_version", str(info.registered_model_version))
    return info


def fit_cnn(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    validation: Digits,
    epochs: int,
    batch_size: int,
    run,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> float:
    """Fit with Keras' per-epoch progress and MLflow's per-epoch metrics on `run` (steps from `initial_epoch`, for
    a fit that continues an earlier one); the seconds it took (logged too, added to an earlier fit's)."""
    started = time.perf_counter()
    model.fit(
        batches(images, labels, batch_size, shuffle=True),
        validation_data=batches(validation.images, validation.labels, batch_size),
        initial_epoch=initial_epoch,
        epochs=initial_epoch + epochs,
        shuffle=False,  # the dataset comes in its own shuffled order; fit can only warn that it cannot shuffle one
        verbose=2,
        callbacks=[mlflow.keras.MlflowCallback(run), *callbacks],
    )
    seconds = time.perf_counter() - started
    earlier = mlflow.get_run(run.info.run_id).data.metrics.get("train_seconds", 0.0) if initial_epoch else 0.0
    mlflow.log_metric("train_seconds", earlier + seconds)
    return seconds


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False) -> tf.data.Dataset:
    """Model-input batches for `fit`: the batches Keras' own pipeline makes of arrays (a permutation, then each
    batch gathered by its indices), in the same order, with tf.data's autotuning off.

    Keras makes a new iterator every epoch. Destroying the last one waits for its autotuning thread, which sleeps
    for a period that doubles up to 60 s: epochs 2 onwards began after 17-77 s of an idle process, in about half
    the fits on this machine. Nothing here has a parallelism for autotuning to tune.
    Like Keras' (checked by a test), the permutation restarts with every iterator once a global seed is set: every
    epoch sees the same order. Kept so that runs stay the ones measured before; true reshuffling is a choice of
    its own (one run of each momentum: 99.46% and 99.47% final MNIST test accuracy against 99.57% and 99.56%).
    """
    count = len(images)

    def epoch_order(_):  # Keras' ops, in its order: the global seed gives the shuffle the same op seed
        order = tf.range(count, dtype=tf.int64)
        return tf.random.shuffle(order) if shuffle else order

    def gather(indices, arrays):
        return tuple(tf.gather(array, indices, axis=0) for array in arrays)

    order = tf.data.Dataset.range(1).map(epoch_order)
    batch_indices = order.flat_map(lambda indices: tf.data.Dataset.from_tensor_slices(indices).batch(batch_size))
    arrays = tf.data.Dataset.from_tensors((to_model_input(images), labels)).repeat()
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE  # as Keras sets it
    dataset = tf.data.Dataset.zip(batch_indices, arrays).map(gather)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))  # for fit's steps
    return dataset.prefetch(2).with_options(options)


def fit_model_reference(
    model: keras.Model, held_out: Digits, seed: int, served: np.ndarray | None = None, served_share: float = 0.0
) -> Reference:
    """The monitoring reference of `model`, fitted on held-out digits it never trained on, and with `served` images
    (never trained on either) standing for `served_share` of the traffic it serves when given."""
    with_embedding = embedding_model(model)
    probabilities, embeddings = with_embedding.predict(to_model_input(held_out.images), batch_size=512, verbose=0)
    served_images = None
    if served is not None and len(served):
        served_probabilities, served_embeddings = with_embedding.predict(to_model_input(served), batch_size=512, verbose=0)
        served_images = ServedImages(served, served_probabilities, served_embeddings, served_share)
    return fit_reference(held_out.images, held_out.labels, probabilities, embeddings, seed, served=served_images)


def embedding_model(model: keras.Model) -> keras.Model:
    """`model` answering its probabilities and its embedding layer's output."""
    return keras.Model(model.inputs, [model.output, model.get_layer(EMBEDDING_LAYER).output])


def log_served_graph(model: keras.Model, run_id: str) -> None:
    """Store the model as LiteRT runs it beside the reference: serving/model.tflite on its training run, exported by
    Keras (`format="litert"`), so that a server started with `--runtime litert` answers without TensorFlow."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / SERVED_GRAPH_FILE
        embedding_model(model).export(str(path), format="litert", verbose=False)
        mlflow.MlflowClient().log_artifact(run_id, str(path), SERVED_GRAPH_DIR)


def log_reference(reference: Reference, run_id: str) -> None:
    """Store the reference with the model: reference/reference.npz on its training run, plus two metrics."""
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as folder:
        client.log_artifact(run_id, str(save_reference(reference, Path(folder) / REFERENCE_FILE)), REFERENCE_ARTIFACT_DIR)
    client.log_metric(run_id, "reference_foreign_threshold", reference.threshold)
    client.log_metric(run_id, "reference_accuracy", float(reference.accuracy))


def reference_for_registered(model_uri: str, settings: Settings) -> tuple[str, Reference]:
    """Compute (again) the reference of a registered model (models:/name@alias or /version) from its run's validation split."""
    registered = resolve_registered(model_uri)
    params = mlflow.get_run(registered.run_id).data.params
    data_dir = Path(params["data_dir"]) if (Path(params["data_dir"]) / "mnist").is_dir() else settings.data_dir
    train = load_mnist(data_dir / "mnist", "train")
    _, held_out = split_train_validation(train, int(params["validation_size"]), int(params["seed"]), None)
    served, share = load_served_images(registered.run_id)
    reference = fit_model_reference(mlflow.keras.load_model(model_uri), held_out, int(params["seed"]), served, share)
    log_reference(reference, registered.run_id)
    return registered.run_id, reference


def log_served_images(run_id: str, images: np.ndarray, fingerprints: np.ndarray, share: float) -> None:
    """The served images a version's reference takes in, kept on its run (reference/served_images.npz) so that the
    reference can be computed again."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / SERVED_IMAGES_FILE
        np.savez_compressed(path, images=images, fingerprints=fingerprints.astype(str), share=np.array(share))
        mlflow.MlflowClient().log_artifact(run_id, str(path), REFERENCE_ARTIFACT_DIR)


def load_served_images(run_id: str) -> tuple[np.ndarray | None, float]:
    """(images, share) of the served images run `run_id`'s reference takes in; (None, 0.0) when it takes none."""
    names = {entry.path for entry in mlflow.MlflowClient().list_artifacts(run_id, REFERENCE_ARTIFACT_DIR)}
    if f"{REFERENCE_ARTIFACT_DIR}/{SERVED_IMAGES_FILE}" not in names:
        return None, 0.0
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{REFERENCE_ARTIFACT_DIR}/{SERVED_IMAGES_FILE}")
    with np.load(path) as stored:
        return stored["images"], float(stored["share"])


def _log_review_artifacts(test: Digits, probabilities: np.ndarray) -> None:
    """Confusion matrix (HTML and PNG) and the worst misclassified digits (MlflowCallback logs the summary)."""
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(test.labels, predicted)
    accuracy = float((predicted == test.labels).mean())
    title = f"MNIST test confusion matrix (accuracy {accuracy:.2%})"
    worst = worst_misclassified(probabilities, test.labels, 32)
    captions = [f"true {test.labels[i]} / pred {predicted[i]} ({probabilities[i].max():.2f})" for i in worst]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        log_files(
            [
                confusion_matrix_html(matrix, title, out / "confusion_matrix.html"),
                confusion_matrix_png(matrix, title, out / "confusion_matrix.png"),
                digit_grid_png(test.images[worst], captions, "Worst misclassified MNIST test digits", out / "misclassified.png"),
            ],
            "evaluation",
        )
