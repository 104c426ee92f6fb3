"""A monitoring run in MLflow: window metrics as steps, alerts, and the run's outputs as artifacts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric

from common.tracking import describe_run
from common.windows import NOTHING_LEFT_OUT, SIMULATED_CLOCK, LeftOut, WindowClock, format_duration
from monitoring.alerts import Alert
from monitoring.catalog import LOGGED_METRICS
from monitoring.incidents import CHECK_LEVELS
from monitoring.incremental import WATERMARK_FILE, Watermark
from monitoring.model import ModelRef
from monitoring.policy import Policy
from monitoring.report import DriftVerdict

BATCH_SIZE = 1000  # metrics per log_batch call (MLflow's limit)


def window_metric_batch(metrics: pd.DataFrame, alerts: list[Alert], timestamp_ms: int) -> list[Metric]:
    """Every logged window metric with its window as the step, and one point per alert.

    A window of wall-clock time is also recorded by its start: `window/start_unix_s` at each step, and every
    point of the step timestamped at the window's start, so MLflow's "Time (wall)" axis shows the dates."""
    starts = {
        int(row["window"]): int(datetime.fromisoformat(row["window_start"]).timestamp())
        for _, row in metrics.iterrows()
        if str(row.get("window_start", "") or "")
    }
    batch = [
        Metric(
            logged,
            float(row[name]),
            starts.get(int(row["window"]), timestamp_ms // 1000) * 1000 if starts else timestamp_ms,
            int(row["window"]),
        )
        for _, row in metrics.iterrows()
        for name, logged in LOGGED_METRICS.items()
        if name in row and pd.notna(row[name])
    ]
    batch += [Metric("window/start_unix_s", float(start), start * 1000, window) for window, start in starts.items()]
    return batch + [
        Metric(f"alerts/{alert.rule}", 1.0, starts[alert.window] * 1000 if alert.window in starts else timestamp_ms, alert.window)
        for alert in alerts
    ]


def check_metric_batch(checks: pd.DataFrame, logged: list[Metric]) -> list[Metric]:
    """Each window's checks as `checks/<rule>` and `checks/status` (0 pass, 1 warn, 2 fail; skipped windows not
    logged), timestamped like the window's other points."""
    stamps = {metric.step: metric.timestamp for metric in logged}
    return [
        Metric(f"checks/{name}", float(CHECK_LEVELS[value]), stamps.get(int(row["window"]), 0), int(row["window"]))
        for row in checks.to_dict("records")
        for name, value in row.items()
        if name != "window" and value in CHECK_LEVELS
    ]


def log_monitoring_run(
    metrics: pd.DataFrame,
    alerts: list[Alert],
    report: DriftVerdict,
    model: ModelRef,
    label: str,
    outputs: list[Path],
    engine: str,
    run_tags: dict[str, str] | None = None,
    clock: WindowClock = SIMULATED_CLOCK,
    left_out: LeftOut = NOTHING_LEFT_OUT,
    checks: pd.DataFrame | None = None,
    policy: Policy | None = None,
    history_key: str | None = None,
) -> str:
    """One MLflow run for a monitoring run; return its id. With `history_key`, the windows are also logged, as
    steps, to the deployment's one long-lived run (created on first use), so its charts show the whole timeline."""
    with mlflow.start_run(run_name=f"monitor-{label}-v{model.version}") as run:
        mlflow.set_tags(
            {
                "digitdrift.job": "monitor",
                "model_name": model.name,
                "model_version": model.version,
                "model_alias": model.alias or "",
                "traffic": label,
                **(run_tags or {}),
            }
        )
        mlflow.log_params(
            {
                "windows": len(metrics),
                "alerts": len(alerts),
                "records": int(metrics["volume"].sum()),
                "engine": engine,
                "clock": clock.kind,
                **({"window_length": format_duration(clock.length_s), "timezone": clock.timezone} if clock.is_wall else {}),
            }
        )
        if clock.is_wall and len(metrics):
            mlflow.set_tags(
                {"first_window_start": metrics["window_start"].iloc[0], "last_window_end": metrics["window_end"].iloc[-1]}
            )
        verdict = "drift" if report.dataset_drift else "no drift"
        mlflow.set_tag("evidently_verdict", verdict)
        describe_run(
            f"Monitoring of {model.name} version {model.version} on the '{label}' traffic: {len(metrics)} "
            f"windows, {int(metrics['volume'].sum())} records, {len(alerts)} alerts (`alerts/*`), Evidently: "
            f"{verdict}. Judged by {clock.describe()}. Metrics by window (step = window"
            + ("; each step's window start in window/start_unix_s" if clock.is_wall else "")
            + "): traffic/, confidence/, foreign/, drift/, accuracy/, quality/."
        )
        mlflow.log_param("evidently_column_p_threshold", report.column_threshold)
        mlflow.log_metrics(
            {
                "drift/evidently_dataset_drift": float(report.dataset_drift),
                "drift/evidently_drifted_columns": report.drifted_columns,
                "traffic/late_records": left_out.late,
                "traffic/unreadable_timestamps": left_out.unreadable,
                "traffic/unstamped_records_left_out": left_out.unstamped,
            }
        )
        if policy is not None:
            mlflow.log_param("policy", policy.source)
            mlflow.log_artifact(policy.source, "policy")
        batch = window_metric_batch(metrics, alerts, int(pd.Timestamp.now().timestamp() * 1000))
        if checks is not None:
            batch += check_metric_batch(checks, batch)
        client = mlflow.MlflowClient()
        for start in range(0, len(batch), BATCH_SIZE):
            client.log_batch(run.info.run_id, metrics=batch[start : start + BATCH_SIZE])
        for path in outputs:
            mlflow.log_artifact(str(path))
        if history_key:
            mlflow.set_tag("digitdrift.history", history_key)
            version = [
                Metric("model/version", _numeric(model.version), m.timestamp, m.step) for m in batch if m.key == "traffic/volume"
            ]
            log_to_history_run(client, run.info.experiment_id, history_key, batch + version)
        return run.info.run_id


def _numeric(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return float("nan")


def log_to_history_run(client, experiment_id: str, key: str, batch: list[Metric]) -> str:
    """Append `batch` to the deployment's long-lived run (tag digitdrift.history_of = key), creating it the first
    time; it stays FINISHED between runs, which MLflow lets a client log to."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`digitdrift.history_of` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {
            "digitdrift.job": "monitor-history",
            "digitdrift.history_of": key,
            "mlflow.note.content": f"The whole timeline of {key}: every monitoring run appends the windows it judged "
            "(step = window); each run keeps its own run for its outputs.",
        }
        run_id = client.create_run(experiment_id, run_name=f"history-{key}", tags=tags).info.run_id
        client.set_terminated(run_id)
    for start in range(0, len(batch), BATCH_SIZE):
        client.log_batch(run_id, metrics=batch[start : start + BATCH_SIZE])
    return run_id


def last_watermark(location: str, model: ModelRef) -> Watermark:
    """The watermark of the latest monitoring run of this dataset and model version (an empty one when none)."""
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=(
            f"tags.`digitdrift.job` = 'monitor' and tags.dataset = '{location}' and tags.model_version = '{model.version}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        return Watermark()
    path = mlflow.artifacts.download_artifacts(run_id=found[0].info.run_id, artifact_path=WATERMARK_FILE)
    return Watermark.from_json(Path(path).read_text())
