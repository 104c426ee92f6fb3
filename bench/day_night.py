"""False alarms on stable traffic whose volume follows a day/night curve, judged in windows of one hour.

python -m bench.day_night --source-log LOG [--days 30] [--low 20] [--high 400] [--seeds 3]

Real records of stable traffic (`--source-log`: a log the server or score.py wrote of MNIST-only traffic, e.g. the
`stable` scenario) are resampled into hours whose volume follows a cosine from `--low` images at 03:00 to `--high`
at 15:00, stamped with scoring times across each hour and no window, as real clients' records are. The monitor
judges them by wall-clock time (one-hour windows) with the champion's reference, and every window where a rule
fires counts as a false alarm. Writes bench/results/day_night_false_alarms.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench.result_file import write_result
from common.records import read_prediction_log, records_of_frame
from common.settings import MODEL_NAME, load_settings
from common.tracking import use_tracking
from common.windows import WindowClock
from monitoring.alerts import rule_firings
from monitoring.engine import for_version, open_log
from monitoring.job import judge
from monitoring.metrics import DEFAULT_CONFIG
from monitoring.model import resolve_model
from serving.prediction_log import PredictionLog

RESULTS = Path(__file__).parent / "results"
START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


def hourly_volumes(days: int, low: int, high: int) -> np.ndarray:
    """Images per hour: a cosine from `low` at 03:00 to `high` at 15:00, every day alike."""
    hours = np.arange(days * 24)
    return np.round(low + (high - low) * (1 - np.cos(2 * np.pi * ((hours % 24) - 3) / 24)) / 2).astype(int)


def day_night_log(source: pd.DataFrame, volumes: np.ndarray, seed: int) -> pd.DataFrame:
    """Records resampled from `source`, `volumes[h]` of them in hour h from START, no window, new request ids."""
    rng = np.random.default_rng(seed)
    picks = source.iloc[rng.integers(0, len(source), int(volumes.sum()))].reset_index(drop=True)
    hours = np.repeat(np.arange(len(volumes)), volumes)
    offsets = rng.uniform(0, 3600, len(picks))
    picks["timestamp"] = [
        (START + timedelta(hours=int(hour), seconds=float(offset))).isoformat(timespec="microseconds")
        for hour, offset in zip(hours, offsets)
    ]
    picks["window"] = None
    picks["request_id"] = [f"day-night-{seed}-{index}" for index in range(len(picks))]
    picks["image_index"] = 0
    return picks


def run(source_log: Path, model_uri: str, days: int, low: int, high: int, seeds: int) -> dict:
    model = resolve_model(model_uri, None, None, MODEL_NAME)
    source = pd.DataFrame(read_prediction_log(source_log))
    source = source[(source["model_version"].astype(str) == model.version) & (source["model_name"] == model.name)]
    volumes = hourly_volumes(days, low, high)
    hourly = WindowClock.wall("1h")
    rows = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "log.db"
            log = PredictionLog(path, synchronous="OFF")
            log.write(records_of_frame(day_night_log(source, volumes, seed)))
            log.close()
            records = for_version(open_log(path, "pandas", clock="wall", wall=hourly), model, path)
            metrics, alerts, rules = judge(records, model, DEFAULT_CONFIG)
        fired = {}
        for firing in rule_firings(metrics, rules):
            fired.setdefault(firing.window, []).append(firing.rule.name)
        for row in metrics.itertuples(index=False):
            rows.append((seed, int(row.volume), bool(row.too_small), fired.get(int(row.window), [])))
        print(f"seed {seed}: {len(metrics)} windows, {len(fired)} with a rule firing, {len(alerts)} alerts", flush=True)
    table = pd.DataFrame(rows, columns=["seed", "volume", "too_small", "rules"])
    judged = table[~table["too_small"]]
    firing = judged[judged["rules"].map(bool)]
    bands = {}
    for name, low_edge, high_edge in (("under 100", 0, 100), ("100 to 250", 100, 250), ("250 and over", 250, 10**9)):
        band = judged[(judged["volume"] >= low_edge) & (judged["volume"] < high_edge)]
        bands[name] = {
            "windows": len(band),
            "firing_per_100": round(100 * band["rules"].map(bool).mean(), 2) if len(band) else None,
        }
    per_rule = pd.Series([rule for rules in firing["rules"] for rule in rules]).value_counts().to_dict()
    return {
        "model": f"{model.name} v{model.version}",
        "source_log_records": len(source),
        "days": days,
        "seeds": seeds,
        "volume_per_hour": {"low": low, "high": high, "mean": round(float(volumes.mean()), 1)},
        "windows": len(table),
        "too_small_to_judge": int(table["too_small"].sum()),
        "min_window_size": DEFAULT_CONFIG.min_window_size,
        "windows_judged": len(judged),
        "windows_with_a_rule_firing": len(firing),
        "false_alarms_per_100_windows": round(100 * len(firing) / len(judged), 2),
        "by_volume": bands,
        "firings_per_rule": {str(rule): int(count) for rule, count in per_rule.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.day_night", description=__doc__)
    parser.add_argument("--source-log", type=Path, required=True, help="a prediction log of stable (MNIST-only) traffic")
    parser.add_argument("--model", default=f"models:/{MODEL_NAME}@champion", help="the model that scored it")
    parser.add_argument("--days", type=int, default=30, help="days of hourly windows per seed (default: %(default)s)")
    parser.add_argument("--low", type=int, default=20, help="images in the quietest hour (default: %(default)s)")
    parser.add_argument("--high", type=int, default=400, help="images in the busiest hour (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="resamplings (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS / "day_night_false_alarms.json")
    args = parser.parse_args()
    use_tracking(load_settings())
    figures = write_result(
        args.out,
        "false alarms of stable traffic with a day/night volume, one-hour windows of wall-clock time",
        run(args.source_log, args.model, args.days, args.low, args.high, args.seeds),
        "bench.day_night",
    )
    print(json.dumps({key: figures[key] for key in ("windows_judged", "false_alarms_per_100_windows", "by_volume")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
