"""Load digitdrift's Azure ML specs with the azure-ai-ml v2 SDK, plan what to create in the workspace, and do it.

The decisions are pure functions over values read from the workspace (`plan_*`, returning `Call`s: which SDK
operation, on which entity, in which order); `execute` is the only place that calls the workspace, so a test
checks a plan without one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from azure.ai.ml import (
    load_component,
    load_compute,
    load_data,
    load_environment,
    load_job,
    load_model,
    load_online_deployment,
    load_online_endpoint,
)
from azure.ai.ml.entities._load_functions import load_schedule  # the loader `az ml schedule create` uses

from common.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS, MODEL_NAME, parse_registry_uri
from common.tracking import PARENT_VERSION_TAG, ROLE_TAG, newest_with_role

log = logging.getLogger(__name__)

SPECS = Path(__file__).parent / "specs"
SPEC_FILES = {
    "environment": "environment.yaml",
    "compute": "compute.yaml",
    "data": "data.yaml",
    "train-job": "train-job.yaml",
    "retrain-job": "retrain-job.yaml",
    "model": "model.yaml",
    "endpoint": "endpoint.yaml",
    "deployment": "deployment.yaml",
    "monitor-job": "monitor-job.yaml",
    "monitor-schedule": "monitor-schedule.yaml",
    "window-signal": "components/window-metrics-signal.yaml",
    "monitor-azure": "monitor-azure.yaml",
}
LOADERS = {
    "environment": load_environment,
    "compute": load_compute,
    "data": load_data,
    "train-job": load_job,
    "retrain-job": load_job,
    "model": load_model,
    "endpoint": load_online_endpoint,
    "deployment": load_online_deployment,
    "monitor-job": load_job,
    "monitor-schedule": load_schedule,
    "window-signal": load_component,
    "monitor-azure": load_schedule,
}
ACTIONS = {
    "train": ("environment", "compute", "data", "train-job", "model"),
    "retrain": ("environment", "compute", "retrain-job", "model"),
    "register": ("model",),
    "deploy": ("environment", "endpoint", "deployment"),
    "monitor": ("environment", "compute", "monitor-schedule", "window-signal", "monitor-azure"),
}
WORKSPACE_VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
SLOTS = ("blue", "green")  # the two deployments of blue/green: the new model goes to the one without traffic
COMPLETED = "Completed"
METRIC_TAGS = ("mnist_test_accuracy", "reference_accuracy", "reference_foreign_threshold")  # copied onto the version
SMOKE_REQUEST = SPECS / "smoke-request.json"
COLLECTOR_ROOT = "azureml://datastores/workspaceblobstore/paths/modelDataCollector/"  # Azure's data collector writes here
ENDPOINT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")  # Azure's rule: 3-32 characters


class CloudError(RuntimeError):
    """Something to fix before submitting, or the workspace's refusal; the message says what and how."""


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


def load_specs(action: str) -> dict[str, Any]:
    """The action's specs, each loaded and validated by the SDK's own loader (offline)."""
    return {name: load_spec(name) for name in ACTIONS[action]}


def load_spec(name: str) -> Any:
    path = SPECS / SPEC_FILES[name]
    try:
        return LOADERS[name](path)
    except Exception as err:  # the SDK raises several validation types; all mean the spec is wrong
        raise CloudError(f"{path}: the Azure ML SDK rejects this spec: {one_line(err)}") from None


def rest_body(entity: Any, location: str = "westeurope") -> dict:
    """The body the SDK would send for `entity` (what `create_or_update` serializes), as a dict.

    Loading a spec is not validating it: azure-ai-ml refuses some loaded specs only here (a schedule of a command job)."""
    if hasattr(entity, "_to_job"):  # a command node, as load_job gives for a command spec: the job it submits
        entity = entity._to_job()
    if hasattr(entity, "_to_rest_online_endpoint"):
        body = entity._to_rest_online_endpoint(location)
    elif type(entity).__name__.endswith("OnlineDeployment"):
        body = entity._to_rest_object(location)
    else:
        body = entity._to_rest_object()
    if hasattr(body, "as_dict"):
        return body.as_dict()
    return body.serialize() if hasattr(body, "serialize") else dict(body)


def resolved_yaml(specs: dict[str, Any], workspace: Workspace | None) -> str:
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


# ---- pure decisions ------------------------------------------------------------------------------------------


def one_line(err: BaseException) -> str:
    """An SDK error as one line: its message's first non-empty line (the SDK's own are pages long)."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), type(err).__name__)
    return first if len(first) <= 300 else first[:297] + "..."


def environment_version(conda_text: str, image: str) -> str:
    """The environment's version: a digest of what builds it, so a changed conda.yaml is a new version and the
    same one is found again (Azure refuses to change an environment version in place)."""
    return hashlib.sha256(f"{image}\n{conda_text}".encode()).hexdigest()[:16]


def endpoint_name(workspace: Workspace, override: str | None = None) -> str:
    """The endpoint's name, unique in its region as Azure requires: `override` when given (checked against Azure's
    naming rule), else digitdrift- and a digest of the workspace."""
    if override:
        if not ENDPOINT_NAME.fullmatch(override):
            raise CloudError(
                f"--endpoint-name {override!r}: an endpoint name is 3-32 letters, digits and hyphens, starting with a "
                "letter and not ending with a hyphen"
            )
        return override
    digest = hashlib.sha256(f"{workspace.subscription_id}/{workspace.resource_group}/{workspace.workspace_name}".encode())
    return f"digitdrift-{digest.hexdigest()[:8]}"


def model_reference(model: str | None) -> tuple[str, str] | None:
    """(name, version) of a deployment's model: `azureml:name:version` or the ARM id `.../models/name/versions/v`."""
    if not model:
        return None
    arm = re.search(r"/models/([^/]+)/versions/([^/]+)$", model)
    if arm:
        return arm.group(1), arm.group(2)
    short = re.fullmatch(r"(?:azureml:)?([^:@/]+):([^:@/]+)", model)
    return (short.group(1), short.group(2)) if short else None


def registered_tags(job_name: str, metrics: dict[str, float], parent_version: str | None = None) -> dict[str, str]:
    """The tags a model version registered from a training job carries: its role, its job, its metrics and, from a
    retrain job, the version it was retrained from (the lineage `training retrain` follows back to what the
    ancestors trained on)."""
    tags = {ROLE_TAG: CHALLENGER_ALIAS, "job": job_name}
    tags.update({name: f"{metrics[name]:.6f}" for name in METRIC_TAGS if name in metrics})
    if parent_version is not None:
        tags[PARENT_VERSION_TAG] = str(parent_version)
    return tags


def parent_version_of(run_tags: dict[str, str], job_inputs: dict[str, Any]) -> str | None:
    """The version a job retrained from: its run's lineage tag; where the run could not be read, the job's `parent`
    input when it names a version (`models:/name/N`); None for a job trained from scratch."""
    if run_tags.get(PARENT_VERSION_TAG):
        return str(run_tags[PARENT_VERSION_TAG])
    parent = job_inputs.get("parent")
    if not isinstance(parent, str):
        return None
    try:
        return parse_registry_uri(parent).version
    except ValueError:
        return None


def collector_folder(endpoint: str, slot: str) -> str:
    """Where Azure ML's data collector writes the model outputs (the records, flagged images kept) of a deployment."""
    return f"{COLLECTOR_ROOT}{endpoint}/{slot}/model_outputs"


def live_slot(traffic: dict[str, int]) -> str | None:
    """The deployment that takes the most traffic; None when none takes any."""
    carrying = {name: share for name, share in (traffic or {}).items() if share > 0}
    return max(carrying, key=carrying.get) if carrying else None


def next_slot(traffic: dict[str, int]) -> str:
    """Where a new model goes: the blue/green slot not taking traffic."""
    live = live_slot(traffic)
    return next(slot for slot in SLOTS if slot != live)


@dataclass(frozen=True)
class Call:
    """One SDK call of a plan: `operation` is `<operations group>.<method>` on MLClient, `arguments` its keywords."""

    operation: str
    arguments: dict[str, Any]
    why: str
    check: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DeployState:
    """What deploying reads from the workspace first."""

    environment_exists: bool
    endpoint_exists: bool
    traffic: dict[str, int]
    versions: list[tuple[str, dict[str, str]]]  # the model's registered versions with their tags


def champion_of(versions: Iterable[tuple[str, dict[str, str]]]) -> str:
    """The version tagged as the champion; none is a CloudError saying how to promote one."""
    version = newest_with_role(versions, CHAMPION_ALIAS)
    if version is None:
        raise CloudError(
            f"no version of {MODEL_NAME} is tagged {ROLE_TAG}={CHAMPION_ALIAS}: promote one first "
            "(MLFLOW_TRACKING_URI=<the workspace's azureml:// URI> python -m training promote)"
        )
    return version


def check_smoke_answer(answer: Any, version: str) -> None:
    """A deployment's answer to the smoke request: one prediction, by `version`; else a CloudError naming the answer."""
    try:
        body = json.loads(answer) if isinstance(answer, str | bytes) else answer
        if isinstance(body, str):  # the endpoint's JSON can arrive JSON-encoded once more
            body = json.loads(body)
        ok = len(body["predictions"]) == 1 and str(body["model"]["version"]) == version
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CloudError(
            f"the new deployment failed its smoke test (one prediction by version {version}): it answered {str(answer)[:200]!r}"
        )


def plan_deploy(state: DeployState, specs: dict[str, Any], endpoint: str, environment_id: str) -> list[Call]:
    """Blue/green: the champion's version to the slot without traffic at 0%, a smoke test, then all traffic to it.
    The previous deployment stays, with 0%, for a rollback by traffic alone."""
    version = champion_of(state.versions)
    slot = next_slot(state.traffic)
    live = live_slot(state.traffic)
    calls = []
    if not state.environment_exists:
        calls.append(Call("environments.create_or_update", {"environment": specs["environment"]}, "the environment is new"))
    if not state.endpoint_exists:
        new_endpoint = replace_entity(specs["endpoint"], name=endpoint)
        calls.append(Call("online_endpoints.begin_create_or_update", {"endpoint": new_endpoint}, "the endpoint is new"))
    deployment = replace_entity(
        specs["deployment"],
        name=slot,
        endpoint_name=endpoint,
        model=f"azureml:{MODEL_NAME}:{version}",
        environment=environment_id,
        environment_variables={
            **(specs["deployment"].environment_variables or {}),
            "DIGITDRIFT_MODEL_NAME": MODEL_NAME,
            "DIGITDRIFT_MODEL_VERSION": version,
        },
    )
    calls.append(
        Call(
            "online_deployments.begin_create_or_update",
            {"deployment": deployment},
            f"{MODEL_NAME} version {version} (the champion) to {slot}, which takes no traffic",
        )
    )
    calls.append(
        Call(
            "online_endpoints.invoke",
            {"endpoint_name": endpoint, "deployment_name": slot, "request_file": str(SMOKE_REQUEST)},
            f"smoke test of {slot} before it takes traffic",
            check=partial(check_smoke_answer, version=version),
        )
    )
    traffic = {slot: 100, **({live: 0} if live else {})}
    switched = replace_entity(specs["endpoint"], name=endpoint, traffic=traffic)
    calls.append(
        Call(
            "online_endpoints.begin_create_or_update",
            {"endpoint": switched},
            f"all traffic to {slot}" + (f"; {live} kept at 0% for a rollback" if live else ""),
        )
    )
    return calls


def plan_register(
    job_name: str,
    status: str,
    versions: list[tuple[str, dict[str, str]]],
    model_spec: Any,
    metrics: dict,
    parent_version: str | None = None,
) -> list[Call]:
    """Register a training (or retrain) job's model output once, and only from a completed job; a retrained one
    tagged with its parent version."""
    if status != COMPLETED:
        raise CloudError(
            f"job {job_name} is {status}, not {COMPLETED}: nothing registered; once it has completed, run "
            f"`python -m cloud submit register --job {job_name}`"
        )
    done = [version for version, tags in versions if (tags or {}).get("job") == job_name]
    if done:
        log.info("job %s's model is already %s version %s", job_name, MODEL_NAME, done[0])
        return []
    tags = registered_tags(job_name, metrics, parent_version)
    model = replace_entity(model_spec, path=f"azureml://jobs/{job_name}/outputs/model", tags=tags)
    retrained = f" (retrained from version {parent_version})" if parent_version is not None else ""
    return [Call("models.create_or_update", {"model": model}, f"{MODEL_NAME} from job {job_name}{retrained}, as the challenger")]


def load_job_with(name: str, values: dict[str, str]) -> Any:
    """A job spec loaded by the SDK with `values` set on it, as `az ml job create --set path=value` gives it."""
    return load_job(SPECS / SPEC_FILES[name], params_override=[{path: value} for path, value in values.items()])


def plan_retrain(labels: str, parent_version: str, predictions: str, environment_id: str) -> list[Call]:
    """The retrain job: version `parent_version` fine-tuned on the images `labels` (an absolute local path, which the
    SDK uploads, or a datastore URI) labels in the collector folder `predictions`."""
    if not str(parent_version).isdigit():
        raise CloudError(
            f"--parent {parent_version!r}: a version number of {MODEL_NAME} (Azure's registry has no aliases to name one by)"
        )
    if "://" not in labels and not Path(labels).is_absolute():
        raise CloudError(f"labels {labels!r}: give an absolute path (the SDK would look for a relative one beside the spec)")
    overrides = {"inputs.labels.path": labels, "inputs.parent": f"models:/{MODEL_NAME}/{parent_version}"}
    job = load_job_with("retrain-job", {**overrides, "inputs.predictions.path": predictions})
    job.environment = environment_id
    why = f"the retrain job: {MODEL_NAME} version {parent_version} on the labels in {Path(labels).name}"
    return [Call("jobs.create_or_update", {"job": job}, why)]


def plan_monitor(specs: dict[str, Any], endpoint: str, slot: str, version: str, environment_id: str) -> list[Call]:
    """Both monitors of the deployment `slot` serving `version`: ours (a pipeline on a daily schedule, its watermark
    keyed by a dataset id that stays when Azure mounts the data at a new path) and Azure's own."""
    collected = collector_folder(endpoint, slot)
    # the pipeline's inputs are bound to its steps, so they are set at load
    overrides = {"inputs.predictions.path": collected, "inputs.model.path": f"azureml:{MODEL_NAME}:{version}"}
    overrides |= {"inputs.model_version": version, "inputs.dataset_id": f"{endpoint}/{slot}/model_outputs"}
    job = load_job_with("monitor-job", overrides)
    for step in job.jobs.values():
        step.environment = environment_id
    schedule = replace_entity(specs["monitor-schedule"], create_job=job)
    component = replace_entity(specs["window-signal"], environment=environment_id)
    azure = copy.deepcopy(specs["monitor-azure"])  # its signals' inputs are changed in place below
    azure.create_monitor.monitoring_target.endpoint_deployment_id = f"azureml:{endpoint}:{slot}"
    for signal in azure.create_monitor.monitoring_signals.values():
        data_inputs = [*(getattr(signal, "inputs", None) or {}).values()]
        data_inputs += [data.input_data for data in (getattr(signal, "input_data", None) or {}).values()]
        for data in data_inputs:
            if str(getattr(data, "path", "")).startswith(COLLECTOR_ROOT):
                data.path = collected
    return [
        Call(
            "schedules.begin_create_or_update",
            {"schedule": schedule},
            f"digitdrift's daily monitor of {slot} (version {version})",
        ),
        Call("components.create_or_update", {"component": component}, "the custom signal's component"),
        Call("schedules.begin_create_or_update", {"schedule": azure}, f"Azure ML's model monitor of {slot}"),
    ]


def replace_entity(entity: Any, **changes: Any) -> Any:
    """A shallow copy of an SDK entity with some attributes replaced (the loaded spec stays as it was)."""
    changed = copy.copy(entity)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


# ---- the workspace -------------------------------------------------------------------------------------------


def execute(client: Any, calls: list[Call]) -> list[Any]:
    """Make the plan's calls in order, waiting for each long-running one; the first failure stops the plan."""
    results = []
    for call in calls:
        group, method = call.operation.split(".")
        log.info("%s: %s", call.operation, call.why)
        result = getattr(getattr(client, group), method)(**call.arguments)
        if hasattr(result, "result") and callable(result.result):
            result = result.result()
        if call.check is not None:
            call.check(result)
        results.append(result)
    return results


def ml_client(workspace: Workspace):
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), workspace.subscription_id, workspace.resource_group, workspace.workspace_name)


def versioned_environment(client: Any, spec: Any) -> tuple[Any, bool]:
    """The environment spec at its content version, and whether the workspace already has that version."""
    from azure.core.exceptions import ResourceNotFoundError

    conda_text = json.dumps(spec.conda_file, sort_keys=True)
    environment = replace_entity(spec, version=environment_version(conda_text, spec.image or ""))
    try:
        client.environments.get(environment.name, environment.version)
        return environment, True
    except ResourceNotFoundError:
        return environment, False


def model_versions(client: Any) -> list[tuple[str, dict[str, str]]]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return [(str(model.version), dict(model.tags or {})) for model in client.models.list(name=MODEL_NAME)]
    except ResourceNotFoundError:
        return []


def job_run(client: Any, job_name: str) -> tuple[dict[str, float], dict[str, str]]:
    """The training run's metrics and tags from the workspace's MLflow (the job is the run); empty when they cannot
    be read."""
    try:
        import mlflow

        mlflow.set_tracking_uri(client.workspaces.get(client.workspace_name).mlflow_tracking_uri)
        data = mlflow.get_run(job_name).data
        return dict(data.metrics), dict(data.tags)
    except Exception as err:  # the metric tags are a convenience: registration goes on without them
        log.warning("run of job %s not read (%s): the version is registered without its metrics", job_name, one_line(err))
        return {}, {}


def submit(
    action: str,
    specs: dict[str, Any],
    workspace: Workspace,
    stream: bool = True,
    job: str | None = None,
    endpoint: str | None = None,
    retrain: RetrainRequest | None = None,
) -> str:
    """Create what the action needs in the workspace; a refusal or missing credentials is a one-line CloudError."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError
    from azure.identity import CredentialUnavailableError

    try:
        client = ml_client(workspace)
        return _submit(client, action, specs, workspace, stream, job, endpoint, retrain)
    except (ClientAuthenticationError, CredentialUnavailableError) as err:
        raise CloudError(
            f"no usable Azure credentials ({type(err).__name__}): run `az login`, or set AZURE_CLIENT_ID, "
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal"
        ) from None
    except AzureError as err:
        raise CloudError(f"Azure ML refused the request: {one_line(err)}") from None
    except CloudError:
        raise
    except Exception as err:  # the SDK's own validation and upload errors: one line, not its pages
        raise CloudError(f"{action}: {type(err).__name__}: {one_line(err)}") from None


@dataclass(frozen=True)
class RetrainRequest:
    """What `submit retrain` is given: the label file, and overrides of the parent version and the collector folder."""

    labels: Path
    parent_version: str | None = None  # default: the champion
    predictions: str | None = None  # default: the collector folder of the deployment that takes the traffic


def _retrain_inputs(client: Any, retrain: RetrainRequest | None, endpoint: str) -> tuple[str, str, str]:
    """The retrain job's label file, parent version and collector folder, with what it reads from the workspace
    (the champion, the live deployment); checked before anything is created."""
    if retrain is None:
        raise CloudError("retrain needs --labels PATH: the label file (CSV or JSONL: request_id,image_index,label)")
    labels = retrain.labels.expanduser().resolve()
    if not labels.is_file():
        raise CloudError(f"--labels {retrain.labels}: no label file here")
    parent = retrain.parent_version or champion_of(model_versions(client))
    predictions = retrain.predictions
    if predictions is None:
        slot = live_slot(dict(client.online_endpoints.get(endpoint).traffic or {}))
        if slot is None:
            raise CloudError(
                f"endpoint {endpoint} sends no traffic to any deployment: give --predictions (the collector folder "
                "the labeled images are in) or deploy first"
            )
        predictions = collector_folder(endpoint, slot)
    return str(labels), parent, predictions


def _submit(
    client: Any,
    action: str,
    specs: dict[str, Any],
    workspace: Workspace,
    stream: bool,
    job: str | None,
    endpoint: str | None,
    retrain: RetrainRequest | None = None,
) -> str:
    if action == "register":
        if not job:
            raise CloudError("register needs --job NAME: the training or retrain job whose model output to register")
        found = client.jobs.get(job)
        metrics, tags = job_run(client, job)
        parent = parent_version_of(tags, dict(found.inputs or {}))
        calls = plan_register(job, found.status, model_versions(client), specs["model"], metrics, parent)
        results = execute(client, calls)
        return (
            f"registered {MODEL_NAME} version {results[0].version} from job {job}"
            if results
            else f"job {job}: already registered"
        )
    name = endpoint_name(workspace, endpoint)
    retrain_inputs = _retrain_inputs(client, retrain, name) if action == "retrain" else None
    environment, exists = versioned_environment(client, specs["environment"])
    environment_id = f"azureml:{environment.name}:{environment.version}"
    if action in ("train", "retrain", "monitor"):
        setup = [] if exists else [Call("environments.create_or_update", {"environment": environment}, "the environment is new")]
        setup.append(Call("compute.begin_create_or_update", {"compute": specs["compute"]}, "the cluster (scales to 0)"))
        execute(client, setup)
    if action in ("train", "retrain"):
        if action == "train":
            execute(client, [Call("data.create_or_update", {"data": specs["data"]}, "the datasets")])
            calls = [
                Call(
                    "jobs.create_or_update",
                    {"job": replace_entity(specs["train-job"], environment=environment_id)},
                    "the training job",
                )
            ]
        else:
            calls = plan_retrain(*retrain_inputs, environment_id)
        (submitted,) = execute(client, calls)
        log.info("submitted job %s: %s", submitted.name, submitted.studio_url)
        if not stream:
            return (
                f"submitted job {submitted.name}; once it has completed: python -m cloud submit register --job {submitted.name}"
            )
        client.jobs.stream(submitted.name)
        return _submit(client, "register", specs, workspace, stream, submitted.name, endpoint)
    if action == "deploy":
        try:
            existing = client.online_endpoints.get(name)
            traffic, endpoint_exists = dict(existing.traffic or {}), True
        except Exception:  # ResourceNotFoundError: a new endpoint
            traffic, endpoint_exists = {}, False
        state = DeployState(exists, endpoint_exists, traffic, model_versions(client))
        specs = {**specs, "environment": environment}
        results = execute(client, plan_deploy(state, specs, name, environment_id))
        endpoint_entity = results[-1]
        return f"endpoint {name}: {endpoint_entity.scoring_uri} (traffic {endpoint_entity.traffic})"
    live = client.online_endpoints.get(name)
    slot = live_slot(dict(live.traffic or {}))
    if slot is None:
        raise CloudError(f"endpoint {name} sends no traffic to any deployment: deploy first (python -m cloud submit deploy)")
    served = model_reference(client.online_deployments.get(slot, name).model)
    if served is None:
        raise CloudError(f"deployment {slot} of {name}: its model is not a registered model version")
    execute(client, plan_monitor(specs, name, slot, served[1], environment_id))
    return f"monitors of {name}/{slot} ({served[0]} version {served[1]}): digitdrift-monitor-daily and digitdrift-azure-monitor"
