"""Azure ML data collection from score.py: each scored image's record through azureml-ai-monitoring's Collector.

On a managed online deployment with data collection enabled, Azure runs a collection sidecar and tells the
process where it is (AZUREML_MDC_CONFIG_PATH, or AZUREML_MDC_ENABLED with AZUREML_MDC_HOST/PORT). The
Collector posts DataFrames to it, and Azure writes them as JSON lines under the workspace blob store
(`modelDataCollector/<endpoint>/<deployment>/<collection>/YYYY/MM/DD/HH/`), where the monitor reads them.
`model_inputs` carries each image's request id, window and pixel fingerprint; `model_outputs` the whole
prediction record in the dataset's columns (the image, zlib and base64, for flagged images as in every
sink). The queue to the sidecar lives in memory: Azure's collector is best-effort for records of an
instance that dies, which the README says.
"""

from __future__ import annotations

import base64
import logging
import os

import pandas as pd

from common.prediction_dataset import COLLECTOR_OUTPUTS
from common.records import PREDICTION_COLUMNS, PredictionRecord

log = logging.getLogger(__name__)
COLLECTOR_INPUTS = "model_inputs"


def collection_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the platform enabled data collection for this deployment."""
    env = os.environ if environ is None else environ
    return bool(env.get("AZUREML_MDC_CONFIG_PATH")) or env.get("AZUREML_MDC_ENABLED", "").lower() == "true"


def outputs_frame(records: list[PredictionRecord]) -> pd.DataFrame:
    """The records in the dataset's columns, the image base64-encoded (JSON has no bytes)."""
    frame = pd.DataFrame([record.row() for record in records], columns=list(PREDICTION_COLUMNS))
    frame["image"] = [base64.b64encode(blob).decode() if blob else None for blob in frame["image"]]
    return frame


class CollectorSink:
    """A RecordSink that hands every record to Azure ML's data collector (model_inputs and model_outputs)."""

    def __init__(self) -> None:
        from azureml.ai.monitoring import Collector

        def dropped(err: Exception) -> None:
            log.error("Azure ML data collection dropped records: %s", err)

        self.inputs = Collector(name=COLLECTOR_INPUTS, on_error=dropped)
        self.outputs = Collector(name=COLLECTOR_OUTPUTS, on_error=dropped)

    def __str__(self) -> str:
        return f"Azure ML data collection ({COLLECTOR_INPUTS}, {COLLECTOR_OUTPUTS})"

    def write(self, records: list[PredictionRecord]) -> int:
        if not records:
            return 0
        outputs = outputs_frame(records)
        inputs = outputs[["request_id", "image_index", "window", "fingerprint"]]
        context = self.inputs.collect(inputs)
        self.outputs.collect(outputs, context)  # one correlation id joins a request's inputs and outputs
        return len(records)

    def close(self) -> None:
        from azureml.ai.monitoring.init import teardown

        teardown(wait_for_flush=True)  # what is queued reaches the sidecar before the process ends
