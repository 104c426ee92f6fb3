"""Real traffic over real time: requests sent live with no window, judged in windows of wall-clock time."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from common.prediction_dataset import part_name, records_table
from common.records import read_prediction_log, records_of_frame
from common.windows import WindowClock
from devtools.processes import free_port, running
from serving.prediction_log import PredictionLog
from tests.helpers import assert_same_frames, cli, serving_command

pytestmark = pytest.mark.slow

WINDOW_S = 10
CHANGE_AT = 5  # scenario windows 0-4: MNIST only; 5-8: 40% Devanagari
LIVE_SCENARIO = {
    "name": "live-devanagari-40",
    "windows": 9,
    "window": "live window",
    "requests_per_window": 20,
    "images_per_request": 5,
    "seed": 11,
    "mode": "mix",
    "sources": {
        "mnist": {"weight": {"constant": 0.6}},
        "devanagari": {"weight": {"step": {"at": CHANGE_AT, "after": 0.4}}},
    },
}


@pytest.fixture(scope="module")
def live(champion, shared_data, tmp_path_factory):
    """Live traffic through our HTTP server: 9 windows of 10 s, no window sent, Devanagari at 40% from the 6th."""
    home = tmp_path_factory.mktemp("live")
    (home / "scenario.yaml").write_text(yaml.safe_dump(LIVE_SCENARIO))
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(home), "MLFLOW_TRACKING_URI": champion.tracking_uri}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serving_command(champion.uri, port, "--prediction-log", str(home / "log.db"))
    with running(command, f"{url}/ready", env, home / "server.log"):
        arguments = ["run", "--scenario", str(home / "scenario.yaml"), "--url", url, "--live", str(WINDOW_S)]
        run = cli("simulation", [*arguments, "--run-dir", str(home / "run"), "--no-mlflow", "--concurrency", "2"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    return home, env


def test_live_traffic_with_no_window_is_judged_by_time_and_alerts_right_after_the_change(live, champion):
    home, env = live
    log = pd.DataFrame(read_prediction_log(home / "log.db"))
    assert len(log) == 9 * 20 * 5 and log["window"].isna().all()  # what real clients send: no window
    out = home / "monitor"
    arguments = ["run", "--log", str(home / "log.db"), "--model", champion.uri, "--window", f"{WINDOW_S}s"]
    run = cli("monitoring", [*arguments, "--truth", str(home / "run" / "ground_truth.db"), "--out", str(out), "--no-mlflow"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"judged by windows of {WINDOW_S}s of wall-clock time (UTC)" in run.stdout
    metrics = pd.read_csv(out / "window_metrics.csv")
    assert len(metrics) == 9 and (metrics["volume"] == 100).all()  # each scenario window is one window of time
    starts = [datetime.fromisoformat(text) for text in metrics["window_start"]]
    assert all(later - earlier == timedelta(seconds=WINDOW_S) for earlier, later in zip(starts, starts[1:]))
    first_drifted = int(metrics.loc[metrics["true_foreign_share"] > 0.1, "window"].min())
    assert first_drifted == int(metrics["window"].iloc[CHANGE_AT])
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    alerted = sorted({alert["window"] for alert in alerts})
    assert alerted and min(alerted) >= first_drifted, alerts  # never before the change
    assert min(alerted) <= first_drifted + 1  # within the first two windows after it
    assert {alert["window_start"] for alert in alerts} <= set(metrics["window_start"])


@pytest.fixture(scope="module")
def hourly_log(live, tmp_path_factory) -> Path:
    """The live log as a real client's day: each scenario window re-stamped as one hour of 2026-11-02 (UTC), no
    window; the scenario window, from the sidecar, kept aside for the checks."""
    home, _ = live
    frame = pd.DataFrame(read_prediction_log(home / "log.db"))
    with sqlite3.connect(home / "run" / "ground_truth.db") as connection:
        truth = pd.read_sql_query("SELECT request_id, image_index, window AS scenario FROM ground_truth", connection)
    frame = frame.merge(truth, on=["request_id", "image_index"])
    base = datetime(2026, 11, 2, 6, tzinfo=UTC)  # 07:00 in Paris (UTC+1 in November)
    frame["timestamp"] = [
        (base + timedelta(hours=int(scenario), seconds=index % 3000)).isoformat(timespec="microseconds")
        for index, scenario in enumerate(frame["scenario"])
    ]
    path = tmp_path_factory.mktemp("hourly") / "log.db"
    writer = PredictionLog(path)
    writer.write(records_of_frame(frame.drop(columns=["scenario"])))
    writer.close()
    return path


def test_a_log_of_real_clients_is_judged_by_the_hour_and_names_its_windows_everywhere(hourly_log, live, champion):
    _, env = live
    out = hourly_log.parent / "by-hour"
    arguments = ["run", "--log", str(hourly_log), "--model", champion.uri, "--window", "1h", "--timezone", "Europe/Paris"]
    run = cli("monitoring", [*arguments, "--out", str(out), "--label", "real-clients"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = pd.read_csv(out / "window_metrics.csv")
    assert metrics["window_start"].iloc[0] == "2026-11-02T07:00:00+01:00"
    assert metrics["window_end"].iloc[-1] == "2026-11-02T16:00:00+01:00" and len(metrics) == 9
    assert "2026-11-02T12:00:00+01:00/2026-11-02T13:00:00+01:00" in run.stdout  # alerts named by their hour
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(alert["window_start"].endswith("+01:00") for alert in alerts)
    dashboard = (out / "dashboard.html").read_text()
    assert '"x":["2026-11-02T07:00:00","2026-11-02T08:00:00"' in dashboard  # a date axis, in Paris time
    assert "window start (Europe\\u002fParis, windows of 1h)" in dashboard  # Plotly's JSON escapes the slash
    run_id = run.stdout.split("MLflow run ")[1].split()[0]
    mlflow.set_tracking_uri(champion.tracking_uri)
    client = mlflow.MlflowClient()
    logged = client.get_run(run_id)
    assert logged.data.params["clock"] == "wall" and logged.data.params["window_length"] == "1h"
    starts = client.get_metric_history(run_id, "window/start_unix_s")
    steps = [point.step for point in sorted(starts, key=lambda point: point.step)]
    assert steps == list(metrics["window"]) and steps == sorted(set(steps))
    assert [point.value for point in sorted(starts, key=lambda point: point.step)][0] == datetime(
        2026, 11, 2, 6, tzinfo=UTC
    ).timestamp()
    volume = client.get_metric_history(run_id, "traffic/volume")
    assert {point.timestamp for point in volume} == {int(point.value) * 1000 for point in starts}


def test_a_log_mixing_stamped_and_unstamped_records_is_refused_with_how_to_choose(hourly_log, live, champion, tmp_path):
    _, env = live
    mixed = tmp_path / "mixed.db"
    mixed.write_bytes(hourly_log.read_bytes())
    with sqlite3.connect(mixed) as connection:
        connection.execute("UPDATE predictions SET window = 3 WHERE image_index = 0")
    arguments = ["run", "--log", str(mixed), "--model", champion.uri, "--no-mlflow", "--out"]
    refused = cli("monitoring", [*arguments, str(tmp_path / "refused")], env)
    assert refused.returncode == 2 and "records carry a simulated window and" in refused.stderr
    assert "choose --clock wall" in refused.stderr and "--clock simulated" in refused.stderr
    by_time = cli("monitoring", [*arguments, str(tmp_path / "wall"), "--clock", "wall", "--window", "1h"], env)
    assert by_time.returncode == 0 and "9 windows, 900 records" in by_time.stdout
    stamped_only = cli("monitoring", [*arguments, str(tmp_path / "simulated"), "--clock", "simulated"], env)
    assert stamped_only.returncode == 0 and "1 windows, 180 records" in stamped_only.stdout
    assert "720 records without a simulated window left out" in stamped_only.stdout


def test_an_unreadable_timestamp_is_counted_and_named_and_the_rest_is_judged(hourly_log, live, champion, tmp_path):
    _, env = live
    broken = tmp_path / "broken.db"
    broken.write_bytes(hourly_log.read_bytes())
    with sqlite3.connect(broken) as connection:
        request_id = connection.execute("SELECT request_id FROM predictions ORDER BY timestamp LIMIT 1").fetchone()[0]
        connection.execute("UPDATE predictions SET timestamp = 'last tuesday' WHERE request_id = ?", (request_id,))
    arguments = ["run", "--log", str(broken), "--model", champion.uri, "--no-mlflow", "--window", "1h"]
    run = cli("monitoring", [*arguments, "--out", str(tmp_path / "out")], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "895 records" in run.stdout and "5 records with an unreadable timestamp left out" in run.stdout
    assert f"{broken}: request {request_id} image 0, timestamp 'last tuesday'" in run.stdout
    with sqlite3.connect(broken) as connection:  # a quiet hour: no record at all from 09:00 to 10:00 UTC
        connection.execute("DELETE FROM predictions WHERE timestamp LIKE '2026-11-02T09:%'")
    quiet = cli("monitoring", [*arguments, "--out", str(tmp_path / "quiet")], env)
    assert quiet.returncode == 0 and "9 windows, 795 records" in quiet.stdout, quiet.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "quiet" / "window_metrics.csv")
    empty = metrics[metrics["window_start"] == "2026-11-02T09:00:00+00:00"]
    assert empty["volume"].tolist() == [0] and empty["too_small"].tolist() == [True]  # shown, never merged


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--window", "1x", "expected a whole number and a unit"), ("--timezone", "Mars/Base", "expected an IANA timezone")],
)
def test_an_unreadable_window_or_timezone_names_the_flag_and_the_accepted_forms(flag, value, expected, tmp_path):
    run = cli("monitoring", ["run", "--log", str(tmp_path / "none.db"), flag, value], {"DIGITDRIFT_HOME": str(tmp_path)})
    assert run.returncode == 2 and f"{flag} {value!r}: {expected}" in run.stderr


def test_spark_duckdb_and_pandas_judge_time_windows_alike(hourly_log, champion, spark, tmp_path):
    from monitoring.engine import open_log
    from monitoring.job import judge
    from monitoring.metrics import MonitorConfig
    from monitoring.model import resolve_model
    from serving.prediction_log import export_parquet

    export_parquet(hourly_log, tmp_path / "log.parquet")
    mlflow.set_tracking_uri(champion.tracking_uri)
    model = resolve_model(champion.uri, None, None, "digits-cnn")
    clock = WindowClock.wall("1h", "Europe/Paris")
    by_pandas = open_log(tmp_path / "log.parquet", "pandas", clock="auto", wall=clock)
    by_spark = open_log(tmp_path / "log.parquet", "spark", "local[2]", clock="auto", wall=clock)
    assert by_pandas.clock == by_spark.clock == clock
    config = MonitorConfig(ks_max_window=40, mmd_max_window=25, mmd_permutations=200)
    metrics_pandas, alerts_pandas, _ = judge(by_pandas, model, config)
    metrics_spark, alerts_spark, _ = judge(by_spark, model, config)
    assert_same_frames(metrics_pandas, metrics_spark, exact=["window", "volume", "too_small"])
    assert alerts_pandas == alerts_spark and alerts_pandas
    assert metrics_pandas["window_start"].iloc[0] == "2026-11-02T07:00:00+01:00"
    by_duckdb = open_log(tmp_path / "log.parquet", "duckdb", clock="auto", wall=clock)
    metrics_duckdb, alerts_duckdb, _ = judge(by_duckdb, model, config)
    assert by_duckdb.clock == clock and by_duckdb.left_out == by_pandas.left_out
    assert_same_frames(metrics_pandas, metrics_duckdb, exact=["window", "volume", "too_small"])
    assert alerts_pandas == alerts_duckdb


@pytest.mark.parametrize("engine", ["pandas", "duckdb", "spark"])
def test_an_incremental_run_judges_a_time_window_after_its_lateness_and_counts_late_arrivals(
    hourly_log, champion, spark, tmp_path, engine
):
    from monitoring.job import DatasetSource, monitor_dataset
    from monitoring.model import resolve_model

    frame = pd.DataFrame(read_prediction_log(hourly_log))
    hours = frame["timestamp"].str[:13]
    location = tmp_path / "dataset"

    def publish(records: pd.DataFrame, writer: str) -> None:
        for hour, group in records.groupby(records["timestamp"].str[:13]):
            folder = location / f"date={hour[:10]}" / f"hour={hour[11:13]}"
            folder.mkdir(parents=True, exist_ok=True)
            rows = [record.row() for record in records_of_frame(group)]
            pq.write_table(records_table(rows), folder / part_name(writer, 0))

    first_hours = sorted(hours.unique())[:5]
    early, rest = frame[hours.isin(first_hours)], frame[~hours.isin(first_hours)]
    late = early[early["request_id"].isin(early["request_id"].unique()[:3])]
    publish(early.drop(late.index), "a")
    mlflow.set_tracking_uri(champion.tracking_uri)
    model = resolve_model(champion.uri, None, None, "digits-cnn")
    hourly = WindowClock.wall("1h")
    source = DatasetSource(str(location), tmp_path / "watermark.json", track=False, clock="wall", window="1h")
    # 11:03 UTC: the 10:00-11:00 window waits for its 5 minutes of lateness
    first, increment, _ = monitor_dataset(
        source, model, tmp_path / "first", "ds", tmp_path / "cache", engine=engine, now=datetime(2026, 11, 2, 11, 3, tzinfo=UTC)
    )
    assert len(first.metrics) == 4 and increment.through == hourly.window_of(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    assert list(first.stages)[0] == "window_metrics_and_alerts" and "evidently_report" in first.stages
    publish(late, "b")  # arrives after its hour was judged
    publish(rest, "c")
    later = DatasetSource(str(location), tmp_path / "watermark.json", track=False, clock="auto", close_windows=True)
    result, _, _ = monitor_dataset(
        later, model, tmp_path / "second", "ds", tmp_path / "cache", engine=engine, now=datetime(2026, 11, 2, 18, tzinfo=UTC)
    )
    assert len(result.metrics) == 5 and result.clock == hourly  # the watermark's clock
    assert result.left_out.late == len(late) == 15
    judged = int(first.metrics["volume"].sum()) + int(result.metrics["volume"].sum())
    assert judged == len(frame) - len(late)  # every record judged once but the late ones, counted instead


def test_thirty_daily_runs_make_one_history_one_mlflow_timeline_and_one_dashboard_with_the_version_change(
    hourly_log, champion, tmp_path
):
    from monitoring.history import deployment_key, read_history
    from monitoring.job import DatasetSource, HistorySink, monitor_dataset
    from monitoring.model import ModelRef, resolve_model
    from tests.helpers import chromium_dom

    source = pd.DataFrame(read_prediction_log(hourly_log))
    location = tmp_path / "dataset"
    start = datetime(2026, 10, 1, 12, tzinfo=UTC)
    mlflow.set_tracking_uri(champion.tracking_uri)
    reference = resolve_model(champion.uri, None, None, "digits-cnn").reference
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("daily-monitoring")
    key = deployment_key("digits-cnn", "daily-traffic")
    sink = HistorySink(str(tmp_path / "history"), key)
    daily = DatasetSource(str(location), tmp_path / "watermark.json", clock="wall", window="1d", dataset_id="daily-traffic")
    for day in range(30):  # each day a hundred real records arrive, served by version 1 and from day 15 by version 2
        version = "1" if day < 15 else "2"
        picks = source.iloc[[(day * 100 + index) % len(source) for index in range(100)]].copy()
        moment = start + timedelta(days=day)
        picks["timestamp"] = [(moment + timedelta(seconds=index)).isoformat(timespec="microseconds") for index in range(100)]
        picks["request_id"] = [f"day{day}-{index}" for index in range(100)]
        picks["model_version"] = version
        folder = location / f"date={moment:%Y-%m-%d}" / "hour=12"
        folder.mkdir(parents=True)
        pq.write_table(records_table([record.row() for record in records_of_frame(picks)]), folder / part_name("a", day))
        # the schedule runs the next day, once the day's window and its lateness have passed
        result, increment, _ = monitor_dataset(
            daily,
            ModelRef("digits-cnn", version, None, reference),
            tmp_path / f"run-{day}",
            "daily",
            tmp_path / "cache",
            now=moment + timedelta(hours=12, minutes=10),
            history_sink=sink,
        )
        assert result is not None and len(result.metrics) == 1, (day, increment)
    history = read_history(sink.location)
    assert len(history) == 30 and history["model_version"].tolist() == ["1"] * 15 + ["2"] * 15
    assert history["window_start"].iloc[0] == "2026-10-01T00:00:00+00:00" and (history["volume"] == 100).all()
    timeline = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.`digitdrift.history_of` = '{key}'", output_format="list"
    )
    assert len(timeline) == 1  # one long-lived run for the deployment, beside the 30 runs of their own
    volume = mlflow.MlflowClient().get_metric_history(timeline[0].info.run_id, "traffic/volume")
    assert sorted(point.step for point in volume) == history["window"].tolist()
    versions = mlflow.MlflowClient().get_metric_history(timeline[0].info.run_id, "model/version")
    assert {point.value for point in versions} == {1.0, 2.0}
    page = tmp_path / "run-29" / "dashboard.html"
    assert page.read_text().count("file://") >= 30  # a link to each run's outputs
    dom = chromium_dom(page.as_uri(), tmp_path / "profile")
    assert "v2 serves" in dom and "the last 30 windows of digits-cnn--daily-traffic" in dom
    assert dom.count('class="point"') >= 30  # the volume bars of the 30 days
