"""The closed loop end to end on small data: alert, labels, retrain with lineage, safe promotion, the server switching
models under load without failing a request, and later windows judged against the new version's reference."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import yaml

from common.prediction_dataset import read_records
from common.settings import PROJECT_ROOT
from devtools.processes import (
    free_port,
    loopback_webhook_env,
    mlflow_server_command,
    new_fernet_key,
    running,
    stop,
    wait_for_http,
)
from tests.helpers import SHARED_DATA, serving_command, settings_for

SMALL_SCENARIO = {
    "name": "closed-loop-small",
    "description": "Devanagari digits arrive from day 2 and are half the traffic from day 4.",
    "windows": 14,
    "window": "day",
    # monitoring judges windows of 50 records or more; 150 leave the first retrain (two windows of labels after the
    # alert) the 100 foreign images it needs to take the incident's traffic into its reference once it has trained on
    # the labeled ones (with 100 only the second retrain had them, and the gate may refuse it on a tiny replay set)
    "requests_per_window": 150,
    "seed": 5,
    "mode": "mix",
    "sources": {
        "mnist": {"weight": {"constant": 1.0}},
        "devanagari": {"weight": {"ramp": {"start": 2, "end": 4, "from": 0.0, "to": 1.0}}},
    },
}


@pytest.fixture(scope="module")
def loop(shared_data, tmp_path_factory):
    """A small champion of its own store, then `python -m loop simulate` run on it; (store settings, loop folder, figures)."""
    import mlflow

    from training.configs import KerasJobConfig
    from training.keras_job import run_keras_job
    from training.registry import promote

    home = tmp_path_factory.mktemp("closed-loop")
    settings = settings_for(home, data_dir=shared_data)
    config = KerasJobConfig(
        data_dir=str(shared_data), epochs=2, train_limit=8000, validation_size=1000, foreign_limit_per_class=5, batch_size=32
    )
    run_keras_job(config, settings)
    assert promote("digits-cnn", threshold=0.0).promoted
    scenario = home / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SMALL_SCENARIO))
    out = home / "loop"
    env = {"DIGITDRIFT_HOME": str(home), "DIGITDRIFT_DATA": str(shared_data), "MLFLOW_TRACKING_URI": settings.tracking_uri}
    command = [
        sys.executable, "-m", "loop", "simulate", "--scenario", str(scenario), "--labels-per-window", "20",
        "--retrain-after", "40", "--max-retrains", "2", "--epochs", "2", "--train-limit", "4000",
        "--min-accuracy", "0.8", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    mlflow.set_tracking_uri(settings.tracking_uri)
    return settings, out, json.loads((out / "closed_loop.json").read_text())


def _events(figures: dict, kind: str) -> list[dict]:
    return [event for event in figures["events"] if event["event"] == kind]


def _first_promotion(figures: dict) -> dict:
    promotions = _events(figures, "promoted")
    assert promotions, f"neither challenger was promoted: {figures['events']}"
    return promotions[0]


def test_the_loop_goes_from_an_alert_through_labels_and_retrains_to_a_promotion_the_server_follows(loop):
    import pandas as pd

    _, out, figures = loop
    first_alert = figures["first_alert_window"]
    assert first_alert is not None and first_alert <= 6  # Devanagari is a quarter of the traffic by window 3
    first, second = _events(figures, "retrained")
    assert (first["version"], second["version"]) == ("2", "3")
    assert first_alert < first["window"] < second["window"] < SMALL_SCENARIO["windows"] - 1
    promoted = _first_promotion(figures)
    assert figures["windows_from_first_alert_to_promotion"] == promoted["window"] - first_alert
    # each challenger was promoted or refused with its reason, and the server followed each promotion
    decisions = [e for e in figures["events"] if e["event"] in ("promoted", "promotion_refused")]
    assert [e["version"] for e in decisions] == ["2", "3"]
    for decision in decisions:
        verdict = "promoted" if decision["event"] == "promoted" else "not promoted"
        assert decision["reason"].startswith(f"{verdict}: version {decision['version']}")
    switched = [e["version"] for e in _events(figures, "server_switched")]
    assert switched == [e["version"] for e in _events(figures, "promoted")]
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0].startswith("request_id,image_index,label")
    # the controller took those decisions, one cycle a window, each window judged once as its traffic was in
    decided = [json.loads(line) for line in (out / "controller" / "decisions.jsonl").read_text().splitlines()]
    judged = [decision["reason"].split(":")[0] for decision in decided if decision["decision"] == "judged"]
    assert judged == [f"windows {window}-{window}" for window in range(SMALL_SCENARIO["windows"])]
    assert [decision["decision"] for decision in decided].count("retrained") == 2
    # once both retrains are spent, a window's labels only check the estimate: 5 a window, not 20
    queued = pd.read_csv(out / "controller" / "queue.csv").groupby("window").size()
    assert (queued[queued.index <= second["window"]] == 20).all() and (queued[queued.index > second["window"]] == 5).all()
    assert figures["labels"]["queued"] <= 20 * (SMALL_SCENARIO["windows"] - first_alert)


def test_every_acknowledged_image_is_in_the_log_and_the_later_windows_are_served_by_the_new_version(loop):
    _, out, figures = loop
    promoted = _first_promotion(figures)
    with sqlite3.connect(out / "simulation" / "ground_truth.db") as connection:
        acknowledged = set(connection.execute("SELECT request_id, image_index FROM ground_truth"))
    records = read_records(str(out / "dataset"), ["request_id", "image_index", "window", "model_version"])
    logged = {(r, int(i)): (int(w), v) for r, i, w, v in records.values}
    assert len(logged) == len(records), "a record written twice"
    assert len(acknowledged) == SMALL_SCENARIO["windows"] * SMALL_SCENARIO["requests_per_window"]
    assert acknowledged == set(logged)
    assert {v for w, v in logged.values() if w <= promoted["window"]} == {"1"}
    assert {v for w, v in logged.values() if w == promoted["window"] + 1} == {promoted["version"]}
    assert {v for w, v in logged.values() if w > promoted["window"]} <= {e["version"] for e in _events(figures, "promoted")}


def test_later_windows_are_judged_against_the_new_versions_reference_and_recover(loop):
    import mlflow
    import pandas as pd

    _, out, figures = loop
    promoted = _first_promotion(figures)
    windows = pd.read_csv(out / "windows.csv", dtype={"model_version": str})
    assert windows.loc[windows["window"] == promoted["window"] + 1, "model_version"].tolist() == [promoted["version"]]
    client = mlflow.MlflowClient()
    new_run = client.get_model_version("digits-cnn", promoted["version"]).run_id
    assert "reference" in {artifact.path for artifact in client.list_artifacts(new_run)}
    accuracy = figures["drifted_traffic_realised_accuracy"]["by_version"]
    assert accuracy[promoted["version"]]["realised_accuracy"] > accuracy["1"]["realised_accuracy"]
    assert (windows["label_assisted_accuracy_low"] <= windows["label_assisted_accuracy_high"]).all()


def test_a_version_retrained_on_the_incident_takes_its_traffic_into_its_reference_and_stops_calling_it_foreign(loop):
    import mlflow

    from common.reference import load_reference
    from common.tracking import download_reference
    from monitoring.metrics import window_metrics
    from monitoring.policy import load_policy

    _, out, figures = loop
    client = mlflow.MlflowClient()

    def run_of(version: str):
        return client.get_run(client.get_model_version("digits-cnn", version).run_id)

    # a retrain early in the incident may find too little of its traffic for the reference (and still be promoted,
    # on a tiny replay set): the version to judge is the first promoted one whose reference took that traffic
    promotions = _events(figures, "promoted")
    took = [event for event in promotions if int(run_of(event["version"]).data.params["reference_served_images"]) > 0]
    assert took, f"no promoted version took the incident's traffic into its reference: {promotions}"
    promoted = took[0]
    run = run_of(promoted["version"])
    taken = int(run.data.params["reference_served_images"])
    assert taken >= 50 and 0.2 < float(run.data.params["reference_served_share"]) < 0.7
    stored = np.load(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reference/served_images.npz"))
    assert stored["images"].shape == (taken, 28, 28)
    trained = set(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/lineage/trained_fingerprints.txt").split())
    assert not trained & set(stored["fingerprints"])  # calibrated on images it never trained on
    reference = load_reference(download_reference(run.info.run_id))
    assert 0.2 < float(reference.served_share) < 0.7 and reference.class_means.shape[0] > 10
    # the Devanagari half of the traffic is foreign to version 1, not to the version trained on it
    log = read_records(str(out / "dataset"))
    records = log[log["window"] >= 4]
    foreign = records.assign(foreign=records["flags"].str.contains("foreign")).groupby("model_version")["foreign"].mean()
    assert foreign["1"] > 0.3 and foreign[promoted["version"]] < foreign["1"] / 3
    # so the foreign-digit test that opened the incident, firing on every drifted window of version 1's, sees a
    # foreign rate under a third of that in every window after the promotion, each window judged against the
    # reference of the version serving it (this small model, one epoch on few labels, stays poor on Devanagari
    # digits: its accuracy rule may rightly keep the incident open). Whether the test still fires on some of them
    # is left to chance: a small run's reference calibrates its 1% threshold on a few hundred held-out images, so on
    # new images of their kind it flags 1 to 6 percent, and at 150 records a window fires from 9 flagged (6%).
    opened = [event for event in figures["incidents"] if event["event"] == "opened"]
    assert opened[0]["window"] == figures["first_alert_window"] and "foreign_digits" in opened[0]["rules"]
    bound = next(rule.threshold for rule in load_policy(None, reference).rules if rule.name == "foreign_digits")
    judged = []  # (window, foreign rate, fired) of each window of a version's, a whole window each
    for version, mine in log[log["window"] >= 4].groupby("model_version"):
        served = download_reference(client.get_model_version("digits-cnn", version).run_id)
        metrics = window_metrics(mine, load_reference(served))
        assert not metrics["too_small"].any() and metrics["foreign_p"].notna().all(), (version, metrics)
        judged += zip(metrics["window"], metrics["foreign_rate"], metrics["foreign_p"] < bound)
    before = [(rate, fired) for window, rate, fired in judged if window <= promoted["window"]]
    after = [rate for window, rate, _ in judged if window > promoted["window"]]
    assert before and all(fired for _, fired in before) and len(after) >= 3, judged
    assert max(after) < min(rate for rate, _ in before) / 3, judged
    first = _first_promotion(figures)["window"]
    assert figures["incidents_after_first_promotion"]["windows"] == SMALL_SCENARIO["windows"] - first - 1


def test_the_retrains_record_their_lineage_and_the_promotion_its_decision_in_mlflow(loop):
    import mlflow

    _, _, figures = loop
    client = mlflow.MlflowClient()
    first, second = client.get_model_version("digits-cnn", "2"), client.get_model_version("digits-cnn", "3")
    first_run, second_run = client.get_run(first.run_id), client.get_run(second.run_id)
    assert first.tags["digitdrift.parent_version"] == first_run.data.tags["digitdrift.parent_version"] == "1"
    # the second retrain starts from the champion of its time: version 2 if it was promoted, else version 1
    first_promoted = first_run.data.tags["digitdrift.promotion"] == "promoted"
    assert second.tags["digitdrift.parent_version"] == ("2" if first_promoted else "1")
    champion = str(client.get_model_version_by_alias("digits-cnn", "champion").version)
    assert champion == _events(figures, "promoted")[-1]["version"]
    for run in (first_run, second_run):
        decision = run.data.tags["digitdrift.promotion"]
        assert decision in ("promoted", "refused") and "model validation" in run.data.tags["digitdrift.promotion_reason"]
        gate = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/promotion/gate.json")
        assert gate["promoted"] == (decision == "promoted") and gate["candidate"]["version"] in ("2", "3")
        assert gate["baseline"]["replay_accuracy"] == run.data.metrics["replay_parent_accuracy"]
        metrics = run.data.metrics
        if decision == "promoted":  # better on the replay set, or as good and surer of the right answers
            assert metrics["replay_accuracy"] >= metrics["replay_parent_accuracy"]
            if metrics["replay_accuracy"] == metrics["replay_parent_accuracy"]:
                assert metrics["replay_log_loss"] < metrics["replay_parent_log_loss"] and "replay_log_loss" in gate["thresholds"]
        inputs = {(entry.dataset.name, entry.tags[0].value) for entry in run.inputs.dataset_inputs}
        assert {("labels-train", "training"), ("labels-replay", "evaluation"), ("mnist-train", "training")} <= inputs
    trained = set(mlflow.artifacts.load_text(f"runs:/{second.run_id}/lineage/trained_fingerprints.txt").split())
    # the labeled images, and the unlabeled incident images it labeled itself (self-training) when it had any
    pseudo = int(second_run.data.params.get("pseudo_labeled_images", 0))
    assert trained and int(second_run.data.params["labeled_train_images"]) + pseudo == len(trained)
    # what it trained on never counts in its evaluation of the foreign sets
    from common.datasets import load_source
    from common.images import fingerprint

    devanagari = load_source("devanagari", SHARED_DATA)
    if first_promoted:  # and what its parent trained on
        trained |= set(mlflow.artifacts.load_text(f"runs:/{first.run_id}/lineage/trained_fingerprints.txt").split())
    seen = sum(fingerprint(image) in trained for image in devanagari.images)
    assert seen > 0
    assert int(second_run.data.params["devanagari_unseen_images"]) == len(devanagari) - seen


def test_a_following_server_switches_models_under_load_without_failing_a_request(loop, tmp_path):
    import mlflow

    settings, _, _ = loop
    champion = str(mlflow.MlflowClient().get_model_version_by_alias("digits-cnn", "champion").version)
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": settings.tracking_uri, "DIGITDRIFT_HOME": str(settings.state_dir)}
    command = serving_command(
        "models:/digits-cnn@champion", port, "--prediction-log", str(tmp_path / "p.db"), "--follow-seconds", "0.5"
    )
    image = np.zeros((28, 28), dtype=int).tolist()
    statuses, versions, stop = [], [], threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answer = client.post(f"http://127.0.0.1:{port}/score", json={"data": [image]})
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    versions.append(answer.json()["model"]["version"])

    with running(command, f"http://127.0.0.1:{port}/ready", env=env, log_path=tmp_path / "server.log"):
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            client = mlflow.MlflowClient()
            for target in ("1", "2"):
                client.set_registered_model_alias("digits-cnn", "champion", target)
                deadline = time.monotonic() + 120
                while not versions or versions[-1] != target:
                    assert time.monotonic() < deadline, f"the server did not switch to version {target}"
                    time.sleep(0.2)
            time.sleep(1)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert statuses and set(statuses) == {200}
    switches = [pair for pair in zip(versions, versions[1:]) if pair[0] != pair[1]]
    assert (champion, "1") in switches and ("1", "2") in switches
    log = (tmp_path / "server.log").read_text()
    assert f"now serving digits-cnn version 1 (was {champion})" in log and "Traceback" not in log


def test_a_following_server_keeps_serving_degraded_while_the_registry_is_down_and_recovers_by_itself(loop, tmp_path):
    settings, _, _ = loop
    registry_port, port = free_port(), free_port()
    registry, url = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{port}"
    registry_command = mlflow_server_command(registry_port, settings.tracking_uri, str(tmp_path / "proxied"), workers=1)
    # one try per check, so that a check fails in seconds rather than after MLflow's minutes of retries
    env = {"MLFLOW_TRACKING_URI": registry, "DIGITDRIFT_HOME": str(settings.state_dir), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    command = serving_command(
        "models:/digits-cnn@champion", port, "--prediction-log", str(tmp_path / "p.db"), "--follow-seconds", "0.5"
    )

    def start_registry(name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "wb") as output:
            process = subprocess.Popen(registry_command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
        wait_for_http(f"{registry}/health", process)
        return process

    def following_becomes(status: str) -> dict:
        deadline = time.monotonic() + 90
        while (ready := httpx.get(f"{url}/ready", timeout=10).json())["following"]["status"] != status:
            assert time.monotonic() < deadline, f"/ready still says {ready} after 90 s"
            time.sleep(0.5)
        return ready

    image = np.zeros((28, 28), dtype=int).tolist()
    registry_process = start_registry("registry")
    try:
        with running(command, f"{url}/ready", env=env, log_path=tmp_path / "server.log"):
            served = following_becomes("ok")["version"]
            stop(registry_process)
            degraded = following_becomes("degraded")
            assert degraded["ready"] and degraded["version"] == served and degraded["following"]["since"]
            answer = httpx.post(f"{url}/score", json={"data": [image]}, timeout=30)
            assert answer.status_code == 200 and answer.json()["model"]["version"] == served  # it keeps serving
            registry_process = start_registry("registry-again")
            recovered = following_becomes("ok")
            assert recovered["ready"] and recovered["version"] == served and "error" not in recovered["following"]
    finally:
        stop(registry_process)
    log = (tmp_path / "server.log").read_text()
    assert log.count("could not follow models:/digits-cnn@champion") == 1 and f"still serving version {served}" in log
    assert "following models:/digits-cnn@champion again" in log and "Traceback" not in log


def test_a_registry_webhook_switches_a_following_server_at_once_and_a_forged_delivery_is_refused(loop, tmp_path):
    import mlflow

    from serving.webhooks import signature

    settings, _, _ = loop
    registry_port, port = free_port(), free_port()
    registry, url = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{port}"
    hook_url = f"{url}/webhooks/mlflow"
    with open(tmp_path / "registry.log", "wb") as output:
        registry_process = subprocess.Popen(
            mlflow_server_command(registry_port, settings.tracking_uri, str(tmp_path / "proxied"), workers=1),
            cwd=PROJECT_ROOT,
            env={**os.environ, **loopback_webhook_env(new_fernet_key())},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    client = mlflow.MlflowClient(tracking_uri=registry)
    original = str(mlflow.MlflowClient().get_model_version_by_alias("digits-cnn", "champion").version)
    env = {"MLFLOW_TRACKING_URI": registry, "DIGITDRIFT_HOME": str(settings.state_dir), "DIGITDRIFT_WEBHOOK_SECRET": "hush"}
    # polling once in ten minutes: only the webhook can make the switch within the test's time
    command = serving_command(
        "models:/digits-cnn@champion", port, "--prediction-log", str(tmp_path / "p.db"), "--follow-seconds", "600",
        "--webhook-url", hook_url,
    )  # fmt: skip
    try:
        wait_for_http(f"{registry}/health", registry_process)
        with running(command, f"{url}/ready", env=env, log_path=tmp_path / "server.log"):
            assert [hook.url for hook in client.list_webhooks()] == [hook_url]
            served = httpx.get(f"{url}/ready", timeout=10).json()["version"]
            target = "1" if served != "1" else "2"
            body = json.dumps({"entity": "model_version_alias", "action": "created",
                               "data": {"name": "digits-cnn", "alias": "champion", "version": target}}).encode()  # fmt: skip
            stamp = str(int(time.time()))
            forged = {"x-mlflow-delivery-id": "d1", "x-mlflow-timestamp": stamp, "content-type": "application/json"}
            wrong = httpx.post(
                hook_url, content=body, headers={**forged, "x-mlflow-signature": signature("guess", "d1", stamp, body)}
            )
            assert wrong.status_code == 401 and "does not verify" in wrong.json()["error"]
            old = str(int(time.time()) - 3600)
            replayed = {**forged, "x-mlflow-timestamp": old, "x-mlflow-signature": signature("hush", "d1", old, body)}
            stale = httpx.post(hook_url, content=body, headers=replayed)
            assert stale.status_code == 401 and "not within 300 s" in stale.json()["error"]
            time.sleep(1)
            assert httpx.get(f"{url}/ready", timeout=10).json()["version"] == served, "a refused delivery switched the server"

            started = time.monotonic()
            client.set_registered_model_alias("digits-cnn", "champion", target)
            while httpx.get(f"{url}/ready", timeout=10).json()["version"] != target:
                assert time.monotonic() - started < 60, "the webhook did not make the server switch"
                time.sleep(0.05)
            print(f"alias set -> serving version {target}: {time.monotonic() - started:.2f} s")
        assert client.list_webhooks() == [], "a server that stops takes its webhook back"
    finally:
        client.set_registered_model_alias("digits-cnn", "champion", original)
        stop(registry_process)
    log = (tmp_path / "server.log").read_text()
    assert "refused a webhook delivery" in log and f"now serving digits-cnn version {target}" in log and "Traceback" not in log


def test_the_labeling_commands_queue_a_log_and_answer_the_queue_from_the_sidecar(loop, tmp_path):
    import pandas as pd

    from common.labels import read_labels

    settings, out, _ = loop
    env = {**os.environ, "DIGITDRIFT_HOME": str(settings.state_dir)}
    queue, images = tmp_path / "queue.csv", tmp_path / "images"
    command = [sys.executable, "-m", "labeling", "queue", "--prediction-log", str(out / "dataset"),
               "--per-window", "5", "--from-window", "4", "--out", str(queue), "--images-dir", str(images)]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    queued = pd.read_csv(queue, dtype={"request_id": str})
    assert len(queued) == 5 * (SMALL_SCENARIO["windows"] - 4) and queued["window"].min() == 4
    # an image for each queued record whose image the log kept: every flagged one (a clean one too when a version
    # trained on the incident marked it `learned`)
    records = read_records(str(out / "dataset"), ["request_id", "image_index", "image"])
    kept = {(r, int(i)) for r, i in records.loc[records["image"].notna(), ["request_id", "image_index"]].values}
    with_image = {(r, i) for r, i in zip(queued.request_id, queued.image_index) if (r, i) in kept}
    flagged = queued[queued["stratum"] != "clean"]
    assert set(zip(flagged.request_id, flagged.image_index)) <= with_image
    assert {path.name for path in images.iterdir()} == {f"{r}-{i}.png" for r, i in with_image}
    labels_path = tmp_path / "labels.jsonl"
    truth = out / "simulation" / "ground_truth.db"
    command = [sys.executable, "-m", "labeling", "annotate", "--queue", str(queue),
               "--truth", str(truth), "--delay-windows", "2", "--out", str(labels_path)]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    labels = read_labels(labels_path)
    assert len(labels) == len(queued) and (labels["arrived_window"] == labels["window"] + 2).all()
    command[command.index(str(truth))] = str(tmp_path / "nope.db")
    missing = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope.db: no ground-truth sidecar here" in missing.stderr
