"""Stand-in pyfunc models for the serving tests, saved with MLflow's `loader_module` flavor: one fails on
all-white images, one stalls on all-black ones, one answers classes instead of probabilities. (A PythonModel
subclass without type hints makes MLflow print its type-hint advice, under a filter no test setting reaches.)"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import numpy as np


class StandIn:
    """What `mlflow.pyfunc.load_model` wraps: predict() on (N, 784) grey levels."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def predict(self, model_input: object, params: dict | None = None) -> np.ndarray:
        batch = np.asarray(model_input)
        if self.behaviour == "classes-only":
            return np.zeros(len(batch), dtype=int)
        if self.behaviour == "failing" and (batch == 255).all(axis=1).any():
            raise RuntimeError("all-white image")
        if self.behaviour == "slow" and (batch == 0).all(axis=1).any():
            time.sleep(3)
        return np.full((len(batch), 10), 0.1)


def _load_pyfunc(data_path: str) -> StandIn:
    """MLflow's loader_module entry point: the behaviour is the model's one data file."""
    return StandIn(Path(data_path).read_text().strip())


def save_stand_in(path: Path, behaviour: str) -> Path:
    """A real MLflow model folder at `path` whose model behaves as `behaviour` says."""
    data = path.parent / f"{path.name}-behaviour.txt"
    data.write_text(behaviour)
    mlflow.pyfunc.save_model(str(path), loader_module="tests.stand_in_models", data_path=str(data))
    return path
