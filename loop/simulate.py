"""The closed loop on simulated traffic: alert -> labels -> retrained challenger -> safe promotion -> the server follows.

    python -m loop simulate [--scenario closed-loop] [--labels-per-window 10] [--retrain-after 100] ...

Starts our server on models:/digits-cnn@champion (following the alias), sends the scenario window by window,
and after each window judges the served version's records against that version's reference. From the first
alert on, each window's labeling queue (a budget per window, drawn within flag strata) goes to the annotator
(in simulation the ground-truth sidecar, answering some windows later); the labels in hand go to
labels.csv. Once enough labeled images are in, `python -m training retrain` fine-tunes the champion on MNIST
plus them and `python -m training promote` promotes it only if it beats the champion on the held-out replay
set and keeps its MNIST test floor; the running server then switches to it between two batches. At the end
the loop writes its per-window table, the label-assisted estimate's errors, a dashboard and closed_loop.json,
and logs them as one MLflow run. Every step is a command of its own part; the loop orders them, and takes its
decisions (when labeling starts, which labels are in hand, when to retrain) from loop.decisions.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd

from common.labels import read_labels, write_labels
from common.machine import describe_machine, shown_path
from common.records import read_ground_truth, read_prediction_log
from common.reference import Reference, expected_accuracy, load_reference
from common.settings import MODEL_NAME, PROJECT_ROOT, Settings
from common.tracking import describe_run, download_reference, resolve_registered, use_tracking
from labeling.annotator import simulated_labels
from labeling.queue import select_for_labeling
from loop.controller import run_command
from loop.decisions import incidents_after, labeling_since, labels_in_hand, retrain_due, serving_version
from monitoring.alerts import evaluate_rules
from monitoring.dashboard import closed_loop_figure, write_dashboard
from monitoring.incidents import incident_events, window_checks
from monitoring.label_assisted import label_assisted_accuracy
from monitoring.metrics import truth_metrics, window_metrics
from monitoring.policy import load_policy
from simulation.client import HttpTransport
from simulation.run import SIDECAR_FILE, run_simulation
from simulation.scenario import load_scenario

log = logging.getLogger(__name__)
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


def start_server(config: LoopConfig, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "serving", "--model", f"models:/{MODEL_NAME}@champion", "--port", str(port),
        "--prediction-log", str(config.out / "predictions.db"), "--follow-seconds", "1",
    ]  # fmt: skip
    with open(config.out / "server.log", "wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready(port):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: see {config.out / 'server.log'}")
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"the server did not get ready in 180 s: see {config.out / 'server.log'}")
        time.sleep(0.5)
    return process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for the loop's own server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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


def step_window(
    window: int, records: pd.DataFrame, truth: pd.DataFrame, config: LoopConfig, state: LoopState, references: References
) -> None:
    """Judge the served version after `window`, start labeling at the first alert, queue this window's labels."""
    served = records[records["window"] == window]
    version = serving_version(served)
    mine = records[records["model_version"] == version]
    alerts = [alert for alert in version_alerts(mine, version, references(version)) if alert.window == window]
    for alert in alerts:
        state.events.append({"window": window, "event": "alert", "version": version, "rule": alert.rule})
        log.info("window %d: alert %s on version %s", window, alert.rule, version)
    since = labeling_since(state.labeling_since, window, bool(alerts))
    if since is not None and state.labeling_since is None:
        state.events.append({"window": window, "event": "labeling_started", "version": version})
    state.labeling_since = since
    if since is None:
        return
    queue = select_for_labeling(served, config.labels_per_window, config.random_share, config.seed, already=state.queued)
    state.queued = pd.concat([state.queued, queue[["request_id", "image_index"]]], ignore_index=True)
    state.answered.append(simulated_labels(queue, truth, config.label_delay))


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
            in_hand = labels_in_hand(state.answered, window)
            if len(in_hand):
                write_labels(in_hand, config.out / "labels.csv")
            with_image = in_hand.merge(records[records["image"].notna()], on=["request_id", "image_index"]).shape[0]
            if retrain_due(with_image, state.images_at_last_retrain, state.retrains, config.retrain_after, config.max_retrains):
                state.images_at_last_retrain = with_image
                retrain_and_promote(window, config, state, port)
            log.info("window %d/%d done: %d labels in hand", window + 1, scenario.windows, len(in_hand))
        run_simulation(scenario, sim_dir, transport, settings, config.concurrency)  # sends nothing; logs the run
    finally:
        transport.close()
        server.terminate()
        server.wait(timeout=30)
    answered = pd.concat(state.answered, ignore_index=True) if state.answered else labels_in_hand([], -1)
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
    return " ".join(["python -m loop", *(arg for arg in kept if not arg.startswith("--out="))])


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
