"""The Azure ML plans: which SDK calls `python -m cloud submit` makes, on which entities, in which order (no workspace)."""

import json

import pytest

from cloud.submit import (
    CloudError,
    DeployState,
    Workspace,
    check_smoke_answer,
    collector_folder,
    endpoint_name,
    environment_version,
    live_slot,
    load_spec,
    model_reference,
    one_line,
    parent_version_of,
    plan_deploy,
    plan_monitor,
    plan_register,
    plan_retrain,
    rest_body,
)
from common.tracking import PARENT_VERSION_TAG, ROLE_TAG

WORKSPACE = Workspace("sub-1", "rg-1", "ws-1", "test")
ENVIRONMENT_ID = "azureml:digitdrift-env:0123456789abcdef"


def deploy_specs():
    return {name: load_spec(name) for name in ("environment", "endpoint", "deployment")}


def versions(**roles):
    """(version, tags) pairs: versions 1..8 registered, `roles` maps a version to its role tag."""
    return [(str(number), {ROLE_TAG: roles[f"v{number}"]} if f"v{number}" in roles else {}) for number in range(1, 9)]


def test_the_first_deployment_creates_the_endpoint_smoke_tests_the_champion_and_then_gives_it_all_traffic():
    """Blocker 4 (champion, not @latest) and 5 (the version in DIGITDRIFT_MODEL_VERSION)."""
    state = DeployState(environment_exists=False, endpoint_exists=False, traffic={}, versions=versions(v7="champion"))
    calls = plan_deploy(state, deploy_specs(), "digitdrift-abc", ENVIRONMENT_ID)
    assert [call.operation for call in calls] == [
        "environments.create_or_update",
        "online_endpoints.begin_create_or_update",
        "online_deployments.begin_create_or_update",
        "online_endpoints.invoke",
        "online_endpoints.begin_create_or_update",
    ]
    deployment = calls[2].arguments["deployment"]
    assert (deployment.name, deployment.endpoint_name, deployment.model) == ("blue", "digitdrift-abc", "azureml:digits-cnn:7")
    assert deployment.environment == ENVIRONMENT_ID
    assert deployment.environment_variables["DIGITDRIFT_MODEL_VERSION"] == "7"
    assert calls[3].arguments["deployment_name"] == "blue"
    assert not calls[1].arguments["endpoint"].traffic and calls[4].arguments["endpoint"].traffic == {"blue": 100}


def test_a_new_champion_goes_to_the_idle_slot_and_the_previous_stays_for_a_rollback():
    state = DeployState(True, True, {"blue": 100}, versions(v7="champion", v8="challenger"))
    calls = plan_deploy(state, deploy_specs(), "digitdrift-abc", ENVIRONMENT_ID)
    assert [call.operation for call in calls] == [
        "online_deployments.begin_create_or_update",
        "online_endpoints.invoke",
        "online_endpoints.begin_create_or_update",
    ]
    assert calls[0].arguments["deployment"].name == "green"
    assert calls[0].arguments["deployment"].model == "azureml:digits-cnn:7"  # the champion, not the newest (8)
    assert calls[2].arguments["endpoint"].traffic == {"green": 100, "blue": 0}
    assert all(call.operation != "online_deployments.begin_delete" for call in calls)


def test_deploying_without_a_champion_says_how_to_promote_one():
    with pytest.raises(CloudError, match="no version of digits-cnn is tagged digitdrift_role=champion: promote one"):
        plan_deploy(DeployState(True, True, {}, versions(v8="challenger")), deploy_specs(), "digitdrift-abc", ENVIRONMENT_ID)


def test_the_deployment_plans_turn_into_the_bodies_the_sdk_sends():
    state = DeployState(False, False, {"blue": 100}, versions(v3="champion"))
    for call in plan_deploy(state, deploy_specs(), "digitdrift-abc", ENVIRONMENT_ID):
        for entity in call.arguments.values():
            if not isinstance(entity, str):
                assert rest_body(entity)


def test_the_smoke_test_wants_one_prediction_by_the_deployed_version():
    answer = json.dumps({"request_id": "s", "model": {"name": "digits-cnn", "version": "7"}, "predictions": [{"class": 1}]})
    check_smoke_answer(answer, "7")
    check_smoke_answer(json.dumps(answer), "7")  # JSON-encoded twice, as an endpoint's invoke can return it
    with pytest.raises(CloudError, match="failed its smoke test .* by version 8"):
        check_smoke_answer(answer, "8")
    with pytest.raises(CloudError, match="failed its smoke test"):
        check_smoke_answer('{"error": "the model failed to score this request"}', "7")


def test_a_model_is_registered_only_from_a_completed_job():
    """The `--no-stream` fix: nothing is registered while the job runs, and the message says how to register later."""
    with pytest.raises(CloudError, match=r"job j-1 is Running, not Completed: nothing registered.*register --job j-1"):
        plan_register("j-1", "Running", [], load_spec("model"), {})


def test_a_completed_job_is_registered_once_as_the_challenger_with_its_metrics():
    (call,) = plan_register("j-1", "Completed", [("1", {"job": "j-0"})], load_spec("model"), {"mnist_test_accuracy": 0.991})
    model = call.arguments["model"]
    assert call.operation == "models.create_or_update" and model.path == "azureml://jobs/j-1/outputs/model"
    assert model.tags == {ROLE_TAG: "challenger", "job": "j-1", "mnist_test_accuracy": "0.991000"}
    assert rest_body(model)
    assert plan_register("j-1", "Completed", [("2", {"job": "j-1"})], load_spec("model"), {}) == []


def test_the_retrain_job_fine_tunes_the_given_version_on_labels_uploaded_from_here():
    collected = collector_folder("digitdrift-abc", "green")
    (call,) = plan_retrain("/home/me/labels.jsonl", "7", collected, ENVIRONMENT_ID)
    job = call.arguments["job"]
    assert call.operation == "jobs.create_or_update" and job.environment == ENVIRONMENT_ID
    body = rest_body(job)["properties"]
    inputs = body["inputs"]
    # an absolute local path: the SDK uploads the file when it creates the job, and passes its datastore URI
    assert inputs["labels"] == {"uri": "/home/me/labels.jsonl", "mode": "Download", "jobInputType": "uri_file"}
    assert inputs["parent"] == {"value": "models:/digits-cnn/7", "jobInputType": "literal"}  # a version: no aliases
    assert inputs["predictions"] == {"uri": collected, "mode": "ReadOnlyMount", "jobInputType": "uri_folder"}
    assert body["outputs"]["model"] == {"mode": "Upload", "jobOutputType": "mlflow_model"}
    assert "--model-output ${{outputs.model}}" in body["command"] and "--no-register" in body["command"]
    assert plan_retrain("azureml://datastores/workspaceblobstore/paths/l.csv", "7", collected, ENVIRONMENT_ID)


def test_the_retrain_job_is_refused_an_alias_or_a_relative_label_path():
    collected = collector_folder("digitdrift-abc", "blue")
    with pytest.raises(CloudError, match="--parent 'champion': a version number of digits-cnn"):
        plan_retrain("/home/me/labels.jsonl", "champion", collected, ENVIRONMENT_ID)
    with pytest.raises(CloudError, match="labels 'labels.jsonl': give an absolute path"):
        plan_retrain("labels.jsonl", "7", collected, ENVIRONMENT_ID)


def test_a_retrained_version_is_registered_with_its_parent_for_the_lineage():
    (call,) = plan_register("j-2", "Completed", [("7", {"job": "j-1"})], load_spec("model"), {}, parent_version="7")
    model = call.arguments["model"]
    assert model.tags == {ROLE_TAG: "challenger", "job": "j-2", PARENT_VERSION_TAG: "7"}
    assert rest_body(model)["properties"]["tags"][PARENT_VERSION_TAG] == "7"
    assert "retrained from version 7" in call.why


def test_the_parent_of_a_job_comes_from_its_run_else_from_its_parent_input():
    assert parent_version_of({PARENT_VERSION_TAG: "7"}, {"parent": "models:/digits-cnn/6"}) == "7"
    assert parent_version_of({}, {"parent": "models:/digits-cnn/6", "epochs": "2"}) == "6"  # the run was not read
    assert parent_version_of({}, {"parent": "models:/digits-cnn@champion"}) is None  # names no version
    assert parent_version_of({"mlflow.runName": "train"}, {"data": object(), "epochs": "8"}) is None  # trained from scratch


def test_the_monitors_follow_the_live_deployment_and_key_the_watermark_by_a_dataset_id():
    """Blockers 3 and 6: the schedule is a pipeline the SDK turns into a request; the data's id is not a mount path."""
    specs = {name: load_spec(name) for name in ("monitor-schedule", "window-signal", "monitor-azure")}
    calls = plan_monitor(specs, "digitdrift-abc", "green", "7", ENVIRONMENT_ID)
    assert [call.operation for call in calls] == [
        "schedules.begin_create_or_update",
        "components.create_or_update",
        "schedules.begin_create_or_update",
    ]
    ours = calls[0].arguments["schedule"]
    job = ours.create_job
    collected = "azureml://datastores/workspaceblobstore/paths/modelDataCollector/digitdrift-abc/green/model_outputs"
    inputs = rest_body(ours)["properties"]["action"]["jobDefinition"]["inputs"]
    assert inputs["predictions"] == {"uri": collected, "mode": "ReadOnlyMount", "jobInputType": "uri_folder"}
    assert inputs["model"] == {"uri": "digits-cnn:7", "jobInputType": "mlflow_model"}
    assert inputs["model_version"]["value"] == "7" and inputs["dataset_id"]["value"] == "digitdrift-abc/green/model_outputs"
    command = job.jobs["monitor"].command
    assert "--dataset-id ${{inputs.dataset_id}}" in command and "--window 1d" in command and "--clock wall" in command
    assert job.jobs["monitor"].environment == ENVIRONMENT_ID
    azure = calls[2].arguments["schedule"]
    assert azure.create_monitor.monitoring_target.endpoint_deployment_id == "azureml:digitdrift-abc:green"
    custom = rest_body(azure)["properties"]["action"]["monitorDefinition"]["signals"]["digitdrift_windows"]
    assert custom["inputs"]["predictions"]["uri"] == collected
    assert custom["inputAssets"]["production_data"]["uri"] == collected


def test_the_environment_version_follows_what_builds_it():
    assert environment_version("a", "image") == environment_version("a", "image")
    assert environment_version("a", "image") != environment_version("b", "image")
    assert environment_version("a", "image") != environment_version("a", "other-image")


def test_the_endpoint_name_is_unique_per_workspace_and_an_override_is_checked():
    assert endpoint_name(WORKSPACE) == endpoint_name(WORKSPACE) and endpoint_name(WORKSPACE).startswith("digitdrift-")
    assert endpoint_name(WORKSPACE) != endpoint_name(Workspace("sub-1", "rg-1", "ws-2", "test"))
    assert len(endpoint_name(WORKSPACE)) <= 32
    assert endpoint_name(WORKSPACE, "my-digits") == "my-digits"
    with pytest.raises(CloudError, match="--endpoint-name '9-digits': an endpoint name is 3-32"):
        endpoint_name(WORKSPACE, "9-digits")


def test_reading_what_a_deployment_serves():
    assert model_reference("azureml:digits-cnn:7") == ("digits-cnn", "7")
    arm = "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
    arm += "/models/digits-cnn/versions/12"
    assert model_reference(arm) == ("digits-cnn", "12")
    assert model_reference("azureml:digits-cnn@latest") is None
    assert live_slot({"blue": 0, "green": 100}) == "green" and live_slot({}) is None


def test_an_sdk_error_becomes_one_line():
    assert one_line(ValueError("first line\n\n{ pages of detail }")) == "first line"
