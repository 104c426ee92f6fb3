"""python -m cloud submit train|deploy|monitor [--dry-run]: run digitdrift's jobs on Azure ML."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cloud.submit import ACTIONS, CloudError, find_workspace, load_specs, resolved_yaml, submit


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m cloud", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    submit_cmd = commands.add_parser("submit", help="create the specs of an action in the workspace")
    submit_cmd.add_argument(
        "action",
        choices=list(ACTIONS),
        help="train: the training job (and its model); deploy: the online endpoint; monitor: the daily monitoring schedule",
    )
    submit_cmd.add_argument("--dry-run", action="store_true", help="validate with the SDK and print the resolved specs")
    submit_cmd.add_argument("--config", type=Path, help="the workspace's config.json (default: ./config.json)")
    submit_cmd.add_argument("--no-stream", dest="stream", action="store_false", help="do not wait for the job's logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        specs = load_specs(args.action)
        if args.dry_run:
            try:
                workspace = find_workspace(dict(os.environ), args.config)
            except CloudError as err:
                workspace = None
                print(f"# note: {err}", file=sys.stderr)
            print(resolved_yaml(specs, workspace))
            print(f"# {args.action}: {len(specs)} spec(s) valid", file=sys.stderr)
            return 0
        print(submit(args.action, specs, find_workspace(dict(os.environ), args.config), args.stream))
        return 0
    except CloudError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
