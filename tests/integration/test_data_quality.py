"""Pipeline faults in real traffic: the server names each image's cause, the monitor alerts on the cause and not on
foreign digits, both engines count causes and bursts alike."""

import json
import re

import mlflow
import pandas as pd
import pytest
import yaml

from common.records import read_prediction_log
from tests.helpers import assert_same_frames, chromium_dom, cli

pytestmark = pytest.mark.slow

# MNIST only; 10% inverted from window 3, and a burst of one repeated image (10%) in window 5
SCENARIO = {
    "name": "faults",
    "windows": 6,
    "requests_per_window": 60,
    "seed": 4,
    "sources": {"mnist": {"weight": 1.0}},
    "corruptions": {
        "inverted": {"rate": {"step": {"at": 3, "after": 0.1}}},
        "duplicate": {"rate": {"step": {"at": 5, "after": 0.1}}},
    },
}


@pytest.fixture(scope="module")
def faulty_traffic(champion, shared_data, tmp_path_factory):
    home = tmp_path_factory.mktemp("quality")
    (home / "scenario.yaml").write_text(yaml.safe_dump(SCENARIO))
    env = {"DIGITDRIFT_DATA": str(shared_data), "DIGITDRIFT_HOME": str(home), "MLFLOW_TRACKING_URI": champion.tracking_uri}
    run = cli(
        "simulation",
        ["run", "--scenario", str(home / "scenario.yaml"), "--url", "inprocess", "--model", champion.uri]
        + ["--prediction-log", str(home / "log.db"), "--run-dir", str(home / "run"), "--no-mlflow"],
        env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return home, env


def test_the_server_names_each_corrupted_image_and_the_sidecar_keeps_the_truth(faulty_traffic):
    from common.records import read_ground_truth

    home, _ = faulty_traffic
    log = pd.DataFrame(read_prediction_log(home / "log.db", ["request_id", "image_index", "flags", "image"]))
    joined = log.merge(read_ground_truth(home / "run" / "ground_truth.db"), on=["request_id", "image_index"])
    inverted = joined[joined["corruption"] == "inverted"]
    assert len(inverted) >= 6 and inverted["flags"].str.contains("inverted").all()
    assert not inverted["flags"].str.contains("foreign").any()
    assert inverted["image"].notna().all()  # flagged images keep their pixels for the gallery
    clean = joined[joined["corruption"] == ""]
    # this champion's bounds come from only 500 held-out images (a training job holds out thousands)
    assert clean["flags"].str.contains("inverted|blank|saturated|off_centre|wrong_scale").mean() <= 0.01


@pytest.fixture(scope="module")
def monitored_faults(faulty_traffic, champion):
    home, env = faulty_traffic
    out = home / "out"
    run = cli(
        "monitoring",
        ["run", "--log", str(home / "log.db"), "--model", champion.uri, "--truth", str(home / "run" / "ground_truth.db")]
        + ["--out", str(out), "--label", "faults", "--no-mlflow"],
        env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_the_monitor_alerts_on_the_cause_and_not_on_foreign_digits(monitored_faults):
    out = monitored_faults
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert ("inverted_images", 3) in [(alert["rule"], alert["window"]) for alert in alerts], alerts
    assert ("duplicate_bursts", 5) in [(alert["rule"], alert["window"]) for alert in alerts], alerts
    assert not [alert for alert in alerts if alert["rule"] == "foreign_digits"], alerts
    assert not [alert for alert in alerts if alert["window"] < 3], alerts
    checks = pd.read_csv(out / "checks.csv", keep_default_na=False)
    assert checks.loc[checks["window"] == 3, "cause"].item() == "inverted"
    assert set(checks.loc[checks["window"] < 3, "cause"]) == {""}
    metrics = pd.read_csv(out / "window_metrics.csv")
    assert metrics.loc[metrics["window"] == 5, "duplicate_rate"].item() >= 0.05
    incidents = [json.loads(line) for line in (out / "incidents.jsonl").read_text().splitlines()]
    assert incidents[0]["event"] == "opened" and incidents[0]["window"] == 3 and "inverted" in incidents[0]["cause"]


def test_the_dashboard_draws_each_cause_that_arrived_in_chromium(monitored_faults, tmp_path):
    dom = chromium_dom((monitored_faults / "dashboard.html").as_uri(), tmp_path / "profile")
    assert "Volume, flag rates and data-quality causes" in dom
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', dom)
    assert {"inverted rate", "duplicate rate"} <= set(legend) and "blank rate" not in legend, legend
    table = re.search(r'<table id="explained".*?</table>', dom, flags=re.S).group(0)
    assert "<td>window 3</td><td>inverted</td>" in table and "<td>window 5</td><td>inverted,duplicate</td>" in table, table


def test_both_engines_count_causes_and_bursts_alike(faulty_traffic, champion, spark, tmp_path):
    from monitoring.model import resolve_model
    from monitoring.pandas_engine import PandasLog
    from monitoring.spark_engine import SparkLog
    from serving.prediction_log import export_parquet

    home, _ = faulty_traffic
    export_parquet(home / "log.db", tmp_path / "log.parquet")
    mlflow.set_tracking_uri(champion.tracking_uri)
    reference = resolve_model(champion.uri, None, None, "digits-cnn").reference
    by_pandas = PandasLog.read(tmp_path / "log.parquet").aggregates(reference)
    by_spark = SparkLog.read(tmp_path / "log.parquet").aggregates(reference)
    counted = ["window", "inverted_count", "duplicate_count"]
    assert by_pandas[counted].equals(by_spark[counted].astype(by_pandas[counted].dtypes))
    assert by_pandas["inverted_count"].iloc[3:].min() > 0 and by_pandas["duplicate_count"].iloc[5] >= 5
    assert_same_frames(by_pandas, by_spark, exact=counted)
