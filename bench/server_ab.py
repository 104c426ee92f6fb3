"""Our server against itself at another commit, for a change to the hot path: the same champion, wrk at a few
connection counts of single images, rounds alternating between the two trees (each round in the other order).

    python -m bench.server_ab --baseline COMMIT [--this-options=--new-flag] [--rounds 3] [--duration 10] [--result FILE]

The baseline is checked out in a temporary git worktree, removed afterwards. Both servers run with this tree's
virtual environment and store (`python -m serving` started in each tree's folder), each with its own SQLite
prediction log. Reports requests per second per tree and connection count (the
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
from devtools.processes import free_port, running

log = logging.getLogger("bench.server_ab")


def one_round(
    tree: Path, extra: list[str], body: bytes, connections: list[int], duration: float, env: dict, folder: Path
) -> dict[int, float]:
    """Requests per second of the server started in `tree` (with `extra` options), at each connection count."""
    port = free_port()
    command = our_server_command(f"models:/{MODEL_NAME}@champion", port, folder / f"log-{port}.db", *extra)
    with running(command, f"http://127.0.0.1:{port}/ready", env, cwd=tree):
        url = f"http://127.0.0.1:{port}/invocations"
        wrk_load(url, body, 8, 2, "warm")  # first calls, allocations
        return {count: wrk_load(url, body, count, duration, f"r{port}")["requests_per_s"] for count in connections}


def compare(baseline: str, this_options: list[str], connections: list[int], rounds: int, duration: float) -> dict:
    """Requests per second of this tree's server and of `baseline`'s, `rounds` alternating rounds; the medians."""
    settings = load_settings()
    env = {**os.environ, **server_env(settings)}
    body = single_image_body(load_source("mnist", settings.data_dir).images[:1])
    measured: dict[str, dict[int, list[float]]] = {"baseline": {c: [] for c in connections}, "this": {c: [] for c in connections}}
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), baseline], cwd=PROJECT_ROOT, check=True)
        try:
            trees = [("baseline", tree, []), ("this", PROJECT_ROOT, this_options)]
            for round_number in range(rounds):
                for name, root, extra in trees if round_number % 2 == 0 else trees[::-1]:
                    for count, rate in one_round(root, extra, body, connections, duration, env, Path(folder)).items():
                        measured[name][count].append(rate)
                    log.info("round %d, %s: %s", round_number + 1, name, {c: round(v[-1]) for c, v in measured[name].items()})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=PROJECT_ROOT, check=False)
    median = {name: {count: statistics.median(rates) for count, rates in by_count.items()} for name, by_count in measured.items()}
    return {
        f"{count}_connections": {
            "baseline_requests_per_s": round(median["baseline"][count], 1),
            "this_requests_per_s": round(median["this"][count], 1),
            "ratio": round(median["this"][count] / median["baseline"][count], 3),
            "rounds": {name: [round(rate, 1) for rate in measured[name][count]] for name in measured},
        }
        for count in connections
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_ab", description=__doc__)
    parser.add_argument("--baseline", required=True, help="the commit to compare with (checked out in a temporary worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per connection count")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument(
        "--this-options", default="", help="options for this tree's server only, as one value: --this-options=--new-flag"
    )
    parser.add_argument("--result", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    configure_logging()
    connections = [int(count) for count in args.connections.split(",")]
    figures = compare(args.baseline, args.this_options.split(), connections, args.rounds, args.duration)
    figures = {"baseline_commit": args.baseline, "this_options": args.this_options, "duration_s": args.duration, **figures}
    if args.result:
        benchmark = "our server against itself at another commit (wrk, single images)"
        figures = write_result(args.result, benchmark, figures, "bench.server_ab")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
