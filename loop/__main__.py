"""python -m loop simulate: the closed loop on simulated traffic (alert, labels, retrain, safe promotion, the server
following), or a finished loop judged again (--reanalyse)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from common.logs import configure_logging
from common.settings import load_settings
from common.tracking import use_tracking
from loop import simulate
from loop.simulate import LoopConfig, reanalyse, run_loop


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    defaults = LoopConfig(out=Path("."))
    top = argparse.ArgumentParser(prog="python -m loop", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    parser = commands.add_parser(
        "simulate",
        help="the loop on simulated traffic, window by window, the ground-truth sidecar as annotator",
        description=simulate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default=defaults.scenario, help="a built-in scenario or a YAML file (default: %(default)s)")
    parser.add_argument("--windows", type=int, help="override the scenario's windows")
    parser.add_argument("--requests-per-window", type=int, help="override the scenario's requests per window")
    parser.add_argument(
        "--labels-per-window", type=int, default=defaults.labels_per_window, help="label budget per window (default: %(default)s)"
    )
    parser.add_argument(
        "--random-share",
        type=float,
        default=defaults.random_share,
        help="share of the budget drawn from unflagged images (default: %(default)s)",
    )
    parser.add_argument(
        "--label-delay", type=int, default=defaults.label_delay, help="windows before labels come back (default: %(default)s)"
    )
    parser.add_argument(
        "--retrain-after",
        type=int,
        default=defaults.retrain_after,
        help="labeled images in hand since the last retrain that start one (default: %(default)s)",
    )
    parser.add_argument("--max-retrains", type=int, default=defaults.max_retrains, help="retrains at most (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="retraining epochs (default: %(default)s)")
    parser.add_argument("--train-limit", type=int, help="retrain on the first N shuffled MNIST images only (quick runs)")
    parser.add_argument(
        "--foreign-limit-per-class", type=int, help="evaluate retrained models on at most N foreign digits per class"
    )
    parser.add_argument(
        "--min-accuracy", type=float, default=defaults.min_accuracy, help="MNIST test floor of promotion (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, help="a new folder for the loop (default: .digitdrift/loops/<scenario>-<time>)")
    parser.add_argument("--result", type=Path, help="also copy closed_loop.json here (e.g. bench/results/closed_loop.json)")
    parser.add_argument(
        "--reanalyse", type=Path, metavar="FOLDER", help="judge a finished loop's folder again (no traffic, no training)"
    )
    return top


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser().parse_args(argv)
    configure_logging()
    logging.getLogger("common.datasets").setLevel(logging.WARNING)  # a line per pool load; the loop logs each window
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    config = LoopConfig(
        out=args.out or settings.state_dir / "loops" / f"{Path(args.scenario).stem}-{stamp}",
        scenario=args.scenario,
        windows=args.windows,
        requests_per_window=args.requests_per_window,
        labels_per_window=args.labels_per_window,
        random_share=args.random_share,
        label_delay=args.label_delay,
        retrain_after=args.retrain_after,
        max_retrains=args.max_retrains,
        epochs=args.epochs,
        train_limit=args.train_limit,
        foreign_limit_per_class=args.foreign_limit_per_class,
        min_accuracy=args.min_accuracy,
    )
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)  # the parts' commands use the same store
    if args.reanalyse:
        use_tracking(settings)
        figures = reanalyse(args.reanalyse)
    else:
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
