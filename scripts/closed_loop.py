"""The closed loop on simulated traffic: alert -> labels -> retrained challenger -> safe promotion -> the server follows.

    python scripts/closed_loop.py [--scenario closed-loop] [--labels-per-window 10] [--retrain-after 100] ...

Starts our server on models:/digits-cnn@champion (following the alias), sends the scenario window by window,
and after each window judges the served version's records against that version's reference. From the first
alert on, each window's labeling queue (a budget per window, drawn within flag strata) goes to the annotator
(in simulation the ground-truth sidecar, answering some windows later); the labels in hand go to
labels.csv. Once enough labeled images are in, `python -m training retrain` fine-tunes the champion on MNIST
plus them and `python -m training promote` promotes it only if it beats the champion on the held-out replay
set and keeps its MNIST test floor; the running server then switches to it between two batches. At the end
the loop writes its per-window table, the label-assisted estimate's errors, a dashboard and closed_loop.json,
and logs them as one MLflow run. Every step is a command of its own part; this script only orders them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import httpx  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from common.labels import read_labels, write_labels  # noqa: E402
from common.logs import configure_logging  # noqa: E402
from common.machine import describe_machine, shown_path  # noqa: E402
from common.records import read_ground_truth, read_prediction_log  # noqa: E402
from common.reference import Reference, expected_accuracy, load_reference  # noqa: E402
from common.settings import MODEL_NAME, Settings, load_settings  # noqa: E402
from common.tracking import describe_run, download_reference, resolve_registered, use_tracking  # noqa: E402
from devtools.processes import free_port  # noqa: E402
from devtools.stack import http_ok  # noqa: E402
from labeling.annotator import simulated_labels  # noqa: E402
from labeling.queue import select_for_labeling  # noqa: E402
from monitoring.alerts import evaluate_rules  # noqa: E402
from monitoring.dashboard import closed_loop_figure, write_dashboard  # noqa: E402
from monitoring.incidents import incident_events, window_checks  # noqa: E402
from monitoring.label_assisted import label_assisted_accuracy  # noqa: E402
from monitoring.metrics import truth_metrics, window_metrics  # noqa: E402
from monitoring.policy import load_policy  # noqa: E402
from simulation.client import HttpTransport  # noqa: E402
from simulation.run import SIDECAR_FILE, run_simulation  # noqa: E402
from simulation.scenario import load_scenario  # noqa: E402

log = logging.getLogger("closed_loop")
DRIFTED_SHARE = 0.4  # windows at least this foreign judge the recovery (50/50 traffic sits near 0.5)
CLEAN_SHARE = 0.05  # windows under this judge the estimate on clean traffic (as monitoring's scorecard does)


@dataclass(frozen=True)
class LoopConfig:
    out: Path
    scenario: str = "closed-loop"
    windows: int | None = None
    requests_per_window: int | None = None
    labels_per_window: int = 10
    random_share: float = 0.3
    label_delay: int = 1
    retrain_after: int = 100  # labeled images in hand (with their image) since the last retrain
    max_retrains: int = 3
    epochs: int = 2
    train_limit: int | None = None
    foreign_limit_per_class: int | None = None
    min_accuracy: float = 0.993
    concurrency: int = 8
    seed: int = 0


@dataclass
class LoopState:
    """What the loop has done so far: labels queued and answered, retrains, events in window order."""

    queued: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["request_id", "image_index"]))
    answered: list[pd.DataFrame] = field(default_factory=list)
    labeling_since: int | None = None
    images_at_last_retrain: int = 0
    retrains: int = 0
    events: list[dict] = field(default_factory=list)


def run_command(command: list[str], log_path: Path) -> tuple[int, str]:
    """A part's command, its output written to `log_path` as it runs (follow it there); (exit code, last line)."""
    with open(log_path, "wb") as output:
        code = subprocess.run(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    last = (log_path.read_text(errors="replace").strip().splitlines() or [""])[-1]
    log.info("  %s", last)
    return code, last


def start_server(config: LoopConfig, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "serving", "--model", f"models:/{MODEL_NAME}@champion", "--port", str(port),
        "--prediction-log", str(config.out / "predictions.db"), "--follow-seconds", "1",
    ]  # fmt: skip
    with open(config.out / "server.log", "wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not http_ok(f"http://127.0.0.1:{port}/ready"):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: see {config.out / 'server.log'}")
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"the server did not get ready in 180 s: see {config.out / 'server.log'}")
        time.sleep(0.5)
    return process


def served_version(port: int) -> str:
    return str(httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()["version"])


class References:
    """Each served version's monitoring reference, downloaded once."""

    def __init__(self) -> None:
        self._found: dict[str, Reference] = {}

    def __call__(self, version: str) -> Reference:
        if version not in self._found:
            run_id = resolve_registered(f"models:/{MODEL_NAME}/{version}").run_id
            self._found[version] = load_reference(download_reference(run_id))
        return self._found[version]


def records_frame(path: Path) -> pd.DataFrame:
    frame = pd.DataFrame(read_prediction_log(path))
    return frame.astype({"window": int, "image_index": int})


def version_alerts(records: pd.DataFrame, version: str, reference: Reference) -> list:
    """The alerts of one version's records judged against its own reference."""
    metrics = window_metrics(records, reference)
    policy = load_policy(None, reference)
    return evaluate_rules(metrics, policy.rules, MODEL_NAME, version, policy.cooldown_windows)


def loop_incidents(records: pd.DataFrame, references: References) -> list[dict]:
    """The incidents of the whole run, as the monitor would raise them: each window judged against the reference of
    the version that served most of it, under that version's policy."""
    main_version = records.groupby("window")["model_version"].agg(lambda versions: versions.mode().iloc[0])
    checks, policy = [], None
    for version, mine in records.groupby("model_version", sort=False):
        reference = references(str(version))
        policy = load_policy(None, reference)
        judged = window_metrics(mine, reference)
        judged = judged[judged["window"].map(main_version).astype(str) == str(version)]
        checks.append(window_checks(judged, policy.rules))
    every = pd.concat(checks, ignore_index=True).sort_values("window", kind="stable")
    return [event.as_dict() for event in incident_events(every, policy.rules, policy.resolve_after_quiet_windows)]


def incidents_after(incidents: list[dict], window: int | None, windows: int) -> dict:
    """Incidents opened after `window` (the first promotion), per 100 of the windows after it."""
    if window is None:
        return {}
    opened = [event["window"] for event in incidents if event["event"] == "opened" and event["window"] > window]
    after = windows - window - 1
    return {
        "windows": after,
        "opened": len(opened),
        "opened_at": opened,
        "per_100_windows": round(100 * len(opened) / after, 2) if after else None,
    }


def step_window(
    window: int, records: pd.DataFrame, truth: pd.DataFrame, config: LoopConfig, state: LoopState, references: References
) -> None:
    """Judge the served version after `window`, start labeling at the first alert, queue this window's labels."""
    served = records[records["window"] == window]
    version = str(served["model_version"].mode().iloc[0])
    mine = records[records["model_version"] == version]
    alerts = [alert for alert in version_alerts(mine, version, references(version)) if alert.window == window]
    for alert in alerts:
        state.events.append({"window": window, "event": "alert", "version": version, "rule": alert.rule})
        log.info("window %d: alert %s on version %s", window, alert.rule, version)
    if alerts and state.labeling_since is None:
        state.labeling_since = window
        state.events.append({"window": window, "event": "labeling_started", "version": version})
    if state.labeling_since is None:
        return
    queue = select_for_labeling(served, config.labels_per_window, config.random_share, config.seed, already=state.queued)
    state.queued = pd.concat([state.queued, queue[["request_id", "image_index"]]], ignore_index=True)
    state.answered.append(simulated_labels(queue, truth, config.label_delay))


def labels_in_hand(state: LoopState, window: int) -> pd.DataFrame:
    if not state.answered:
        return pd.DataFrame(columns=["request_id", "image_index", "label", "window", "arrived_window"])
    answered = pd.concat(state.answered, ignore_index=True)
    return answered[answered["arrived_window"] <= window].reset_index(drop=True)


def retrain_and_promote(window: int, config: LoopConfig, state: LoopState, port: int) -> None:
    """Retrain the champion on the labels in hand, try to promote it, and wait for the server to follow."""
    state.retrains += 1
    labels_path = config.out / "labels.csv"
    command = [sys.executable, "-m", "training", "retrain", "--labels", str(labels_path),
               "--prediction-log", str(config.out / "predictions.db"), "--epochs", str(config.epochs),
               "--run-name", f"retrain-{state.retrains}-window-{window}"]  # fmt: skip
    if config.train_limit:
        command += ["--train-limit", str(config.train_limit)]
    if config.foreign_limit_per_class:
        command += ["--foreign-limit-per-class", str(config.foreign_limit_per_class)]
    retrain_log = config.out / f"retrain-{state.retrains}.log"
    log.info("window %d: retraining the champion on %s (progress: %s)", window, labels_path, retrain_log)
    code, _ = run_command(command, retrain_log)
    if code != 0:
        raise RuntimeError(f"retraining failed: see {retrain_log}")
    challenger = str(mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, "challenger").version)
    state.events.append({"window": window, "event": "retrained", "version": challenger})
    code, reason = run_command(
        [sys.executable, "-m", "training", "promote", "--min-accuracy", str(config.min_accuracy)],
        config.out / f"promote-{state.retrains}.log",
    )
    event = "promoted" if code == 0 else "promotion_refused"
    state.events.append({"window": window, "event": event, "version": challenger, "reason": reason})
    if code != 0:
        return
    deadline = time.monotonic() + 180
    while served_version(port) != challenger:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not switch to version {challenger} in 180 s")
        time.sleep(0.5)
    state.events.append({"window": window, "event": "server_switched", "version": challenger})
    log.info("window %d: the server now serves version %s", window, challenger)


def run_loop(config: LoopConfig, settings: Settings) -> dict:
    """The whole loop; returns closed_loop.json's figures."""
    config.out.mkdir(parents=True, exist_ok=True)
    use_tracking(settings)
    overrides = {"windows": config.windows, "requests_per_window": config.requests_per_window}
    scenario = load_scenario(config.scenario, **{key: value for key, value in overrides.items() if value})
    sim_dir = config.out / "simulation"
    port = free_port()
    server = start_server(config, port)
    transport = HttpTransport(f"http://127.0.0.1:{port}")
    references, state = References(), LoopState()
    started = time.perf_counter()
    try:
        first_version = served_version(port)
        for window in range(scenario.windows):
            result = run_simulation(
                scenario, sim_dir, transport, settings, config.concurrency, track=False, until_window=window + 1, progress=False
            )
            if result.stats.stopped_by:
                raise RuntimeError(f"window {window}: the traffic stopped: {result.stats.stopped_by}")
            records, truth = records_frame(config.out / "predictions.db"), read_ground_truth(sim_dir / SIDECAR_FILE)
            step_window(window, records, truth, config, state, references)
            in_hand = labels_in_hand(state, window)
            if len(in_hand):
                write_labels(in_hand, config.out / "labels.csv")
            with_image = in_hand.merge(records[records["image"].notna()], on=["request_id", "image_index"]).shape[0]
            if state.retrains < config.max_retrains and with_image - state.images_at_last_retrain >= config.retrain_after:
                state.images_at_last_retrain = with_image
                retrain_and_promote(window, config, state, port)
            log.info("window %d/%d done: %d labels in hand", window + 1, scenario.windows, len(in_hand))
        run_simulation(scenario, sim_dir, transport, settings, config.concurrency)  # sends nothing; logs the run
    finally:
        transport.close()
        server.terminate()
        server.wait(timeout=30)
    answered = pd.concat(state.answered, ignore_index=True) if state.answered else labels_in_hand(state, -1)
    answered.to_csv(config.out / "labels_answered.csv", index=False)  # with those still to arrive: for --reanalyse
    figures = judge_loop(config, state, answered, first_version, time.perf_counter() - started)
    write_outputs(figures["windows"], figures["figures"], state, config, scenario.name)
    return figures["figures"]


def judge_loop(config: LoopConfig, state: LoopState, answered: pd.DataFrame, first_version: str, seconds: float) -> dict:
    """A finished loop's per-window table and figures, from its folder: each version judged on the images it and
    its ancestors never trained on. {"windows": table, "figures": closed_loop.json's figures}"""
    records = records_frame(config.out / "predictions.db")
    truth = read_ground_truth(config.out / "simulation" / SIDECAR_FILE)
    references = References()
    trained = trained_fingerprints(set(records["model_version"].astype(str)))
    windows = window_table(records, truth, answered, references, config.label_delay, trained)
    incidents = loop_incidents(records, references)
    return {"windows": windows, "figures": loop_figures(windows, state, config, first_version, seconds, incidents)}


def reanalyse(out: Path) -> dict:
    """Judge a finished loop again with this analysis (its events, configuration and time kept from its
    closed_loop.json); rewrites closed_loop.json and windows.csv in its folder."""
    old = json.loads((out / "closed_loop.json").read_text())
    fields = {key: value for key, value in old["config"].items() if key in LoopConfig.__dataclass_fields__}
    config = LoopConfig(**{**fields, "out": out})
    state = LoopState(events=old["events"])
    answered_path = out / "labels_answered.csv" if (out / "labels_answered.csv").is_file() else out / "labels.csv"
    answered = read_labels(answered_path)
    first_version = str(records_frame(out / "predictions.db")["model_version"].iloc[0])
    judged = judge_loop(config, state, answered, first_version, old["seconds"])
    figures = {**judged["figures"], "date": old["date"], "command": old["command"], "machine": old["machine"]}
    if answered_path.name == "labels.csv":  # the last window's labels had not arrived: the run's own count stands
        figures["labels"] = old["labels"]
    figures["reanalysed"] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "labels_from": answered_path.name}
    judged["windows"].to_csv(out / "windows.csv", index=False)
    (out / "closed_loop.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def trained_fingerprints(versions: set[str]) -> dict[str, set[str]]:
    """Per version, every image it trained on, its ancestors' included (the retrain runs' lineage artifacts, up the
    parent tags); nothing for a version that no retrain made."""
    client = mlflow.MlflowClient()
    own: dict[str, set[str]] = {}
    parents: dict[str, str] = {}
    for version in versions:
        registered = client.get_model_version(MODEL_NAME, version)
        if registered.tags.get("digitdrift.parent_version") is None:
            continue
        parents[version] = registered.tags["digitdrift.parent_version"]
        text = mlflow.artifacts.load_text(f"runs:/{registered.run_id}/lineage/trained_fingerprints.txt")
        own[version] = set(filter(None, text.splitlines()))
    found = {}
    for version in versions:
        images, current = set(), version
        while current in own:
            images |= own[current]
            current = parents[current]
        found[version] = images
    return found


def window_table(
    records: pd.DataFrame,
    truth: pd.DataFrame,
    labels: pd.DataFrame,
    references: References,
    delay: int,
    trained: dict[str, set[str]],
) -> pd.DataFrame:
    """Per window and serving version: truth, label-free and label-assisted accuracy, labels that came back.

    Records of a retrained version whose image it trained on are left out of its realised accuracy."""
    parts = []
    for version, mine in records.groupby("model_version", sort=False):
        reference = references(str(version))
        p_correct = expected_accuracy(reference, mine["confidence"].to_numpy(dtype=float))
        judged = mine.assign(p_correct=p_correct)
        if str(version) != str(records["model_version"].iloc[0]):
            judged = judged[~judged["fingerprint"].isin(trained.get(str(version), set()))]
        truths = truth_metrics(judged, truth)
        label_free = judged.groupby("window")["p_correct"].mean().rename("label_free_accuracy").reset_index()
        assisted = {
            lag: label_assisted_accuracy(judged, judged["p_correct"], labels, lag=lag).set_index("window") for lag in (0, delay)
        }
        table = truths.merge(label_free, on="window")
        table = table.merge(assisted[delay].reset_index(), on="window")
        table["label_assisted_accuracy_at_close"] = table["window"].map(assisted[0]["label_assisted_accuracy"])
        table["model_version"] = str(version)
        table["volume"] = table["window"].map(mine.groupby("window").size())
        parts.append(table)
    windows = pd.concat(parts, ignore_index=True).sort_values(["window", "volume"], ascending=[True, False])
    windows = windows.drop_duplicates("window").reset_index(drop=True)  # a window split by a switch counts for its main version
    windows["labels_arrived"] = windows["window"].map(labels.groupby("arrived_window").size()).fillna(0).astype(int)
    windows["labels_queued"] = windows["window"].map(labels.groupby("window").size()).fillna(0).astype(int)
    return windows


def estimate_errors(windows: pd.DataFrame, column: str) -> dict:
    """Mean absolute error in points on clean and drifted windows, beside the best constant guess on the same windows."""
    out = {}
    for name, members in (
        ("clean", windows["true_foreign_share"] < CLEAN_SHARE),
        ("drifted", windows["true_foreign_share"] >= CLEAN_SHARE),
    ):
        chosen = windows[members]
        if chosen.empty:
            continue
        realised = chosen["realised_accuracy"]
        out[name] = {
            "windows": len(chosen),
            "mae_points": round(float((chosen[column] - realised).abs().mean() * 100), 2),
            "best_constant_mae_points": round(float((realised - realised.median()).abs().mean() * 100), 2),
        }
    return out


def reproducing_command(argv: list[str]) -> str:
    """The command as a reader runs it again: without `--out` (a folder of this machine; the default makes a new one)."""
    kept = [arg for index, arg in enumerate(argv) if arg != "--out" and (index == 0 or argv[index - 1] != "--out")]
    return " ".join(["python scripts/closed_loop.py", *(arg for arg in kept if not arg.startswith("--out="))])


def loop_figures(
    windows: pd.DataFrame, state: LoopState, config: LoopConfig, first_version: str, seconds: float, incidents: list[dict]
) -> dict:
    drifted = windows[windows["true_foreign_share"] >= DRIFTED_SHARE]
    by_version = {
        version: {
            "windows": len(group),
            "realised_accuracy": round(float(group["realised_accuracy"].mean()), 4),
        }
        for version, group in drifted.groupby("model_version")
    }
    promotions = [event for event in state.events if event["event"] == "promoted"]
    first_alert = next((event["window"] for event in state.events if event["event"] == "alert"), None)
    final_version = windows["model_version"].iloc[-1]
    inside = (windows["label_assisted_accuracy_low"] <= windows["realised_accuracy"]) & (
        windows["realised_accuracy"] <= windows["label_assisted_accuracy_high"]
    )
    return {
        "benchmark": "closed loop on simulated traffic: alert, labels, retrain, safe promotion, server switch",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(("tensorflow-cpu", "keras", "mlflow", "numpy")),
        "config": {key: shown_path(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "drifted_traffic_realised_accuracy": {
            "before": by_version.get(first_version),
            "after": by_version.get(final_version) if final_version != first_version else None,
            "by_version": by_version,
            "drifted_means_true_foreign_share_at_least": DRIFTED_SHARE,
        },
        "labels": {
            "queued": int(windows["labels_queued"].sum()),
            "arrived": int(windows["labels_arrived"].sum()),
            "per_window_budget": config.labels_per_window,
            "delay_windows": config.label_delay,
        },
        "first_alert_window": first_alert,
        "first_promotion_window": promotions[0]["window"] if promotions else None,
        "windows_from_first_alert_to_promotion": promotions[0]["window"] - first_alert
        if promotions and first_alert is not None
        else None,
        "estimate_error_points": {
            "label_assisted_once_labels_are_back": estimate_errors(windows, "label_assisted_accuracy"),
            "label_assisted_as_the_window_closes": estimate_errors(windows, "label_assisted_accuracy_at_close"),
            "label_free": estimate_errors(windows, "label_free_accuracy"),
            "label_assisted_interval_coverage": round(float(inside.mean()), 3),
        },
        "events": state.events,
        "incidents": incidents,
        "incidents_after_first_promotion": incidents_after(
            incidents, promotions[0]["window"] if promotions else None, int(windows["window"].max()) + 1
        ),
        "seconds": round(seconds, 1),
        "command": reproducing_command(sys.argv[1:]),
    }


def write_outputs(windows: pd.DataFrame, figures: dict, state: LoopState, config: LoopConfig, scenario: str) -> None:
    windows.to_csv(config.out / "windows.csv", index=False)
    (config.out / "closed_loop.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    promotions = [(event["window"], event["version"]) for event in state.events if event["event"] == "promoted"]
    alerts = sorted({event["window"] for event in state.events if event["event"] == "alert"})
    page = write_dashboard(
        closed_loop_figure(windows, promotions, alerts, f"closed loop on '{scenario}': accuracy, labels and model versions"),
        config.out / "closed_loop.html",
    )
    with mlflow.start_run(run_name=f"closed-loop-{scenario}"):
        mlflow.set_tags({"digitdrift.job": "closed-loop", "scenario": scenario})
        mlflow.log_params({key: value for key, value in figures["config"].items()})
        describe_run(
            f"The closed loop on '{scenario}': the labeling queue from the first alert, retraining from the champion, "
            f"promotion on the replay set, the server following @champion. Events: "
            + "; ".join(f"window {e['window']} {e['event']} v{e['version']}" for e in state.events if e["event"] != "alert")
        )
        for row in windows.itertuples():
            mlflow.log_metrics(
                {
                    "accuracy/realised": row.realised_accuracy,
                    "accuracy/label_free": row.label_free_accuracy,
                    "accuracy/label_assisted": row.label_assisted_accuracy,
                    "labels/arrived": row.labels_arrived,
                    "foreign/true_share": row.true_foreign_share,
                    "model/version": float(row.model_version),
                },
                step=int(row.window),
            )
        for path in (page, config.out / "closed_loop.json", config.out / "windows.csv"):
            mlflow.log_artifact(str(path))


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    defaults = LoopConfig(out=Path("."))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=defaults.scenario, help="a built-in scenario or a YAML file (default: %(default)s)")
    parser.add_argument("--windows", type=int, help="override the scenario's windows")
    parser.add_argument("--requests-per-window", type=int, help="override the scenario's requests per window")
    parser.add_argument(
        "--labels-per-window", type=int, default=defaults.labels_per_window, help="label budget per window (default: %(default)s)"
    )
    parser.add_argument(
        "--random-share",
        type=float,
        default=defaults.random_share,
        help="share of the budget drawn from unflagged images (default: %(default)s)",
    )
    parser.add_argument(
        "--label-delay", type=int, default=defaults.label_delay, help="windows before labels come back (default: %(default)s)"
    )
    parser.add_argument(
        "--retrain-after",
        type=int,
        default=defaults.retrain_after,
        help="labeled images in hand since the last retrain that start one (default: %(default)s)",
    )
    parser.add_argument("--max-retrains", type=int, default=defaults.max_retrains, help="retrains at most (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="retraining epochs (default: %(default)s)")
    parser.add_argument("--train-limit", type=int, help="retrain on the first N shuffled MNIST images only (quick runs)")
    parser.add_argument(
        "--foreign-limit-per-class", type=int, help="evaluate retrained models on at most N foreign digits per class"
    )
    parser.add_argument(
        "--min-accuracy", type=float, default=defaults.min_accuracy, help="MNIST test floor of promotion (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, help="a new folder for the loop (default: .digitdrift/loops/<scenario>-<time>)")
    parser.add_argument("--result", type=Path, help="also copy closed_loop.json here (e.g. bench/results/closed_loop.json)")
    parser.add_argument(
        "--reanalyse", type=Path, metavar="FOLDER", help="judge a finished loop's folder again (no traffic, no training)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    logging.getLogger("common.datasets").setLevel(logging.WARNING)  # a line per pool load; the loop logs each window
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    config = LoopConfig(
        out=args.out or settings.state_dir / "loops" / f"{Path(args.scenario).stem}-{stamp}",
        scenario=args.scenario,
        windows=args.windows,
        requests_per_window=args.requests_per_window,
        labels_per_window=args.labels_per_window,
        random_share=args.random_share,
        label_delay=args.label_delay,
        retrain_after=args.retrain_after,
        max_retrains=args.max_retrains,
        epochs=args.epochs,
        train_limit=args.train_limit,
        foreign_limit_per_class=args.foreign_limit_per_class,
        min_accuracy=args.min_accuracy,
    )
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)  # the parts' commands use the same store
    if args.reanalyse:
        use_tracking(settings)
        figures = reanalyse(args.reanalyse)
    else:
        figures = run_loop(config, settings)
    if args.result:
        args.result.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {
                key: figures[key]
                for key in (
                    "drifted_traffic_realised_accuracy",
                    "labels",
                    "windows_from_first_alert_to_promotion",
                    "incidents_after_first_promotion",
                    "estimate_error_points",
                )
            },
            indent=2,
        )
    )
    if args.reanalyse:
        print(f"loop folder: {args.reanalyse} (closed_loop.json and windows.csv rewritten)")
    else:
        print(f"loop folder: {config.out} (closed_loop.html, closed_loop.json, windows.csv, labels.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
