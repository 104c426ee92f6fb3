"""Our server per runtime: python -m bench.runtimes --model URI [--rounds 3] [--duration 10].

The same server, champion and loads with `--runtime tensorflow` (TensorFlow's frozen graph) and `--runtime
litert` (LiteRT's interpreter on the graph the training run exported), one after the other in each round, so
that the machine's drift within minutes touches both alike: wrk's single images at 1, 8 and 64 connections on
`/invocations`, and 256-image requests from one client on `/score`. Writes bench/results/runtimes.json with
every round and the median ratio litert / tensorflow of each load.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from bench.load import closed_loop
from bench.result_file import write_result
from bench.serving import (
    RESULTS,
    SERVER_MODEL_THREADS,
    STARTUP_TIMEOUT_S,
    median_ratios,
    our_server_command,
    request_bodies,
    server_env,
    single_image_body,
    wrk_levels,
)
from common.datasets import load_source
from common.logs import configure_logging
from common.settings import load_settings
from devtools.processes import free_port, running

log = logging.getLogger(__name__)
RUNTIMES = ("tensorflow", "litert")
CONNECTIONS = (1, 8, 64)


def measure(model_uri: str, runtime: str, images: np.ndarray, duration: float, env: dict, folder: Path) -> dict:
    """Requests per second of our server with `runtime`: wrk's single images at CONNECTIONS, and one client
    sending 256 images a request."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / f"{runtime}-{port}.db"
    command = our_server_command(model_uri, port, log_path, "--model-threads", str(SERVER_MODEL_THREADS), "--runtime", runtime)
    with running(command, f"{url}/ready", env, timeout=STARTUP_TIMEOUT_S):
        single = wrk_levels(f"{url}/invocations", single_image_body(images), duration, runtime, CONNECTIONS)
        bodies = request_bodies(images, "data", 256)
        batches = closed_loop(f"{url}/score", bodies, 1, duration, 256, warmup_requests=3).summary()
    return {
        **{f"single_c{level}_requests_per_s": single[f"c{level}"]["requests_per_s"] for level in CONNECTIONS},
        **{f"single_c{level}_p99_ms": single[f"c{level}"]["p99_ms"] for level in CONNECTIONS},
        "batch256_c1_images_per_s": batches["images_per_s"],
        "batch256_c1_p99_ms": batches["p99_ms"],
    }


def run(model_uri: str, rounds: int, duration: float) -> dict:
    settings = load_settings()
    images = load_source("mnist", settings.data_dir).images[:4096]
    env = server_env(settings)
    measured = []
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(1, rounds + 1):
            figures = {}
            for runtime in RUNTIMES:
                log.info("round %d of %d: --runtime %s", number, rounds, runtime)
                figures[runtime] = measure(model_uri, runtime, images, duration, env, Path(scratch))
            rates = [key for key in figures["litert"] if key.endswith("_per_s")]
            figures["ratios_litert_over_tensorflow"] = {
                key: round(figures["litert"][key] / figures["tensorflow"][key], 2) for key in rates
            }
            measured.append(figures)
    medians, ranges = median_ratios([figures["ratios_litert_over_tensorflow"] for figures in measured])
    return {"model": model_uri, "seconds_per_load": duration, "rounds": measured, "ratios": medians, "ratio_ranges": ranges}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/digits-cnn@champion")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each load (default: %(default)s)")
    args = parser.parse_args()
    configure_logging()
    result = write_result(
        RESULTS / "runtimes.json",
        "our server per runtime: TensorFlow's frozen graph against LiteRT's interpreter, same loads in each round",
        run(args.model, args.rounds, args.duration),
        "bench.runtimes",
        ("tensorflow-cpu", "keras", "ai-edge-litert"),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
