"""Monitoring a real prediction log: alerts to a real webhook, the MLflow run, bad input, the dashboard in Chromium."""

import json
import re
import shutil
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pandas as pd
import pytest
import yaml
from packaging.version import Version

from common.settings import PROJECT_ROOT
from devtools.processes import free_port, running
from serving.prediction_log import PredictionLog
from tests.helpers import VENV_BIN, assert_same_frames, chromium_dom, cli

pytestmark = pytest.mark.slow

SCENARIO = {
    "name": "devanagari-day-4",
    "windows": 8,
    "requests_per_window": 60,
    "seed": 3,
    "mode": "mix",
    "sources": {"mnist": {"weight": {"constant": 1.0}}, "devanagari": {"weight": {"step": {"at": 4, "after": 1.0}}}},
}


@pytest.fixture(scope="module")
def traffic(champion, shared_data, tmp_path_factory):
    """Real traffic through score.py in-process: MNIST, then half Devanagari from window 4."""
    home = tmp_path_factory.mktemp("monitoring")
    (home / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(home), "MLFLOW_TRACKING_URI": champion.tracking_uri}
    run = cli(
        "simulation",
        [
            "run",
            "--scenario",
            str(home / "scenario.yaml"),
            "--url",
            "inprocess",
            "--model",
            champion.uri,
            "--prediction-log",
            str(home / "log.db"),
            "--run-dir",
            str(home / "run"),
            "--no-mlflow",
        ],
        env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return home, env


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        Receiver.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Receiver.received
    server.shutdown()


@pytest.fixture(scope="module")
def monitored(traffic, champion, tmp_path_factory):
    home, env = traffic
    out = home / "out"
    return home, env, out


def test_a_monitoring_run_alerts_posts_and_logs_to_mlflow(monitored, webhook, champion):
    home, env, out = monitored
    url, received = webhook
    run = cli(
        "monitoring",
        [
            "run",
            "--log",
            str(home / "log.db"),
            "--model",
            champion.uri,
            "--truth",
            str(home / "run" / "ground_truth.db"),
            "--out",
            str(out),
            "--webhook",
            url,
            "--label",
            "test",
        ],
        env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    foreign = [alert for alert in alerts if alert["rule"] == "foreign_digits"]
    assert foreign and foreign[0]["window"] == 4, alerts
    assert not [alert for alert in alerts if alert["window"] < 4], "no alert before the Devanagari digits arrive"
    assert [(a["window"], a["rule"]) for a in received] == [(a["window"], a["rule"]) for a in alerts]
    assert received[0]["source"] == "digitdrift" and received[0]["model_version"] == champion.version
    # the rules firing from window 4 on are one incident, not one per rule
    incidents = [json.loads(line) for line in (out / "incidents.jsonl").read_text().splitlines()]
    assert [(event["event"], event["window"]) for event in incidents if event["event"] == "opened"] == [("opened", 4)]
    assert len({alert["rule"] for alert in alerts}) > 1 and "incident of window 4 opened at window 4: critical" in run.stdout
    checks = pd.read_csv(out / "checks.csv")
    assert set(checks.loc[checks["window"] < 4, "status"]) == {"pass"} and checks.loc[4, "foreign_digits"] == "fail"

    mlflow.set_tracking_uri(champion.tracking_uri)
    found = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`digitdrift.job` = 'monitor'", output_format="list"
    )
    assert len(found) == 1
    monitoring_run = found[0]
    assert monitoring_run.data.tags["model_version"] == champion.version
    assert monitoring_run.data.tags["model_alias"] == "champion" and monitoring_run.data.params["engine"] == "pandas"
    history = mlflow.MlflowClient().get_metric_history(monitoring_run.info.run_id, "foreign/estimated_share")
    assert sorted(point.step for point in history) == list(range(8))
    assert max(point.value for point in history if point.step >= 4) > 0.3 > max(p.value for p in history if p.step < 4)
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(monitoring_run.info.run_id)}
    assert {"dashboard.html", "evidently_report.html", "gallery.png", "alerts.jsonl", "window_metrics.csv"} <= artifacts
    assert {"checks.csv", "checks.xml", "incidents.jsonl", "policy"} <= artifacts
    # every metric sits in a section the MLflow UI groups by prefix; the run says what it is
    sections = {name.split("/")[0] for name in monitoring_run.data.metrics}
    assert sections == {"traffic", "confidence", "foreign", "drift", "accuracy", "quality", "alerts", "checks"}
    assert "alerts/foreign_digits" in monitoring_run.data.metrics
    assert "'test' traffic" in monitoring_run.data.tags["mlflow.note.content"]


def test_the_dashboard_draws_in_headless_chromium(monitored, tmp_path):
    _, _, out = monitored
    dom = chromium_dom((out / "dashboard.html").as_uri(), tmp_path / "profile")
    assert dom.count('class="main-svg"') >= 2  # Plotly drew its SVG layers
    assert dom.count('class="trace scatter') >= 10  # the lines of the panels
    for title in ("Drift tests (p-values, log scale)", "Accuracy: estimated without labels", "Foreign digits: estimated share"):
        assert title in dom
    # the alerted windows, each with its cause and what drifted: the Devanagari digits from window 4 on, as a cluster
    table = re.search(r'<table id="explained".*?</table>', dom, flags=re.S).group(0)
    assert "<td>window 4</td><td>drift</td><td>top cluster:" in table, table[:2000]


def test_what_drifted_is_the_devanagari_digits(monitored):
    from monitoring.engine import read_truth

    _, _, out = monitored
    clusters = pd.read_csv(out / "clusters.csv")
    tops = clusters[clusters["significant"]].drop_duplicates("window")
    assert set(tops["window"]) >= {4, 5, 6, 7}
    assert (tops["top_source"] == "devanagari").all() and tops["top_source_share"].min() >= 0.9, tops
    assert (tops["over_representation"] > 5).all() and (out / "clusters.png").stat().st_size > 10_000

    # and a labeling queue drawn from that cluster alone
    home, env, _ = monitored
    top = tops.iloc[0]
    members = f"{out / 'cluster_members.csv'}:{top['window']}:{top['cluster']}"
    queued = cli(
        "labeling",
        ["queue", "--prediction-log", str(home / "log.db"), "--per-window", "5", "--cluster", members]
        + ["--out", str(home / "cluster-queue.csv")],
        env,
    )
    assert queued.returncode == 0, queued.stderr[-2000:]
    queue = pd.read_csv(home / "cluster-queue.csv")
    truth = read_truth(home / "run" / "ground_truth.db")
    sources = queue.merge(truth, on=["request_id", "image_index"])["source"]
    assert len(queue) == 5 and set(queue["window"]) == {top["window"]} and set(sources) == {"devanagari"}


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_the_mlflow_ui_opens_on_the_runs_and_groups_a_monitoring_runs_charts(monitored, champion, tmp_path):
    """A real `mlflow server` on the tests' store, read by real headless Chromium as a reviewer would."""
    mlflow.set_tracking_uri(champion.tracking_uri)
    (monitoring_run,) = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`digitdrift.job` = 'monitor'", output_format="list"
    )
    experiment_id = monitoring_run.info.experiment_id
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", champion.tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def page(fragment: str, needle: str, profile: str) -> tuple[str, str]:
        """The DOM and visible text of a UI page, rendered again with more virtual time (20 to 160 s) until `needle`
        shows: the UI fetches runs and each metric's history, which on a busy machine (a whole `make test` on
        2 cores) outlasted three renders of 20 s once."""
        for attempt, budget_ms in enumerate((20_000, 40_000, 80_000, 160_000)):
            dom = chromium_dom(f"{url}/#/{fragment}", tmp_path / f"{profile}{attempt}", budget_ms)
            if needle in visible_text(dom):
                break
        return dom, visible_text(dom)

    with running(command, f"{url}/health", log_path=tmp_path / "mlflow.log"):
        # the link the demo prints: the experiment in the UI's model-training workflow, on its runs table
        _, landing = page(f"experiments/{experiment_id}?workflowType=machine_learning", monitoring_run.info.run_name, "a")
        assert monitoring_run.info.run_name in landing and "Run Name" in landing, landing[:2000]
        assert "Token Usage" not in landing and "Traces 0" not in landing  # not the GenAI overview
        drawn = f"{monitoring_run.info.run_name} (accuracy/estimated)"
        # MLflow 3.17's UI opened the first section with its charts; 3.15's (the one azureml-mlflow accepts) listed the
        # sections with their counts but drew no chart in any within 160 s of virtual time, here and alone
        opens_first = Version(mlflow.__version__) >= Version("3.17")
        needle = drawn if opens_first else "Model metrics (0)"
        charts, text = page(f"experiments/{experiment_id}/runs/{monitoring_run.info.run_id}/model-metrics", needle, "b")
        # one collapsible section per metric prefix, holding all of its metrics, and none left ungrouped
        sections = Counter(name.split("/")[0] for name in monitoring_run.data.metrics)
        assert set(sections) == {"traffic", "confidence", "foreign", "drift", "accuracy", "quality", "alerts", "checks"}
        for section, count in sections.items():
            assert f" {section} ({count}) " in text, (section, text[:3000])
        assert "Model metrics (0)" in text
        if opens_first:  # the first section (accuracy, alphabetically) opens with its charts drawn
            assert drawn in text, text[:3000]
            assert charts.count("<svg") >= 3


def test_an_existing_output_folder_is_never_overwritten(monitored, champion):
    home, env, out = monitored
    before = (out / "alerts.jsonl").read_text()
    run = cli("monitoring", ["run", "--log", str(home / "log.db"), "--model", champion.uri, "--out", str(out)], env)
    assert run.returncode == 2 and "already exists; monitoring never overwrites" in run.stderr
    assert (out / "alerts.jsonl").read_text() == before


def test_an_empty_log_is_named(traffic, champion, tmp_path):
    _, env = traffic
    PredictionLog(tmp_path / "empty.db").close()
    run = cli("monitoring", ["run", "--log", str(tmp_path / "empty.db"), "--model", champion.uri, "--no-mlflow"], env)
    assert run.returncode == 2 and "the prediction log is empty" in run.stderr and "Traceback" not in run.stderr


def test_the_monitor_says_in_one_line_that_the_tracking_server_does_not_answer(traffic, champion):
    home, env = traffic
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**env, "MLFLOW_TRACKING_URI": down, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    run = cli("monitoring", ["run", "--log", str(home / "log.db"), "--model", champion.uri, "--no-mlflow"], env)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"error: the MLflow tracking server at {down} did not answer" in run.stderr and "Connection refused" in run.stderr


def test_a_log_from_another_model_version_is_named(traffic, champion, tmp_path):
    home, env = traffic
    run = cli(
        "monitoring",
        ["run", "--log", str(home / "log.db"), "--reference", str(tmp_path / "x.npz"), "--model-version", "77", "--no-mlflow"],
        env,
    )
    assert run.returncode == 2 and "no monitoring reference here" in run.stderr
    shutil.copy(
        mlflow.artifacts.download_artifacts(
            run_id=mlflow.MlflowClient(champion.tracking_uri).get_model_version_by_alias("digits-cnn", "champion").run_id,
            artifact_path="reference/reference.npz",
            tracking_uri=champion.tracking_uri,
        ),
        tmp_path / "reference.npz",
    )
    run = cli(
        "monitoring",
        [
            "run",
            "--log",
            str(home / "log.db"),
            "--reference",
            str(tmp_path / "reference.npz"),
            "--model-version",
            "77",
            "--no-mlflow",
        ],
        env,
    )
    assert (
        run.returncode == 2 and f"no records of digits-cnn version 77 (the log holds versions {champion.version})" in run.stderr
    )


def test_windows_with_too_few_records_are_shown_but_not_judged(traffic, champion, tmp_path):
    home, env = traffic
    run = cli(
        "monitoring",
        [
            "run",
            "--log",
            str(home / "log.db"),
            "--model",
            champion.uri,
            "--min-window-size",
            "100",
            "--out",
            str(tmp_path / "out"),
            "--no-mlflow",
        ],
        env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "8 windows, 480 records, 0 alerts" in run.stdout
    assert (tmp_path / "out" / "alerts.jsonl").read_text() == ""


def test_spark_duckdb_and_pandas_engines_judge_the_same_log_alike(traffic, champion, spark, tmp_path):
    from monitoring.duckdb_engine import DuckLog
    from monitoring.engine import read_truth
    from monitoring.job import judge
    from monitoring.metrics import AGGREGATE_COLUMNS, MonitorConfig
    from monitoring.model import resolve_model
    from monitoring.pandas_engine import PandasLog
    from monitoring.spark_engine import SparkLog
    from serving.prediction_log import export_parquet

    home, _ = traffic
    export_parquet(home / "log.db", tmp_path / "log.parquet")
    mlflow.set_tracking_uri(champion.tracking_uri)
    model = resolve_model(champion.uri, None, None, "digits-cnn")
    truth = read_truth(home / "run" / "ground_truth.db")
    # windows of 60 records and samples of 40 and 25: both engines must pick the same records
    config = MonitorConfig(ks_max_window=40, mmd_max_window=25, mmd_permutations=200)
    by_pandas, by_spark = PandasLog.read(tmp_path / "log.parquet"), SparkLog.read(tmp_path / "log.parquet")

    counts = [column for column in AGGREGATE_COLUMNS if column.endswith("_count") or column in ("window", "volume")]
    assert_same_frames(by_pandas.aggregates(model.reference), by_spark.aggregates(model.reference), exact=counts)
    assert_same_frames(by_pandas.samples(40), by_spark.samples(40), exact=["window"])
    metrics_pandas, alerts_pandas, _ = judge(by_pandas, model, config, truth)
    metrics_spark, alerts_spark, _ = judge(by_spark, model, config, truth)
    assert_same_frames(metrics_pandas, metrics_spark, exact=["window", "volume", "too_small"])
    assert alerts_pandas == alerts_spark and alerts_pandas
    assert metrics_pandas["embedding_p"].notna().all() and metrics_pandas["true_foreign_share"].iloc[-1] > 0.3
    metrics_duckdb, alerts_duckdb, _ = judge(DuckLog.read(tmp_path / "log.parquet"), model, config, truth)
    assert_same_frames(metrics_pandas, metrics_duckdb, exact=["window", "volume", "too_small"])
    assert alerts_pandas == alerts_duckdb

    drifted = [4, 5, 6, 7]
    columns = ["request_id", "image_index", "window", "confidence"]
    pandas_rows = by_pandas.rows_of_windows(drifted, 50)[columns].sort_values(columns[:2]).reset_index(drop=True)
    spark_rows = by_spark.rows_of_windows(drifted, 50)[columns].sort_values(columns[:2]).reset_index(drop=True)
    assert len(pandas_rows) == 50 and pandas_rows.equals(spark_rows)
    gallery_pandas = by_pandas.least_confident(drifted, 3)[columns].reset_index(drop=True)
    assert gallery_pandas.equals(by_spark.least_confident(drifted, 3)[columns].reset_index(drop=True))


def test_the_spark_engine_from_the_command_line_matches_the_pandas_run(monitored, champion, tmp_path):
    from serving.prediction_log import export_parquet

    home, env, pandas_out = monitored  # the pandas run of the first test, on the SQLite log
    export_parquet(home / "log.db", tmp_path / "log.parquet")
    arguments = ["--model", champion.uri, "--truth", str(home / "run" / "ground_truth.db"), "--label", "test-spark"]
    sqlite_run = cli("monitoring", ["run", "--engine", "spark", "--log", str(home / "log.db"), *arguments], env)
    assert sqlite_run.returncode == 2 and "the Spark engine reads Parquet logs" in sqlite_run.stderr
    out = tmp_path / "spark-out"
    engine = ["--engine", "spark", "--spark-master", "local[1]"]
    run = cli("monitoring", ["run", *engine, "--log", str(tmp_path / "log.parquet"), *arguments, "--out", str(out)], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_frames(
        pd.read_csv(pandas_out / "window_metrics.csv"), pd.read_csv(out / "window_metrics.csv"), exact=["window", "volume"]
    )
    alerts = [
        [(json.loads(line)["window"], json.loads(line)["rule"]) for line in (folder / "alerts.jsonl").read_text().splitlines()]
        for folder in (pandas_out, out)
    ]
    assert alerts[0] == alerts[1] and alerts[0]
    assert {"dashboard.html", "evidently_report.html", "gallery.png"} <= {path.name for path in out.iterdir()}
    mlflow.set_tracking_uri(champion.tracking_uri)
    found = mlflow.search_runs(search_all_experiments=True, filter_string="params.engine = 'spark'", output_format="list")
    assert len(found) == 1 and found[0].data.tags["traffic"] == "test-spark"


def test_the_evidently_report_agrees_with_the_monitor_on_a_stable_and_a_drifted_log(traffic, champion, tmp_path):
    from monitoring.job import monitor
    from monitoring.model import resolve_model
    from monitoring.pandas_engine import PandasLog

    home, _ = traffic
    mlflow.set_tracking_uri(champion.tracking_uri)
    model = resolve_model(champion.uri, None, None, "digits-cnn")
    log = PandasLog.read(home / "log.db")
    stable = monitor(PandasLog(log.frame[log.frame["window"] < 4], log.images), model, tmp_path / "stable", "stable", track=False)
    drifted = monitor(log, model, tmp_path / "drifted", "drifted", track=False)

    assert stable.alerts == [] and not stable.report.dataset_drift, stable.report
    assert drifted.alerts and drifted.report.dataset_drift, drifted.report
    # drift though fewer than Evidently's default half of the columns moved: the rule is any signal column
    assert 1 <= drifted.report.drifted_columns < drifted.report.columns / 2 and stable.report.drifted_columns == 0
    assert "flagged" in drifted.report.title and "windows between 4 and 7" in drifted.report.title
    assert "no alert" in stable.report.title and "windows between 0 and 3" in stable.report.title
    html = (tmp_path / "drifted" / "evidently_report.html").read_text()
    assert f"<title>{drifted.report.title}</title>" in html


class RouteReceiver(BaseHTTPRequestHandler):
    """A loopback receiver for incident notices: keeps each request's path, headers and raw body."""

    received: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["content-length"]))
        RouteReceiver.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_incident_notices_reach_a_signed_webhook_slack_and_email_and_a_dead_route_is_reported(
    traffic, champion, tmp_path, monkeypatch
):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    from devtools.processes import free_port
    from monitoring.job import monitor
    from monitoring.model import resolve_model
    from monitoring.pandas_engine import PandasLog
    from monitoring.policy import load_policy
    from monitoring.routes import SIGNATURE_HEADER, verify_signature

    class Inbox(Sink):
        messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's API)
            Inbox.messages.append(envelope.content.decode())
            return "250 OK"

    server = ThreadingHTTPServer(("127.0.0.1", 0), RouteReceiver)
    RouteReceiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("TEST_ROUTE_SECRET", "s3cret")
    policy_file = tmp_path / "monitor.yaml"
    packaged = yaml.safe_load((PROJECT_ROOT / "monitoring" / "monitor.yaml").read_text())
    packaged["routes"] = {
        "team": {"type": "webhook", "url": f"{base}/hook", "secret_env": "TEST_ROUTE_SECRET"},
        "chat": {"type": "slack", "url": f"{base}/slack"},
        "oncall": {"type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "from": "m@x.test", "to": ["o@x.test"]},
        "gone": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/nobody"},
    }
    packaged["rules"]["foreign_digits"]["routes"] = ["team", "chat", "oncall", "gone"]
    policy_file.write_text(yaml.safe_dump(packaged))
    home, _ = traffic
    mlflow.set_tracking_uri(champion.tracking_uri)
    model = resolve_model(champion.uri, None, None, "digits-cnn")
    try:
        result = monitor(
            PandasLog.read(home / "log.db"),
            model,
            tmp_path / "out",
            "routed",
            track=False,
            policy=load_policy(policy_file, model.reference),
        )
    finally:
        server.shutdown()
        smtp.stop()
    events = [event.event for event in result.incidents]
    assert events[0] == "opened" and set(events) <= {"opened", "updated"}  # the Devanagari digits never leave
    delivered = {(d.route, d.event, d.delivered) for d in result.deliveries}
    assert delivered == {(route, event, route != "gone") for route in ("team", "chat", "oncall", "gone") for event in set(events)}
    assert "ConnectError" in next(d.error for d in result.deliveries if d.route == "gone")
    hooks = [(headers, body) for path, headers, body in RouteReceiver.received if path == "/hook"]
    slack = [json.loads(body) for path, _, body in RouteReceiver.received if path == "/slack"]
    assert len(hooks) == len(slack) == len(events)
    headers, body = hooks[0]
    assert json.loads(body)["event"] == "opened" and json.loads(body)["incident"] == 4
    assert verify_signature(body, headers[SIGNATURE_HEADER], "s3cret", now=time.time())
    assert not verify_signature(body, headers[SIGNATURE_HEADER], "s3cret", now=time.time() + 3600)  # replayed an hour on
    assert not verify_signature(body + b" ", headers[SIGNATURE_HEADER], "s3cret", now=time.time())
    assert "incident opened on digits-cnn" in slack[0]["text"]
    assert len(Inbox.messages) == len(events) and "Subject: [critical] digitdrift incident opened" in Inbox.messages[0]
