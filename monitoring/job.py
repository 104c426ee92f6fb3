"""A monitoring run, orchestration only: judge an engine's windows, alert, write the outputs, log the MLflow run."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from common.cli import option
from common.files import write_whole
from common.prediction_dataset import DatasetError, PartSummary, filesystem, list_parts, part_summary
from common.reference import Reference
from common.spark import DEFAULT_SPARK_MASTER
from common.stopwatch import Stopwatch
from common.windows import (
    CLOCKS,
    DEFAULT_TIMEZONE,
    DEFAULT_WINDOW,
    DURATION_FORMS,
    NOTHING_LEFT_OUT,
    SIMULATED_CLOCK,
    LeftOut,
    WindowClock,
    WindowError,
    format_duration,
)
from monitoring.alerts import Alert, Rule, evaluate_rules, firing_windows, post_webhook, write_jsonl
from monitoring.clusters import EXAMPLES, cluster_members, window_clusters
from monitoring.dashboard import dashboard_figure, write_dashboard
from monitoring.engine import LogEngine, for_version, open_dataset
from monitoring.errors import MonitoringError
from monitoring.gallery import gallery_png
from monitoring.history import (
    append_history,
    history_alerts,
    history_rows,
    incident_spans,
    read_history,
    version_spans,
)
from monitoring.incidents import IncidentEvent, incident_events, junit_xml, window_checks
from monitoring.incremental import WATERMARK_FILE, Increment, Watermark, advance, part_span, plan_increment, run_clock
from monitoring.metrics import DEFAULT_CONFIG, MonitorConfig, judge_windows
from monitoring.model import ModelRef
from monitoring.policy import Policy, load_policy
from monitoring.report import DriftVerdict, drifted_windows, evidently_report, report_title
from monitoring.routes import Delivery, deliver
from monitoring.tracking import last_watermark, log_monitoring_run

logger = logging.getLogger(__name__)

REPORT_SAMPLE = (
    2_000  # records of the reported windows in the Evidently report: tests as sensitive as the monitor's per-window ones
)
GALLERY_WINDOWS = 12  # flagged windows in the gallery: those with the most low-confidence predictions
CLUSTER_WINDOWS = 100  # the last firing windows whose flagged images are clustered


@dataclass(frozen=True)
class MonitorResult:
    out_dir: Path
    metrics: pd.DataFrame
    alerts: list[Alert]
    report: DriftVerdict
    mlflow_run_id: str | None
    rules: tuple[Rule, ...] = ()
    clock: WindowClock = SIMULATED_CLOCK
    left_out: LeftOut = NOTHING_LEFT_OUT
    checks: pd.DataFrame | None = None  # Pass / Warn / Fail / skip per window and rule
    incidents: tuple[IncidentEvent, ...] = ()
    deliveries: tuple[Delivery, ...] = ()  # incident notices sent to the policy's routes, and what became of them
    stages: dict[str, float] = field(default_factory=dict)  # seconds each step of the run took


def judge(
    log: LogEngine,
    model: ModelRef,
    config: MonitorConfig,
    truth: pd.DataFrame | None = None,
    policy: Policy | None = None,
    history: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Alert], tuple[Rule, ...]]:
    """Window metrics (with the sidecar's truth when given) and the alerts the policy's rules raise (default: the
    packaged monitor.yaml); `history`, the last windows an earlier run judged, carries alert streaks and cooldowns
    across incremental runs."""
    policy = policy or load_policy(None, model.reference)
    metrics = judge_windows(log.aggregates(model.reference), log.samples(config.sample_size), model.reference, config)
    if truth is not None:
        metrics = metrics.merge(log.truth_metrics(truth), on="window", how="left")
    metrics = with_empty_windows(metrics, log.clock)
    bounds = log.clock.bounds_columns(metrics["window"])
    metrics.insert(1, "window_start", bounds["window_start"])
    metrics.insert(2, "window_end", bounds["window_end"])
    context = metrics if history is None else pd.concat([history, metrics], ignore_index=True)
    alerts = evaluate_rules(context, policy.rules, model.name, model.version, policy.cooldown_windows)
    named = {row.window: {"window_start": row.window_start, "window_end": row.window_end} for row in metrics.itertuples()}
    # the history's windows only carry streaks and cooldowns over: their alerts were raised by an earlier run
    return metrics, [replace(alert, **named[alert.window]) for alert in alerts if alert.window in named], policy.rules


def with_empty_windows(metrics: pd.DataFrame, clock: WindowClock) -> pd.DataFrame:
    """Windows of time between the first and the last that no record fell in (a quiet night), as rows of volume 0
    marked too small to judge: shown and reported, never alerted on, never merged into a neighbour."""
    if not clock.is_wall or metrics.empty:
        return metrics
    missing = sorted(set(range(int(metrics["window"].min()), int(metrics["window"].max()) + 1)) - set(metrics["window"]))
    if not missing:
        return metrics
    empty = pd.DataFrame({"window": missing, "volume": 0, "too_small": True})
    return pd.concat([metrics, empty], ignore_index=True).sort_values("window", kind="stable").reset_index(drop=True)


def judged_checks(
    metrics: pd.DataFrame, policy: Policy, history: pd.DataFrame | None, clock: WindowClock
) -> tuple[pd.DataFrame, list[IncidentEvent]]:
    """The judged windows' checks and incident events, streaks and open incidents carried over from `history`."""
    context = metrics if history is None else pd.concat([history, metrics], ignore_index=True)
    checks = window_checks(context.drop_duplicates("window", keep="last"), policy.rules)
    judged = set(metrics["window"])
    events = [
        replace(event, **dict(zip(("window_start", "window_end"), clock.bounds(event.window) if clock.is_wall else ("", ""))))
        for event in incident_events(checks, policy.rules, policy.resolve_after_quiet_windows)
        if event.window in judged
    ]
    return checks[checks["window"].isin(judged)].reset_index(drop=True), events


def monitor(
    log: LogEngine,
    model: ModelRef,
    out_dir: Path,
    label: str,
    config: MonitorConfig = DEFAULT_CONFIG,
    truth: pd.DataFrame | None = None,
    webhook: str | None = None,
    track: bool = True,
    gallery_per_window: int = 8,
    increment: tuple[Watermark, Increment] | None = None,
    run_tags: dict[str, str] | None = None,
    policy: Policy | None = None,
    history_sink: HistorySink | None = None,
) -> MonitorResult:
    """Judge every window, write the outputs into a new `out_dir`, post alerts, and log one MLflow run.

    With `increment` (the last watermark and what this run reads of a dataset), earlier windows carry alert
    streaks over, and the next watermark is written as watermark.json with the run's outputs. With `history_sink`,
    the judged windows are appended to the deployment's history, the dashboard shows the history's last windows,
    and the deployment's long-lived MLflow run gets the windows as steps.
    """
    if out_dir.exists():
        raise MonitoringError(f"{out_dir}: already exists; monitoring never overwrites a run's outputs")
    lap = Stopwatch()
    history = increment[0].history_frame() if increment else None
    policy = policy or load_policy(None, model.reference)
    metrics, alerts, rules = judge(log, model, config, truth, policy, history)
    lap("window_metrics_and_alerts")
    checks, incidents = judged_checks(metrics, policy, history, log.clock)
    out_dir.mkdir(parents=True)
    metrics.to_csv(out_dir / "window_metrics.csv", index=False)
    alerts_path = write_jsonl(alerts, out_dir / "alerts.jsonl")
    checks.join(log.clock.bounds_columns(checks["window"])).to_csv(out_dir / "checks.csv", index=False)
    names = {window: log.clock.name(window) for window in checks["window"]}
    (out_dir / "checks.xml").write_text(junit_xml(checks, rules, f"digitdrift monitor {label}", names))
    with (out_dir / "incidents.jsonl").open("w") as stream:
        stream.writelines(json.dumps(event.as_dict()) + "\n" for event in incidents)
    title = f"{label}: {model.name} v{model.version}" + (f" @{model.alias}" if model.alias else "")
    axis = (
        f"window start ({log.clock.timezone}, windows of {format_duration(log.clock.length_s)})"
        if log.clock.is_wall
        else "window"
    )
    outputs = [
        alerts_path,
        out_dir / "window_metrics.csv",
        out_dir / "checks.csv",
        out_dir / "checks.xml",
        out_dir / "incidents.jsonl",
    ]
    if history_sink:
        rows = history_rows(metrics, checks, alerts, incidents, model.version, str(out_dir.resolve()), datetime.now(UTC))
        append_history(history_sink.location, rows)
    lap("checks_incidents_and_history")
    flagged = firing_windows(metrics, rules)
    clusters, examples = drifted_clusters(log, flagged[-CLUSTER_WINDOWS:], metrics, model.reference, truth)
    if not clusters.empty:
        cluster_members(clusters).to_csv(out_dir / "cluster_members.csv", index=False)
        outputs.append(out_dir / "cluster_members.csv")
        clusters = clusters.drop(columns=["members"])
    clusters.to_csv(out_dir / "clusters.csv", index=False)
    outputs.append(out_dir / "clusters.csv")
    pictured = gallery_png(
        examples,
        f"{label}: the most over-represented cluster of flagged images in each window ({EXAMPLES} examples)",
        out_dir / "clusters.png",
        EXAMPLES,
        log.clock,
    )
    if pictured:
        outputs.append(pictured)
    lap("clusters")
    notes = cluster_notes(clusters)
    causes = dict(zip(checks["window"], checks["cause"]))
    explained = [
        (log.clock.name(alert.window), causes.get(alert.window, ""), notes.get(alert.window, "no significant cluster"))
        for alert in alerts
    ]
    outputs.append(_dashboard(metrics, alerts, title, axis, history_sink, out_dir / "dashboard.html", notes, explained))
    lap("dashboard")
    report_windows = drifted_windows(metrics, flagged)
    # Evidently's cost grows with rows; a sample shows the same drift
    current = log.rows_of_windows(report_windows, REPORT_SAMPLE)
    report = evidently_report(
        model.reference,
        current,
        out_dir / "evidently_report.html",
        report_title(label, report_windows, bool(flagged), len(alerts), log.clock),
    )
    outputs.append(out_dir / "evidently_report.html")
    lap("evidently_report")
    most_foreign = metrics[metrics["window"].isin(flagged)].nlargest(GALLERY_WINDOWS, "low_confidence_rate")["window"]
    gallery = gallery_png(
        log.least_confident(sorted(most_foreign), gallery_per_window),
        f"{label}: least confident inputs of flagged windows",
        out_dir / "gallery.png",
        gallery_per_window,
        log.clock,
    )
    if gallery:
        outputs.append(gallery)
    lap("gallery")
    if increment:
        watermark = advance(*increment, metrics, [rule.metric for rule in rules])
        outputs.append(out_dir / WATERMARK_FILE)
        outputs[-1].write_text(watermark.to_json())
    if webhook and alerts:
        logger.info("webhook accepted %d of %d alerts", post_webhook(alerts, webhook), len(alerts))
    notices = [
        {**event.as_dict(), "model_name": model.name, "model_version": model.version, "traffic": label} for event in incidents
    ]
    deliveries = deliver(notices, policy.routes, policy.rule_routes) if policy.routes else []
    if deliveries:
        with (out_dir / "deliveries.jsonl").open("w") as stream:
            stream.writelines(json.dumps(asdict(delivery)) + "\n" for delivery in deliveries)
        outputs.append(out_dir / "deliveries.jsonl")
    lap("notices")
    for line in log.left_out.messages():
        logger.warning("%s", line)
    run_id = (
        log_monitoring_run(
            metrics,
            alerts,
            report,
            model,
            label,
            outputs,
            log.engine,
            run_tags,
            log.clock,
            log.left_out,
            checks,
            policy,
            history_sink.key if history_sink else None,
        )
        if track
        else None
    )
    lap("mlflow")
    logger.info("monitoring run in %.1f s: %s", lap.total, lap.describe())
    return MonitorResult(
        out_dir,
        metrics,
        alerts,
        report,
        run_id,
        rules,
        log.clock,
        log.left_out,
        checks,
        tuple(incidents),
        tuple(deliveries),
        lap.stages,
    )


@dataclass(frozen=True)
class HistorySink:
    """Where a monitored deployment's history lives, and how much of it the dashboard draws."""

    location: str  # a folder or az://container/prefix
    key: str  # the deployment: model name and data source (monitoring.history.deployment_key)
    dashboard_windows: int = 365


def drifted_clusters(
    log: LogEngine, windows: list[int], metrics: pd.DataFrame, reference: Reference, truth: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clusters of flagged images in each of `windows` (`monitoring.clusters.window_clusters`), and the example
    records (with images) of each window's most over-represented significant cluster, for its picture."""
    records = log.flagged_records(windows) if windows else pd.DataFrame()
    if records.empty:
        return pd.DataFrame(), pd.DataFrame()
    # one row per record, in one order whichever engine read it: k-means' start depends on the order
    keys = ["window", "request_id", "image_index"]
    records = records.drop_duplicates(keys).sort_values(keys, kind="stable", ignore_index=True)
    if truth is not None:
        records = records.merge(
            truth[["request_id", "image_index", "source", "label"]], on=["request_id", "image_index"], how="left"
        )
    volumes = dict(zip(metrics["window"], metrics["volume"]))
    found = [window_clusters(group, int(volumes[window]), reference, int(window)) for window, group in records.groupby("window")]
    clusters = (
        pd.concat([frame for frame in found if not frame.empty], ignore_index=True)
        if any(not f.empty for f in found)
        else pd.DataFrame()
    )
    if clusters.empty:
        return clusters, pd.DataFrame()
    tops = clusters[clusters["significant"]].drop_duplicates("window").nlargest(GALLERY_WINDOWS, "over_representation")
    keys = {(window, key) for window, listed in zip(tops["window"], tops["examples"]) for key in listed.split(";")}
    chosen = records[
        [(w, f"{r}:{i}") in keys for w, r, i in zip(records["window"], records["request_id"], records["image_index"])]
    ]
    return clusters, chosen[chosen["image"].notna()] if "image" in chosen else chosen.iloc[:0]


def cluster_notes(clusters: pd.DataFrame) -> dict[int, str]:
    """Per window, one line on its most over-represented significant cluster, for the dashboard's alert marks."""
    if clusters.empty:
        return {}
    tops = clusters[clusters["significant"]].drop_duplicates("window")
    return {
        int(row.window): (
            f"top cluster: {row.size} images, {row.share:.0%} of the window ({row.over_representation:.0f}x the reference), "
            f"predicted {row.class_mix}, mean confidence {row.mean_confidence:.2f}"
            + (f"; truth {row.true_mix}" if "true_mix" in clusters and isinstance(row.true_mix, str) else "")
        )
        for row in tops.itertuples(index=False)
    }


def _dashboard(
    metrics: pd.DataFrame,
    alerts: list[Alert],
    title: str,
    axis: str,
    sink: HistorySink | None,
    path: Path,
    notes: dict[int, str] | None = None,
    explained: list[tuple[str, str, str]] | None = None,
) -> Path:
    """This run's windows, or with a history the deployment's last windows with its versions and incidents marked
    and a link to each run's outputs; `notes`: a line per window for its alert marks (what drifted); `explained`:
    the alerted windows' causes and clusters, as a table below the figure."""
    if sink is None:
        return write_dashboard(dashboard_figure(metrics, alerts, title, axis, notes=notes), path, explained=explained)
    history = read_history(sink.location).tail(sink.dashboard_windows).reset_index(drop=True)
    figure = dashboard_figure(
        history,
        history_alerts(history),
        f"{title}: the last {len(history)} windows of {sink.key}",
        axis,
        version_spans(history),
        incident_spans(history),
        notes,
    )
    runs = history.drop_duplicates("run", keep="first")
    links = [
        (f"{row.run} (from {row.window_start or f'window {row.window}'})", Path(row.run).as_uri() + "/dashboard.html")
        for row in runs.itertuples(index=False)
    ]
    return write_dashboard(figure, path, links, explained)


@dataclass(frozen=True)
class DatasetSource:
    """A partitioned dataset to monitor and where its watermark lives (the options are `monitoring run`'s)."""

    location: str
    watermark_file: Path | None = option(
        None,
        "with a dataset: keep the watermark in this file (default: with the last MLflow monitoring run of the dataset "
        "and model version)",
        flag="--watermark",
        metavar="WATERMARK",
    )  # None: with the last MLflow monitoring run (when tracking)
    full: bool = option(False, "with a dataset: ignore the watermark, read every part and judge every window")
    close_windows: bool = option(
        False, "with a dataset: judge the newest window too (the traffic is over); by default it waits for a later window"
    )
    track: bool = True
    clock: str = option(
        "auto",
        "which windows to judge by: the simulated window each request was stamped with, or wall-clock time by the "
        "server's scoring timestamp (auto: simulated when every record is stamped, wall when none is; a mix is refused)",
        choices=CLOCKS,
    )  # see common.windows.choose_clock
    window: str | None = option(
        None,
        f"length of a window of wall-clock time: {DURATION_FORMS} (default: {DEFAULT_WINDOW}, or what earlier runs of a "
        "dataset judged by)",
    )  # None: the watermark's, else 1d
    timezone: str | None = option(
        None,
        "IANA timezone whose local time the windows follow, when a business day is not a UTC day (e.g. Europe/Paris; "
        f"default: {DEFAULT_TIMEZONE})",
    )  # None: the watermark's, else UTC
    lateness_s: int = 300  # a time window is judged once its end plus this has passed
    dataset_id: str | None = option(
        None,
        "with a dataset: a stable name that keys the watermark in MLflow instead of the location (a scheduled job whose "
        "input is mounted at a new path each run)",
    )  # default: the location


def monitor_dataset(
    source: DatasetSource,
    model: ModelRef,
    out_dir: Path,
    label: str,
    cache_dir: Path,
    config: MonitorConfig = DEFAULT_CONFIG,
    truth: pd.DataFrame | None = None,
    webhook: str | None = None,
    engine: str = "auto",
    spark_master: str = DEFAULT_SPARK_MASTER,
    now: datetime | None = None,
    policy: Policy | None = None,
    history_sink: HistorySink | None = None,
) -> tuple[MonitorResult | None, Increment, int]:
    """One incremental run over a dataset: the parts no earlier run consumed, the windows now closed (`now`: the
    clock that closes time windows, default the current time).

    Returns the run's result (None when no complete window is new), what it read, and how many parts exist.
    Spark copies blob and JSON-lines parts into `cache_dir` as Parquet.
    """
    try:
        fs, root = filesystem(source.location)
        parts = list_parts(fs, root)
        watermark = Watermark() if source.full else _load_watermark(source, model)
        consumed = set(watermark.consumed)
        summaries = {part.path: part_summary(fs, part) for part in parts if part.path not in consumed}
        fresh = [summary for path, summary in summaries.items() if path not in set(watermark.pending)]
        clock = run_clock(watermark, fresh, source.clock, source.window, source.timezone, source.location)
        spans = {path: part_span(summary, clock) for path, summary in summaries.items()}
        # --full judges every window again; of time windows only those now closed, unless --close-windows
        close_all = source.close_windows or (source.full and not clock.is_wall)
        increment = plan_increment(parts, spans, watermark, close_all, clock, _first_open(summaries, clock, source, now))
    except (DatasetError, WindowError) as err:
        raise MonitoringError(str(err)) from None
    if increment.through is None:
        return None, increment, len(parts)
    records = open_dataset(source.location, increment, engine, cache_dir, spark_master)
    if records.is_empty():  # the closed windows hold no record (a quiet night): nothing to judge yet
        return None, increment, len(parts)
    records = for_version(records, model, source.location)
    tags = {
        "dataset": source.dataset_id or source.location,
        "dataset_location": source.location,
        "dataset_parts_read": str(len(increment.parts)),
        "dataset_bytes_read": str(increment.bytes),
    }
    result = monitor(
        records,
        model,
        out_dir,
        label,
        config,
        truth,
        webhook,
        source.track,
        increment=(watermark, increment),
        run_tags=tags,
        policy=policy,
        history_sink=history_sink,
    )
    if source.watermark_file:
        write_whole(source.watermark_file, (out_dir / WATERMARK_FILE).read_text())  # a reader never sees half of it
    return result, increment, len(parts)


def _first_open(summaries: dict[str, PartSummary], clock: WindowClock, source: DatasetSource, now: datetime | None) -> int | None:
    """The first time window still open: that of the newest record or of the clock, whichever is later, less the
    allowed lateness."""
    if not clock.is_wall:
        return None
    newest = [datetime.fromisoformat(summary.times[1]) for summary in summaries.values() if summary.times]
    latest = max([now or datetime.now(UTC), *newest])
    return clock.window_of(latest - timedelta(seconds=source.lateness_s))


def _load_watermark(source: DatasetSource, model: ModelRef) -> Watermark:
    if source.watermark_file:
        return Watermark.from_json(source.watermark_file.read_text()) if source.watermark_file.is_file() else Watermark()
    return last_watermark(source.dataset_id or source.location, model) if source.track else Watermark()
