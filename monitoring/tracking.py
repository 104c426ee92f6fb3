"""A monitoring run in MLflow: window metrics as steps, alerts, and the run's outputs as artifacts."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric

from monitoring.alerts import Alert
from monitoring.incremental import WATERMARK_FILE, Watermark
from monitoring.model import ModelRef
from monitoring.report import DriftVerdict

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
BATCH_SIZE = 1000  # metrics per log_batch call (MLflow's limit)


def window_metric_batch(metrics: pd.DataFrame, alerts: list[Alert], timestamp_ms: int) -> list[Metric]:
    """Every logged window metric with its window as the step, and one point per alert."""
    batch = [
        Metric(name, float(row[name]), timestamp_ms, int(row["window"]))
        for _, row in metrics.iterrows()
        for name in LOGGED_METRICS
        if name in row and pd.notna(row[name])
    ]
    return batch + [Metric(f"alert_{alert.rule}", 1.0, timestamp_ms, alert.window) for alert in alerts]


def log_monitoring_run(
    metrics: pd.DataFrame,
    alerts: list[Alert],
    report: DriftVerdict,
    model: ModelRef,
    label: str,
    outputs: list[Path],
    engine: str,
    run_tags: dict[str, str] | None = None,
) -> str:
    """One MLflow run for a monitoring run; return its id."""
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
            {"windows": len(metrics), "alerts": len(alerts), "records": int(metrics["volume"].sum()), "engine": engine}
        )
        mlflow.set_tag("evidently_verdict", "drift" if report.dataset_drift else "no drift")
        mlflow.log_metrics(
            {
                "evidently_dataset_drift": float(report.dataset_drift),
                "evidently_drifted_columns": report.drifted_columns,
                "evidently_column_p_threshold": report.column_threshold,
            }
        )
        batch = window_metric_batch(metrics, alerts, int(pd.Timestamp.now().timestamp() * 1000))
        client = mlflow.MlflowClient()
        for start in range(0, len(batch), BATCH_SIZE):
            client.log_batch(run.info.run_id, metrics=batch[start : start + BATCH_SIZE])
        for path in outputs:
            mlflow.log_artifact(str(path))
        return run.info.run_id


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
