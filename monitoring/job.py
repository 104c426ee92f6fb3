"""A monitoring run: read a prediction log, judge its windows, alert, and write dashboards, reports and an MLflow run."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow.entities import Metric

from common.records import GROUND_TRUTH_COLUMNS, read_prediction_log
from common.reference import Reference, load_reference
from common.settings import DEFAULT_SPARK_MASTER, REFERENCE_ARTIFACT_DIR, REFERENCE_FILE, Settings, parse_registry_uri
from monitoring.alerts import (
    DEFAULT_RULES,
    Alert,
    Rule,
    accuracy_rule,
    evaluate_rules,
    firing_windows,
    post_webhook,
    write_jsonl,
)
from monitoring.dashboard import dashboard_figure, write_dashboard
from monitoring.gallery import gallery_png, least_confident
from monitoring.metrics import (
    DEFAULT_CONFIG,
    MonitorConfig,
    judge_windows,
    sample_keys,
    truth_metrics,
    window_aggregates,
    window_samples,
)
from monitoring.report import drifted_windows, evidently_report

if TYPE_CHECKING:
    from monitoring.spark_engine import SparkLog

logger = logging.getLogger(__name__)
LOGGED_METRICS = (
    "volume",
    "low_confidence_rate",
    "confidence_mean",
    "confidence_p10",
    "confidence_p50",
    "entropy_mean",
    "foreign_rate",
    "estimated_foreign_share",
    "foreign_p",
    "class_mix_p",
    "confidence_p",
    "embedding_mmd",
    "embedding_p",
    "estimated_accuracy",
    "estimated_accuracy_low",
    "estimated_accuracy_high",
    "realised_accuracy",
    "true_foreign_share",
    *(f"class_{d}_share" for d in range(10)),
)


REPORT_SAMPLE = 20_000  # records of the drifted windows in the Evidently report
GALLERY_WINDOWS = 12  # flagged windows in the gallery: those with the most low-confidence predictions


class MonitoringError(RuntimeError):
    """A log or reference that cannot be monitored; the message says what and how to fix it."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str | None
    reference: Reference


@dataclass(frozen=True)
class MonitorResult:
    out_dir: Path
    metrics: pd.DataFrame
    alerts: list[Alert]
    mlflow_run_id: str | None


def read_log(path: str | Path) -> pd.DataFrame:
    """A prediction log (SQLite, or Parquet exported from it) as a DataFrame; an empty one is an error."""
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"{path}: no prediction log here (the server writes one with --prediction-log)")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.DataFrame(read_prediction_log(path))
    except (sqlite3.DatabaseError, OSError, ValueError) as err:
        raise MonitoringError(f"{path}: not a readable prediction log ({err})") from None
    if frame.empty:
        raise MonitoringError(f"{path}: the prediction log is empty: nothing to monitor yet")
    if frame["window"].isna().all():
        raise MonitoringError(f"{path}: no record carries a window (send X-Window or 'window' with each request)")
    return frame.dropna(subset=["window"]).astype({"window": int})


def read_truth(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"{path}: no ground-truth sidecar here (the simulator writes ground_truth.db)")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return pd.read_sql_query(f"SELECT {', '.join(GROUND_TRUTH_COLUMNS)} FROM ground_truth", connection)


class PandasLog:
    """A prediction log in memory: the methods the monitoring job asks of an engine (SparkLog has the same)."""

    engine = "pandas"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def versions(self) -> list[str]:
        return sorted(set(self.frame["model_version"].astype(str)))

    def of_version(self, name: str, version: str) -> PandasLog:
        frame = self.frame
        return PandasLog(frame[(frame["model_version"].astype(str) == version) & (frame["model_name"] == name)])

    def is_empty(self) -> bool:
        return self.frame.empty

    def aggregates(self, reference: Reference) -> pd.DataFrame:
        return window_aggregates(self.frame, reference)

    def samples(self, size: int) -> pd.DataFrame:
        return window_samples(self.frame, size)

    def rows_of_windows(self, windows: list[int], limit: int) -> pd.DataFrame:
        """Up to `limit` records of `windows`: those with the smallest sample keys."""
        chosen = self.frame[self.frame["window"].isin(windows)]
        if len(chosen) <= limit:
            return chosen
        return chosen.assign(sample_key=sample_keys(chosen["request_id"], chosen["image_index"])).nsmallest(limit, "sample_key")

    def least_confident(self, windows: list[int], per_window: int) -> pd.DataFrame:
        return least_confident(self.frame, windows, per_window)

    def truth_metrics(self, truth: pd.DataFrame) -> pd.DataFrame:
        return truth_metrics(self.frame, truth)


def open_log(path: str | Path, engine: str = "pandas", spark_master: str = DEFAULT_SPARK_MASTER) -> PandasLog | SparkLog:
    """The prediction log at `path`, read by the pandas engine (SQLite or Parquet) or by Spark (Parquet)."""
    if engine == "pandas":
        return PandasLog(read_log(path))
    if engine != "spark":
        raise MonitoringError(f"unknown engine {engine!r}: expected pandas or spark")
    from monitoring.spark_engine import SparkLog, SparkLogError

    try:
        return SparkLog.read(path, spark_master)
    except SparkLogError as err:
        raise MonitoringError(str(err)) from None


def for_version(log: PandasLog | SparkLog, model: ModelRef, path: str | Path) -> PandasLog | SparkLog:
    """Only the records of the model version the reference belongs to."""
    versions = log.versions()
    selected = log.of_version(model.name, model.version)
    if selected.is_empty():
        raise MonitoringError(
            f"{path}: no records of {model.name} version {model.version} (the log holds versions "
            f"{', '.join(versions)}); pass --model for the version that served them"
        )
    if len(versions) > 1:
        logger.warning("%s holds versions %s; monitoring version %s only", path, ", ".join(versions), model.version)
    return selected


def resolve_model(model_uri: str | None, reference_path: str | None, version: str | None, name: str) -> ModelRef:
    """The monitored model and its reference: from the registry (models:/name@alias) or a reference file."""
    if reference_path:
        if not version:
            raise MonitoringError("--reference needs --model-version: which version's records to monitor")
        try:
            return ModelRef(name, version, None, load_reference(reference_path))
        except (FileNotFoundError, ValueError) as err:
            raise MonitoringError(str(err)) from None
    try:
        ref = parse_registry_uri(model_uri or "")
    except ValueError as err:
        raise MonitoringError(f"--model: {err}") from None
    client = mlflow.MlflowClient()
    try:
        found = (
            client.get_model_version_by_alias(ref.name, ref.alias)
            if ref.alias
            else client.get_model_version(ref.name, ref.version)
        )
    except mlflow.exceptions.MlflowException as err:
        raise MonitoringError(f"{model_uri}: not in the model registry at {mlflow.get_tracking_uri()} ({err.message})") from None
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path=f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"
        )
    except (OSError, mlflow.exceptions.MlflowException):
        raise MonitoringError(
            f"{ref.name} version {found.version} has no monitoring reference "
            f"({REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE} on run {found.run_id}); create it with "
            f"`python -m training reference --model {model_uri}`"
        ) from None
    return ModelRef(ref.name, str(found.version), ref.alias, load_reference(path))


def judge(
    log: PandasLog | SparkLog,
    model: ModelRef,
    config: MonitorConfig,
    truth: pd.DataFrame | None = None,
    cooldown_windows: int = 5,
) -> tuple[pd.DataFrame, list[Alert], tuple[Rule, ...]]:
    """Window metrics (with the sidecar's truth when given) and the alerts they raise."""
    metrics = judge_windows(log.aggregates(model.reference), log.samples(config.sample_size), model.reference, config)
    if truth is not None:
        metrics = metrics.merge(log.truth_metrics(truth), on="window", how="left")
    rules = (*DEFAULT_RULES, accuracy_rule(float(model.reference.accuracy)))
    return metrics, evaluate_rules(metrics, rules, model.name, model.version, cooldown_windows), rules


def monitor(
    log: PandasLog | SparkLog,
    model: ModelRef,
    out_dir: Path,
    label: str,
    config: MonitorConfig = DEFAULT_CONFIG,
    truth: pd.DataFrame | None = None,
    webhook: str | None = None,
    track: bool = True,
    gallery_per_window: int = 8,
) -> MonitorResult:
    """Judge every window, write the outputs into a new `out_dir`, post alerts, and log one MLflow run."""
    if out_dir.exists():
        raise MonitoringError(f"{out_dir}: already exists; monitoring never overwrites a run's outputs")
    metrics, alerts, rules = judge(log, model, config, truth)
    out_dir.mkdir(parents=True)
    metrics.to_csv(out_dir / "window_metrics.csv", index=False)
    alerts_path = write_jsonl(alerts, out_dir / "alerts.jsonl")
    title = f"{label}: {model.name} v{model.version}" + (f" @{model.alias}" if model.alias else "")
    outputs = [
        alerts_path,
        out_dir / "window_metrics.csv",
        write_dashboard(dashboard_figure(metrics, alerts, title), out_dir / "dashboard.html"),
    ]
    flagged = firing_windows(metrics, rules)
    # Evidently's cost grows with rows; a sample shows the same drift
    current = log.rows_of_windows(drifted_windows(metrics, flagged), REPORT_SAMPLE)
    outputs.append(evidently_report(model.reference, current, out_dir / "evidently_report.html"))
    most_foreign = metrics[metrics["window"].isin(flagged)].nlargest(GALLERY_WINDOWS, "low_confidence_rate")["window"]
    gallery = gallery_png(
        log.least_confident(sorted(most_foreign), gallery_per_window),
        f"{label}: least confident inputs of flagged windows",
        out_dir / "gallery.png",
        gallery_per_window,
    )
    if gallery:
        outputs.append(gallery)
    if webhook and alerts:
        logger.info("webhook accepted %d of %d alerts", post_webhook(alerts, webhook), len(alerts))
    run_id = _log_to_mlflow(metrics, alerts, model, label, outputs, log.engine) if track else None
    return MonitorResult(out_dir, metrics, alerts, run_id)


def _log_to_mlflow(
    metrics: pd.DataFrame, alerts: list[Alert], model: ModelRef, label: str, outputs: list[Path], engine: str
) -> str:
    with mlflow.start_run(run_name=f"monitor-{label}-v{model.version}") as run:
        mlflow.set_tags(
            {
                "digitdrift.job": "monitor",
                "model_name": model.name,
                "model_version": model.version,
                "model_alias": model.alias or "",
                "traffic": label,
            }
        )
        mlflow.log_params(
            {"windows": len(metrics), "alerts": len(alerts), "records": int(metrics["volume"].sum()), "engine": engine}
        )
        timestamp = int(pd.Timestamp.now().timestamp() * 1000)
        batch = [
            Metric(name, float(row[name]), timestamp, int(row["window"]))
            for _, row in metrics.iterrows()
            for name in LOGGED_METRICS
            if name in row and pd.notna(row[name])
        ]
        batch += [Metric(f"alert_{alert.rule}", 1.0, timestamp, alert.window) for alert in alerts]
        client = mlflow.MlflowClient()
        for start in range(0, len(batch), 1000):
            client.log_batch(run.info.run_id, metrics=batch[start : start + 1000])
        for path in outputs:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def use_tracking(settings: Settings) -> None:
    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, settings.experiment_artifact_location)
    mlflow.set_experiment(settings.experiment)
