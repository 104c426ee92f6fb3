"""python -m cloud submit train|retrain|register|deploy|monitor [--dry-run]: run digitdrift's jobs on Azure ML."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cloud.submit import (
    ACTIONS,
    CloudError,
    RetrainRequest,
    find_workspace,
    load_specs,
    resolved_yaml,
    rest_body,
    submit,
)
from common.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m cloud", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    submit_cmd = commands.add_parser("submit", help="create the specs of an action in the workspace")
    submit_cmd.add_argument(
        "action",
        choices=list(ACTIONS),
        help="train: the training job, then its model registered as the challenger; retrain: the retrain job (the "
        "champion fine-tuned on --labels), then its model registered as the challenger with its parent; register: a "
        "finished training or retrain job's model; deploy: the champion to a new blue/green deployment, smoke-tested, "
        "then all traffic; monitor: the daily monitoring schedules (digitdrift's and Azure ML's) of the deployment "
        "taking traffic",
    )
    submit_cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="validate with the SDK (load, and build the REST body it would send) and print the resolved specs",
    )
    submit_cmd.add_argument("--config", type=Path, help="the workspace's config.json (default: ./config.json)")
    submit_cmd.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="train, retrain: submit and return; register later with --job",
    )
    submit_cmd.add_argument("--job", help="register: the training or retrain job whose model output to register")
    submit_cmd.add_argument(
        "--labels",
        type=Path,
        help="retrain: the label file (CSV or JSONL: request_id,image_index,label), uploaded with the job",
    )
    submit_cmd.add_argument("--parent", help="retrain: the version number to retrain (default: the champion's)")
    submit_cmd.add_argument(
        "--predictions",
        help="retrain: the collector folder holding the labeled images, an azureml:// URI (default: the model_outputs "
        "of the deployment that takes the traffic)",
    )
    submit_cmd.add_argument(
        "--endpoint-name",
        help="the online endpoint (unique in its region; default: digitdrift- and a digest of the workspace)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "retrain" and not args.dry_run and args.labels is None:
        parser.error("retrain needs --labels PATH: the label file (CSV or JSONL: request_id,image_index,label)")
    configure_logging()
    try:
        specs = load_specs(args.action)
        for name, entity in specs.items():  # where the SDK refuses what it loaded (a schedule of a command job)
            try:
                rest_body(entity)
            except Exception as err:
                raise CloudError(f"{name}: the Azure ML SDK cannot build its request: {type(err).__name__}: {err}") from None
        if args.dry_run:
            try:
                workspace = find_workspace(dict(os.environ), args.config)
            except CloudError as err:
                workspace = None
                print(f"# note: {err}", file=sys.stderr)
            print(resolved_yaml(specs, workspace))
            print(f"# {args.action}: {len(specs)} spec(s) valid", file=sys.stderr)
            return 0
        workspace = find_workspace(dict(os.environ), args.config)
        retrain = RetrainRequest(args.labels, args.parent, args.predictions) if args.labels is not None else None
        print(submit(args.action, specs, workspace, args.stream, args.job, args.endpoint_name, retrain))
        return 0
    except CloudError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
