"""Azure ML data collection from score.py: each scored image's record through azureml-ai-monitoring's Collector.

On a managed online deployment with data collection enabled, Azure runs a collection sidecar and tells the
process where it is (AZUREML_MDC_CONFIG_PATH, or AZUREML_MDC_ENABLED with AZUREML_MDC_HOST/PORT). The
Collector posts DataFrames to it, and Azure writes them as JSON lines under the workspace blob store
(`modelDataCollector/<endpoint>/<deployment>/<collection>/YYYY/MM/DD/HH/`), where the monitor reads them.
`model_inputs` carries each image's request id, window and pixel fingerprint with the numbers Azure's own
data-drift signal can compare between periods: the embedding projection, the foreign score and pixel statistics
(INPUT_FEATURES); `model_outputs` the whole prediction record in the dataset's columns (the image, zlib and
base64, for flagged images as in every sink). The queue to the sidecar lives in memory: Azure's collector is
best-effort for records of an instance that dies, which the README says.
"""

from __future__ import annotations

import base64
import logging
import os

import numpy as np
import pandas as pd

from common.prediction_dataset import COLLECTOR_OUTPUTS
from common.records import PREDICTION_COLUMNS, PROJECTION_COLUMNS, PredictionRecord

log = logging.getLogger(__name__)
COLLECTOR_INPUTS = "model_inputs"
INPUT_KEYS = ["request_id", "image_index", "window", "fingerprint"]
PIXEL_STATISTICS = ["pixel_mean", "pixel_std", "ink_share", "ink_rows", "ink_columns"]
# What model_inputs carries for Azure's data-drift signal: numbers that move when the images do (request ids and
# fingerprints would only measure noise).
INPUT_FEATURES = ["foreign_score", *PROJECTION_COLUMNS, *PIXEL_STATISTICS]
INK_LEVEL = 128  # a pixel at or above this level is ink (white digit on black, as MNIST)


def collection_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the platform enabled data collection for this deployment."""
    env = os.environ if environ is None else environ
    return bool(env.get("AZUREML_MDC_CONFIG_PATH")) or env.get("AZUREML_MDC_ENABLED", "").lower() == "true"


def outputs_frame(records: list[PredictionRecord]) -> pd.DataFrame:
    """The records in the dataset's columns, the image base64-encoded (JSON has no bytes)."""
    frame = pd.DataFrame([record.row() for record in records], columns=list(PREDICTION_COLUMNS))
    frame["image"] = [base64.b64encode(blob).decode() if blob else None for blob in frame["image"]]
    return frame


def pixel_statistics(images: np.ndarray) -> pd.DataFrame:
    """Per image (N x 28 x 28 uint8): mean and spread of the pixel values (0..1), the share of ink pixels, and how
    many rows and columns hold ink (the digit's height and width). An inverted or blank image moves all of them."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    ink = images.reshape(len(images), images.shape[-2], images.shape[-1]) >= INK_LEVEL
    return pd.DataFrame(
        {
            "pixel_mean": flat.mean(axis=1),
            "pixel_std": flat.std(axis=1),
            "ink_share": ink.reshape(len(images), -1).mean(axis=1),
            "ink_rows": ink.any(axis=2).sum(axis=1),
            "ink_columns": ink.any(axis=1).sum(axis=1),
        }
    )


def inputs_frame(outputs: pd.DataFrame, statistics: pd.DataFrame | None) -> pd.DataFrame:
    """model_inputs rows: the record keys and INPUT_FEATURES (pixel statistics empty when the images are unknown)."""
    frame = outputs[INPUT_KEYS + ["foreign_score", *PROJECTION_COLUMNS]].reset_index(drop=True)
    if statistics is None:
        statistics = pd.DataFrame({name: [None] * len(frame) for name in PIXEL_STATISTICS})
    return pd.concat([frame, statistics.reset_index(drop=True)[PIXEL_STATISTICS]], axis=1)


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

    def write(self, records: list[PredictionRecord], images: np.ndarray | None = None) -> int:
        """Collect the records; with the images they came from (aligned with the records), their pixel statistics."""
        if not records:
            return 0
        outputs = outputs_frame(records)
        if images is not None and len(images) != len(records):
            raise ValueError(f"{len(images)} images for {len(records)} records: pixel statistics need one image per record")
        inputs = inputs_frame(outputs, None if images is None else pixel_statistics(images))
        context = self.inputs.collect(inputs)
        self.outputs.collect(outputs, context)  # one correlation id joins a request's inputs and outputs
        return len(records)

    def withdraw(self, request_ids: list[str]) -> set[str]:
        """Nothing: collected records are already on their way to the collector's sidecar."""
        return set()

    def close(self) -> None:
        from azureml.ai.monitoring.init import teardown

        teardown(wait_for_flush=True)  # what is queued reaches the sidecar before the process ends
