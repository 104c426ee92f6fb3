"""Serving benchmark, all in one run: python -m bench.serving [--model URI] [--duration S] [--rounds N].

The bare Keras model (the ceiling, at batch 1, 8, 32 and 256; with TensorFlow's defaults and as our server calls it,
each in a process of its own, before and after each of N rounds of our server, one process and `--workers 2`; the
ratios are the rounds' medians), our server and `mlflow models serve`
(--workers 1 and 2) under the same load (a Python closed loop, and Debian's wrk at 1, 8, 64 and 256
connections of single images), and the prediction log against the original one-MLflow-run-per-request
bookkeeping. Then the server Azure runs: `azmlinfsrv` serving the same score.py and champion (--worker_count 1
and 2) against our server's /score door under wrk at 1, 8 and 64 connections of the same single-image body;
and the cold start of both, from process start to /ready and to the first answer (each started
`--cold-starts` times), with our server's stages (bench.cold_start, in fresh processes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np

from bench.load import closed_loop
from bench.result_file import write_result
from bench.wrk import wrk_load
from common.datasets import load_source
from common.logs import configure_logging
from common.settings import load_settings
from devtools.processes import free_port, running
from serving.core import DEFAULT_MODEL_URI, ModelIdentity, flag_predictions, to_records
from serving.prediction_log import PredictionLog

log = logging.getLogger("bench.serving")
RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = str(RESULTS / "serving.json")
VENV_BIN = Path(sys.executable).parent
WRK_CONNECTIONS = (1, 8, 64, 256)
AZURE_CONNECTIONS = (1, 8, 64)
AZMLINFSRV_WORKERS = (1, 2)  # --worker_count: one process, and one per core
STARTUP_TIMEOUT_S = 180  # how long a server under test may take to answer its readiness check
AZURE_RUNTIME = "tensorflow"  # score.py under azmlinfsrv as an Azure deployment runs it: a model folder, no exported graph
SERVER_MODEL_THREADS = os.cpu_count() or 1  # `python -m serving --model-threads`' default: the machine's cores
WORKERS = 2  # our server is measured in each round as one process and as `--workers 2`
WORKERS_KEY = f"workers_{WORKERS}"
# The peers: TensorFlow's defaults, one call per batch (the issue's), and the model as our server calls it
BARE_MODEL_THREADS = {"bare_model": 1, "bare_model_as_served": SERVER_MODEL_THREADS}


def measure_bare_models(uri: str, seconds: float, env: dict) -> dict[str, dict]:
    """The bare model's figures (bench.bare_model) in each setting of BARE_MODEL_THREADS, each in a process of its own."""
    figures = {}
    for name, threads in BARE_MODEL_THREADS.items():
        command = [sys.executable, "-m", "bench.bare_model", "--model", uri, "--seconds", str(seconds), "--threads", str(threads)]
        output = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
        figures[name] = json.loads(output.strip().splitlines()[-1])
    return figures


def our_server_command(model_uri: str, port: int, log_path: Path, *extra: str) -> list[str]:
    """`python -m serving` on a loopback port with its SQLite prediction log."""
    return [sys.executable, "-m", "serving", "--model", model_uri, "--port", str(port), "--prediction-log", str(log_path), *extra]


def server_env(settings) -> dict[str, str]:
    """The environment every server under test runs with: the tracking store, the venv's tools, TensorFlow quiet."""
    return {
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def request_bodies(images: np.ndarray, body_key: str, size: int) -> list[bytes]:
    """Up to 64 JSON bodies of `size` images each under `body_key`, in order."""
    flat = images.reshape(len(images), 784)
    return [
        json.dumps({body_key: flat[start : start + size].tolist()}).encode() for start in range(0, len(images) - size + 1, size)
    ][:64]


def load_figures(url: str, images: np.ndarray, body_key: str, duration: float, big_batches: bool = True) -> dict:
    """Single-image requests at concurrency 1 and 8, and 256-image requests at concurrency 1."""

    def bodies(size: int) -> list[bytes]:
        return request_bodies(images, body_key, size)

    figures = {
        "single_c1": closed_loop(url, bodies(1), 1, duration, 1).summary(),
        "single_c8": closed_loop(url, bodies(1), 8, duration, 1).summary(),
    }
    if big_batches:
        figures["batch256_c1"] = closed_loop(url, bodies(256), 1, duration, 256, warmup_requests=3).summary()
    return figures


def prediction_log_rate(folder: Path, images: np.ndarray, batch: int, count: int) -> float:
    """Predictions/s written to the SQLite log, one commit per `batch` records."""
    identity = ModelIdentity("digits-cnn", "1", "champion", "bench", "keras")
    rng = np.random.default_rng(0)
    # records as MNIST traffic makes them: confident, with foreign scores and projections, ~1% flagged
    probabilities = np.full((batch, 10), 0.0001, dtype=np.float32)
    probabilities[np.arange(batch), rng.integers(0, 10, batch)] = 0.9991
    probabilities[rng.random(batch) < 0.01] = 0.1
    scored = flag_predictions(probabilities, 0.9, rng.exponential(1.0, batch), 7.0, rng.normal(size=(batch, 8)))
    prediction_log = PredictionLog(folder / f"log-{batch}.db")
    started = time.perf_counter()
    for request in range(count):
        prediction_log.write(to_records(scored, images[:batch], identity, f"r{request}", 1))
    return count * batch / (time.perf_counter() - started)


def original_bookkeeping_rate(folder: Path, images: np.ndarray, requests: int) -> float:
    """The original mlops-demo: one MLflow run per request, a dozen metrics, two artifacts."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'original.db'}")
    experiment = mlflow.create_experiment("original", (folder / "original-artifacts").as_uri())
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10))
    started = time.perf_counter()
    for request in range(requests):
        with mlflow.start_run(experiment_id=experiment):
            for digit in range(10):
                mlflow.log_metric(f"prob_{digit}", float(probabilities[digit]))
            mlflow.log_metric("prediction", float(probabilities.argmax()))
            mlflow.log_metric("confidence", float(probabilities.max()))
            image_path = folder / "input.npy"
            np.save(image_path, images[request % len(images)])
            mlflow.log_artifact(str(image_path))
            result_path = folder / "prediction.json"
            result_path.write_text(json.dumps({"probabilities": probabilities.tolist()}))
            mlflow.log_artifact(str(result_path))
    return requests / (time.perf_counter() - started)


def measure_our_server(
    model_uri: str, log_path: Path, images: np.ndarray, duration: float, env: dict, server_args: list[str]
) -> dict:
    """Our server's figures: the Python closed loop on both doors, then wrk's levels of single images."""
    port = free_port()
    command = our_server_command(model_uri, port, log_path, "--model-threads", str(SERVER_MODEL_THREADS), *server_args)
    with running(command, f"http://127.0.0.1:{port}/ready", env, timeout=STARTUP_TIMEOUT_S):
        url = f"http://127.0.0.1:{port}"
        return {
            "our_server_score": load_figures(f"{url}/score", images, "data", duration),
            "our_server_invocations": load_figures(f"{url}/invocations", images, "inputs", duration, big_batches=False),
            "our_server_wrk_single_images": wrk_levels(f"{url}/invocations", single_image_body(images), duration, "ours"),
        }


def single_image_body(images: np.ndarray) -> bytes:
    """The body wrk sends: the first image, MLflow's `inputs` format."""
    return json.dumps({"inputs": images[:1].reshape(1, 784).tolist()}).encode()


def measure_mlflow_serve(model_uri: str, workers: int, images: np.ndarray, duration: float, env: dict) -> dict:
    """`mlflow models serve --workers N` under the same loads as our server."""
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "--workers", str(workers)]
    with running(command, f"http://127.0.0.1:{port}/ping", env, timeout=STARTUP_TIMEOUT_S):
        url = f"http://127.0.0.1:{port}/invocations"
        return {
            "closed_loop": load_figures(url, images, "inputs", duration),
            "wrk": wrk_levels(url, single_image_body(images), duration, f"mlflow-w{workers}"),
        }


def score_body(images: np.ndarray) -> bytes:
    """The body of Azure ML's /score contract with the first image: what score.py's run() reads."""
    return json.dumps({"data": images[:1].reshape(1, 784).tolist()}).encode()


@contextmanager
def started(command: list[str], ready_url: str, score_url: str, body: bytes, env: dict, log_path: Path) -> Iterator[dict]:
    """A server started from nothing, with its cold start: seconds from process start to `ready_url` answering 200
    (polled every 50 ms) and to the answer of a first /score request."""
    import httpx

    began = time.monotonic()
    with running(command, ready_url, env, log_path, timeout=STARTUP_TIMEOUT_S, poll_s=0.05):
        ready = time.monotonic() - began
        answer = httpx.post(score_url, content=body, headers={"content-type": "application/json"}, timeout=60)
        if answer.status_code != 200:
            raise RuntimeError(f"{score_url}: the first answer was {answer.status_code}: {answer.text[:300]}")
        yield {"to_ready_seconds": round(ready, 2), "to_first_answer_seconds": round(time.monotonic() - began, 2)}


def azmlinfsrv_command(port: int, health_port: int, worker_count: int) -> list[str]:
    return [
        str(VENV_BIN / "azmlinfsrv"),
        "--entry_script",
        "serving/score.py",
        "--port",
        str(port),
        "--health_port",
        str(health_port),
        "--worker_count",
        str(worker_count),
    ]


def measure_score_doors(model_uri: str, images: np.ndarray, duration: float, env: dict, folder: Path) -> dict:
    """Our server's /score and azmlinfsrv's (score.py, each --worker_count) under wrk at AZURE_CONNECTIONS, with
    the same single-image body, the same champion and each its own SQLite prediction log."""
    body = score_body(images)
    figures: dict = {}
    port = free_port()
    command = our_server_command(model_uri, port, folder / "score-door-log.db", "--model-threads", str(SERVER_MODEL_THREADS))
    url = f"http://127.0.0.1:{port}"
    with started(command, f"{url}/ready", f"{url}/score", body, env, folder / "ours.log"):
        figures["our_server"] = wrk_levels(f"{url}/score", body, duration, "ours-score", AZURE_CONNECTIONS)
    for workers in AZMLINFSRV_WORKERS:
        port, health_port = free_port(), free_port()
        served = {
            **env,
            "DIGITDRIFT_MODEL_URI": model_uri,
            "DIGITDRIFT_PREDICTION_LOG": str(folder / f"azure-{workers}.db"),
            "DIGITDRIFT_RUNTIME": AZURE_RUNTIME,
        }
        url = f"http://127.0.0.1:{port}"
        log.info("azmlinfsrv --worker_count %d", workers)
        with started(azmlinfsrv_command(port, health_port, workers), f"{url}/", f"{url}/score", body, served, folder / "az.log"):
            figures[f"azmlinfsrv_workers{workers}"] = wrk_levels(
                f"{url}/score", body, duration, f"az-w{workers}", AZURE_CONNECTIONS
            )
    best = {
        f"c{connections}": max(
            AZMLINFSRV_WORKERS, key=lambda w, c=connections: figures[f"azmlinfsrv_workers{w}"][f"c{c}"]["requests_per_s"]
        )
        for connections in AZURE_CONNECTIONS
    }
    figures["azmlinfsrv_best_worker_count"] = best
    figures["ratios_ours_over_best_azmlinfsrv"] = {
        level: round(
            figures["our_server"][level]["requests_per_s"] / figures[f"azmlinfsrv_workers{workers}"][level]["requests_per_s"], 2
        )
        for level, workers in best.items()
    }
    return figures


def measure_cold_starts(
    model_uri: str, images: np.ndarray, env: dict, folder: Path, starts: int, runtimes: tuple[str, ...] = ("tensorflow",)
) -> dict:
    """Each server started `starts` times from nothing: seconds to /ready and to the first answer (the medians and
    every start), and our server's stages in as many fresh processes (bench.cold_start; the median of each). Our
    server runs each of `runtimes` (`our_server` is TensorFlow's, `our_server_<runtime>` any other)."""
    body = score_body(images)
    servers = {runtime: "our_server" if runtime == "tensorflow" else f"our_server_{runtime}" for runtime in runtimes}
    runs: dict[str, list[dict]] = {**{server: [] for server in servers.values()}, "azmlinfsrv": []}
    stage_runs: dict[str, list[dict]] = {server: [] for server in servers.values()}
    for number in range(starts):
        log.info("cold start %d of %d", number + 1, starts)
        for runtime, server in servers.items():
            port = free_port()
            command = our_server_command(
                model_uri,
                port,
                folder / f"cold-{runtime}-{number}.db",
                "--model-threads",
                str(SERVER_MODEL_THREADS),
                "--runtime",
                runtime,
            )
            url = f"http://127.0.0.1:{port}"
            with started(command, f"{url}/ready", f"{url}/score", body, env, folder / f"{server}-cold.log") as figures:
                runs[server].append(figures)
        port, health_port = free_port(), free_port()
        served = {
            **env,
            "DIGITDRIFT_MODEL_URI": model_uri,
            "DIGITDRIFT_PREDICTION_LOG": str(folder / f"cold-az-{number}.db"),
            "DIGITDRIFT_RUNTIME": AZURE_RUNTIME,
        }
        url = f"http://127.0.0.1:{port}"
        with started(
            azmlinfsrv_command(port, health_port, 1), f"{url}/", f"{url}/score", body, served, folder / "az-cold.log"
        ) as figures:
            runs["azmlinfsrv"].append(figures)
        for runtime, server in servers.items():
            command = [sys.executable, "-m", "bench.cold_start", "--model", model_uri, "--runtime", runtime]
            output = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
            stage_runs[server].append(json.loads(output.strip().splitlines()[-1])["stages"])
    result: dict = {}
    for server, measured in runs.items():
        result[server] = {key: round(float(np.median([figures[key] for figures in measured])), 2) for key in measured[0]} | {
            "starts": measured
        }
    for server, measured in stage_runs.items():
        result[f"{server}_stages_seconds"] = {
            stage: round(float(np.median([stages[stage] for stages in measured])), 3) for stage in measured[0]
        }
        result[f"{server}_stages_total_seconds"] = round(sum(result[f"{server}_stages_seconds"].values()), 2)
    return result


def mean_figures(before: dict, after: dict) -> dict:
    """The mean of two bare-model measurements, key by key."""
    return {key: round((before[key] + after[key]) / 2, 3) for key in before}


def run_benchmark(
    model_uri: str, duration: float, settings, server_args: list[str], rounds: int = 3, cold_starts: int = 3
) -> dict:
    mlflow.set_tracking_uri(settings.tracking_uri)
    images = load_source("mnist", settings.data_dir).images[:4096]
    env = server_env(settings)
    figures: dict = {"rounds": []}
    # This VM's speed drifts by a third within minutes, and by more between runs: each round measures our server
    # between two measurements of the bare model (its peer is their mean, both kept), and the ratios are the
    # rounds' medians, with their ranges.
    log.info("bare model, TensorFlow's defaults and as our server calls it")
    bare = [measure_bare_models(model_uri, duration / 2, env)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for number in range(1, rounds + 1):
            log.info("round %d of %d: our server", number, rounds)
            ours = measure_our_server(model_uri, folder / f"server-log-{number}.db", images, duration, env, server_args)
            log.info("round %d of %d: our server, --workers %d", number, rounds, WORKERS)
            workers_args = [*server_args, "--workers", str(WORKERS)]
            workers = measure_our_server(model_uri, folder / f"workers-log-{number}.db", images, duration, env, workers_args)
            log.info("round %d of %d: bare model after our server", number, rounds)
            bare.append(measure_bare_models(model_uri, duration / 2, env))
            peers = {name: mean_figures(bare[-2][name], bare[-1][name]) for name in BARE_MODEL_THREADS}
            workers["ratios"] = round_ratios(workers, peers)
            figures["rounds"].append({**ours, **peers, "ratios": round_ratios(ours, peers), WORKERS_KEY: workers})
        figures["bare_model_measurements"] = bare
        for workers in (1, 2):
            log.info("mlflow models serve --workers %d", workers)
            key = "mlflow_models_serve" if workers == 1 else f"mlflow_models_serve_workers{workers}"
            theirs = measure_mlflow_serve(model_uri, workers, images, duration, env)
            figures[key], figures[f"{key}_wrk_single_images"] = theirs["closed_loop"], theirs["wrk"]
        log.info("prediction log and the original bookkeeping")
        figures["prediction_log_predictions_per_s"] = {
            f"commit_every_{batch}": round(prediction_log_rate(folder, images, batch, count), 1)
            for batch, count in ((1, 2000), (8, 1000), (256, 100))
        }
        figures["original_bookkeeping_predictions_per_s"] = round(original_bookkeeping_rate(folder, images, 40), 2)
        log.info("the /score door: our server against azmlinfsrv")
        figures["score_door_wrk_single_images"] = measure_score_doors(model_uri, images, duration, env, folder)
        figures["cold_start"] = measure_cold_starts(model_uri, images, env, folder, cold_starts)
    figures["ratios"], figures["ratio_ranges"] = median_ratios([entry["ratios"] for entry in figures["rounds"]])
    figures[f"ratios_{WORKERS_KEY}"], figures[f"ratio_ranges_{WORKERS_KEY}"] = median_ratios(
        [entry[WORKERS_KEY]["ratios"] for entry in figures["rounds"]]
    )
    figures["ratios"].update(peer_ratios(figures))
    return figures


def median_ratios(per_round: list[dict]) -> tuple[dict, dict]:
    """The rounds' ratios as their medians and their ranges, key by key."""
    medians = {key: round(float(np.median([ratio[key] for ratio in per_round])), 2) for key in per_round[0]}
    ranges = {key: [min(ratio[key] for ratio in per_round), max(ratio[key] for ratio in per_round)] for key in per_round[0]}
    return medians, ranges


def wrk_levels(url: str, body: bytes, duration: float, prefix: str, connection_counts: tuple[int, ...] = WRK_CONNECTIONS) -> dict:
    """Single-image requests from wrk at each of `connection_counts` (1, 8, 64 and 256 connections)."""
    levels = {}
    for connections in connection_counts:
        log.info("wrk, %d connections: %s", connections, url)
        levels[f"c{connections}"] = wrk_load(url, body, connections, duration, f"{prefix}-c{connections}")
    return levels


def round_ratios(ours: dict, peers: dict) -> dict:
    """Our server against the bare model measured around it, in one round."""
    score, wrk = ours["our_server_score"], ours["our_server_wrk_single_images"]
    bare, as_served = peers["bare_model"], peers["bare_model_as_served"]
    return {
        "wrk_c1_ours_over_bare_batch1": round(wrk["c1"]["requests_per_s"] / bare["images_per_s_batch1"], 2),
        "wrk_c1_ours_over_bare_as_served_batch1": round(wrk["c1"]["requests_per_s"] / as_served["images_per_s_batch1"], 2),
        "wrk_c8_ours_over_bare_batch8": round(wrk["c8"]["requests_per_s"] / bare["images_per_s_batch8"], 2),
        "wrk_c64_ours_over_bare_batch32": round(wrk["c64"]["requests_per_s"] / bare["images_per_s_batch32"], 2),
        "wrk_c64_ours_over_bare_as_served_batch32": round(wrk["c64"]["requests_per_s"] / as_served["images_per_s_batch32"], 2),
        "batch256_ours_over_bare_batch256": round(score["batch256_c1"]["images_per_s"] / bare["images_per_s_batch256"], 2),
        "batch256_ours_over_bare_as_served_batch256": round(
            score["batch256_c1"]["images_per_s"] / as_served["images_per_s_batch256"], 2
        ),
        "single_c8_ours_over_bare_batch1": round(score["single_c8"]["images_per_s"] / bare["images_per_s_batch1"], 2),
    }


def median_over_rounds(rounds: list[dict], section: str, level: str, key: str) -> float:
    """One figure of our server, the median over the rounds."""
    return float(np.median([entry[section][level][key] for entry in rounds]))


def peer_ratios(figures: dict) -> dict:
    """The median round of our server against `mlflow models serve`, and the prediction log against the original bookkeeping."""
    rounds, theirs = figures["rounds"], figures["mlflow_models_serve"]
    log_rates = figures["prediction_log_predictions_per_s"]
    original = figures["original_bookkeeping_predictions_per_s"]
    wrk_theirs = [figures[f"mlflow_models_serve{suffix}_wrk_single_images"] for suffix in ("", "_workers2")]
    best_theirs = max(levels["c64"]["requests_per_s"] for levels in wrk_theirs)
    ours_c64 = median_over_rounds(rounds, "our_server_wrk_single_images", "c64", "requests_per_s")
    ours_c8 = median_over_rounds(rounds, "our_server_score", "single_c8", "requests_per_s")
    ours_c1 = median_over_rounds(rounds, "our_server_score", "single_c1", "requests_per_s")
    return {
        "wrk_c64_ours_over_best_mlflow_serve": round(ours_c64 / best_theirs, 1) if best_theirs else None,
        "single_c8_ours_over_mlflow_serve": round(ours_c8 / theirs["single_c8"]["requests_per_s"], 1),
        "single_c1_ours_over_mlflow_serve": round(ours_c1 / theirs["single_c1"]["requests_per_s"], 1),
        "log_commit_every_8_over_original": round(log_rates["commit_every_8"] / original, 0),
        "log_commit_every_1_over_original": round(log_rates["commit_every_1"] / original, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_URI)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--server-args", default="", help="extra flags for our server, e.g. '--max-wait-ms 0'")
    parser.add_argument("--rounds", type=int, default=3, help="our server between two bare-model measurements, N times")
    parser.add_argument("--cold-starts", type=int, default=3, help="how many times each server is started from nothing")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    configure_logging()
    figures = run_benchmark(
        args.model, args.duration, load_settings(), shlex.split(args.server_args), args.rounds, args.cold_starts
    )
    measured = {"model": args.model, "seconds_per_load_level": args.duration, "server_args": args.server_args, **figures}
    benchmark = (
        "serving: bare model, our server, mlflow models serve, azmlinfsrv, cold starts, prediction log vs per-request MLflow runs"
    )
    result = write_result(args.out, benchmark, measured, "bench.serving")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
