"""Incidents against alerts: a sudden Devanagari burst that ends, and long stable traffic, under the packaged policy.

python -m bench.incidents --stable-log LOG [--stable-windows 500] [--per-window 200]

1. A burst: 100 windows of 200 requests, MNIST only but for windows 50 to 69, when Devanagari writers send a third of
   the images; scored by the champion through score.py in process. How many alerts, how many incidents, and when the
   incident resolves.
2. Stable traffic: `--stable-windows` windows resampled from `--stable-log` (a log of MNIST-only traffic the champion
   scored, e.g. the `stable` scenario): incidents per 100 windows.
Writes bench/results/incidents.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.result_file import write_result
from common.records import read_prediction_log, records_of_frame
from common.settings import MODEL_NAME, PROJECT_ROOT, load_settings
from common.tracking import use_tracking
from monitoring.engine import for_version, open_log
from monitoring.job import judge, judged_checks
from monitoring.metrics import DEFAULT_CONFIG
from monitoring.model import resolve_model
from monitoring.policy import load_policy
from serving.prediction_log import PredictionLog

RESULTS = Path(__file__).parent / "results"
BURST = {
    "name": "devanagari-burst",
    "windows": 100,
    "requests_per_window": 200,
    "seed": 14,
    "mode": "mix",
    "sources": {
        "mnist": {"weight": {"constant": 1.0}},
        "devanagari": {"weight": {"sum": [{"step": {"at": 50, "after": 0.5}}, {"step": {"at": 70, "after": -0.5}}]}},
    },
}


def incidents_of(log_path: Path, model) -> dict:
    """Alerts and incident events of a log judged by the packaged policy."""
    policy = load_policy(None, model.reference)
    records = for_version(open_log(log_path), model, log_path)
    metrics, alerts, _ = judge(records, model, DEFAULT_CONFIG, policy=policy)
    _, events = judged_checks(metrics, policy, None, records.clock)
    return {
        "windows": len(metrics),
        "alerts": len(alerts),
        "alert_rules": sorted({alert.rule for alert in alerts}),
        "incidents_opened": sum(event.event == "opened" for event in events),
        "events": [event.as_dict() for event in events],
    }


def burst(model_uri: str, scratch: Path) -> dict:
    (scratch / "burst.yaml").write_text(yaml.safe_dump(BURST))
    log = scratch / "burst.db"
    command = [sys.executable, "-m", "simulation", "run", "--scenario", str(scratch / "burst.yaml"), "--url", "inprocess"]
    command += ["--model", model_uri, "--prediction-log", str(log), "--run-dir", str(scratch / "run"), "--no-mlflow"]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True)
    return incidents_of(log, resolve_model(model_uri, None, None, MODEL_NAME))


def stable(source_log: Path, model_uri: str, windows: int, per_window: int, scratch: Path) -> dict:
    model = resolve_model(model_uri, None, None, MODEL_NAME)
    source = pd.DataFrame(read_prediction_log(source_log))
    source = source[source["model_version"].astype(str) == model.version]
    rng = np.random.default_rng(0)
    picks = source.iloc[rng.integers(0, len(source), windows * per_window)].reset_index(drop=True)
    picks["window"] = np.arange(len(picks)) // per_window
    picks["request_id"] = [f"stable-{index}" for index in range(len(picks))]
    picks["image_index"] = 0
    log = PredictionLog(scratch / "stable.db", synchronous="OFF")
    log.write(records_of_frame(picks))
    log.close()
    figures = incidents_of(scratch / "stable.db", model)
    figures["incidents_per_100_windows"] = round(100 * figures["incidents_opened"] / windows, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.incidents", description=__doc__)
    parser.add_argument("--stable-log", type=Path, required=True, help="a prediction log of MNIST-only traffic")
    parser.add_argument("--model", default=f"models:/{MODEL_NAME}@champion")
    parser.add_argument("--stable-windows", type=int, default=500)
    parser.add_argument("--per-window", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "incidents.json")
    args = parser.parse_args()
    use_tracking(load_settings())
    with tempfile.TemporaryDirectory() as scratch:
        measured = {
            "devanagari_burst_windows_50_to_69": burst(args.model, Path(scratch)),
            "stable": stable(args.stable_log, args.model, args.stable_windows, args.per_window, Path(scratch)),
        }
    benchmark = "incidents against alerts under the packaged policy (monitoring/monitor.yaml)"
    figures = write_result(args.out, benchmark, measured, "bench.incidents")
    summary = {
        name: {k: v for k, v in part.items() if k != "events"}
        for name, part in figures.items()
        if isinstance(part, dict) and "alerts" in part
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
