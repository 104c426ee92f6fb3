"""The closed loop on simulated traffic: alert -> labels -> retrained challenger -> safe promotion -> the server follows.

    python -m loop simulate [--scenario closed-loop] [--labels-per-window 10] [--retrain-after 100] ...

Starts our server on models:/digits-cnn@champion (following the alias), writing a prediction dataset as a
deployment does, and sends the scenario window by window. After each window is published, one cycle of the
loop's controller (`loop.controller.run_cycle`, as `python -m loop run` runs it against a deployment) judges the
new window with the incremental monitor, queues images to label from the first alert on, counts the labels in
hand, and retrains and promotes when enough are in; the simulation only stands in for the world around it: the
annotator (the ground-truth sidecar answering the queue some windows later, into labels.csv) and the wait for
the server to follow a promotion. At the end the loop writes its per-window table, the label-assisted
estimate's errors, a dashboard and closed_loop.json, and logs them as one MLflow run beside the controller's.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd

from common.cli import option
from common.labels import read_labels, write_labels
from common.machine import describe_machine, shown_path
from common.prediction_dataset import read_records
from common.records import read_ground_truth
from common.reference import Reference, expected_accuracy, load_reference
from common.settings import MODEL_NAME, PROJECT_ROOT, Settings
from common.tracking import describe_run, download_reference, resolve_registered, use_tracking
from labeling.annotator import simulated_labels
from loop.controller import (
    ControllerConfig,
    ControllerState,
    Decision,
    LoopOptions,
    controller_run,
    cycle_folder,
    read_alerts,
    read_keyed_csv,
    record,
    run_cycle,
    save_state,
)
from loop.decisions import incidents_after, labels_in_hand, serving_version
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
DATASET = "dataset"  # the server's prediction dataset in the loop's folder (a folder of an older loop: predictions.db)


@dataclass(frozen=True, kw_only=True)
class LoopConfig(LoopOptions):
    out: Path
    scenario: str = option("closed-loop", "a built-in scenario or a YAML file")
    windows: int | None = option(None, "override the scenario's windows")
    requests_per_window: int | None = option(None, "override the scenario's requests per window")
    label_delay: int = option(1, "windows before labels come back, 1 or more: the controller counts them at its next cycle")
    concurrency: int = 8


@dataclass
class LoopState:
    """What the simulation around the controller has done: the annotator's answers, and events in window order."""

    answered: list[pd.DataFrame] = field(default_factory=list)
    queued: int = 0  # rows of the controller's queue the annotator has been given
    events: list[dict] = field(default_factory=list)


def start_server(config: LoopConfig, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "serving", "--model", f"models:/{MODEL_NAME}@champion", "--port", str(port),
        "--prediction-dataset", str(config.out / DATASET), "--staging-dir", str(config.out / "staging"),
        "--flush-seconds", "1", "--follow-seconds", "1",
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


def wait_published(port: int, window: int) -> None:
    """Until the server has published every record it staged (a window's traffic is in the dataset)."""
    deadline = time.monotonic() + 120
    while (publishing := httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()["publishing"])["staged_records"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"window {window}: the server has not published its staged records in 120 s: {publishing}")
        time.sleep(0.2)


class References:
    """Each served version's monitoring reference, downloaded once."""

    def __init__(self) -> None:
        self._found: dict[str, Reference] = {}

    def __call__(self, version: str) -> Reference:
        if version not in self._found:
            run_id = resolve_registered(f"models:/{MODEL_NAME}/{version}").run_id
            self._found[version] = load_reference(download_reference(run_id))
        return self._found[version]


def records_frame(out: Path) -> pd.DataFrame:
    """Every record a loop's server wrote: its prediction dataset (an older loop's SQLite log)."""
    location = out / DATASET if (out / DATASET).is_dir() else out / "predictions.db"
    return read_records(str(location)).astype({"window": int, "image_index": int})


def loop_incidents(records: pd.DataFrame, references: References) -> list[dict]:
    """The incidents of the whole run, as the monitor would raise them: each window judged against the reference of
    the version that served most of it, under that version's policy."""
    main_version = records.groupby("window")["model_version"].agg(serving_version)
    checks, policy = [], None
    for version, mine in records.groupby("model_version", sort=False):
        reference = references(str(version))
        policy = load_policy(None, reference)
        judged = window_metrics(mine, reference)
        judged = judged[judged["window"].map(main_version).astype(str) == str(version)]
        checks.append(window_checks(judged, policy.rules))
    every = pd.concat(checks, ignore_index=True).sort_values("window", kind="stable")
    return [event.as_dict() for event in incident_events(every, policy.rules, policy.resolve_after_quiet_windows)]


def controller_config(config: LoopConfig) -> ControllerConfig:
    """The controller's settings for the loop's folder (the labels, retrains and gate as the loop's): the server's
    dataset, the annotator's labels.csv, windows as the simulator stamps them, each judged once its traffic is in."""
    shared = [item.name for item in fields(LoopOptions)]
    return ControllerConfig(
        dataset=str(config.out / DATASET),
        labels=config.out / "labels.csv",
        out=config.out / "controller",
        clock="simulated",
        close_windows=True,
        **{name: getattr(config, name) for name in shared},
    )


def answer_queue(control: ControllerConfig, truth: pd.DataFrame, config: LoopConfig, state: LoopState) -> None:
    """The annotator stand-in: the images the controller queued since it was last asked (it only appends), answered
    from the ground truth, to come back `label_delay` windows after theirs."""
    queue = read_keyed_csv(control.queue)
    fresh = queue.iloc[state.queued :]
    state.queued = len(queue)
    if len(fresh):
        state.answered.append(simulated_labels(fresh, truth, config.label_delay))


def hand_in(window: int, control: ControllerConfig, state: LoopState) -> None:
    """The answers that have come back by the end of `window`, written to the label store the controller reads."""
    in_hand = labels_in_hand(state.answered, window)
    if len(in_hand):
        write_labels(in_hand, control.labels)


def note_decisions(window: int, decisions: list[Decision], alerts: list[dict], state: LoopState, port: int) -> None:
    """The cycle's decisions as the loop's events (the window they came after); after a promotion, the wait for the
    server to follow."""
    for alert in alerts:
        version, judged = str(alert["model_version"]), int(alert["window"])
        state.events.append({"window": judged, "event": "alert", "version": version, "rule": alert["rule"]})
        log.info("window %d: alert %s on version %s", judged, alert["rule"], version)
    challenger = None
    for decision in decisions:
        if decision.decision in ("retrain_failed", "promotion_failed"):
            raise RuntimeError(f"window {window}: {decision.decision}: {decision.reason}")
        if decision.decision == "labeling_started":
            state.events.append({"window": window, "event": "labeling_started", "version": served_version(port)})
        elif decision.decision == "retrained":
            challenger = str(mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, "challenger").version)
            state.events.append({"window": window, "event": "retrained", "version": challenger})
        elif decision.decision in ("promoted", "promotion_refused"):
            event = {"window": window, "event": decision.decision, "version": challenger, "reason": decision.reason}
            state.events.append(event)
    if state.events and state.events[-1]["event"] == "promoted" and state.events[-1]["window"] == window:
        wait_for_switch(window, state.events[-1]["version"], port)
        state.events.append({"window": window, "event": "server_switched", "version": state.events[-1]["version"]})


def wait_for_switch(window: int, version: str, port: int) -> None:
    deadline = time.monotonic() + 180
    while served_version(port) != version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not switch to version {version} in 180 s")
        time.sleep(0.5)
    log.info("window %d: the server now serves version %s", window, version)


def run_loop(config: LoopConfig, settings: Settings) -> dict:
    """The whole loop; returns closed_loop.json's figures."""
    config.out.mkdir(parents=True, exist_ok=True)
    use_tracking(settings)
    overrides = {"windows": config.windows, "requests_per_window": config.requests_per_window}
    scenario = load_scenario(config.scenario, **{key: value for key, value in overrides.items() if value})
    sim_dir = config.out / "simulation"
    control = controller_config(config)
    control.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(config, port)
    transport = HttpTransport(f"http://127.0.0.1:{port}")
    state, controlled, every = LoopState(), ControllerState(), []
    started = time.perf_counter()
    try:
        first_version = served_version(port)
        with controller_run(control):
            for window in range(scenario.windows):
                until = {"track": False, "until_window": window + 1, "progress": False}
                sent = run_simulation(scenario, sim_dir, transport, settings, config.concurrency, **until)
                if sent.stats.stopped_by:
                    raise RuntimeError(f"window {window}: the traffic stopped: {sent.stats.stopped_by}")
                wait_published(port, window)
                hand_in(window, control, state)
                decisions = run_cycle(control, controlled)
                save_state(control.out, controlled)
                every += decisions
                record(control, controlled, decisions, every)
                answer_queue(control, read_ground_truth(sim_dir / SIDECAR_FILE), config, state)
                alerts = read_alerts(cycle_folder(control, controlled.cycles) / "monitor")
                note_decisions(window, decisions, alerts, state, port)
                log.info("window %d/%d done: %s", window + 1, scenario.windows, ", ".join(d.decision for d in decisions))
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
    records = records_frame(config.out)
    truth = read_ground_truth(config.out / "simulation" / SIDECAR_FILE)
    references = References()
    trained = trained_fingerprints(set(records["model_version"].astype(str)))
    windows = window_table(records, truth, answered, references, config.label_delay, trained, config.allocation == "spread")
    incidents = loop_incidents(records, references)
    return {"windows": windows, "figures": loop_figures(windows, state, config, first_version, seconds, incidents)}


def reanalyse(out: Path) -> dict:
    """Judge a finished loop again with this analysis (its events, configuration and time kept from its
    closed_loop.json); rewrites closed_loop.json and windows.csv in its folder."""
    old = json.loads((out / "closed_loop.json").read_text())
    fields = {key: value for key, value in old["config"].items() if key in LoopConfig.__dataclass_fields__}
    fields.setdefault("allocation", "fixed")  # a loop from before the choice drew its flagged labels uniformly
    config = LoopConfig(**{**fields, "out": out})
    state = LoopState(events=old["events"])
    answered_path = out / "labels_answered.csv" if (out / "labels_answered.csv").is_file() else out / "labels.csv"
    answered = read_labels(answered_path)
    first_version = str(records_frame(out)["model_version"].iloc[0])
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
    by_prediction: bool,
) -> pd.DataFrame:
    """Per window and serving version: truth, label-free and label-assisted accuracy, labels that came back.

    Records of a retrained version whose image it trained on are left out of its realised accuracy. `by_prediction`:
    the labels were drawn by the spread allocation, and the estimate corrects each predicted class by its own."""
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
            lag: label_assisted_accuracy(judged, judged["p_correct"], labels, lag=lag, by_prediction=by_prediction).set_index(
                "window"
            )
            for lag in (0, delay)
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
    served_after = drifted[drifted["window"] > promotions[0]["window"]] if promotions else drifted.iloc[0:0]
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
            "from_first_promotion_on": {
                "windows": len(served_after),
                "realised_accuracy": round(float(served_after["realised_accuracy"].mean()), 4),
            }
            if len(served_after)
            else None,
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
