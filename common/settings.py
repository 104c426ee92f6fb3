"""Paths and settings with embedded defaults, each overridable by an environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

MODEL_NAME = "digits-cnn"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
# Top probability under this marks a prediction as low confidence (the original demo's 0.9).
LOW_CONFIDENCE_THRESHOLD = 0.9
# The monitoring reference is an artifact of the model version's training run: reference/reference.npz.
REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.npz"
# The model as LiteRT runs it (Keras' own export, probabilities and embeddings), on the training run
SERVED_GRAPH_DIR = "serving"
SERVED_GRAPH_FILE = "model.tflite"
# MNIST test accuracy a challenger must reach before `promote` makes it the champion.
PROMOTION_MIN_ACCURACY = 0.99
# a retrained challenger needs this many labeled images held out to be compared with its parent at all
PROMOTION_MIN_REPLAY_IMAGES = 5


@dataclass(frozen=True)
class RegistryRef:
    """A registered model as a `models:/` URI names it: by alias (name@alias) or by version (name/3)."""

    name: str
    alias: str | None
    version: str | None


def parse_registry_uri(uri: str) -> RegistryRef:
    """`models:/digits-cnn@champion` or `models:/digits-cnn/3` as its parts; anything else is a ValueError."""
    reference = uri.removeprefix("models:/").rstrip("/") if uri.startswith("models:/") else ""
    name, _, alias = reference.partition("@")
    if not alias:
        name, _, version = reference.partition("/")
    if not name or not (alias or version):
        raise ValueError(f"{uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return RegistryRef(name, alias or None, None if alias else version)


@dataclass(frozen=True)
class Settings:
    """Where digitdrift keeps its state; built from the environment by `load_settings`."""

    state_dir: Path
    data_dir: Path
    mirror: str | None
    tracking_uri: str
    experiment: str

    @property
    def artifact_root(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def experiment_artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts: under the state folder with the embedded SQLite
        store (not MLflow's cwd-relative ./mlruns); a tracking server decides for itself (None)."""
        return self.artifact_root.as_uri() if self.tracking_uri.startswith("sqlite:///") else None


def default_mirror() -> str | None:
    """The read-only mirror beside the checkout (`../shared/data`) when it exists."""
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return str(candidate) if candidate.is_dir() else None


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: the process environment) over the embedded defaults."""
    env = os.environ if environ is None else environ
    state_dir = Path(env.get("DIGITDRIFT_HOME", PROJECT_ROOT / ".digitdrift")).resolve()
    data_dir = Path(env.get("DIGITDRIFT_DATA", state_dir / "data")).resolve()
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir / 'mlflow.db'}"
    return Settings(
        state_dir=state_dir,
        data_dir=data_dir,
        mirror=env.get("DIGITDRIFT_MIRROR") or default_mirror(),
        tracking_uri=tracking_uri,
        experiment=env.get("MLFLOW_EXPERIMENT_NAME", "digitdrift"),
    )
