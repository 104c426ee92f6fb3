"""The monitored model version and its reference: from the registry (models:/...) or a reference file."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from common.reference import Reference, load_reference
from common.tracking import download_reference, resolve_registered
from monitoring.errors import MonitoringError


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str | None
    reference: Reference


def resolve_model(model_uri: str | None, reference_path: str | None, version: str | None, name: str) -> ModelRef:
    """The monitored model and its reference: from the registry (models:/name@alias) or a reference file."""
    if reference_path:
        if not version:
            raise MonitoringError("--reference needs --model-version: which version's records to monitor")
        try:
            return ModelRef(name, version, None, load_reference(reference_path))
        except (FileNotFoundError, ValueError) as err:
            raise MonitoringError(str(err)) from None
    try:
        found = resolve_registered(model_uri or "")
    except ValueError as err:
        raise MonitoringError(f"--model: {err}") from None
    except MlflowException as err:
        raise MonitoringError(f"{model_uri}: not in the model registry at {mlflow.get_tracking_uri()} ({err.message})") from None
    try:
        path = download_reference(found.run_id)
    except FileNotFoundError:
        raise MonitoringError(
            f"{found.name} version {found.version} has no monitoring reference (on run {found.run_id}); "
            f"create it with `python -m training reference --model {model_uri}`"
        ) from None
    return ModelRef(found.name, found.version, found.alias, load_reference(path))
