"""The partitioned prediction dataset for real: replicas on Azurite killed and restarted, incremental monitoring."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from common.prediction_dataset import filesystem, list_parts, read_parts, read_records
from common.records import PredictionRecord, read_prediction_log, records_of_frame
from common.settings import PROJECT_ROOT
from devtools.processes import free_port, stop, wait_for_http
from serving.dataset_sink import DatasetSink
from tests.helpers import acknowledged, assert_same_frames, cli, serving_command, simulate_in_background, until_acknowledged

pytestmark = pytest.mark.slow

SCENARIO = {
    "name": "devanagari-from-day-4",
    "windows": 8,
    "requests_per_window": 60,
    "seed": 5,
    "mode": "mix",
    "sources": {"mnist": {"weight": {"constant": 1.0}}, "devanagari": {"weight": {"step": {"at": 4, "after": 1.0}}}},
}


def records_of(frame: pd.DataFrame, hour: int) -> list[PredictionRecord]:
    """Real scored records, re-stamped as scored at `hour` (the dataset partitions by scoring time)."""
    return records_of_frame(frame.assign(timestamp=f"2026-11-22T{hour:02d}:30:00.000000+00:00"))


@pytest.fixture(scope="module")
def scored(champion, shared_data, tmp_path_factory):
    """Eight windows of real traffic scored through score.py (MNIST, then half Devanagari from window 4)."""
    home = tmp_path_factory.mktemp("dataset-traffic")
    (home / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(home), "MLFLOW_TRACKING_URI": champion.tracking_uri}
    arguments = ["run", "--scenario", str(home / "scenario.yaml"), "--url", "inprocess", "--model", champion.uri]
    run = cli(
        "simulation", [*arguments, "--prediction-log", str(home / "log.db"), "--run-dir", str(home / "run"), "--no-mlflow"], env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return pd.DataFrame(read_prediction_log(home / "log.db")), env


def monitor_dataset(location: str, env: dict, out: Path, champion, *extra: str) -> pd.DataFrame:
    run = cli("monitoring", ["run", "--log", location, "--model", champion.uri, "--out", str(out), "--no-mlflow", *extra], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "watermark.json").is_file()
    return pd.read_csv(out / "window_metrics.csv")


def test_an_incremental_run_reads_only_new_parts_and_matches_a_full_run(scored, champion, tmp_path):
    frame, env = scored
    location = str(tmp_path / "dataset")
    sink = DatasetSink(location, tmp_path / "staging", flush_seconds=3600)
    for window in range(4):  # day one: one part per window
        sink.write(records_of(frame[frame["window"] == window], hour=10))
        sink.publish()
    watermark = tmp_path / "watermark.json"
    first = monitor_dataset(location, env, tmp_path / "first", champion, "--watermark", str(watermark))
    assert first["window"].tolist() == [0, 1, 2]  # window 3 may still grow: judged next time

    parts_before = {part.path for part in list_parts(*filesystem(location))}
    sink.write(records_of(frame[frame["window"] >= 4], hour=11))  # day two
    sink.close()
    out = tmp_path / "second"
    second = monitor_dataset(location, env, out, champion, "--watermark", str(watermark), "--close-windows")
    assert second["window"].tolist() == [3, 4, 5, 6, 7]
    state = json.loads(watermark.read_text())
    fs, root = filesystem(location)
    everything = list_parts(fs, root)
    new = [part.path for part in everything if part.path not in parts_before]
    assert len(everything) == 5 and len(new) == 1 and state["judged_through"] == 7
    assert sorted(state["consumed"]) == sorted(part.path for part in everything)

    full = monitor_dataset(location, env, tmp_path / "full", champion, "--full")
    stitched = pd.concat([first, second], ignore_index=True)
    assert_same_frames(full, stitched, exact=["window", "volume", "too_small"])
    assert int(full["volume"].sum()) == len(frame)
    nothing = cli(
        "monitoring", ["run", "--log", location, "--model", champion.uri, "--no-mlflow", "--watermark", str(watermark)], env
    )
    assert nothing.returncode == 0 and "nothing to judge" in nothing.stdout


def test_a_monitor_that_stays_up_judges_each_new_part_once_and_stops_cleanly_on_sigterm(scored, champion, tmp_path):
    frame, env = scored
    location, watermark, out = str(tmp_path / "dataset"), tmp_path / "watermark.json", tmp_path / "runs"
    sink = DatasetSink(location, tmp_path / "staging", flush_seconds=3600)
    sink.write(records_of(frame[frame["window"] < 4], hour=10))
    sink.publish()
    arguments = ["run", "--log", location, "--model", champion.uri, "--no-mlflow", "--watermark", str(watermark)]
    command = [sys.executable, "-m", "monitoring", *arguments, "--close-windows", "--out", str(out), "--every", "1s"]
    monitor = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def judged_through(window: int) -> None:
        deadline = time.monotonic() + 120
        while not (watermark.is_file() and json.loads(watermark.read_text())["judged_through"] == window):
            assert monitor.poll() is None, "the monitor stopped"
            assert time.monotonic() < deadline, f"window {window} was not judged within 120 s"
            time.sleep(0.1)

    try:
        judged_through(3)
        sink.write(records_of(frame[frame["window"] >= 4], hour=11))  # arrives while the monitor keeps running
        sink.close()
        judged_through(7)
        monitor.send_signal(signal.SIGTERM)  # ends the run under way, then the monitor
        printed, errors = monitor.communicate(timeout=120)
    finally:
        if monitor.poll() is None:
            monitor.kill()
    assert monitor.returncode == 0, errors[-3000:]
    judged = [pd.read_csv(run / "window_metrics.csv")["window"].tolist() for run in sorted(out.iterdir())]
    assert judged == [[0, 1, 2, 3], [4, 5, 6, 7]]  # each window once, by the first run after its part arrived
    assert printed.count("judged windows") == 2


def test_the_spark_engine_judges_a_dataset_like_pandas(scored, champion, tmp_path):
    frame, env = scored
    location = str(tmp_path / "dataset")
    sink = DatasetSink(location, tmp_path / "staging", flush_seconds=3600)
    sink.write(records_of(frame[frame["window"] < 4], hour=10))
    sink.write(records_of(frame[frame["window"] >= 4], hour=11))
    sink.close()
    by_pandas = monitor_dataset(location, env, tmp_path / "pandas", champion, "--full")
    by_spark = monitor_dataset(
        location, env, tmp_path / "spark", champion, "--full", "--engine", "spark", "--spark-master", "local[1]"
    )
    assert_same_frames(by_pandas, by_spark, exact=["window", "volume", "too_small"])
    assert int(by_spark["volume"].sum()) == len(frame)


def test_two_replicas_on_azurite_lose_no_acknowledged_prediction_when_one_is_killed(
    champion, azurite, shared_data, tmp_path, monkeypatch
):
    container = f"predictions{int(time.time())}"
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite,
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "DIGITDRIFT_DATA": str(shared_data),
        "DIGITDRIFT_HOME": str(tmp_path),
    }
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)  # this process reads the container too
    fs, _ = filesystem(f"az://{container}")
    fs.mkdir(container)
    location = f"az://{container}/predictions"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    def replica(index: int, flush_seconds: float = 1) -> subprocess.Popen:
        command = serving_command(
            champion.uri,
            ports[index],
            "--prediction-dataset",
            location,
            "--staging-dir",
            str(tmp_path / f"staging-{index}"),
            "--flush-seconds",
            str(flush_seconds),
        )
        with open(tmp_path / f"replica-{index}.log", "ab") as output:  # the child keeps its own handle
            process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
            )
        wait_for_http(f"{urls[index]}/ready", process, 180)
        return process

    replicas = [replica(0, flush_seconds=600), replica(1)]  # replica 0 publishes nothing before it is killed
    traffic = "--scenario gradual-devanagari --windows 6 --requests-per-window 60".split()
    simulation = simulate_in_background(",".join(urls), tmp_path / "run", env, *traffic)
    try:
        until_acknowledged(tmp_path / "run", 100, timeout=120)
        os.kill(replicas[0].pid, signal.SIGKILL)  # mid-run, with records staged and not yet published
        replicas[0].wait()
        with sqlite3.connect(tmp_path / "staging-0" / "staging.db") as staging:
            staged = staging.execute("SELECT COUNT(*) FROM staged").fetchone()[0]
        assert staged > 0  # acknowledged, and only on replica 0's disk
        replicas[0] = replica(0)  # the same staging folder: what it staged is published now
        _, errors = simulation.communicate(timeout=300)
        assert simulation.returncode == 0, errors[-3000:]
    finally:
        if simulation.poll() is None:
            simulation.kill()
        for process in replicas:
            stop(process)  # a graceful stop publishes what is staged
    ids = acknowledged(tmp_path / "run")
    assert len(ids) == 6 * 60

    parts = list_parts(fs, f"{container}/predictions")
    writers = {Path(part.path).name.split("-")[1] for part in parts}
    with sqlite3.connect(tmp_path / "staging-0" / "staging.db") as staging:
        assert staging.execute("SELECT COUNT(*) FROM staged").fetchone()[0] == 0  # published after the restart
    assert len(writers) == 2 and all(part.kind == "parquet" for part in parts)
    records = read_parts(fs, parts, ["window"])
    assert set(zip(records["request_id"], records["image_index"])) == ids  # every acknowledged record, once
    raw = sum(len(read_parts(fs, [part], ["window"])) for part in parts)
    print(f"{len(parts)} parts from 2 writers; {raw - len(records)} record(s) written by both replicas")

    for engine in ("pandas", "duckdb", "spark"):
        out = tmp_path / f"monitor-{engine}"
        extra = ["--engine", engine, "--spark-master", "local[1]"]
        metrics = monitor_dataset(location, env, out, champion, "--full", *extra)
        assert metrics["window"].tolist() == list(range(6)) and int(metrics["volume"].sum()) == len(ids)


def test_the_loop_controller_queues_after_the_alert_waits_for_labels_then_retrains_and_gates_with_its_reasons_in_mlflow(
    scored, champion, tmp_path
):
    frame, env = scored
    truth = Path(env["DIGITDRIFT_HOME"]) / "run" / "ground_truth.db"
    store = tmp_path / "mlflow.db"  # a copy of the champion's store: the controller registers and may promote
    shutil.copy(champion.tracking_uri.removeprefix("sqlite:///"), store)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "DIGITDRIFT_HOME": str(tmp_path / "home")}
    location, labels, out = str(tmp_path / "dataset"), tmp_path / "labels.jsonl", tmp_path / "controller"
    sink = DatasetSink(location, tmp_path / "staging", flush_seconds=3600)
    sink.write(records_of(frame, hour=10))
    sink.close()
    arguments = ["run", "--dataset", location, "--labels", str(labels), "--out", str(out), "--close-windows"]
    arguments += ["--retrain-after", "5", "--epochs", "1", "--train-limit", "2000", "--foreign-limit-per-class", "3"]
    arguments += ["--min-accuracy", "0"]

    first = cli("loop", arguments, env)  # the traffic is in, nobody has labeled yet
    assert first.returncode == 0, first.stderr[-3000:]
    decided = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    names = [decision["decision"] for decision in decided]
    assert names == ["judged", "labeling_started", "queued", "waiting_for_labels"], decided
    state = json.loads((out / "controller.json").read_text())
    alerts = [json.loads(line) for line in (out / "cycle-0001" / "monitor" / "alerts.jsonl").read_text().splitlines()]
    assert state["labeling_since"] == min(alert["window"] for alert in alerts) and state["queued_through"] == 7
    # what it read is what the monitor consumed, and it knows every kept image without reading the dataset again
    assert state["parts_read"] == json.loads((out / "watermark.json").read_text())["consumed"]
    assert len(pd.read_csv(out / "kept_images.csv")) == int(read_records(location)["image"].notna().sum()) > 0
    queue = pd.read_csv(out / "queue.csv")
    assert set(queue["window"]) == set(range(state["labeling_since"], 8)) and len(queue) <= 10 * len(set(queue["window"]))

    # the annotator stand-in answers the queue; the next cycle judges nothing again and retrains on the answers
    answered = cli("labeling", ["annotate", "--queue", str(out / "queue.csv"), "--truth", str(truth), "--out", str(labels)], env)
    assert answered.returncode == 0, answered.stderr[-2000:]
    second = cli("loop", arguments, env)
    assert second.returncode == 0, second.stderr[-3000:]
    decided = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()][len(decided) :]
    names = [decision["decision"] for decision in decided]
    assert names[:3] == ["nothing_to_judge", "retrain", "retrained"] and names[3] in ("promoted", "promotion_refused"), decided
    assert all(decision["cycle"] == 2 and decision["reason"] for decision in decided)

    # the registry agrees with the gate's decision, and MLflow holds every decision with its reason
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    challenger = client.get_model_version_by_alias("digits-cnn", "challenger").version
    now = client.get_model_version_by_alias("digits-cnn", "champion").version
    assert challenger != champion.version and (now == challenger) == (names[3] == "promoted")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, "attributes.run_name = 'loop-controller'", order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags["digitdrift.loop.last_decision"] == names[3]
    recorded = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "loop/decisions.json", str(tmp_path))).read_text())
    assert [(entry["decision"], entry["reason"]) for entry in recorded] == [(d["decision"], d["reason"]) for d in decided]
