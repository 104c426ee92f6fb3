"""The loop's controller against a deployment: it follows the deployment's prediction dataset with the incremental
monitor, queues images to label from the windows after the first alert, waits for their labels in the label store
(the labeling page's file), retrains, gates and promotes, and records each decision with its reason in MLflow.

    python -m loop run --dataset LOCATION --labels labels.jsonl [--every 1h] [--out FOLDER]

A cycle is one incremental monitoring run (`python -m monitoring run`'s command line, run in the controller's own
process so that its imports and connections are paid once, with the controller's own watermark, so no window is
judged twice), then the decisions of `loop.decisions`, then at most one retrain
(`python -m training retrain`) and promotion (`python -m training promote`, MLflow's validation gate). The servers
keep serving the champion meanwhile and follow the alias when it moves. What the controller has done is kept in
its folder (`controller.json`), so a controller started again goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from common.cli import option
from common.files import write_whole
from common.labels import read_labels
from common.logs import FORMAT as LOG_FORMAT
from common.prediction_dataset import Part, filesystem, read_parts
from common.settings import MODEL_NAME, PROJECT_ROOT
from common.windows import CLOCKS, DAILY_CLOCK, WindowClock, with_windows
from labeling.queue import select_for_labeling
from loop.decisions import labeling_since, retrain_due, window_label_budget, windows_to_queue
from monitoring.incremental import WATERMARK_FILE, Watermark

log = logging.getLogger(__name__)
STATE_FILE = "controller.json"
DECISIONS_FILE = "decisions.jsonl"
DECISIONS_ARTIFACT = "loop/decisions.json"
KEPT_FILE = "kept_images.csv"  # request_id, image_index of every record read whose image the dataset kept
GATE_SAYS = ("promoted: ", "not promoted: ")  # how `training promote` states its decision


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """What the controller and the simulated loop decide by: labels, retrains and the gate (each but the seed a
    command-line option)."""

    labels_per_window: int = option(10, "label budget per window")
    labels_after_retrains: int = option(
        5, "label budget per window once the retrains are spent: labels then only check the accuracy estimate"
    )
    random_share: float = option(0.3, "share of the budget drawn from unflagged images")
    allocation: str = option(
        "spread",
        "how a window's budget is drawn: spread (the flagged share evenly over the predicted classes, so that few "
        "labels reach each way the model reads the drifted images) or fixed (the flagged share uniformly)",
        choices=("spread", "fixed"),
    )
    retrain_after: int = option(100, "labeled images in hand (with their image) since the last retrain that start one")
    max_retrains: int = option(3, "retrains at most")
    epochs: int = option(2, "retraining epochs")
    train_limit: int | None = option(None, "retrain on the first N shuffled MNIST images only (quick runs)")
    foreign_limit_per_class: int | None = option(None, "evaluate retrained models on at most N foreign digits per class")
    min_accuracy: float = option(0.993, "MNIST test floor of promotion")
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ControllerConfig(LoopOptions):
    dataset: str = option(help="the deployment's prediction dataset: a folder or az://container/prefix")
    labels: Path = option(help="the label store people answer into (the labeling page's file)")
    out: Path  # the controller's folder: its state, watermark, queue, decisions, the logs of what it ran
    clock: str = option("auto", "windows as the monitor numbers them", choices=CLOCKS)
    wall: WindowClock = DAILY_CLOCK
    close_windows: bool = option(False, "judge the newest window too (the traffic is over)")

    @property
    def queue(self) -> Path:
        return self.out / "queue.csv"


@dataclass
class ControllerState:
    """What the controller has done so far, kept in controller.json between cycles and runs."""

    cycles: int = 0
    judged_through: int | None = None
    labeling_since: int | None = None
    queued_through: int | None = None
    images_at_last_retrain: int = 0
    retrains: int = 0
    parts_read: list[str] = field(default_factory=list)  # consumed parts whose records are queued and counted


@dataclass(frozen=True)
class Decision:
    """One thing the controller decided, why, and when."""

    cycle: int
    decision: str
    reason: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def load_state(out: Path) -> ControllerState:
    path = out / STATE_FILE
    return ControllerState(**json.loads(path.read_text())) if path.is_file() else ControllerState()


def save_state(out: Path, state: ControllerState) -> None:
    write_whole(out / STATE_FILE, json.dumps(asdict(state), indent=2).encode())


def run_command(command: list[str], log_path: Path, says: tuple[str, ...] = ()) -> tuple[int, str]:
    """A part's command, its output written to `log_path` as it runs (follow it there); (exit code, what it said
    last: its last line starting with one of `says`, else its last line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as output:
        code = subprocess.run(command, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    return code, said_last(log_path, says)


def said_last(log_path: Path, says: tuple[str, ...] = ()) -> str:
    """What a part's log says last: its last line starting with one of `says`, else its last line (logged)."""
    lines = log_path.read_text(errors="replace").strip().splitlines() or [""]
    last = next((line for line in reversed(lines) if line.startswith(says)), lines[-1])
    log.info("  %s", last)
    return last


def run_in_process(main: Callable[[list[str]], int], argv: list[str], log_path: Path, name: str) -> tuple[int, str]:
    """A part's command line (`name`, e.g. python -m monitoring) run by its `main` in this process, on a thread of its
    own (MLflow's active run is per thread: the part's run is not the controller's child), its output and log lines
    written to `log_path`; (exit code as its process would have ended, its last line).

    What the part's own process gave, this does not: a crash of native code or the memory running out ends the
    controller too, and the part's process-wide settings (MLflow's experiment, loggers' levels) stay. Output that
    native code writes to the file descriptors themselves goes to the controller's."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, int] = {}

    def part() -> None:
        try:
            outcome["code"] = main(argv)
        except SystemExit as exit_:  # the part's argument parser refused the command line, or it exited
            outcome["code"] = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # as the part's own process would have ended: the traceback in its log, exit status 1
            logging.getLogger(__name__).exception("%s %s failed", name, argv[0])
            outcome["code"] = 1

    root = logging.getLogger()
    with open(log_path, "w") as output, redirect_stdout(output), redirect_stderr(output):
        handler = logging.StreamHandler(output)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        kept, root.handlers = root.handlers, [handler]  # the controller waits meanwhile (one thread): only the part logs
        try:
            # a daemon thread joined in steps: Ctrl-C reaches the controller at once and does not wait for the part
            thread = threading.Thread(target=part, name=f"part-{argv[0]}", daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(0.5)
        finally:
            root.handlers = kept
    return outcome.get("code", 1), said_last(log_path)


def judge_new_windows(config: ControllerConfig, out: Path) -> tuple[list[int], list[dict], str]:
    """One incremental monitoring run of the dataset (the controller's watermark: each window judged once): the
    windows it judged, their alerts, and what it said last."""
    from monitoring.__main__ import main as monitoring_main  # its imports (Evidently's, DuckDB's) once, when first used

    command = ["run", "--log", config.dataset, "--out", str(out)]
    command += ["--watermark", str(config.out / WATERMARK_FILE), "--clock", config.clock]
    if config.clock != "simulated":
        command += ["--window", f"{config.wall.length_s}s", "--timezone", config.wall.timezone]
    if config.close_windows:
        command.append("--close-windows")
    code, last = run_in_process(monitoring_main, command, out.parent / "monitor.log", "python -m monitoring")
    if code != 0:
        raise RuntimeError(f"the monitoring run failed ({last}): see {out.parent / 'monitor.log'}")
    if not (out / "window_metrics.csv").is_file():
        return [], [], last
    windows = pd.read_csv(out / "window_metrics.csv")["window"].astype(int).tolist()
    return windows, read_alerts(out), last


def read_alerts(out: Path) -> list[dict]:
    """The alerts a monitoring run raised (its alerts.jsonl), none when it judged nothing."""
    path = out / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def cycle_folder(config: ControllerConfig, cycle: int) -> Path:
    """Where a cycle keeps the logs of what it ran, its monitoring run's outputs under monitor/."""
    return config.out / f"cycle-{cycle:04d}"


def queue_windows(
    config: ControllerConfig, records: pd.DataFrame, windows: range, queued: pd.DataFrame, budget: int
) -> pd.DataFrame:
    """The images to label of `windows` (`budget` per window, drawn within flag strata), none queued before."""
    mine = records[records["window"].isin(list(windows))]
    return select_for_labeling(mine, budget, config.random_share, config.seed, already=queued, allocation=config.allocation)


def new_records(config: ControllerConfig, state: ControllerState) -> tuple[pd.DataFrame, list[str]]:
    """The records of the parts the monitor has read that the controller has not (a part still holding an open
    window is read again each cycle), numbered into windows by the monitor's clock; and the consumed parts among
    them. Only new parts are read, so a cycle costs the same however long the dataset has grown."""
    watermark = Watermark.from_json((config.out / WATERMARK_FILE).read_text())
    done = set(state.parts_read)
    consumed = [path for path in watermark.consumed if path not in done]
    fs, _ = filesystem(config.dataset)
    records = read_parts(fs, [Part(path, 0) for path in [*consumed, *watermark.pending]])
    if watermark.clock is not None:
        records, _ = with_windows(records, watermark.clock, config.dataset)
    return records.astype({"image_index": int}), consumed


def read_keyed_csv(path: Path) -> pd.DataFrame:
    """A CSV of the controller's keyed by request id and image index (the queue, the kept images), the ids exactly as
    written (a client's id "NA" or "00123" stays text); empty with those two columns when there is none."""
    if not path.is_file():
        return pd.DataFrame({"request_id": pd.Series(dtype=str), "image_index": pd.Series(dtype=int)})
    return pd.read_csv(path, dtype={"request_id": str}, keep_default_na=False)


def kept_images(out: Path, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The controller's list of the records read whose image the dataset kept (its KEPT_FILE), with those of
    `records` added."""
    path = out / KEPT_FILE
    keys = ["request_id", "image_index"]
    known = read_keyed_csv(path)
    if records is None:
        return known
    fresh = records.loc[records["image"].notna(), keys]
    kept = pd.concat([known, fresh], ignore_index=True).drop_duplicates(ignore_index=True)
    if len(kept) > len(known):
        write_whole(path, kept.to_csv(index=False).encode())
    return kept


def labeled_with_image(labels_path: Path, kept: pd.DataFrame) -> int:
    """How many labels in the store a retrain can use: their image was kept (the flagged ones)."""
    if not labels_path.is_file():
        return 0  # nobody has answered yet
    labels = read_labels(labels_path)
    return len(labels.merge(kept.astype({"image_index": int}), on=["request_id", "image_index"]))


def retrain_and_promote(config: ControllerConfig, state: ControllerState, folder: Path) -> list[Decision]:
    """`training retrain` on the labels in hand, then `training promote` (its gate decides). A retrain that fails
    is not counted: the next cycle tries again."""
    command = [sys.executable, "-m", "training", "retrain", "--labels", str(config.labels)]
    command += ["--prediction-log", config.dataset, "--epochs", str(config.epochs)]
    command += ["--run-name", f"loop-retrain-{state.retrains + 1}"]
    if config.train_limit:
        command += ["--train-limit", str(config.train_limit)]
    if config.foreign_limit_per_class:
        command += ["--foreign-limit-per-class", str(config.foreign_limit_per_class)]
    code, last = run_command(command, folder / "retrain.log")
    if code != 0:
        return [Decision(state.cycles, "retrain_failed", f"{last} (see {folder / 'retrain.log'})")]
    state.retrains += 1
    decisions = [Decision(state.cycles, "retrained", last)]
    promote = [sys.executable, "-m", "training", "promote", "--model-name", MODEL_NAME]
    promote += ["--min-accuracy", str(config.min_accuracy)]
    code, reason = run_command(promote, folder / "promote.log", says=GATE_SAYS)  # whatever a library logged after it
    outcome = "promoted" if code == 0 else "promotion_refused" if reason.startswith("not promoted") else "promotion_failed"
    decisions.append(Decision(state.cycles, outcome, reason if outcome != "promotion_failed" else f"{reason} (see {folder})"))
    return decisions


def run_cycle(config: ControllerConfig, state: ControllerState) -> list[Decision]:
    """One cycle: judge the new windows, start labeling at the first alert, queue the new windows' images, and
    retrain and try to promote once enough labels are in. Updates `state`."""
    state.cycles += 1
    save_state(config.out, state)  # each attempt its own folder, even one that fails
    folder = cycle_folder(config, state.cycles)
    windows, alerts, said = judge_new_windows(config, folder / "monitor")
    cycle = state.cycles
    if not windows:
        decisions = [Decision(cycle, "nothing_to_judge", said)]
    else:
        rules = sorted({alert["rule"] for alert in alerts})
        what = f"{len(alerts)} alerts ({', '.join(rules)})" if alerts else "no alert"
        decisions = [Decision(cycle, "judged", f"windows {windows[0]}-{windows[-1]}: {what}")]
    first_alert = min((int(alert["window"]) for alert in alerts), default=None)
    since = state.labeling_since if first_alert is None else labeling_since(state.labeling_since, first_alert, True)
    if since != state.labeling_since:
        rule = next(alert["rule"] for alert in alerts if int(alert["window"]) == since)
        started = f"window {since} raised {rule}: its images and later windows' get labels"
        decisions.append(Decision(cycle, "labeling_started", started))
    state.labeling_since = since
    if windows:
        state.judged_through = max(windows)
    save_state(config.out, state)  # the monitor's watermark has moved: what it judged is not judged again
    queued = read_keyed_csv(config.queue)
    if len(queued):  # the queue is ahead of the state when a cycle stopped after writing it: no window twice
        state.queued_through = max(state.queued_through or 0, int(queued["window"].max()))
    to_queue = windows_to_queue(since, state.judged_through, state.queued_through) if since is not None else range(0)
    records, consumed = new_records(config, state) if windows or len(to_queue) else (None, [])
    kept = kept_images(config.out, records)
    if records is not None and len(to_queue):
        budget = window_label_budget(config.labels_per_window, config.labels_after_retrains, state.retrains, config.max_retrains)
        fresh = queue_windows(config, records, to_queue, queued, budget)
        write_whole(config.queue, pd.concat([queued, fresh], ignore_index=True).to_csv(index=False).encode())
        state.queued_through = to_queue[-1]
        said = f"{len(fresh)} images of windows {to_queue[0]}-{to_queue[-1]} to {config.queue}"
        if budget < config.labels_per_window:
            said += f" (at most {budget} a window: the retrains are spent, labels only check the accuracy estimate)"
        decisions.append(Decision(cycle, "queued", said))
    state.parts_read += consumed  # only now: a cycle that stops earlier reads them again
    save_state(config.out, state)
    if since is None:
        return decisions
    usable = labeled_with_image(config.labels, kept)
    if retrain_due(usable, state.images_at_last_retrain, state.retrains, config.retrain_after, config.max_retrains):
        decisions.append(
            Decision(cycle, "retrain", f"{usable - state.images_at_last_retrain} labeled images since the last retrain")
        )
        decisions += retrain_and_promote(config, state, folder)
        if decisions[-1].decision != "retrain_failed":
            state.images_at_last_retrain = usable
    elif state.retrains >= config.max_retrains:
        decisions.append(Decision(cycle, "no_retrain", f"the {config.max_retrains} retrains allowed are spent"))
    else:
        waiting = f"{usable - state.images_at_last_retrain} of {config.retrain_after} labeled images since the last retrain"
        decisions.append(Decision(cycle, "waiting_for_labels", waiting))
    return decisions


def record(config: ControllerConfig, state: ControllerState, decisions: list[Decision], every: list[Decision]) -> None:
    """The cycle's decisions: appended to decisions.jsonl (every run's), and on this run's MLflow run (its
    decisions as loop/decisions.json, the counts as metrics by cycle, the last as a tag)."""
    import mlflow

    lines = "".join(json.dumps(asdict(decision)) + "\n" for decision in decisions)
    with open(config.out / DECISIONS_FILE, "a") as handle:
        handle.write(lines)
    for decision in decisions:
        log.info("cycle %d: %s: %s", decision.cycle, decision.decision, decision.reason)
    mlflow.log_dict([asdict(decision) for decision in every], DECISIONS_ARTIFACT)
    counts = {"loop/retrains": state.retrains, "loop/labels_at_last_retrain": state.images_at_last_retrain}
    mlflow.log_metrics(counts, step=state.cycles)
    last = decisions[-1]
    mlflow.set_tags({"digitdrift.loop.last_decision": last.decision, "digitdrift.loop.reason": last.reason[:5000]})


@contextmanager
def controller_run(config: ControllerConfig) -> Iterator[None]:
    """The MLflow run that holds a controller's decisions (`record`), with its settings as params."""
    import mlflow

    with mlflow.start_run(run_name="loop-controller", tags={"digitdrift.loop.dataset": config.dataset}):
        settings = ("retrain_after", "max_retrains", "labels_per_window", "labels_after_retrains", "min_accuracy")
        mlflow.log_params({name: getattr(config, name) for name in settings})
        yield


def control(config: ControllerConfig, cycles: int | None, every_s: float, stopping: threading.Event) -> list[Decision]:
    """Cycles, one each `every_s`, until `cycles` are done (None: until stopped) or `stopping` is set; the decisions,
    each recorded as it is taken. One MLflow run holds this controller's decisions. A first cycle that fails stops
    it; a later one is recorded as failed and the next period tries again."""
    import mlflow

    config.out.mkdir(parents=True, exist_ok=True)
    state = load_state(config.out)
    every: list[Decision] = []
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())  # the parts' commands use the same store
    with controller_run(config):
        done = 0
        while not stopping.is_set():
            started = time.monotonic()
            try:
                decisions = run_cycle(config, state)
            except Exception as err:  # a controller that stays up goes on: the next period tries again
                if not done:
                    raise  # a first cycle that fails: what the controller was told is wrong
                log.exception("cycle %d failed; the next one starts in %.0f s", state.cycles, every_s)
                decisions = [Decision(state.cycles, "cycle_failed", f"{type(err).__name__}: {err}")]
            save_state(config.out, state)
            every += decisions
            try:
                record(config, state, decisions, every)
            except Exception:  # MLflow unreachable: decisions.jsonl has them; the next cycle logs them all again
                if not done:
                    raise
                log.exception("cycle %d: its decisions are in %s, not yet in MLflow", state.cycles, DECISIONS_FILE)
            done += 1
            if cycles is not None and done >= cycles:
                break
            stopping.wait(max(0.0, every_s - (time.monotonic() - started)))
    return every
