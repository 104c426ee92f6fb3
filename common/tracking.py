"""The one home of MLflow plumbing: tracking set-up, registry look-ups, and a model version's reference."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import mlflow.data
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.exceptions import MlflowException

from common.datasets import Digits
from common.settings import REFERENCE_ARTIFACT_DIR, REFERENCE_FILE, Settings, parse_registry_uri

log = logging.getLogger(__name__)

# An MLflow 3 UI that reads the experiment's kind opens this one on its runs table, not on the GenAI overview of
# traces. MLflow 3.17's UI reads its workflow selector first (GenAI by default): the demo's link sets it with
# ?workflowType=machine_learning.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A model version's role (champion, challenger) as a tag, beside the alias of the same name: Azure ML's MLflow
# registry documents versions, tags and `latest`, not aliases, so there the tag is what names the champion.
ROLE_TAG = "digitdrift_role"
# On a retrained version and its run: the version it was retrained from (its lineage, which a version registered
# from an Azure ML job's output carries too)
PARENT_VERSION_TAG = "digitdrift.parent_version"
AZURE_TRACKING_SCHEME = "azureml:"  # an Azure ML workspace's MLflow tracking URI (needs the azureml-mlflow plugin)


def is_azure_workspace(tracking_uri: str) -> bool:
    """Whether MLflow tracks to an Azure ML workspace (its `azureml://` URI), whose registry has no aliases and whose
    tracking service has answered MLflow 3's logged-models calls with 404."""
    return tracking_uri.startswith(AZURE_TRACKING_SCHEME)


def unreachable_tracking(err: Exception) -> str | None:
    """One line naming the tracking server MLflow could not reach, when that is what `err` is; else None."""
    message = str(err)
    # MLflow's REST client words every request that never got an answer (refused, timed out, DNS) this way
    if not isinstance(err, MlflowException) or " failed with exception " not in message:
        return None
    request, cause = message.split(" failed with exception ", 1)
    url = urlsplit(request.removeprefix("API request to ").strip())
    cause = cause.split("(Caused by ", 1)[-1].rstrip(")")
    return (
        f"the MLflow tracking server at {url.scheme}://{url.netloc} did not answer ({cause[:200]}): start it, or point "
        "MLFLOW_TRACKING_URI at one that runs"
    )


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and experiment (creating both when new); return the experiment id."""
    if settings.tracking_uri.startswith("sqlite:///"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = mlflow.create_experiment(
            settings.experiment, settings.experiment_artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    if experiment is not None and experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version as a `models:/` URI resolves today."""

    name: str
    version: str
    alias: str | None
    run_id: str


def resolve_registered(model_uri: str) -> RegisteredVersion:
    """`models:/name@alias` or `models:/name/3` to the version it names now.

    A malformed URI is a ValueError; a name, alias or version the registry lacks an MlflowException.
    """
    ref = parse_registry_uri(model_uri)
    client = mlflow.MlflowClient()
    found = version_by_role(client, ref.name, ref.alias) if ref.alias else client.get_model_version(ref.name, ref.version)
    return RegisteredVersion(ref.name, str(found.version), ref.alias, found.run_id)


def newest_with_role(versions: Iterable[tuple[str, dict[str, str]]], role: str) -> str | None:
    """The newest of (version, tags) pairs whose ROLE_TAG is `role`; None when none is."""
    tagged = [int(version) for version, tags in versions if (tags or {}).get(ROLE_TAG) == role]
    return str(max(tagged)) if tagged else None


def version_by_role(client: mlflow.MlflowClient, name: str, role: str):
    """The version alias `role` names; where the registry has no such alias (Azure ML's has no aliases at all), the
    newest version tagged ROLE_TAG=`role`. Neither: the alias look-up's MlflowException."""
    try:
        return client.get_model_version_by_alias(name, role)
    except MlflowException as err:
        missing = err
    versions = client.search_model_versions(f"name='{name}'")
    chosen = newest_with_role(((str(version.version), version.tags) for version in versions), role)
    if chosen is None:
        raise missing
    log.info("%s has no alias @%s here; version %s carries the tag %s=%s", name, role, chosen, ROLE_TAG, role)
    return client.get_model_version(name, chosen)


def set_role(client: mlflow.MlflowClient, name: str, role: str, version: str) -> bool:
    """Give `version` the role `role`: the tag always (taken from any other version that had it), the alias where
    the registry has aliases. Returns whether the alias was set."""
    for other in client.search_model_versions(f"name='{name}'"):
        if str(other.version) != str(version) and (other.tags or {}).get(ROLE_TAG) == role:
            client.delete_model_version_tag(name, str(other.version), ROLE_TAG)
    client.set_model_version_tag(name, str(version), ROLE_TAG, role)
    try:
        client.set_registered_model_alias(name, role, str(version))
    except MlflowException as err:  # Azure ML's registry: no aliases; the tag names the role
        log.warning("%s: alias @%s not set (%s); the tag %s names version %s", name, role, err.message, ROLE_TAG, version)
        return False
    return True


def download_reference(run_id: str) -> Path:
    """The monitoring reference (reference/reference.npz) logged on a training run, downloaded to a local file.

    A run without one is a FileNotFoundError naming the run and the command that creates it.
    """
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}")
        )
    except (OSError, MlflowException):
        raise FileNotFoundError(
            f"run {run_id} has no monitoring reference ({REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}); "
            "create it with `python -m training reference --model models:/<name>/<version>`"
        ) from None


def log_digit_sets(sets: dict[str, tuple[Digits, str]], source: str) -> None:
    """Each named set of digits, with its context (training, validation, evaluation), as an MLflow dataset input
    of the active run: its digest, shape and source show on the run in the UI; the pixels are not copied."""
    for name, (digits, context) in sets.items():
        features = digits.images.reshape(len(digits), -1)
        dataset = mlflow.data.from_numpy(features, targets=digits.labels, source=dataset_source(source), name=name)
        mlflow.log_input(dataset, context=context)


def log_frame_input(frame: pd.DataFrame, source: str, name: str, context: str) -> None:
    """A table (a traffic plan, a label set) as an MLflow dataset input of the active run, its source a local path."""
    with warnings.catch_warnings():
        # MLflow hints, when it infers the schema to log, that integer columns cannot hold missing values; ours never miss one
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
        mlflow.log_input(mlflow.data.from_pandas(frame, source=dataset_source(source), name=name), context=context)


def dataset_source(location: str) -> DatasetSource:
    """The MLflow dataset source of a local path or URI, as the dataset inputs of a run record it."""
    with warnings.catch_warnings():
        # MLflow registers its local artifact repository under two schemes ('' and 'file'), so a local path matches
        # two identical LocalArtifactDatasetSource classes and MLflow warns that it picks one; both are the same.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways", UserWarning)
        return resolve_dataset_source(location)


def describe_run(text: str) -> None:
    """The active run's description in the MLflow UI."""
    mlflow.set_tag("mlflow.note.content", text)
