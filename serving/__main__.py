"""python -m serving: serve a registered model over HTTP (Azure ML /score and MLflow /invocations)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from common.access import API_KEY_ENV, WEBHOOK_SECRET_ENV
from common.cli import add_options, options_of
from common.logs import VERBOSE_HELP, configure_logging
from common.prediction_dataset import DatasetError
from common.settings import LOW_CONFIDENCE_THRESHOLD, Settings, load_settings
from serving.config import ServerConfig
from serving.core import DEFAULT_MODEL_URI, RUNTIMES, freeze_heap, load_core
from serving.follow import AliasFollower
from serving.model_calls import LoadError
from serving.prediction_log import export_parquet
from serving.scoring import open_sink
from serving.server import create_app

# The command line, as each worker process of `--workers N` reads it (they are spawned, not forked: TensorFlow)
WORKER_ARGV_ENV = "DIGITDRIFT_SERVING_ARGV"
log = logging.getLogger("serving")


class SetupError(ValueError):
    """The server cannot start as asked: a model it cannot serve, a sink it cannot open, options that conflict."""


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
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
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs a Keras model: LiteRT's interpreter on the graph the version's training run exported "
        "(serving/model.tflite; it starts without importing TensorFlow), or TensorFlow's frozen graph; auto: LiteRT "
        "when the version has the graph (default: %(default)s)",
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads that score chunks of each batch at once, each op on one thread; 1: one call per batch, each op "
        "on all the cores (default: the machine's cores, %(default)s)",
    )
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
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
        "--webhook-secret-env",
        default=WEBHOOK_SECRET_ENV,
        help="environment variable holding the webhook's signing secret (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own model and event loop, all writing to the one "
        "prediction log (default: %(default)s)",
    )
    add_options(parser, ServerConfig)
    parser.add_argument("--export-parquet", metavar="PATH", help="export the prediction log to Parquet and exit")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def build_app(args: argparse.Namespace, settings: Settings) -> ASGIApp:
    """The server of a command line: its model, its prediction sink and its limits; SetupError when it cannot be."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        core = load_core(args.model, args.low_confidence, model_threads=args.model_threads, runtime=args.runtime)
    except LoadError as err:
        raise SetupError(str(err)) from None
    staging = args.staging_dir or settings.state_dir / "staging" / f"serving-{args.port}"
    try:
        prediction_log = open_sink(args.prediction_log, args.prediction_dataset, str(staging), args.flush_seconds)
    except DatasetError as err:
        raise SetupError(str(err)) from None
    config = ServerConfig(
        **options_of(args, ServerConfig)
        | {
            "max_queued_images": args.max_queued_images or None,
            "api_key": os.environ.get(args.api_key_env) or None,
            "webhook_secret": os.environ.get(args.webhook_secret_env) if args.webhook_url else None,
        }
    )
    follower = None
    if args.follow_seconds > 0 or args.webhook_url:
        try:
            follower = AliasFollower(args.model, args.low_confidence, core.identity.version, args.model_threads, args.runtime)
        except ValueError as err:
            raise SetupError(f"--follow-seconds / --webhook-url: {err}") from None
    app = create_app(core, prediction_log, config, follower)
    freeze_heap()
    return app


def worker_app() -> ASGIApp:
    """uvicorn's app factory in each worker process of `--workers N`: the server of the parent's command line.

    A worker that cannot set up exits with uvicorn's STARTUP_FAILURE, which stops the parent; any other exit
    would have the parent start it again, and fail again, without end."""
    from uvicorn.config import STARTUP_FAILURE

    settings = load_settings()
    args = build_parser(settings).parse_args(json.loads(os.environ[WORKER_ARGV_ENV]))
    configure_logging(verbose=args.verbose)
    try:
        return build_app(args, settings)
    except SetupError as err:
        log.error("worker process %d could not start: %s", os.getpid(), err)
    except Exception:
        log.exception("worker process %d could not start", os.getpid())
    sys.exit(STARTUP_FAILURE)


def serve_workers(argv: list[str], args: argparse.Namespace) -> int:
    """uvicorn's supervisor: `args.workers` spawned processes on one bound socket, restarted if one dies, stopped
    on SIGINT or SIGTERM; 2 when a worker could not start (its error is in the log above)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    os.environ[WORKER_ARGV_ENV] = json.dumps(argv)
    config = uvicorn.Config(
        "serving.__main__:worker_app", factory=True, host=args.host, port=args.port, workers=args.workers, log_level="warning"
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = [process.pid for process in supervisor.processes if process.exitcode == STARTUP_FAILURE]
    if failed:
        print(f"error: worker process {failed[0]} could not start; its error is above", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(settings).parse_args(argv)
    configure_logging(verbose=args.verbose)

    if args.export_parquet:
        rows = export_parquet(args.prediction_log, args.export_parquet)
        print(f"exported {rows} records to {args.export_parquet}")
        return 0
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.drop_abandoned and not 0 < args.stale_after_s < args.timeout_s:
        print(
            f"error: --stale-after-s {args.stale_after_s:g} must be above 0 and under --timeout-s ({args.timeout_s:g}), "
            "and under the proxy's server timeout",
            file=sys.stderr,
        )
        return 2
    if args.webhook_url and not os.environ.get(args.webhook_secret_env):
        print(f"error: --webhook-url needs the signing secret in {args.webhook_secret_env}", file=sys.stderr)
        return 2
    if args.workers > 1:
        if args.webhook_url:  # a delivery reaches one worker of the shared port, and only that one would switch
            print("error: --webhook-url with --workers: start one server per port instead", file=sys.stderr)
            return 2
        if args.prediction_dataset:
            # each replica stages in a folder of its own, kept across its restarts: run replicas, not workers
            print("error: --workers with --prediction-dataset: start one server per --staging-dir instead", file=sys.stderr)
            return 2
        return serve_workers(argv, args)
    try:
        app = build_app(args, settings)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
