"""python -m simulation run|list: send production-like traffic (foreign digits by season or drift) to a model."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common.datasets import DatasetError
from common.logs import configure_logging
from common.settings import PROJECT_ROOT, Settings, load_settings
from simulation.client import EntryScriptTransport, HttpTransport, ServerRefused
from simulation.run import run_simulation
from simulation.scenario import ScenarioError, builtin_names, load_scenario

IN_PROCESS = "inprocess"


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m simulation", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the built-in scenarios")
    run = commands.add_parser("run", help="send a scenario's traffic; --run-dir of an interrupted run resumes it")
    run.add_argument(
        "--scenario", help=f"a built-in ({', '.join(builtin_names())}) or a YAML file; not needed to resume an existing --run-dir"
    )
    run.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help=f"the server (its /score door; several replicas comma-separated take turns), or '{IN_PROCESS}' "
        "to score through an entry script here",
    )
    run.add_argument(
        "--run-dir", type=Path, help="where the sidecar and state live (default: .digitdrift/simulations/<scenario>-<time>)"
    )
    run.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default: %(default)s)")
    run.add_argument("--rate", type=float, default=None, help="requests per second at most (default: as fast as served)")
    run.add_argument(
        "--live",
        type=int,
        metavar="SECONDS",
        help="live traffic: each scenario window lasts SECONDS of wall-clock time (from the next multiple of SECONDS), "
        "its requests spread evenly across it and sent with no window, as real clients send them; monitor the log "
        "with --window of the same length (e.g. --live 20 and --window 20s). --rate then sets the requests per window "
        "(rate x SECONDS)",
    )
    run.add_argument("--windows", type=int, help="override the scenario's number of windows")
    run.add_argument("--requests-per-window", type=int, help="override the scenario's requests per window")
    run.add_argument("--images-per-request", type=int, help="override the scenario's images per request")
    run.add_argument("--seed", type=int, help="override the scenario's seed")
    run.add_argument("--api-key-env", default="DIGITDRIFT_API_KEY", help="environment variable holding the server's API key")
    run.add_argument("--model", help=f"with --url {IN_PROCESS}: the model URI (default: models:/digits-cnn@champion)")
    run.add_argument(
        "--entry-script",
        type=Path,
        default=PROJECT_ROOT / "serving" / "score.py",
        help=f"with --url {IN_PROCESS}: an Azure ML entry script (init()/run()), loaded by path (default: %(default)s)",
    )
    run.add_argument(
        "--prediction-log",
        default=str(settings.state_dir / "predictions.db"),
        help=f"with --url {IN_PROCESS}: the prediction log to append to (default: %(default)s)",
    )
    run.add_argument("--no-mlflow", dest="track", action="store_false", help="do not log an MLflow run")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    args = build_parser(settings).parse_args(argv)
    configure_logging()
    if args.command == "list":
        for name in builtin_names():
            scenario = load_scenario(name)
            print(
                f"{name:<20} {scenario.windows} {scenario.window}s x {scenario.requests_per_window} requests, "
                f"{scenario.mode}: {scenario.description.strip()}"
            )
        return 0
    return _run(args, settings)


def _run(args: argparse.Namespace, settings) -> int:
    try:
        scenario = None
        if args.live is not None and args.live <= 0:
            print(f"error: --live {args.live}: expected whole seconds per window, more than zero", file=sys.stderr)
            return 2
        per_window = args.requests_per_window
        if args.live and args.rate:
            per_window = max(1, round(args.rate * args.live))
        if args.scenario:
            scenario = load_scenario(
                args.scenario,
                windows=args.windows,
                requests_per_window=per_window,
                images_per_request=args.images_per_request,
                seed=args.seed,
            )
        elif not (args.run_dir and args.run_dir.is_dir()):
            print("error: give --scenario, or the --run-dir of an interrupted run to resume", file=sys.stderr)
            return 2
        run_dir = args.run_dir or settings.state_dir / "simulations" / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if args.url == IN_PROCESS:
            import mlflow

            mlflow.set_tracking_uri(settings.tracking_uri)
            transport = EntryScriptTransport(args.entry_script, args.prediction_log, args.model)
        else:
            transport = HttpTransport(args.url, api_key=os.environ.get(args.api_key_env))
        rate = None if args.live else args.rate  # live: the schedule paces the requests
        result = run_simulation(
            scenario, run_dir, transport, settings, args.concurrency, rate, args.track, live_window_s=args.live
        )
    except (ScenarioError, DatasetError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ServerRefused as err:
        print(
            f"error: the server refused the traffic: {err}\n"
            f"what was delivered is kept; resume with: python -m simulation run --run-dir {run_dir} --url {args.url}",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python -m simulation run --run-dir {run_dir} --url {args.url}", file=sys.stderr)
        return 130
    stats = result.stats
    print(
        f"delivered {stats.sent} requests ({stats.skipped} already delivered earlier) of {result.planned} "
        f"at {stats.requests_per_s:.0f} requests/s; ground truth in {result.run_dir / 'ground_truth.db'}"
    )
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id}: the schedule is its artifact schedule.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
