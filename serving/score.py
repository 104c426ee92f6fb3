"""Azure ML entry script: init() loads the model, run(raw_data) scores an Azure ML /score body.

Runs unchanged under the Azure ML inference server (`azmlinfsrv --entry_script serving/score.py`)
and in a managed online deployment. The model comes from AZUREML_MODEL_DIR when set, else from
DIGITDRIFT_MODEL_URI (default models:/digits-cnn@champion); its monitoring reference from
DIGITDRIFT_REFERENCE, its run, or reference.npz beside the model. DIGITDRIFT_MODEL_NAME and
DIGITDRIFT_MODEL_VERSION name a model folder in the records; unset, a registered model's AZUREML_MODEL_DIR
(`.../azureml-models/<name>/<version>`) names it, else digits-cnn and local:<folder>. DIGITDRIFT_RUNTIME (auto,
litert, tensorflow; default auto) is the server's --runtime: a registered version with its exported graph runs on
LiteRT, a model folder on TensorFlow.
Every scored image's record goes to one sink: on an Azure ML deployment with data collection enabled, Azure's
data collector (model_inputs, model_outputs); else the partitioned dataset at DIGITDRIFT_PREDICTION_DATASET
(a folder or az://container/prefix), staged in DIGITDRIFT_STAGING_DIR; else the SQLite log at
DIGITDRIFT_PREDICTION_LOG; else none.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import uuid
from pathlib import Path

# azmlinfsrv puts this file's folder on sys.path, not the project root the packages live in.
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

from azureml_inference_server_http.api.aml_response import AMLResponse  # noqa: E402

from common.settings import LOW_CONFIDENCE_THRESHOLD  # noqa: E402
from serving.collector_sink import CollectorSink, collection_enabled  # noqa: E402
from serving.core import DEFAULT_MODEL_URI, ScoringCore, freeze_heap, load_core, to_records  # noqa: E402
from serving.protocol import BadRequest, decode_json, parse_score_body, score_answer  # noqa: E402
from serving.scoring import RecordSink, SingleRequest, open_sink, score_and_log  # noqa: E402

log = logging.getLogger(__name__)

MAX_IMAGES = int(os.environ.get("DIGITDRIFT_MAX_IMAGES", "1024"))
core: ScoringCore | None = None
prediction_log: RecordSink | None = None


def find_model_folder(root: str | Path) -> Path:
    """The MLflow model folder (the one holding MLmodel) inside an Azure ML model directory."""
    root = Path(root)
    for candidate in [root, *sorted(path.parent for path in root.rglob("MLmodel"))]:
        if (candidate / "MLmodel").is_file():
            return candidate
    raise FileNotFoundError(f"{root}: no MLflow model (no MLmodel file) under AZUREML_MODEL_DIR")


def registered_identity(model_dir: str | None) -> tuple[str, str] | None:
    """(name, version) of a registered model from the folder Azure ML mounts it at,
    `.../azureml-models/<name>/<version>` (with or without a trailing slash); None for any other folder."""
    if not model_dir:
        return None
    parts = Path(model_dir.rstrip("/")).parts
    if len(parts) >= 3 and parts[-3] == "azureml-models" and parts[-1].isdigit():
        return parts[-2], parts[-1]
    return None


def init() -> None:
    global core, prediction_log
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    source = str(find_model_folder(model_dir)) if model_dir else os.environ.get("DIGITDRIFT_MODEL_URI", DEFAULT_MODEL_URI)
    threshold = float(os.environ.get("DIGITDRIFT_LOW_CONFIDENCE", LOW_CONFIDENCE_THRESHOLD))
    registered = registered_identity(model_dir)
    core = load_core(
        source,
        threshold,
        name=os.environ.get("DIGITDRIFT_MODEL_NAME") or (registered[0] if registered else None),
        version=os.environ.get("DIGITDRIFT_MODEL_VERSION") or (registered[1] if registered else None),
        reference_path=os.environ.get("DIGITDRIFT_REFERENCE"),
        runtime=os.environ.get("DIGITDRIFT_RUNTIME", "auto"),
    )
    if collection_enabled():
        prediction_log = CollectorSink()
    else:
        prediction_log = open_sink(
            os.environ.get("DIGITDRIFT_PREDICTION_LOG"),
            os.environ.get("DIGITDRIFT_PREDICTION_DATASET"),
            os.environ.get("DIGITDRIFT_STAGING_DIR"),
        )
    if prediction_log is not None:
        atexit.register(prediction_log.close)  # the dataset sink publishes what it staged when the server stops
    freeze_heap()


def run(raw_data: str | bytes) -> dict | AMLResponse:
    """Score an Azure ML body; a client mistake answers 400/413 with a message, a model failure 500."""
    try:
        request = parse_score_body(decode_json(raw_data), MAX_IMAGES)
    except BadRequest as err:
        return AMLResponse({"error": str(err)}, err.status, json_str=True)
    request_id = request.request_id or uuid.uuid4().hex
    single = SingleRequest(request.images, request_id, request.window)
    try:
        if isinstance(prediction_log, CollectorSink):  # Azure's collector also takes the images' pixel statistics
            (scored,) = score_and_log(core, None, [single])
            records = to_records(scored, single.images, scored.identity, request_id, request.window)
            prediction_log.write(records, single.images)
        else:
            (scored,) = score_and_log(core, prediction_log, [single])
    except Exception:  # our failure, not the client's: a 500, and the server goes on serving
        log.exception("scoring or logging request %s failed", request_id)
        return AMLResponse({"error": "the model failed to score this request"}, 500, json_str=True)
    return score_answer(scored, core.identity, request_id)
