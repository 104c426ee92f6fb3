"""Traffic client benchmark against the real server: python -m bench.simulation [--model URI].

Sustained requests/s at concurrency 1 and 8, and the wall time of a 365-window run at 200
requests per window, recorded in bench/results/simulation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.result_file import write_result
from bench.serving import STARTUP_TIMEOUT_S, VENV_BIN, our_server_command
from common.logs import configure_logging
from common.settings import load_settings
from devtools.processes import free_port, running
from serving.core import DEFAULT_MODEL_URI
from simulation.client import HttpTransport
from simulation.run import run_simulation
from simulation.scenario import load_scenario

RESULTS = Path(__file__).parent / "results"


def timed_run(scenario, url: str, folder: Path, settings, concurrency: int) -> dict:
    transport = HttpTransport(url)
    started = time.perf_counter()
    result = run_simulation(scenario, folder, transport, settings, concurrency=concurrency, track=False)
    seconds = time.perf_counter() - started
    transport.close()
    return {
        "requests": result.stats.sent,
        "wall_seconds": round(seconds, 1),
        "requests_per_s": round(result.stats.sent / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_URI)
    parser.add_argument("--windows", type=int, default=365)
    parser.add_argument("--requests-per-window", type=int, default=200)
    args = parser.parse_args()
    configure_logging()
    settings = load_settings()
    env = {"MLFLOW_TRACKING_URI": settings.tracking_uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    figures: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running(our_server_command(args.model, port, folder / "log.db"), f"{url}/ready", env, timeout=STARTUP_TIMEOUT_S):
            for concurrency in (1, 8):
                run = timed_run(
                    load_scenario("seasonal-japanese", windows=10, requests_per_window=300, seed=concurrency),
                    url,
                    folder / f"c{concurrency}",
                    settings,
                    concurrency,
                )
                figures[f"requests_per_s_c{concurrency}"] = run["requests_per_s"]
            long_scenario = load_scenario("seasonal-japanese", windows=args.windows, requests_per_window=args.requests_per_window)
            long_run = timed_run(long_scenario, url, folder / "long", settings, 8)
    measured = {
        "model": args.model,
        **figures,
        f"wall_seconds_{args.windows}_windows_x_{args.requests_per_window}_requests_c8": long_run["wall_seconds"],
        "long_run_requests": long_run["requests"],
        "long_run_requests_per_s": long_run["requests_per_s"],
        "note": "client and server share the machine's 2 cores",
    }
    result = write_result(
        RESULTS / "simulation.json",
        "traffic client against our real server over loopback (single-image requests, /score)",
        measured,
        "bench.simulation",
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
