"""A scoring server's cold start, stage by stage: python -m bench.cold_start --model URI (a fresh process each time).

What `python -m serving` does before its first answer, timed in this process: the interpreter's start (from the
process's creation), the server's imports, the model's load (serving.core.load_core's own steps: MLflow's import,
the registry look-up, TensorFlow's import, reading the model, the graph build, the first call, the reference),
the server's setup (prediction log, app, heap freeze), and the first /score answer through the app in-process.
Prints one JSON object; bench.serving runs it beside the end-to-end figures (process start to /ready and to the
first answer over HTTP).

With `--starts N`, the end-to-end figures alone, for each `--runtimes` of our server and for azmlinfsrv running
score.py, each started N times, written to bench/results/cold_start.json:
python -m bench.cold_start --model models:/digits-cnn@champion --starts 3 --runtimes tensorflow litert
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure(model_uri: str, runtime: str = "auto") -> dict:
    """The seconds of each stage of a cold start in this process, and their total."""
    import psutil

    stages: dict[str, float] = {"interpreter": round(time.time() - psutil.Process().create_time(), 3)}
    started = time.perf_counter()
    import serving.__main__  # noqa: F401 (what `python -m serving` imports before it loads a model)

    stages["server_imports"] = round(time.perf_counter() - started, 3)
    from starlette.testclient import TestClient  # the test client only: not counted

    from common.settings import load_settings
    from serving.config import ServerConfig
    from serving.core import load_core
    from serving.scoring import open_sink
    from serving.server import create_app

    started = time.perf_counter()
    import mlflow

    mlflow.set_tracking_uri(load_settings().tracking_uri)  # as build_app does
    stages["import_mlflow"] = round(time.perf_counter() - started, 3)
    loading: dict[str, float] = {}
    core = load_core(model_uri, stages=loading, runtime=runtime)
    loading.pop("import_mlflow")  # imported above already
    stages.update({f"load_{name}": seconds for name, seconds in loading.items()})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(core, open_sink(str(Path(scratch) / "log.db"), None, None), ServerConfig())
        with TestClient(app) as client:
            stages["server_setup"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            answer = client.post("/score", json={"data": [[0.0] * 784]})
            stages["first_answer"] = round(time.perf_counter() - started, 3)
    if answer.status_code != 200:
        raise RuntimeError(f"the first answer was {answer.status_code}: {answer.text[:300]}")
    return {"stages": stages, "total_seconds": round(sum(stages.values()), 2)}


def end_to_end(model_uri: str, starts: int, runtimes: tuple[str, ...]) -> dict:
    """bench.serving's cold starts alone: each runtime of our server and azmlinfsrv, `starts` times each."""
    import numpy as np

    from bench.serving import measure_cold_starts, server_env
    from common.settings import load_settings

    env = server_env(load_settings())
    with tempfile.TemporaryDirectory() as scratch:
        figures = measure_cold_starts(model_uri, np.zeros((1, 28, 28), dtype=np.uint8), env, Path(scratch), starts, runtimes)
    return {"model": model_uri, "starts": starts, **figures}


def main() -> None:
    from serving.core import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="the stages of one start with this runtime")
    parser.add_argument("--starts", type=int, help="end to end instead: start each server this many times")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=["tensorflow", "litert"], help="with --starts")
    args = parser.parse_args()
    if args.starts is None:
        print(json.dumps(measure(args.model, args.runtime)))
        return
    from bench.result_file import write_result
    from common.logs import configure_logging
    from common.settings import PROJECT_ROOT

    configure_logging()
    result = write_result(
        PROJECT_ROOT / "bench" / "results" / "cold_start.json",
        "cold start, process start to /ready and to the first answer: our server per runtime, and azmlinfsrv",
        end_to_end(args.model, args.starts, tuple(args.runtimes)),
        "bench.cold_start",
        ("tensorflow-cpu", "keras", "ai-edge-litert", "mlflow", "azureml-inference-server-http"),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
