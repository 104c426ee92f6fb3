"""Detection delay on live traffic: a scenario sent over wall-clock time with no window, judged by time.

python -m bench.live [--windows 12] [--window-seconds 20] [--change-at 6] [--share 0.4] [--requests 20] [--images 10]

Serves the champion (`models:/digits-cnn@champion` of the local store) with our HTTP server on a loopback port,
sends MNIST and, from window `--change-at`, Devanagari at `--share` of the images, live (`python -m simulation run
--live`), then monitors the log with `--window` of the same length and the sidecar's truth. Reports, in windows of
time, the delay from the first window holding Devanagari to the first alert, and any alert before it. Writes
bench/results/live_detection.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from bench.result_file import write_result
from common.settings import MODEL_NAME, PROJECT_ROOT
from devtools.processes import free_port, running

RESULTS = Path(__file__).parent / "results"


def scenario(windows: int, change_at: int, share: float, requests: int, images: int) -> dict:
    return {
        "name": "live-devanagari",
        "windows": windows,
        "window": "live window",
        "requests_per_window": requests,
        "images_per_request": images,
        "seed": 21,
        "mode": "mix",
        "sources": {
            "mnist": {"weight": {"constant": 1 - share}},
            "devanagari": {"weight": {"step": {"at": change_at, "after": share}}},
        },
    }


def command(module: str, *arguments: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{module} {arguments[0]} failed:\n{done.stderr[-3000:]}")
    return done


def run(windows: int, seconds: int, change_at: int, share: float, requests: int, images: int) -> dict:
    model = f"models:/{MODEL_NAME}@champion"
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        (home / "scenario.yaml").write_text(yaml.safe_dump(scenario(windows, change_at, share, requests, images)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = str(home / "log.db")
        server = [sys.executable, "-m", "serving", "--model", model, "--port", str(port), "--prediction-log", log]
        with running(server, f"{url}/ready", None, home / "server.log"):
            started = datetime.now(UTC)
            sent = command(
                "simulation", "run", "--scenario", str(home / "scenario.yaml"), "--url", url, "--live", str(seconds),
                "--run-dir", str(home / "run"), "--no-mlflow", "--concurrency", "2",
            )  # fmt: skip
            print(sent.stdout.strip().splitlines()[-1], flush=True)
        out = home / "monitor"
        judged = command(
            "monitoring", "run", "--log", log, "--model", model, "--window", f"{seconds}s",
            "--truth", str(home / "run" / "ground_truth.db"), "--out", str(out), "--no-mlflow",
        )  # fmt: skip
        print(judged.stdout, flush=True)
        metrics = pd.read_csv(out / "window_metrics.csv")
        alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    windows_seen = list(metrics["window"])
    first_drifted = int(metrics.loc[metrics["true_foreign_share"] > 0.1, "window"].min())
    alerted = sorted({alert["window"] for alert in alerts})
    after = [window for window in alerted if window >= first_drifted]
    return {
        "started": started.isoformat(timespec="seconds"),
        "windows": len(metrics),
        "window_seconds": seconds,
        "images_per_window": requests * images,
        "devanagari_share_after_change": share,
        "first_drifted_window": metrics.loc[metrics["window"] == first_drifted, "window_start"].item(),
        "alerts_before_change": len([window for window in alerted if window < first_drifted]),
        "detection_delay_windows": windows_seen.index(after[0]) - windows_seen.index(first_drifted) if after else None,
        "first_alert": {key: alerts[[a["window"] for a in alerts].index(after[0])][key] for key in ("rule", "window_start")}
        if after
        else None,
        "rules_alerted": sorted({alert["rule"] for alert in alerts}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--windows", type=int, default=12, help="windows of traffic (default: %(default)s)")
    parser.add_argument("--window-seconds", type=int, default=20, help="seconds per window (default: %(default)s)")
    parser.add_argument("--change-at", type=int, default=6, help="first window with Devanagari (default: %(default)s)")
    parser.add_argument("--share", type=float, default=0.4, help="Devanagari's share from then on (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=20, help="requests per window (default: %(default)s)")
    parser.add_argument("--images", type=int, default=10, help="images per request (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "live_detection.json")
    args = parser.parse_args()
    figures = write_result(
        args.out,
        "detection delay on live traffic with no window, judged in windows of wall-clock time",
        run(args.windows, args.window_seconds, args.change_at, args.share, args.requests, args.images),
        "bench.live",
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
