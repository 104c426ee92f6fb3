"""How fast two following replicas serve the version an alias moves to: told by MLflow's webhook, or polling.

    python -m bench.alias_switch [--flips 6] [--poll-seconds 5 30] [--result bench/results/alias_switch.json]

Trains a small digits-cnn into a scratch SQLite store, registers a second version of it, runs a real
`mlflow server` over the store (webhooks allowed to loopback), and starts two `python -m serving` replicas that
follow models:/digits-cnn@champion. Each flip sets @champion to the other version and times, from the alias set,
until both replicas' /ready name it. Webhook mode: `--webhook-url` with polling at 10 minutes (only the webhook can
explain a fast switch); poll mode: `--follow-seconds N` alone.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.result_file import write_result
from common.logs import configure_logging
from common.settings import Settings, load_settings
from devtools.processes import free_port, loopback_webhook_env, mlflow_server_command, new_fernet_key, running

log = logging.getLogger(__name__)

MODEL = "models:/digits-cnn@champion"


def register_two_versions(scratch: Path, data_dir: str) -> str:
    """A small digits-cnn trained into scratch/mlflow.db, registered twice (versions 1 and 2), @champion on 1."""
    import mlflow

    from training.configs import KerasJobConfig
    from training.keras_job import run_keras_job

    store = f"sqlite:///{scratch / 'mlflow.db'}"
    settings = Settings(
        state_dir=scratch, data_dir=Path(data_dir), mirror=None, tracking_uri=store, experiment="bench-alias-switch"
    )
    run_keras_job(
        KerasJobConfig(data_dir=data_dir, epochs=1, train_limit=2000, validation_size=500, foreign_limit_per_class=3), settings
    )
    client = mlflow.MlflowClient()
    first = client.get_model_version("digits-cnn", "1")
    client.create_model_version("digits-cnn", first.source, run_id=first.run_id)
    client.set_registered_model_alias("digits-cnn", "champion", "1")
    return settings.tracking_uri


def flips(registry: str, replicas: list[str], count: int, poll_seconds: float | None) -> list[float]:
    """Seconds from each alias set to both replicas serving that version. Polling: each flip waits a random part of
    the poll first, so that the alias is set at any point of the replicas' cycle (not always just after a check)."""
    import mlflow

    client = mlflow.MlflowClient(registry)
    rng = random.Random(0)
    seconds = []
    for flip in range(count):
        time.sleep(1 + (rng.uniform(0, poll_seconds) if poll_seconds else 0))  # let both settle first
        target = "2" if flip % 2 == 0 else "1"
        started = time.monotonic()
        client.set_registered_model_alias("digits-cnn", "champion", target)
        while {httpx.get(f"{url}/ready", timeout=10).json()["version"] for url in replicas} != {target}:
            if time.monotonic() - started > 300:
                raise TimeoutError(f"the replicas did not serve version {target} within 300 s")
            time.sleep(0.02)
        seconds.append(round(time.monotonic() - started, 3))
        log.info("flip %d/%d to version %s: %.2f s", flip + 1, count, target, seconds[-1])
    return seconds


def measure_mode(registry: str, scratch: Path, mode: str, poll_seconds: float, count: int) -> dict:
    """Two replicas following the alias in `mode` (webhook or poll), flipped `count` times."""
    env = {"MLFLOW_TRACKING_URI": registry, "DIGITDRIFT_HOME": str(scratch / "home"), "DIGITDRIFT_WEBHOOK_SECRET": "bench"}
    with ExitStack() as stack:
        urls = []
        for index in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            follow = ["--follow-seconds", str(poll_seconds)]
            if mode == "webhook":
                follow += ["--webhook-url", f"{url}/webhooks/mlflow"]
            command = [sys.executable, "-m", "serving", "--model", MODEL, "--port", str(port)]
            command += ["--prediction-log", str(scratch / f"{mode}-{index}.db"), *follow]
            log_path = scratch / f"{mode}-{poll_seconds}-{index}.log"
            stack.enter_context(running(command, f"{url}/ready", env=env, log_path=log_path, timeout=180))
            urls.append(url)
        seconds = flips(registry, urls, count, poll_seconds if mode == "poll" else None)
    return {
        "mode": mode,
        "poll_seconds": poll_seconds,
        "flips": count,
        "seconds": seconds,
        "median_seconds": round(statistics.median(seconds), 3),
        "max_seconds": max(seconds),
    }


def run_benchmark(data_dir: str, count: int, poll_seconds: list[float]) -> dict:
    """Both modes on one registry: the webhook first, then polling at each interval."""
    with tempfile.TemporaryDirectory(prefix="alias-switch-") as folder:
        scratch = Path(folder)
        store = register_two_versions(scratch, data_dir)
        port = free_port()
        registry = f"http://127.0.0.1:{port}"
        server = mlflow_server_command(port, store, str(scratch / "proxied"), workers=1)
        with running(server, f"{registry}/health", env=loopback_webhook_env(new_fernet_key()), log_path=scratch / "mlflow.log"):
            modes = [measure_mode(registry, scratch, "webhook", 600, count)]
            modes += [measure_mode(registry, scratch, "poll", seconds, count) for seconds in poll_seconds]
    webhook = modes[0]["median_seconds"]
    return {
        "modes": modes,
        "ratio_poll_to_webhook_median": {
            str(mode["poll_seconds"]): round(mode["median_seconds"] / webhook, 1) for mode in modes[1:]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=6, help="alias flips per mode (default: %(default)s)")
    parser.add_argument("--poll-seconds", type=float, nargs="+", default=[5.0, 30.0], help="poll intervals to compare")
    settings = load_settings()
    parser.add_argument(
        "--data-dir", default=settings.mirror or str(settings.data_dir), help="the datasets to train on (default: %(default)s)"
    )
    parser.add_argument("--result", default="bench/results/alias_switch.json")
    args = parser.parse_args()
    configure_logging()
    figures = run_benchmark(args.data_dir, args.flips, args.poll_seconds)
    write_result(
        args.result,
        "alias set to both replicas serving the new version: MLflow webhook against polling",
        figures,
        "bench.alias_switch",
        drop=("--data-dir",),
    )
    for mode in figures["modes"]:
        median, longest = mode["median_seconds"], mode["max_seconds"]
        print(f"{mode['mode']:8} poll {mode['poll_seconds']:>5} s: median {median:.2f} s, max {longest:.2f} s")


if __name__ == "__main__":
    main()
