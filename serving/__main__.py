"""python -m serving: serve a registered model over HTTP (Azure ML /score and MLflow /invocations)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from common.prediction_dataset import DatasetError
from common.settings import LOW_CONFIDENCE_THRESHOLD, Settings, load_settings
from serving.core import DEFAULT_MODEL_URI, ModelOutputError, freeze_heap, load_core, single_threaded_ops
from serving.follow import AliasFollower
from serving.prediction_log import export_parquet
from serving.scoring import open_sink
from serving.server import ServerConfig, create_app


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_URI, help="MLflow model URI or folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--prediction-log",
        default=str(settings.state_dir / "predictions.db"),
        help="SQLite prediction log (default: %(default)s); 'none' to keep no log",
    )
    parser.add_argument(
        "--low-confidence",
        type=float,
        default=LOW_CONFIDENCE_THRESHOLD,
        help="a top probability under this flags the prediction low_confidence (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=defaults.max_batch, help="images per model call when batching (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="how long a batch waits for company; 0 batches what queued meanwhile (default: %(default)s)",
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads that score chunks of each batch at once, TensorFlow running each op on one thread; 1: one "
        "call per batch on TensorFlow's own threads (default: the machine's cores, %(default)s)",
    )
    parser.add_argument(
        "--max-images", type=int, default=defaults.max_images, help="images per request; more is a 413 (default: %(default)s)"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="request body size; more is a 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=defaults.timeout_s,
        help="scoring time per request; more is a 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-images",
        type=int,
        default=defaults.max_queued_images,
        help="images waiting for the model beyond which requests get 503 with Retry-After; 0: no bound (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key-env",
        default="DIGITDRIFT_API_KEY",
        help="environment variable holding the API key; unset: no key needed (default: %(default)s)",
    )
    parser.add_argument(
        "--prediction-dataset",
        metavar="URL",
        help="write records to this partitioned dataset instead (a folder, or az://container/prefix with "
        "AZURE_STORAGE_CONNECTION_STRING); every replica may write to the same one",
    )
    parser.add_argument(
        "--staging-dir",
        type=Path,
        help="with --prediction-dataset: this replica's own staging folder, kept across restarts "
        "(default: .digitdrift/staging/serving-<port>)",
    )
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=5.0,
        help="with --prediction-dataset: how often staged records are published as parts (default: %(default)s)",
    )
    parser.add_argument(
        "--follow-seconds",
        type=float,
        default=defaults.follow_seconds,
        help="with --model models:/<name>@<alias>: check this often where the alias points and switch to that "
        "version (with its reference) without a restart; 0: never (default: %(default)s)",
    )
    parser.add_argument("--export-parquet", metavar="PATH", help="export the prediction log to Parquet and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    if args.export_parquet:
        rows = export_parquet(args.prediction_log, args.export_parquet)
        print(f"exported {rows} records to {args.export_parquet}")
        return 0
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        if args.model_threads > 1:
            single_threaded_ops()  # before TensorFlow starts: loading the model starts it
        core = load_core(args.model, args.low_confidence, model_threads=args.model_threads)
    except ModelOutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    staging = args.staging_dir or settings.state_dir / "staging" / f"serving-{args.port}"
    try:
        prediction_log = open_sink(args.prediction_log, args.prediction_dataset, str(staging), args.flush_seconds)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = ServerConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_images=args.max_images,
        max_body_bytes=args.max_body_bytes,
        timeout_s=args.timeout_s,
        max_queued_images=args.max_queued_images or None,
        api_key=os.environ.get(args.api_key_env) or None,
        follow_seconds=args.follow_seconds,
    )
    follower = None
    if args.follow_seconds > 0:
        try:
            follower = AliasFollower(args.model, args.low_confidence, core.identity.version, args.model_threads)
        except ValueError as err:
            print(f"error: --follow-seconds: {err}", file=sys.stderr)
            return 2
    app = create_app(core, prediction_log, config, follower)
    freeze_heap()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
