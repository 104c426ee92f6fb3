"""python -m loop run|simulate: the loop against a deployment (its prediction dataset, the label store, the registry),
or on simulated traffic (alert, labels, retrain, safe promotion, the server following), or a finished simulated loop
judged again (simulate --reanalyse)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from common.cli import add_options, options_of
from common.labels import LABEL_SUFFIXES, LabelFileError
from common.logs import configure_logging
from common.prediction_dataset import DatasetError
from common.settings import Settings, load_settings
from common.tracking import use_tracking
from common.windows import (
    DEFAULT_TIMEZONE,
    DEFAULT_WINDOW,
    DURATION_FORMS,
    WALL,
    WindowClock,
    WindowError,
    parse_duration,
)
from loop import controller, simulate
from loop.controller import ControllerConfig
from loop.simulate import LoopConfig, reanalyse, run_loop


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    top = argparse.ArgumentParser(prog="python -m loop", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="the loop against a deployment: follow its prediction dataset, queue, wait for labels, retrain, promote",
        description=controller.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(run, ControllerConfig)
    run.add_argument("--out", type=Path, help="the controller's folder (default: .digitdrift/loops/controller)")
    run.add_argument("--every", help=f"a cycle each period ({DURATION_FORMS}) until stopped; without it, --max-cycles cycles")
    run.add_argument("--max-cycles", type=int, help="stop after this many cycles (default: 1 without --every; with it, none)")
    run.add_argument("--window", default=DEFAULT_WINDOW, help=f"length of a time window: {DURATION_FORMS} (default: %(default)s)")
    run.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="IANA timezone of the time windows (default: %(default)s)")

    parser = commands.add_parser(
        "simulate",
        help="the loop on simulated traffic, window by window, the ground-truth sidecar as annotator",
        description=simulate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, LoopConfig)
    parser.add_argument("--out", type=Path, help="a new folder for the loop (default: .digitdrift/loops/<scenario>-<time>)")
    parser.add_argument("--result", type=Path, help="also copy closed_loop.json here (e.g. bench/results/closed_loop.json)")
    parser.add_argument(
        "--reanalyse", type=Path, metavar="FOLDER", help="judge a finished loop's folder again (no traffic, no training)"
    )
    return top


def run_controller(args: argparse.Namespace, settings: Settings) -> int:
    """`run`: the controller's cycles until done or SIGTERM (the cycle under way ends first)."""
    try:
        every = parse_duration(args.every, "--every") if args.every else 0
        wall = WindowClock(WALL, parse_duration(args.window), args.timezone)
    except WindowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.max_cycles is not None and args.max_cycles < 1:
        print(f"error: --max-cycles {args.max_cycles}: expected 1 or more", file=sys.stderr)
        return 2
    if args.labels.suffix not in LABEL_SUFFIXES:
        print(f"error: --labels {args.labels}: a label store is {' or '.join(LABEL_SUFFIXES)}", file=sys.stderr)
        return 2
    # absolute: the monitor runs in this process, retrain and promote from the project's folder
    out = (args.out or settings.state_dir / "loops" / "controller").resolve()
    options = options_of(args, ControllerConfig) | {"labels": args.labels.resolve()}
    if "://" not in args.dataset:  # a local folder (a blob container's URL stays as it is)
        options["dataset"] = os.path.abspath(args.dataset)
    config = ControllerConfig(**options, out=out, wall=wall)
    use_tracking(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    cycles = args.max_cycles if args.every else (args.max_cycles or 1)
    try:
        decisions = controller.control(config, cycles, every, stopping)
    except (RuntimeError, DatasetError, WindowError, LabelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for decision in decisions:
        print(f"cycle {decision.cycle}: {decision.decision}: {decision.reason}")
    print(f"controller folder: {config.out} (decisions.jsonl, queue.csv, controller.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate" and args.label_delay < 1:
        parser.error(f"--label-delay {args.label_delay}: expected 1 or more (labels reach the controller at its next cycle)")
    configure_logging()
    logging.getLogger("common.datasets").setLevel(logging.WARNING)  # a line per pool load; the loop logs each window
    if args.command == "run":
        return run_controller(args, settings)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or settings.state_dir / "loops" / f"{Path(args.scenario).stem}-{stamp}"
    config = LoopConfig(**options_of(args, LoopConfig), out=out)
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)  # the parts' commands use the same store
    if args.reanalyse:
        use_tracking(settings)
        figures = reanalyse(args.reanalyse)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the server it started is stopped too
        figures = run_loop(config, settings)
    if args.result:
        args.result.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(
        json.dumps(
            {
                key: figures[key]
                for key in (
                    "drifted_traffic_realised_accuracy",
                    "labels",
                    "windows_from_first_alert_to_promotion",
                    "incidents_after_first_promotion",
                    "estimate_error_points",
                )
            },
            indent=2,
        )
    )
    if args.reanalyse:
        print(f"loop folder: {args.reanalyse} (closed_loop.json and windows.csv rewritten)")
    else:
        print(f"loop folder: {config.out} (closed_loop.html, closed_loop.json, windows.csv, labels.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
