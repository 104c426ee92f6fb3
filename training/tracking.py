"""Keras model logging for the training jobs (tracking set-up lives in common.tracking)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import mlflow
from mlflow.models import Model

log = logging.getLogger(__name__)

# MLflow samples CPU, memory, disk and network of a training run every this many seconds (system/* metrics)
SYSTEM_METRICS_SECONDS = 5.0


def start_training_run(run_name: str | None) -> mlflow.ActiveRun:
    """An MLflow run for a training job, with MLflow's system metrics logged beside the job's own."""
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    mlflow.set_system_metrics_samples_before_logging(1)
    return mlflow.start_run(run_name=run_name, log_system_metrics=True)


def _save_keras_with_example(path: str, **kwargs) -> None:
    # mlflow.keras.save_model writes the input example before it creates `path`
    # (FileNotFoundError .../input_example.json with MLflow 3.17): create it first.
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


# A flavor module for Model.log: mlflow.keras with the folder made first. Same MLmodel, same loaders.
KERAS_FLAVOR = SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_with_example)


def log_keras_model(model, signature, input_example, registered_model_name: str | None, pip_requirements: list[str]):
    """Log a Keras model with signature and input example (and register it); return the ModelInfo."""
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=KERAS_FLAVOR,
        registered_model_name=registered_model_name,
        model=model,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
    )


def save_keras_model(folder: Path, model, signature, input_example, pip_requirements: list[str]) -> Path:
    """The same MLflow model folder as log_keras_model logs, written to `folder` (new, or empty)."""
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: not empty; the model folder is written only into an empty or new folder")
    KERAS_FLAVOR.save_model(
        path=str(folder), model=model, signature=signature, input_example=input_example, pip_requirements=pip_requirements
    )
    return folder


def log_files(paths: list[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path)
