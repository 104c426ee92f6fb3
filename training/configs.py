"""What decides each training job, with each command-line option's help: the Keras job, the Spark job, a retrain.

Kept apart from the jobs so that `python -m training` builds its command line without importing TensorFlow or Spark."""

from __future__ import annotations

from dataclasses import dataclass

from common.cli import option
from common.settings import LOW_CONFIDENCE_THRESHOLD, MODEL_NAME
from common.spark import DEFAULT_SPARK_MASTER

FLOAT32 = "float32"
MIXED_BFLOAT16 = "mixed_bfloat16"  # Keras' policy: bfloat16 compute, float32 variables
AUTO = "auto"  # mixed_bfloat16 where the CPU computes bfloat16 natively, else float32
PRECISIONS = (AUTO, FLOAT32, MIXED_BFLOAT16)
SPARK_MODEL_NAME = "digits-spark"
REPLAY_SHARE = 0.25  # labeled images held out of training: the replay set promotion compares champion and challenger on

MODEL_OUTPUT_HELP = "also write the MLflow model folder (with reference.npz) here"
NO_REGISTER_HELP = (
    "keep the model only in --model-output: no MLflow logged model, no registration (an Azure ML job's output, which "
    "`python -m cloud submit` registers, a retrained one with its parent); implied when MLflow tracks to an azureml:// "
    "workspace"
)
RUN_NAME_HELP = "the MLflow run's name (default: MLflow's)"
FOREIGN_LIMIT_HELP = "evaluate on at most N foreign digits per class"


@dataclass(frozen=True, kw_only=True)
class KerasJobConfig:
    """Everything that decides a training run; logged as the run's parameters."""

    data_dir: str = option(help="datasets in their public layouts")
    epochs: int = option(8, "passes over the training split")
    batch_size: int = option(128, "images per gradient step")
    learning_rate: float = option(2e-3, "Adam's initial rate, cosine-decayed")
    batch_norm_momentum: float = 0.9
    # How the training step computes (the saved model is float32 with Keras' batch norm either way): bfloat16
    # convolutions and dense layers where the CPU has bfloat16 instructions, batch norm on TensorFlow's fused
    # kernel; together 1.6-1.7x the images/s of float32 with Keras' batch norm on this 2-core CPU (see
    # bench/results/README.md). The run logs the precision AUTO resolved to.
    precision: str = option(
        AUTO,
        "the training step's Keras dtype policy; auto: mixed_bfloat16 on a CPU with bfloat16 instructions, else float32; "
        "the registered model is float32 either way",
        choices=PRECISIONS,
    )
    fused_batch_norm: bool = option(
        True, "train with Keras' own batch norm instead of TensorFlow's fused kernel (same model, slower)"
    )
    validation_size: int = option(5000, "MNIST train images held out for validation and the monitoring reference")
    seed: int = option(42, "seed of the split, weights and augmentation")
    augment: bool = option(True, "train without random shifts and rotations")
    train_limit: int | None = option(None, "train on the first N shuffled images only")
    foreign_limit_per_class: int | None = option(None, FOREIGN_LIMIT_HELP)
    low_confidence_threshold: float = LOW_CONFIDENCE_THRESHOLD
    model_name: str = MODEL_NAME
    run_name: str | None = option(None, RUN_NAME_HELP)
    model_output: str | None = option(None, MODEL_OUTPUT_HELP)
    register: bool = option(True, NO_REGISTER_HELP)  # False: only the folder at model_output


@dataclass(frozen=True, kw_only=True)
class SparkJobConfig:
    """Everything that decides a Spark ML training run; logged as the run's parameters."""

    data_dir: str = option(help="datasets in their public layouts")
    classifier: str = option("mlp", "perceptron or logistic regression", choices=("mlp", "logistic"))
    pca_k: int = option(50, "PCA components fed to the classifier")
    hidden: int = option(256, "the perceptron's hidden units")
    max_iter: int = option(200, "optimiser iterations")
    seed: int = option(42, "seed of the split and the fit")
    validation_size: int = 5000
    train_limit: int | None = option(None, "train on the first N shuffled images only")
    foreign_limit_per_class: int | None = option(None, FOREIGN_LIMIT_HELP)
    spark_master: str = option(DEFAULT_SPARK_MASTER, "local[*] here, or a cluster's master URL")
    shared_dir: str | None = option(
        None,
        "a folder every Spark node reads; the training split is written there once as Parquet (default: .digitdrift/spark-data)",
    )
    model_name: str = SPARK_MODEL_NAME
    run_name: str | None = option(None, RUN_NAME_HELP)


@dataclass(frozen=True, kw_only=True)
class RetrainConfig:
    """Everything that decides a retraining run; logged as the run's parameters."""

    labels: str = option(help="label file, CSV or JSONL: request_id,image_index,label")
    prediction_log: str = option(
        help="where the labeled (flagged) images are: the SQLite prediction log, a Parquet export, or a prediction "
        "dataset (a folder, az://container/prefix, Azure ML's collector folder)"
    )
    parent: str = option(f"models:/{MODEL_NAME}@champion", "the version to start from")
    epochs: int = option(2, "passes over MNIST plus the labels")
    batch_size: int = 128
    learning_rate: float = option(5e-4, "Adam's initial rate")
    replay_share: float = option(REPLAY_SHARE, "labeled images held out of training for the replay comparison")
    augment: bool = option(True, "repeat the labeled images as they are (default: each repeat turned, scaled and moved a little)")
    self_training: bool = option(
        True, "no epoch on the incident's unlabeled images the model is sure of (default: one, when there are enough)"
    )
    train_limit: int | None = option(None, "train on the first N shuffled MNIST images only")
    foreign_limit_per_class: int | None = option(None, FOREIGN_LIMIT_HELP)
    low_confidence_threshold: float = LOW_CONFIDENCE_THRESHOLD
    run_name: str | None = option(None, RUN_NAME_HELP)
    data_dir: str | None = option(
        None, "datasets in their public layouts (default: the parent run's where it holds MNIST, else the settings' data folder)"
    )
    model_output: str | None = option(None, MODEL_OUTPUT_HELP)
    register: bool = option(True, NO_REGISTER_HELP)  # False: only the folder at model_output
