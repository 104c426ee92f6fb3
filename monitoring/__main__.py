"""python -m monitoring run|evaluate: judge a prediction log window by window; score the monitor itself."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException

from common.cli import add_options, options_of
from common.datasets import DatasetError, load_mnist
from common.logs import configure_logging
from common.machine import describe_machine, shown_path
from common.prediction_dataset import is_dataset_url
from common.settings import MODEL_NAME, Settings, load_settings
from common.spark import DEFAULT_SPARK_MASTER
from common.tracking import unreachable_tracking, use_tracking
from common.windows import (
    DAILY_CLOCK,
    DEFAULT_LATENESS,
    DEFAULT_TIMEZONE,
    DEFAULT_WINDOW,
    DURATION_FORMS,
    WindowClock,
    WindowError,
    parse_duration,
)
from monitoring.alerts import firing_windows
from monitoring.engine import ENGINES, for_version, open_log, read_truth
from monitoring.errors import MonitoringError
from monitoring.history import deployment_key
from monitoring.job import DatasetSource, HistorySink, monitor, monitor_dataset
from monitoring.metrics import MonitorConfig
from monitoring.model import resolve_model
from monitoring.pandas_engine import PandasLog, log_images
from monitoring.policy import DEFAULT_POLICY, PolicyError, load_policy, suggested_policy


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "monitor a prediction log: window metrics, drift tests, alerts, dashboard, MLflow run"),
        ("evaluate", "monitor simulated runs with their ground truth and score the monitor"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--log",
            default=str(settings.state_dir / "predictions.db"),
            help="prediction log: SQLite, Parquet exported from it, or (run) a partitioned dataset: a folder or "
            "az://container/prefix with AZURE_STORAGE_CONNECTION_STRING (default: %(default)s)",
        )
        command.add_argument(
            "--model",
            default=f"models:/{MODEL_NAME}@champion",
            help="the served model, whose reference the windows are compared with (default: %(default)s)",
        )
        command.add_argument("--model-version", help="with --reference: the version whose records to monitor")
        command.add_argument("--reference", help="a reference.npz file instead of the registry's")
        command.add_argument(
            "--min-window-size",
            type=int,
            default=MonitorConfig.min_window_size,
            help="windows with fewer records are reported but raise no alert (default: %(default)s)",
        )
        command.add_argument(
            "--policy",
            type=Path,
            help=f"the policy file: rules, thresholds, severities, cooldown, incidents (default: {DEFAULT_POLICY.name}, "
            "packaged with the monitor; `suggest` writes one from a version's reference)",
        )
        command.add_argument("--no-mlflow", dest="track", action="store_false", help="do not log MLflow runs")
    run = commands.choices["run"]
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="who computes the window metrics: DuckDB (Parquet logs and datasets), pandas in memory (SQLite or "
        "Parquet logs) or Spark (Parquet logs, a cluster); auto: DuckDB for Parquet, pandas for SQLite",
    )
    run.add_argument("--spark-master", default=DEFAULT_SPARK_MASTER, help="with --engine spark: local[*] or a master URL")
    run.add_argument("--truth", help="a simulation's ground_truth.db: adds realised accuracy and true foreign share")
    run.add_argument("--label", default=None, help="what the traffic was (default: the log's file name)")
    run.add_argument("--out", type=Path, help="a new folder for the outputs (default: .digitdrift/monitoring/<label>-<time>)")
    run.add_argument("--webhook", help="POST each alert as JSON to this URL")
    add_options(run, DatasetSource)
    run.add_argument(
        "--lateness",
        default=DEFAULT_LATENESS,
        help="with a dataset: a window of wall-clock time is judged once its end plus this has passed, by the newest "
        "record or by the clock; records arriving later are counted as late (default: %(default)s)",
    )
    run.add_argument(
        "--history",
        help="the deployment's history (a folder or az://container/prefix): each run appends the windows it judged, the "
        "dashboard draws its last windows and one long-lived MLflow run holds the whole timeline (default with a "
        "dataset: .digitdrift/monitoring/history/<model>--<dataset>; with a log file: none)",
    )
    run.add_argument(
        "--history-windows",
        type=int,
        default=365,
        help="with a history: how many of its last windows the dashboard draws (default: %(default)s)",
    )
    run.add_argument(
        "--every",
        help=f"with a dataset: keep running, one incremental run each period ({DURATION_FORMS}) in this process, the "
        "model looked up anew each time; with --out, each run writes a folder of its own in it",
    )
    run.add_argument("--max-runs", type=int, help="with --every: stop after this many runs (default: run until stopped)")
    suggest = commands.add_parser("suggest", help="write a policy file with thresholds derived from a version's reference")
    suggest.add_argument(
        "--model", default=f"models:/{MODEL_NAME}@champion", help="the model whose reference to use (default: %(default)s)"
    )
    suggest.add_argument("--model-version", help="with --reference: the version it belongs to")
    suggest.add_argument("--reference", help="a reference.npz file instead of the registry's")
    suggest.add_argument(
        "--sd", type=float, default=4.0, help="standard deviations over the reference's chunks (default: %(default)s)"
    )
    suggest.add_argument("--out", type=Path, required=True, help="the policy file to write (monitor.yaml)")
    evaluate = commands.choices["evaluate"]
    evaluate.add_argument(
        "--runs", nargs="+", type=Path, required=True, help="simulation run folders (scenario.yaml, ground_truth.db)"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=settings.state_dir / "monitoring_evaluation.json",
        help="the scorecard JSON (default: %(default)s; `make evaluate` writes bench/results/monitoring_evaluation.json)",
    )
    evaluate.add_argument(
        "--reproduce-with",
        help="the command that reproduces the whole scorecard (simulations included), recorded in it "
        "(default: this command, which needs the runs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    configure_logging()
    if args.command == "run" and args.every:
        return _keep_monitoring(args, settings)
    return _command(args, settings)


def _keep_monitoring(args, settings: Settings) -> int:
    """--every: an incremental run of the dataset each period in this one process (its imports and connections
    kept), the model looked up anew each time (a promotion is followed), until SIGTERM (the run under way ends
    first), Ctrl-C or --max-runs. A first run that fails stops it (what it was told is wrong); a later failure says why
    and the next period tries again. Returns the worst exit status of its runs."""
    try:
        every = parse_duration(args.every, "--every")
    except WindowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    refusal = None
    if not is_dataset_url(args.log):
        refusal = f"keeps monitoring a dataset (a folder or az://...); {args.log} is judged whole each run"
    elif args.full:
        refusal = "with --full every period would judge every window again"
    elif args.max_runs is not None and args.max_runs < 1:
        refusal = f"--max-runs {args.max_runs}: expected 1 or more"
    if refusal:
        print(f"error: --every {args.every}: {refusal}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    codes: list[int] = []
    while not stopping.is_set():
        started = time.monotonic()
        try:
            codes.append(_command(args, settings))
        except Exception:  # a monitor that stays up goes on: the next period tries again
            logging.getLogger(__name__).exception("the monitoring run failed; the next one starts in %s", args.every)
            codes.append(1)
        if codes == [2] or (args.max_runs and len(codes) >= args.max_runs):
            break
        stopping.wait(max(0.0, every - (time.monotonic() - started)))
    return max(codes, default=0)


def _command(args, settings: Settings) -> int:
    try:
        wall = _wall_clock(args) if args.command == "run" else None
        use_tracking(settings)
        model = resolve_model(args.model, args.reference, args.model_version, MODEL_NAME)
        if args.command == "suggest":
            return _suggest(model, args.sd, args.out)
        policy = load_policy(args.policy, model.reference)
        config = MonitorConfig(min_window_size=args.min_window_size)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if args.command == "run":
            label = args.label or Path(args.log.rstrip("/")).stem
            truth = read_truth(args.truth) if args.truth else None
            out = args.out or settings.state_dir / "monitoring" / f"{label}-{stamp}"
            if args.every and args.out:  # one folder a run
                out = args.out / stamp
            if is_dataset_url(args.log):
                return _run_dataset(args, model, config, truth, label, out, settings, policy)
            records = open_log(args.log, args.engine, args.spark_master, args.clock, wall or DAILY_CLOCK)
            records = for_version(records, model, args.log)
            sink = _history_sink(args, model, args.log, settings) if args.history else None
            result = monitor(
                records, model, out, label, config, truth, args.webhook, args.track, policy=policy, history_sink=sink
            )
            _report(result)
            return 0
        frame = for_version(PandasLog.read(args.log), model, args.log).frame
        return _evaluate(args, frame, model, config, settings, stamp, policy)
    except (MonitoringError, WindowError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        unreachable = unreachable_tracking(err)
        if unreachable is None:
            raise
        print(f"error: {unreachable}", file=sys.stderr)
        return 2


def _wall_clock(args) -> WindowClock | None:
    """The windows of wall-clock time the command line asks for (None: neither --window nor --timezone)."""
    if args.window is None and args.timezone is None:
        return None
    return WindowClock.wall(args.window or DEFAULT_WINDOW, args.timezone or DEFAULT_TIMEZONE)


def _suggest(model, sd: float, out: Path) -> int:
    """Write a policy file whose thresholds are this version's numbers."""
    policy = suggested_policy(model.reference, sd)
    header = f"# suggested by `python -m monitoring suggest` from {model.name} version {model.version}'s reference\n"
    out.write_text(header + yaml.safe_dump(policy, sort_keys=False))
    print(f"policy with {len(policy['rules'])} rules written to {out}; use it with --policy {out}")
    return 0


def _history_sink(args, model, source: str, settings) -> HistorySink:
    """The deployment's history: --history, else one folder per model and data source under the state folder."""
    key = deployment_key(model.name, source)
    location = args.history or str(settings.state_dir / "monitoring" / "history" / key)
    return HistorySink(location, key, args.history_windows)


def _run_dataset(args, model, config, truth, label, out, settings, policy) -> int:
    lateness_s = parse_duration(args.lateness, "--lateness", allow_zero=True)
    source = DatasetSource(args.log, track=args.track, lateness_s=lateness_s, **options_of(args, DatasetSource))
    cache = settings.state_dir / "cache" / "datasets"
    result, increment, parts = monitor_dataset(
        source,
        model,
        out,
        label,
        cache,
        config,
        truth,
        args.webhook,
        args.engine,
        args.spark_master,
        policy=policy,
        history_sink=_history_sink(args, model, args.dataset_id or args.log, settings),
    )
    clock = increment.clock
    if result is None:
        judged = "no window judged yet" if increment.after is None else f"judged through {clock.name(increment.after)}"
        message = f"nothing to judge: {parts} part(s); {judged}; every other window is still open or holds no record"
        if not args.every:  # a run's folder says so too (a pipeline's next step reads it); not one a period
            out.mkdir(parents=True, exist_ok=True)
            (out / "nothing_to_judge.txt").write_text(message + "\n")
        print(message)
        return 0
    after = "" if increment.after is None else f"after {clock.name(increment.after)} "
    print(
        f"read {len(increment.parts)} of {parts} parts ({increment.bytes} bytes); judged windows "
        f"{after}through {clock.name(increment.through)}"
    )
    _report(result)
    return 0


def _report(result) -> None:
    print(f"judged by {result.clock.describe()}")
    print(f"{len(result.metrics)} windows, {int(result.metrics['volume'].sum())} records, {len(result.alerts)} alerts")
    for line in result.left_out.messages():
        print(f"  left out: {line}")
    too_small = result.metrics[result.metrics["too_small"]]
    if len(too_small):
        print(f"  {len(too_small)} windows too small to judge (under --min-window-size records): shown, not alerted on")
    for alert in result.alerts:
        print(
            f"  {result.clock.name(alert.window)}: {alert.severity} {alert.rule} ({alert.metric} = {alert.value:.3g}): "
            f"{alert.message}"
        )
    if result.checks is not None and len(result.checks):
        counts = result.checks["status"].value_counts()
        print(
            "checks per window: " + ", ".join(f"{counts.get(status, 0)} {status}" for status in ("pass", "warn", "fail", "skip"))
        )
    failed = [delivery for delivery in result.deliveries if not delivery.delivered]
    if result.deliveries:
        print(f"incident notices: {len(result.deliveries) - len(failed)} delivered, {len(failed)} failed")
    for delivery in failed:
        print(f"  route {delivery.route}: incident {delivery.incident} {delivery.event} not delivered: {delivery.error}")
    for event in result.incidents:
        print(
            f"  incident of {result.clock.name(event.incident)} {event.event} at {result.clock.name(event.window)}: "
            f"{event.severity}, rules {', '.join(event.rules)}"
        )
    print(f"dashboard: {result.out_dir / 'dashboard.html'}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} (metrics by window as steps; dashboard, report, gallery as artifacts)")


def _quality_on_mnist(model, settings) -> dict | None:
    """The data-quality causes' precision and recall on MNIST's test images (the simulator's pool), corrupted."""
    from monitoring.evaluate import quality_figures  # scikit-learn's import: only the evaluation pays for it

    bounds = model.reference.quality_bounds
    if not len(bounds):
        return None
    try:
        images = load_mnist(settings.data_dir / "mnist", "test").images
    except DatasetError as err:
        logging.getLogger(__name__).warning("no data-quality figures on corrupted MNIST: %s", err)
        return None
    return quality_figures(bounds, images)


def _evaluate(args, frame, model, config, settings, stamp, policy) -> int:
    from monitoring.evaluate import JudgedRun, cluster_figures, evaluation_figures  # scikit-learn: only here

    judged = []
    for run_dir in args.runs:
        scenario = (
            yaml.safe_load((run_dir / "scenario.yaml").read_text())["name"]
            if (run_dir / "scenario.yaml").is_file()
            else run_dir.name
        )
        truth = read_truth(run_dir / "ground_truth.db")
        records = frame.merge(
            truth[["request_id", "image_index", "source", "label", "corruption"]], on=["request_id", "image_index"]
        )
        if records.empty:
            raise MonitoringError(f"{run_dir}: none of its requests are in {args.log}")
        result = monitor(
            PandasLog(frame[frame["request_id"].isin(truth["request_id"])], log_images(args.log)),
            model,
            settings.state_dir / "monitoring" / f"evaluate-{run_dir.name}-{stamp}",
            run_dir.name,
            config,
            truth,
            track=args.track,
            policy=policy,
        )
        print(f"{run_dir.name} ({scenario}):")
        _report(result)
        firing = firing_windows(result.metrics, result.rules)
        judged.append(JudgedRun(scenario, run_dir.name, records, result.metrics, result.alerts, firing))
    figures = {
        "benchmark": "monitor scorecard on simulated traffic with ground truth",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": f"{model.name} v{model.version}",
        "runs": {
            run.label: {"scenario": run.scenario, "windows": len(run.metrics), "records": len(run.records)} for run in judged
        },
        **evaluation_figures(judged),
        "data_quality_on_corrupted_mnist": _quality_on_mnist(model, settings),
        "what_drifted": cluster_figures(judged, model.reference),
        "machine": describe_machine(("tensorflow-cpu", "keras", "mlflow", "numpy", "evidently")),
        "command": args.reproduce_with or "python -m monitoring evaluate --runs " + " ".join(map(shown_path, args.runs)),
        "monitoring_command": "python -m monitoring evaluate --runs " + " ".join(map(shown_path, args.runs)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {key: value for key, value in figures.items() if key.startswith(("auroc", "detection", "false", "label_free"))},
            indent=2,
        )
    )
    print(f"scorecard written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
