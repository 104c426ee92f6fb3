"""Azure ML specs: loaded by the SDK's own loaders offline, and each job's exact command run here on small data."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from cloud.submit import ACTIONS, CloudError, find_workspace, load_specs
from common.settings import PROJECT_ROOT
from tests.helpers import VENV_BIN, collector_sidecar

pytestmark = pytest.mark.slow
SPECS = PROJECT_ROOT / "cloud" / "specs"


def test_every_spec_loads_with_the_sdk_and_says_what_we_meant():
    specs = {name: entity for action in ACTIONS for name, entity in load_specs(action).items()}
    assert (
        yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())["dependencies"][-1]["pip"]
        == specs["environment"].conda_file["dependencies"][-1]["pip"]
    )
    assert specs["compute"].min_instances == 0 and specs["compute"].type == "amlcompute"
    assert specs["train-job"].outputs["model"].type == "mlflow_model"
    assert specs["train-job"].inputs["data"].type == "uri_folder"
    deployment = specs["deployment"]
    assert deployment.code_configuration.scoring_script == "serving/score.py"
    assert (PROJECT_ROOT / deployment.code_configuration.scoring_script).is_file()
    assert deployment.request_settings.request_timeout_ms == 10000
    assert deployment.request_settings.max_concurrent_requests_per_instance == 4
    collections = deployment.data_collector.collections
    assert {name: str(collections[name].enabled).lower() for name in ("model_inputs", "model_outputs")} == {
        "model_inputs": "true",
        "model_outputs": "true",
    }
    monitor_input = specs["monitor-schedule"].create_job.inputs["predictions"]
    assert monitor_input.type == "uri_folder" and monitor_input.path.endswith(
        "modelDataCollector/digitdrift-digits/blue/model_outputs"
    )
    schedule = specs["monitor-schedule"]
    assert schedule.trigger.expression == "0 6 * * *" and "python -m monitoring run" in schedule.create_job.command


def command_with(spec: str, values: dict[str, str]) -> str:
    """The spec's command line with ${{inputs.x}} / ${{outputs.y}} mapped to local values, as Azure ML maps them."""
    from azure.ai.ml import load_job

    command = load_job(SPECS / spec).command

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
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **env},
    )


def test_the_train_and_monitor_jobs_commands_run_here_on_small_data(shared_data, tmp_path):
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DIGITDRIFT_HOME": str(tmp_path),
        "DIGITDRIFT_DATA": str(shared_data),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    train = command_with(
        "train-job.yaml",
        {
            "inputs.data": shared_data,
            "inputs.epochs": 1,
            "inputs.train_limit": 1500,
            "inputs.foreign_limit_per_class": 3,
            "outputs.model": tmp_path / "model",
        },
    )
    trained = run_command(train, env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "model" / "MLmodel").is_file() and (tmp_path / "model" / "reference.npz").is_file()

    # what the deployment would serve: the job's model output, through score.py, with data collection on as the
    # deployment spec asks; the sidecar stands in for Azure's and writes the collector's layout
    promote = run_command("python -m training promote --min-accuracy 0", env)
    assert promote.returncode == 0, promote.stderr[-2000:]
    blob = tmp_path / "workspaceblobstore" / "modelDataCollector"
    with collector_sidecar(blob) as port:
        traffic = run_command(
            f"python -m simulation run --scenario sudden-devanagari --windows 3 --requests-per-window 40 --url inprocess "
            f"--model {tmp_path / 'model'} --run-dir {tmp_path / 'run'} --no-mlflow",
            {**env, "DIGITDRIFT_MODEL_VERSION": "1", "AZUREML_MDC_ENABLED": "true", "AZUREML_MDC_PORT": str(port)},
        )
    assert traffic.returncode == 0, traffic.stderr[-2000:]
    collected = blob / "digitdrift-digits" / "blue" / "model_outputs"
    assert (
        len(list(collected.rglob("*.jsonl"))) >= 1
        and len(list((blob / "digitdrift-digits" / "blue" / "model_inputs").rglob("*.jsonl"))) >= 1
    )

    monitor = command_with(
        "monitor-job.yaml",
        {
            "inputs.predictions": collected,
            "inputs.model": "models:/digits-cnn@champion",
            "outputs.report": tmp_path / "report",
        },
    )
    monitored = run_command(monitor, env)
    assert monitored.returncode == 0, monitored.stderr[-3000:]
    assert (tmp_path / "report" / "monitoring" / "dashboard.html").is_file()
    judged = (tmp_path / "report" / "monitoring" / "window_metrics.csv").read_text().splitlines()
    assert len(judged) == 1 + 2 and re.search(
        r"read (\d+) of \1 parts", monitored.stdout
    )  # windows 0 and 1; window 2 may still grow
    # the next day's scheduled run finds the watermark in MLflow and reads nothing twice
    again = run_command(monitor.replace(str(tmp_path / "report"), str(tmp_path / "report-2")), env)
    assert again.returncode == 0 and "nothing to judge" in again.stdout, again.stderr[-2000:]


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
