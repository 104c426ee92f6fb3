"""Azure ML dress rehearsal: specs loaded by the SDK's loaders and built into the requests it would send, the
environment resolved, each job's exact command run here against stand-ins for what Azure answers differently."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from cloud.submit import ACTIONS, CloudError, find_workspace, load_specs, rest_body
from common.datasets import load_source
from common.prediction_dataset import filesystem, list_parts, read_parts
from common.settings import PROJECT_ROOT
from devtools.processes import free_port, running
from tests.helpers import VENV_BIN, azure_like_tracking, collector_sidecar

pytestmark = pytest.mark.slow
SPECS = PROJECT_ROOT / "cloud" / "specs"


@pytest.fixture(scope="module")
def images_of_every_source(shared_data):
    return np.concatenate([load_source(source, shared_data, limit_per_class=1).images[:4] for source in ("mnist", "devanagari")])


def test_every_spec_loads_with_the_sdk_and_says_what_we_meant():
    specs = {name: entity for action in ACTIONS for name, entity in load_specs(action).items()}
    assert (
        yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())["dependencies"][-1]["pip"]
        == specs["environment"].conda_file["dependencies"][-1]["pip"]
    )
    assert specs["environment"].version is None  # `submit` versions it by a digest of what builds it
    assert specs["compute"].min_instances == 0 and specs["compute"].type == "amlcompute"
    assert specs["train-job"].outputs["model"].type == "mlflow_model"
    assert specs["train-job"].inputs["data"].type == "uri_folder" and "--no-register" in specs["train-job"].command
    retrain, train = specs["retrain-job"], specs["train-job"]
    assert retrain.outputs["model"].type == "mlflow_model" and retrain.outputs["model"].mode == "upload"
    assert retrain.inputs["labels"].type == "uri_file" and retrain.inputs["data"].type == "uri_folder"
    assert retrain.inputs["predictions"].type == "uri_folder" and retrain.inputs["predictions"].mode == "ro_mount"
    assert "--no-register" in retrain.command and "--model-output ${{outputs.model}}" in retrain.command
    assert "--data-dir ${{inputs.data}}" in retrain.command and "--parent ${{inputs.parent}}" in retrain.command
    parent = rest_body(retrain)["properties"]["inputs"]["parent"]
    assert parent["jobInputType"] == "literal" and re.fullmatch(r"models:/digits-cnn/\d+", parent["value"])  # no aliases
    assert (retrain.environment, retrain.compute, retrain.experiment_name, retrain.code) == (
        train.environment,
        train.compute,
        train.experiment_name,
        train.code,
    )
    deployment = specs["deployment"]
    assert deployment.code_configuration.scoring_script == "serving/score.py"
    assert (PROJECT_ROOT / deployment.code_configuration.scoring_script).is_file()
    assert "@latest" not in deployment.model  # @latest is the newest version, not the champion
    assert deployment.request_settings.request_timeout_ms == 10000
    assert deployment.request_settings.max_concurrent_requests_per_instance == 4
    collections = deployment.data_collector.collections
    assert {name: str(collections[name].enabled).lower() for name in ("model_inputs", "model_outputs")} == {
        "model_inputs": "true",
        "model_outputs": "true",
    }
    schedule = specs["monitor-schedule"]
    assert schedule.trigger.expression == "0 6 * * *" and type(schedule.create_job).__name__ == "PipelineJob"
    step, queue = schedule.create_job.jobs["monitor"], schedule.create_job.jobs["queue"]
    assert "python -m monitoring run" in step.command and "--dataset-id" in step.command and "--window 1d" in step.command
    assert "python -m labeling queue" in queue.command and "--judged ${{inputs.report}}/monitoring" in queue.command
    # the queue step reads what the monitor step judged: the pipeline runs them in that order
    queue_body = rest_body(schedule)["properties"]["action"]["jobDefinition"]["jobs"]["queue"]
    assert queue_body["inputs"]["report"]["value"] == "${{parent.jobs.monitor.outputs.report}}"
    assert queue_body["outputs"]["queue"]["value"] == "${{parent.outputs.queue}}"
    assert rest_body(schedule)["properties"]["action"]["jobDefinition"]["inputs"]["model"]["jobInputType"] == "mlflow_model"
    signals = specs["monitor-azure"].create_monitor.monitoring_signals
    assert set(signals["image_features_drift"].features) >= {"foreign_score", "emb_0", "pixel_mean", "ink_share"}
    assert specs["window-signal"].outputs["signal_metrics"].type == "mltable"


def test_every_spec_turns_into_the_request_the_sdk_would_send():
    """Blocker 3: azure-ai-ml 1.35 loads a schedule of a command job but refuses to build its request; every spec
    here is built into its REST body, as `create_or_update` would."""
    for action in ACTIONS:
        for name, entity in load_specs(action).items():
            try:
                assert rest_body(entity), name
            except Exception as err:
                pytest.fail(f"{name}: {type(err).__name__}: {err}")


def test_the_azure_environment_resolves_in_one_pass(tmp_path):
    """Blocker 1: conda.yaml's pip list, as Azure ML installs it into the job environment, resolves with pip in
    one pass, with azureml-mlflow and the MLflow it accepts (pip's index or cache; CI reaches PyPI)."""
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    pip_section = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    (tmp_path / "requirements.txt").write_text("\n".join(pip_section) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(tmp_path / "report.json"), "-r", str(tmp_path / "requirements.txt")],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    pins = dict(pin.split("==") for pin in pip_section)
    assert resolved["azureml-mlflow"] == pins["azureml-mlflow"] and resolved["mlflow"] == pins["mlflow"]


def step_command(spec: str, values: dict[str, str], step: str | None = None) -> str:
    """The spec's command line (a pipeline's `step`'s, by default its first) with ${{inputs.x}} / ${{outputs.y}}
    mapped to local values, as Azure ML maps them."""
    from azure.ai.ml import load_job

    job = load_job(SPECS / spec)
    command = job.command if hasattr(job, "command") else (job.jobs[step] if step else next(iter(job.jobs.values()))).command

    def local(match):
        key = match.group(1)
        assert key in values, f"{spec}: no local value for {key}"
        return str(values[key])

    return re.sub(r"\$\{\{\s*((?:inputs|outputs)\.\w+)\s*\}\}", local, command)


def run_command(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**without_digitdrift(os.environ), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env},
    )


def without_digitdrift(environ) -> dict:
    """The environment with no DIGITDRIFT_* variable: Azure sets none of ours."""
    return {key: value for key, value in environ.items() if not key.startswith("DIGITDRIFT_")}


@dataclass(frozen=True)
class Rehearsal:
    home: Path
    trained: subprocess.CompletedProcess
    refused: list[str]  # the calls the Azure-like tracking answered 404
    served: Path  # the model as Azure mounts a registered version: .../azureml-models/digits-cnn/1
    collected: Path  # the collector's model_outputs folder after the traffic


@pytest.fixture(scope="module")
def rehearsal(mlflow_server, shared_data, tmp_path_factory) -> Rehearsal:
    """The training job's command against a tracking service that answers like Azure's, its output served by
    score.py as Azure mounts a registered version (no DIGITDRIFT_* variable names it), traffic collected by a
    stand-in for Azure's collection sidecar."""
    home = tmp_path_factory.mktemp("rehearsal")

    with azure_like_tracking(mlflow_server) as (tracking_uri, refused):
        env = {"MLFLOW_TRACKING_URI": tracking_uri, "DIGITDRIFT_DATA": str(shared_data), "TF_CPP_MIN_LOG_LEVEL": "2"}
        train = step_command(
            "train-job.yaml",
            {
                "inputs.data": shared_data,
                "inputs.epochs": 1,
                "inputs.train_limit": 1500,
                "inputs.foreign_limit_per_class": 3,
                "outputs.model": home / "model",
            },
        )
        trained = run_command(train, {**env, "DIGITDRIFT_HOME": str(home)})
    assert trained.returncode == 0, trained.stderr[-3000:]

    # what a deployment of version 1 serves: Azure mounts the registered model at .../azureml-models/<name>/<version>
    served = home / "var" / "azureml-app" / "azureml-models" / "digits-cnn" / "1"
    shutil.copytree(home / "model", served / "model")
    blob = home / "workspaceblobstore" / "modelDataCollector"
    with collector_sidecar(blob) as port:
        traffic = run_command(
            f"python -m simulation run --scenario sudden-devanagari --windows 3 --requests-per-window 40 --url inprocess "
            f"--run-dir {home / 'run'} --no-mlflow",
            {
                # the simulator's own settings (it runs score.py in its process, as azmlinfsrv would); none names the model
                "DIGITDRIFT_DATA": str(shared_data),
                "DIGITDRIFT_HOME": str(home),
                "AZUREML_MODEL_DIR": str(served),
                "AZUREML_MDC_ENABLED": "true",
                "AZUREML_MDC_PORT": str(port),
            },
        )
    assert traffic.returncode == 0, traffic.stderr[-2000:]
    return Rehearsal(
        home,
        trained,
        refused,
        served,
        home / "workspaceblobstore" / "modelDataCollector" / "digitdrift-digits" / "blue" / "model_outputs",
    )


def test_the_training_job_never_calls_what_azures_tracking_lacks_and_outputs_the_model(rehearsal):
    """Blocker 2: MLflow 3's log_model calls the logged-models API, which Azure ML's tracking has answered with 404;
    the job's command (against a real mlflow server behind a proxy answering 404 there and to alias calls) never
    calls it, and its model is the job's output folder."""
    assert rehearsal.trained.returncode == 0 and not rehearsal.refused, rehearsal.refused
    assert (rehearsal.home / "model" / "MLmodel").is_file() and (rehearsal.home / "model" / "reference.npz").is_file()


def test_records_served_from_azures_model_folder_carry_the_registered_version(rehearsal):
    """Blocker 5: score.py serving from AZUREML_MODEL_DIR=.../azureml-models/digits-cnn/1 with no DIGITDRIFT_*
    variable naming the model records version 1, not local:<folder>."""
    fs, root = filesystem(str(rehearsal.collected))
    records = read_parts(fs, list_parts(fs, root), ["model_name", "model_version"])
    assert len(records) >= 120 and set(records["model_version"]) == {"1"} and set(records["model_name"]) == {"digits-cnn"}


def register_job_output(client, name: str, run_id: str, output: Path) -> str:
    """A model version as `cloud submit register` leaves one: its source the job's model output folder (here
    uploaded to the job's run, as Azure uploads an output to the workspace's storage), its run the job's, tagged by
    `registered_tags`. Through the registry itself, as Azure's models API registers it, not through MLflow's logged
    models. Returns the version."""
    from cloud.submit import parent_version_of, registered_tags

    client.log_artifacts(run_id, str(output), "outputs/model")
    run = client.get_run(run_id)
    tags = registered_tags(run_id, run.data.metrics, parent_version_of(run.data.tags, {}))
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"{run.info.artifact_uri}/outputs/model", run_id, tags=tags).version)


def test_the_retrain_job_fine_tunes_a_version_registered_from_a_job_and_outputs_the_model_with_its_lineage(
    rehearsal, mlflow_server, shared_data, images_of_every_source
):
    """The retrain job's command against the Azure-like tracking: labels (the simulation's ground truth) for the
    collected traffic's kept images, the parent registered from the training job's output as `submit register`
    leaves it. No refused call, the model folder with its reference, the lineage on the run; the version later
    registered from the output carries its parent, so the gate's replay figures and the ancestors' fingerprints
    are found."""
    import mlflow

    from common.images import to_model_input
    from common.prediction_dataset import read_records
    from common.records import read_ground_truth
    from common.reference import load_reference
    from common.tracking import PARENT_VERSION_TAG
    from training.registry import REPLAY_IMAGES_METRIC, REPLAY_METRIC, REPLAY_PARENT_METRIC, replay_figures
    from training.retrain import TRAINED_FINGERPRINTS, ancestor_fingerprints

    home = rehearsal.home
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    name = f"digits-cnn-rehearsal-{uuid.uuid4().hex[:6]}"
    train_run = re.search(r"^run \S+ \((\w+)\)", rehearsal.trained.stdout, re.MULTILINE).group(1)
    parent = register_job_output(client, name, train_run, home / "model")
    assert PARENT_VERSION_TAG not in client.get_model_version(name, parent).tags  # trained from scratch

    kept = read_records(str(rehearsal.collected), ["request_id", "image_index", "image"]).dropna(subset=["image"])
    truth = read_ground_truth(next((home / "run").rglob("ground_truth.db")))
    labels = kept.merge(truth, on=["request_id", "image_index"])[["request_id", "image_index", "label"]]
    assert len(labels) >= 12, f"{len(labels)} labeled kept images: too few to hold some out for replay"
    labels.to_csv(home / "labels.csv", index=False)

    output = home / "retrained"
    with azure_like_tracking(mlflow_server) as (tracking_uri, refused):
        command = step_command(
            "retrain-job.yaml",
            {
                "inputs.labels": home / "labels.csv",
                "inputs.predictions": rehearsal.collected,
                "inputs.parent": f"models:/{name}/{parent}",
                "inputs.data": shared_data,
                "inputs.epochs": 1,
                "inputs.train_limit": 1500,
                "inputs.foreign_limit_per_class": 3,
                "outputs.model": output,
            },
        )
        env = {"MLFLOW_TRACKING_URI": tracking_uri, "DIGITDRIFT_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
        retrained = run_command(command, env)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert not refused, refused
    assert "not registered (register it from there" in retrained.stdout

    model = mlflow.pyfunc.load_model(str(output))
    probabilities = np.asarray(model.predict(to_model_input(images_of_every_source)))
    assert probabilities.shape == (len(images_of_every_source), 10)
    assert load_reference(output / "reference.npz").threshold > 0
    run_id = re.search(r"^run (\w+): retrained version", retrained.stdout, re.MULTILINE).group(1)
    run = client.get_run(run_id)
    assert run.data.tags[PARENT_VERSION_TAG] == parent and run.data.params["data_dir"] == str(shared_data)
    assert {REPLAY_IMAGES_METRIC, REPLAY_METRIC, REPLAY_PARENT_METRIC} <= set(run.data.metrics)
    assert run.data.metrics[REPLAY_IMAGES_METRIC] >= 1
    assert [version.version for version in client.search_model_versions(f"name = '{name}'")] == [parent]  # none new

    child = register_job_output(client, name, run_id, output)
    assert client.get_model_version(name, child).tags[PARENT_VERSION_TAG] == parent
    figures = replay_figures(client.get_run(client.get_model_version(name, child).run_id))
    assert figures.parent_version == parent and figures.images == run.data.metrics[REPLAY_IMAGES_METRIC]
    trained_on = set(filter(None, mlflow.artifacts.load_text(f"runs:/{run_id}/{TRAINED_FINGERPRINTS}").splitlines()))
    assert trained_on and ancestor_fingerprints(name, child) == trained_on


def test_retrain_refuses_to_keep_the_model_nowhere():
    result = run_command("python -m training retrain --labels labels.csv --no-register", {})
    assert result.returncode == 2
    assert "error: --no-register needs --model-output: the model would be kept nowhere" in result.stderr


def two_days_earlier(event: dict) -> dict:
    """A collector event whose records were scored two days earlier."""
    from datetime import datetime, timedelta

    for row in event["data"]:
        row["timestamp"] = (datetime.fromisoformat(row["timestamp"]) - timedelta(days=2)).isoformat(timespec="microseconds")
    return event


def test_two_scheduled_runs_over_new_mount_paths_judge_each_window_once(rehearsal):
    """Blockers 6 and 7: the monitor job's command, with the model as its input, by day, its watermark keyed by the
    dataset id, over the same collector folder mounted at two paths (Azure mounts anew for every run)."""
    tmp_path, served, collected = rehearsal.home, rehearsal.served, rehearsal.collected
    yesterday = tmp_path / "scored-two-days-ago"  # the traffic as a daily run finds it: its days are over
    for path in collected.rglob("*.jsonl"):
        target = yesterday / path.relative_to(collected)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "".join(json.dumps(two_days_earlier(json.loads(line))) + "\n" for line in path.read_text().splitlines())
        )
    mounts = []
    for mount in ("mnt-run-1", "mnt-run-2"):  # Azure mounts the same folder at a new path for every run
        mounts.append(tmp_path / mount / "model_outputs")
        shutil.copytree(yesterday, mounts[-1])
    values = {
        "inputs.model": served / "model",
        "inputs.model_version": "1",
        "inputs.dataset_id": "digitdrift-digits/blue/model_outputs",
    }
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'monitor.db'}", "DIGITDRIFT_HOME": str(tmp_path)}
    queued = []
    for run, mount in zip(("r1", "r2"), mounts):
        judged = run_command(
            step_command("monitor-job.yaml", {**values, "inputs.predictions": mount, "outputs.report": tmp_path / run}), env
        )
        assert judged.returncode == 0, judged.stdout[-2000:] + judged.stderr[-3000:]
        # the pipeline's next step: the labeling queue of the windows this run judged
        queue_values = {
            "inputs.predictions": mount,
            "inputs.report": tmp_path / run,
            "inputs.labels_per_window": 10,
            "outputs.queue": tmp_path / f"queue-{run}",
        }
        queue = run_command(step_command("monitor-job.yaml", queue_values, "queue"), env)
        assert queue.returncode == 0, queue.stdout[-2000:] + queue.stderr[-3000:]
        queued.append((judged.stdout, pd.read_csv(tmp_path / f"queue-{run}" / "queue.csv", dtype={"request_id": str})))
    (first, first_queue), (second, second_queue) = queued
    assert (tmp_path / "r1" / "monitoring" / "dashboard.html").is_file()
    judged_windows = set(pd.read_csv(tmp_path / "r1" / "monitoring" / "window_metrics.csv")["window"])
    assert len(first_queue) > 0 and set(first_queue["window"]) <= judged_windows
    assert first_queue.groupby("window").size().max() <= 10 and first_queue["window_start"].notna().all()
    images = {path.name for path in (tmp_path / "queue-r1" / "images").glob("*.png")}
    assert images and images <= {f"{row.request_id}-{row.image_index}.png" for row in first_queue.itertuples()}
    assert "nothing to judge" in second, second[-2000:]
    assert (tmp_path / "r2" / "monitoring" / "nothing_to_judge.txt").is_file()
    assert second_queue.empty  # the next day's run judged nothing new: nothing is queued twice


def test_score_py_under_azmlinfsrv_with_azures_environment_collects_the_version_and_image_features(
    champion, images_of_every_source, tmp_path, monkeypatch
):
    """Blocker 5 and the collector's features, under the real inference server with exactly what Azure sets:
    AZUREML_MODEL_DIR ending in <name>/<version>, data collection on, no DIGITDRIFT_* variable."""
    for key in [key for key in os.environ if key.startswith("DIGITDRIFT_")]:
        monkeypatch.delenv(key)
    served = tmp_path / "azureml-models" / "digits-cnn" / "3"
    shutil.copytree(champion.folder, served / "model")
    blob = tmp_path / "modelDataCollector"
    port, health_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VENV_BIN / "azmlinfsrv"), "--entry_script", "serving/score.py", "--port", str(port),
               "--health_port", str(health_port)]  # fmt: skip
    with collector_sidecar(blob) as sidecar:
        env = {"AZUREML_MODEL_DIR": str(served), "AZUREML_MDC_ENABLED": "true", "AZUREML_MDC_PORT": str(sidecar)}
        with running(command, f"{url}/", env, tmp_path / "azmlinfsrv.log"):
            for number in range(2):
                answer = httpx.post(
                    f"{url}/score", json={"data": images_of_every_source.tolist(), "request_id": f"r-{number}"}, timeout=60
                )
                assert answer.status_code == 200 and answer.json()["model"] == {"name": "digits-cnn", "version": "3"}
            deadline = time.monotonic() + 30  # the collector posts in the background
            while time.monotonic() < deadline and len(list(blob.rglob("*.jsonl"))) < 2:
                time.sleep(0.5)
    outputs = blob / "digitdrift-digits" / "blue" / "model_outputs"
    fs, root = filesystem(str(outputs))
    records = read_parts(fs, list_parts(fs, root))
    assert len(records) == 2 * len(images_of_every_source) and set(records["model_version"]) == {"3"}
    inputs = [row for path in (blob / "digitdrift-digits" / "blue" / "model_inputs").rglob("*.jsonl")
              for line in path.read_text().splitlines() for row in json.loads(line)["data"]]  # fmt: skip
    assert len(inputs) == len(records) and all(row["pixel_mean"] is not None and "emb_7" in row for row in inputs)
    assert {"request_id", "image_index", "foreign_score", "ink_share"} <= set(inputs[0])


def test_promote_on_a_registry_without_aliases_moves_the_role_tag(mlflow_server):
    """Blocker 4: where the registry answers alias calls with 404 (Azure ML's documents no aliases), promote
    still names the champion, by the digitdrift_role tag, and the look-ups of @champion find it."""
    import mlflow

    from common.tracking import ROLE_TAG, resolve_registered, set_role
    from training.registry import promote

    with azure_like_tracking(mlflow_server) as (tracking_uri, refused):
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        name = f"digits-roles-{uuid.uuid4().hex[:6]}"
        client.create_registered_model(name)
        experiment = mlflow.create_experiment(name)
        for accuracy in (0.95, 0.99):
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_metric("mnist_test_accuracy", accuracy)
            version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version
            assert set_role(client, name, "challenger", str(version)) is False  # the alias call is refused
        decision = promote(name, 0.9)
        assert decision.promoted and decision.version == "2", decision.reason
        assert client.get_model_version(name, "2").tags[ROLE_TAG] == "champion"
        assert (
            ROLE_TAG not in client.get_model_version(name, "1").tags
            or client.get_model_version(name, "1").tags[ROLE_TAG] == "challenger"
        )
        assert resolve_registered(f"models:/{name}@champion").version == "2"
        assert any("alias" in call for call in refused)


def test_submit_without_a_workspace_names_what_is_missing(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
    }
    result = subprocess.run(
        [sys.executable, "-m", "cloud", "submit", "train"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert result.returncode == 2
    assert "set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME" in result.stderr
    assert "config.json" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_prints_the_resolved_specs_with_the_workspace(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"subscription_id": "sub-1", "resource_group": "rg-1", "workspace_name": "ws-1"})
    )
    result = subprocess.run(
        [sys.executable, "-m", "cloud", "submit", "deploy", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "# workspace: ws-1 (resource group rg-1, subscription sub-1; from config.json)" in result.stdout
    assert "scoring_script: serving/score.py" in result.stdout and "request_timeout_ms: 10000" in result.stdout


def test_a_broken_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"subscription_id": "x"}')
    with pytest.raises(CloudError, match="config.json: expected JSON with subscription_id, resource_group"):
        find_workspace({}, tmp_path / "config.json")


def test_environment_values_win_over_config_json(tmp_path):
    values = dict(zip(("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"), ("s", "r", "w")))
    assert find_workspace(values, tmp_path / "absent.json").workspace_name == "w"
