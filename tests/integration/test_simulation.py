"""The traffic client against the real server: kill and resume, refusals, in-process runs, the MLflow run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest

from common.records import read_prediction_log
from common.settings import PROJECT_ROOT
from devtools.processes import free_port, running
from simulation.scenario import load_scenario, plan_traffic
from tests.helpers import serving_command

pytestmark = pytest.mark.slow

SMALL = ["--scenario", "seasonal-japanese", "--windows", "6", "--requests-per-window", "20"]


def simulate(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "simulation", "run", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def sidecar_ids(path):
    if not path.exists():
        return []
    with sqlite3.connect(path) as connection:
        try:
            return [row[0] for row in connection.execute("SELECT request_id FROM ground_truth")]
        except sqlite3.OperationalError:
            return []


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    home = tmp_path_factory.mktemp("sim-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(champion.uri, port, "--prediction-log", str(home / "predictions.db"))
    with running(command, f"{url}/ready", {"MLFLOW_TRACKING_URI": champion.tracking_uri}, home / "server.log"):
        yield url, home / "predictions.db"


def test_a_run_killed_midway_and_resumed_logs_every_request_once(server, shared_data, tmp_path):
    url, log_path = server
    run_dir = tmp_path / "run"
    env = {
        "DIGITDRIFT_DATA": str(shared_data),
        "DIGITDRIFT_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'sim.db'}",
    }
    first = simulate([*SMALL, "--url", url, "--run-dir", str(run_dir), "--rate", "30", "--concurrency", "4"], env)
    deadline = time.monotonic() + 120
    while len(sidecar_ids(run_dir / "ground_truth.db")) < 25 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    delivered_before = set(sidecar_ids(run_dir / "ground_truth.db"))
    assert 25 <= len(delivered_before) < 120, "the kill should land mid-way"

    second = simulate(["--url", url, "--run-dir", str(run_dir)], env)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    assert "already delivered earlier" in out

    planned = {
        r.request_id
        for r in plan_traffic(
            load_scenario("seasonal-japanese", windows=6, requests_per_window=20), {"mnist": 10000, "japanese": 10800}
        )
    }
    sidecar = sidecar_ids(run_dir / "ground_truth.db")
    assert sorted(sidecar) == sorted(planned)  # each once
    log = read_prediction_log(log_path)
    ours = [request_id for request_id in log["request_id"] if request_id in planned]
    assert sorted(ours) == sorted(planned)  # each once, though some may have been sent twice
    assert set(log["window"][[rid in planned for rid in log["request_id"]]]) == set(range(6))

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'sim.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["scenario"] == "seasonal-japanese" and runs[0].data.params["seed"] == "12"
    assert runs[0].data.tags["model_version"]
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"schedule.html", "scenario.yaml"} <= artifacts
    (plan,) = runs[0].inputs.dataset_inputs  # the planned traffic, as the run's dataset input
    assert plan.dataset.name == "plan-seasonal-japanese" and plan.tags[0].value == "simulation"
    assert "'seasonal-japanese' scenario" in runs[0].data.tags["mlflow.note.content"]


def test_ground_truth_never_reaches_the_server(server, shared_data, tmp_path):
    url, log_path = server
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(tmp_path)}
    run = simulate([*SMALL, "--windows", "1", "--url", url, "--run-dir", str(tmp_path / "r"), "--no-mlflow"], env)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-2000:]
    with sqlite3.connect(log_path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(predictions)")]
    assert not {"label", "source"} & set(columns)


def test_a_refusing_server_stops_the_run_cleanly_with_the_status(champion, shared_data, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_server = {"MLFLOW_TRACKING_URI": champion.tracking_uri, "DIGITDRIFT_API_KEY": "right"}
    with running(
        serving_command(champion.uri, port, "--prediction-log", "none"), f"{url}/health", env_server, tmp_path / "server.log"
    ):
        env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(tmp_path), "DIGITDRIFT_API_KEY": "wrong"}
        run = simulate([*SMALL, "--url", url, "--run-dir", str(tmp_path / "run"), "--no-mlflow"], env)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 3
    assert "HTTP 401" in err and "API key" in err and "resume with" in err
    assert "Traceback" not in err
    assert sidecar_ids(tmp_path / "run" / "ground_truth.db") == []


def test_in_process_run_scores_through_score_py(champion, shared_data, tmp_path):
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(tmp_path)}
    run = simulate(
        [
            *SMALL,
            "--windows",
            "2",
            "--url",
            "inprocess",
            "--model",
            str(champion.folder),
            "--prediction-log",
            str(tmp_path / "log.db"),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-mlflow",
        ],
        env,
    )
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    assert "delivered 40 requests" in out
    assert len(read_prediction_log(tmp_path / "log.db")["request_id"]) == 40
    assert len(sidecar_ids(tmp_path / "run" / "ground_truth.db")) == 40


def test_a_bad_scenario_file_is_named_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("windows: 5\nrequests_per_window: 2\nsources:\n  martian: {weight: 1}\n")
    run = simulate(["--scenario", str(bad), "--url", "http://127.0.0.1:9", "--no-mlflow"], {"DIGITDRIFT_HOME": str(tmp_path)})
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2 and f"{bad}: sources.martian: unknown source" in err and "Traceback" not in err
