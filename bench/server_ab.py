"""Our server against itself at another commit, for a change to the hot path: the same champion, wrk at a few
connection counts of single images, rounds alternating between the two trees.

    git worktree add /tmp/baseline <commit>
    python -m bench.server_ab --baseline-tree /tmp/baseline [--rounds 3] [--duration 10] [--result FILE]

Both servers run with this tree's virtual environment and store (`python -m serving` started in each tree's
folder), each with its own SQLite prediction log. Reports requests per second per tree and connection count (the
rounds' medians) and this tree's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.result_file import write_result
from bench.serving import our_server_command, server_env, single_image_body
from bench.wrk import wrk_load
from common.datasets import load_source
from common.logs import configure_logging
from common.settings import MODEL_NAME, PROJECT_ROOT, load_settings
from devtools.processes import free_port, stop, wait_for_http

log = logging.getLogger("bench.server_ab")


def one_round(
    tree: Path, extra: list[str], body: bytes, connections: list[int], duration: float, env: dict, folder: Path
) -> dict[int, float]:
    """Requests per second of the server started in `tree` (with `extra` options), at each connection count."""
    port = free_port()
    command = our_server_command(f"models:/{MODEL_NAME}@champion", port, folder / f"log-{port}.db", *extra)
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", process, 120, 0.3)
        url = f"http://127.0.0.1:{port}/invocations"
        wrk_load(url, body, 8, 2, "warm")  # first calls, allocations
        return {count: wrk_load(url, body, count, duration, f"r{port}")["requests_per_s"] for count in connections}
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_ab", description=__doc__)
    parser.add_argument("--baseline-tree", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per connection count")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument(
        "--this-options", default="", help="options for this tree's server only, as one value: --this-options=--new-flag"
    )
    parser.add_argument("--result", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    configure_logging()
    settings = load_settings()
    env = {**os.environ, **server_env(settings)}
    body = single_image_body(load_source("mnist", settings.data_dir).images[:1])
    connections = [int(count) for count in args.connections.split(",")]
    measured: dict[str, dict[int, list[float]]] = {"baseline": {c: [] for c in connections}, "this": {c: [] for c in connections}}
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            for name, tree, extra in (("baseline", args.baseline_tree, []), ("this", PROJECT_ROOT, args.this_options.split())):
                for count, rate in one_round(tree, extra, body, connections, args.duration, env, Path(folder)).items():
                    measured[name][count].append(rate)
                log.info("round %d, %s: %s", round_number + 1, name, {c: round(v[-1]) for c, v in measured[name].items()})
    figures = {
        f"{count}_connections": {
            "baseline_requests_per_s": round(statistics.median(measured["baseline"][count]), 1),
            "this_requests_per_s": round(statistics.median(measured["this"][count]), 1),
            "ratio": round(statistics.median(measured["this"][count]) / statistics.median(measured["baseline"][count]), 3),
            "rounds": {name: [round(rate, 1) for rate in measured[name][count]] for name in measured},
        }
        for count in connections
    }
    baseline_commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.baseline_tree, capture_output=True, text=True
    ).stdout.strip()
    figures = {"baseline_commit": baseline_commit, "this_options": args.this_options, "duration_s": args.duration, **figures}
    if args.result:
        benchmark = "our server against itself at another commit (wrk, single images)"
        figures = write_result(args.result, benchmark, figures, "bench.server_ab")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
