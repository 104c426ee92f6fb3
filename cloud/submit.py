"""Load digitdrift's Azure ML specs with the azure-ai-ml v2 SDK, resolve the workspace, and submit them."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from azure.ai.ml import (
    load_compute,
    load_data,
    load_environment,
    load_job,
    load_model,
    load_online_deployment,
    load_online_endpoint,
)
from azure.ai.ml.entities._load_functions import load_schedule  # the loader `az ml schedule create` uses

log = logging.getLogger(__name__)

SPECS = Path(__file__).parent / "specs"
LOADERS = {
    "environment": load_environment,
    "compute": load_compute,
    "data": load_data,
    "train-job": load_job,
    "model": load_model,
    "endpoint": load_online_endpoint,
    "deployment": load_online_deployment,
    "monitor-job": load_job,
    "monitor-schedule": load_schedule,
}
ACTIONS = {
    "train": ("environment", "compute", "data", "train-job"),
    "deploy": ("endpoint", "deployment"),
    "monitor": ("environment", "compute", "monitor-schedule"),
}
WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")


class CloudError(RuntimeError):
    """Something to fix before submitting; the message says what and how."""


@dataclass(frozen=True)
class Workspace:
    subscription_id: str
    resource_group: str
    workspace_name: str
    source: str  # where the values came from


def find_workspace(environ: dict[str, str], config_path: Path | None = None) -> Workspace:
    """Workspace values from AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME, else config.json."""
    values = [environ.get(name, "") for name in WORKSPACE_VARIABLES]
    if all(values):
        return Workspace(*values, source="environment")
    candidates = [config_path] if config_path else [Path("config.json"), Path(".azureml/config.json")]
    for candidate in candidates:
        if candidate and candidate.is_file():
            try:
                config = json.loads(candidate.read_text())
                return Workspace(config["subscription_id"], config["resource_group"], config["workspace_name"], str(candidate))
            except (ValueError, KeyError) as err:
                raise CloudError(
                    f"{candidate}: expected JSON with subscription_id, resource_group and workspace_name "
                    f"(as the Azure ML studio's 'Download config.json' gives); {type(err).__name__}: {err}"
                ) from None
    missing = [name for name, value in zip(WORKSPACE_VARIABLES, values) if not value]
    raise CloudError(
        f"no Azure ML workspace given: set {', '.join(missing)} or put the workspace's config.json "
        f"(Azure ML studio > workspace > Download config.json) in {' or '.join(str(c) for c in candidates)}"
    )


def load_specs(action: str) -> dict[str, object]:
    """The action's specs, each loaded and validated by the SDK's own loader (offline)."""
    specs = {}
    for name in ACTIONS[action]:
        path = SPECS / f"{name}.yaml"
        try:
            specs[name] = LOADERS[name](path)
        except Exception as err:  # the SDK raises several validation types; all mean the spec is wrong
            raise CloudError(f"{path}: the Azure ML SDK rejects this spec: {err}") from None
    return specs


def resolved_yaml(specs: dict[str, object], workspace: Workspace | None) -> str:
    """The specs as the SDK resolved them, as YAML documents, with the workspace they would go to."""
    target = (
        (
            f"# workspace: {workspace.workspace_name} (resource group {workspace.resource_group}, subscription "
            f"{workspace.subscription_id}; from {workspace.source})"
        )
        if workspace
        else "# workspace: not set"
    )
    documents = [target]
    for name, entity in specs.items():
        buffer = io.StringIO()
        entity.dump(buffer)
        documents.append(f"# {name}\n{buffer.getvalue()}")
    return "\n---\n".join(documents)


def submit(action: str, specs: dict[str, object], workspace: Workspace, stream: bool = True) -> str:
    """Create or update the specs in the workspace; for training, stream the job's logs and register its model."""
    from azure.ai.ml import MLClient
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
    from azure.identity import CredentialUnavailableError, DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), workspace.subscription_id, workspace.resource_group, workspace.workspace_name)
    try:
        if action == "train":
            client.environments.create_or_update(specs["environment"])
            client.compute.begin_create_or_update(specs["compute"]).result()
            client.data.create_or_update(specs["data"])
            job = client.jobs.create_or_update(specs["train-job"])
            log.info("submitted job %s: %s", job.name, job.studio_url)
            if stream:
                client.jobs.stream(job.name)
            model = load_model(SPECS / "model.yaml")
            model.path = f"azureml://jobs/{job.name}/outputs/model"
            registered = client.models.create_or_update(model)
            return f"job {job.name} done; registered {registered.name} version {registered.version}"
        if action == "deploy":
            endpoint = client.online_endpoints.begin_create_or_update(specs["endpoint"]).result()
            deployment = client.online_deployments.begin_create_or_update(specs["deployment"]).result()
            endpoint.traffic = {deployment.name: 100}
            client.online_endpoints.begin_create_or_update(endpoint).result()
            return f"endpoint {endpoint.name}: {endpoint.scoring_uri} (deployment {deployment.name} takes all traffic)"
        client.environments.create_or_update(specs["environment"])
        client.compute.begin_create_or_update(specs["compute"]).result()
        schedule = client.schedules.begin_create_or_update(specs["monitor-schedule"]).result()
        return f"schedule {schedule.name}: {schedule.trigger.expression} ({schedule.trigger.time_zone})"
    except (ClientAuthenticationError, CredentialUnavailableError) as err:
        raise CloudError(
            f"no usable Azure credentials ({type(err).__name__}): run `az login`, or set AZURE_CLIENT_ID, "
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal"
        ) from None
    except HttpResponseError as err:
        raise CloudError(f"Azure ML refused the request: {err.message}") from None
