"""Each component of the team stack fails once: what was sent, acknowledged, lost and duplicated, and how long it
took to recover.

    python -m bench.faults [--windows 6] [--requests-per-window 60] [--result bench/results/faults.json]

Starts the stack (`devtools.stack`: PostgreSQL, Azurite, a basic-auth `mlflow server`, a Spark cluster of two
workers, two replicas behind HAProxy with TLS and the API key) in a scratch folder, trains and promotes a small
digits-cnn on it, then breaks one thing at a time. Under simulated traffic through HAProxy: a replica killed, a
replica hung, blob storage down, the MLflow server down, PostgreSQL down. Without traffic: PostgreSQL restarted
under a training job and under a promotion, and a Spark worker killed under batch scoring and under a monitoring
run on the cluster (each compared with the same job unbroken).
Lost means acknowledged to the client and never in the prediction dataset; duplicated means written twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from bench.result_file import write_result
from common.access import api_key_header
from common.logs import configure_logging
from common.prediction_dataset import filesystem, list_parts, read_parts
from common.settings import PROJECT_ROOT, load_settings
from devtools import stack
from devtools.fuzzing import FUZZ, answer_problem, count_answered, malformed, post
from simulation.sidecar import acknowledged_images

log = logging.getLogger(__name__)
MODEL = "models:/digits-cnn@champion"
SMALL_TRAINING = ["--train-limit", "3000", "--validation-size", "500", "--foreign-limit-per-class", "3"]


def command(module: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", module, *arguments]


def run_on_stack(state: dict, arguments: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """A digitdrift command pointed at the stack as `stack env` points a user's shell, run to its end."""
    environment = {**os.environ, **stack.stack_environment(state)}
    return subprocess.run(arguments, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def start_on_stack(state: dict, arguments: list[str]) -> subprocess.Popen:
    """The same command started and left running, its output piped."""
    environment = {**os.environ, **stack.stack_environment(state)}
    return subprocess.Popen(
        arguments, cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check` holds; TimeoutError after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def replica_status(state: dict, index: int) -> str:
    """UP, DOWN, ... as HAProxy's health checks see replica `index` (its stats CSV)."""
    rows = httpx.get(f"{state['proxy']['stats']};csv", timeout=5).text.lstrip("# ").splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        fields = dict(zip(header, row.split(",")))
        if fields.get("pxname") == "replicas" and fields.get("svname") == f"replica{index}":
            return fields["status"]
    raise LookupError(f"HAProxy's stats list no replica{index}")


def staged_records(state: dict) -> int:
    """Records staged and not yet published, over the replicas (their /ready)."""
    return sum(
        httpx.get(f"{replica['url']}/ready", timeout=5).json()["publishing"]["staged_records"] for replica in state["replicas"]
    )


def dataset_rows(state: dict, request_ids: set[str]) -> tuple[int, set[tuple[str, int]]]:
    """Of `request_ids`: how many rows the prediction dataset holds (a row written twice counts twice), and which
    (request id, image index) pairs."""
    fs, _ = filesystem(state["prediction_dataset"])
    written, keys = 0, set()
    for part in list_parts(fs, state["prediction_dataset"].removeprefix("az://")):
        frame = read_parts(fs, [part], ["window"])
        mine = frame[frame["request_id"].isin(request_ids)]
        written += len(mine)
        keys |= set(zip(mine["request_id"], mine["image_index"]))
    return written, keys


def under_traffic(state: dict, scratch: Path, name: str, windows: int, requests: int, seed: int, fault) -> dict:
    """Simulated traffic through HAProxy, `fault(state)` once a tenth of it is acknowledged; `fault` returns its
    own figures. Then the ledger: sent, acknowledged, lost, duplicated, and the seconds until the dataset held
    every acknowledged image."""
    run_dir = scratch / f"traffic-{name}"
    scenario = ["--scenario", "gradual-devanagari", "--seed", str(seed), "--windows", str(windows)]
    arguments = [*scenario, "--requests-per-window", str(requests), "--url", state["proxy"]["url"], "--run-dir", str(run_dir)]
    simulation = start_on_stack(state, command("simulation", "run", *arguments, "--no-mlflow", "--concurrency", "4"))
    sent = windows * requests
    try:
        until(lambda: len(acknowledged_images(run_dir / "ground_truth.db")) >= sent // 10, 300, f"{name}: first answers")
        log.info("%s: injecting the fault", name)
        figures = fault(state)
        _, errors = simulation.communicate(timeout=900)
    finally:
        if simulation.poll() is None:
            simulation.kill()
    acknowledged = acknowledged_images(run_dir / "ground_truth.db")
    ids = {request_id for request_id, _ in acknowledged}
    ended = time.monotonic()
    try:
        until(lambda: acknowledged <= dataset_rows(state, ids)[1], 180, f"{name}: every acknowledged image published")
    except TimeoutError:
        log.warning("%s: not every acknowledged image reached the dataset within 180 s", name)
    try:  # and what each replica staged is out (a restarted one holds its leftovers back two rounds): rows counted whole
        until(lambda: staged_records(state) == 0, 60, f"{name}: every replica's staging empty")
    except TimeoutError:
        log.warning("%s: a replica still held staged records after 60 s", name)
    written, present = dataset_rows(state, ids)
    requests_acknowledged = len(ids)
    ledger = {
        "requests_sent": sent,
        "requests_acknowledged": requests_acknowledged,
        "requests_failed": sent - requests_acknowledged,
        "images_acknowledged": len(acknowledged),
        "images_lost": len(acknowledged - present),
        "images_duplicated": written - len(present),
        "seconds_until_published": round(time.monotonic() - ended, 1),
        "simulator_exit": simulation.returncode,
    }
    if simulation.returncode != 0:
        ledger["simulator_error"] = errors.strip().splitlines()[-1:] if errors.strip() else []
    return {"fault": name, **figures, **ledger}


def kill_replica(state: dict) -> dict:
    os.kill(state["replicas"][0]["pid"], signal.SIGKILL)
    taken_out = until(lambda: "DOWN" in replica_status(state, 0), 60, "HAProxy taking the dead replica out")
    restarted = time.monotonic()
    stack.start_replicas(state, MODEL)  # on its port again (HAProxy keeps running); it publishes what it had staged
    stack.save_state(state)
    back = until(lambda: replica_status(state, 0).startswith("UP"), 120, "the restarted replica back in HAProxy")
    return {
        "what": "replica 0 SIGKILLed under traffic, then started again on its port",
        "seconds_until_taken_out": round(taken_out, 1),
        "seconds_to_recover": round(time.monotonic() - restarted, 1),
        "seconds_in_rotation_after_ready": round(back, 1),
    }


def hang_replica(state: dict, seconds: float = 15.0) -> dict:
    pid = state["replicas"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        taken_out = until(lambda: "DOWN" in replica_status(state, 1), 60, "HAProxy taking the hung replica out")
        time.sleep(max(0.0, seconds - taken_out))
    finally:
        os.kill(pid, signal.SIGCONT)
    back = until(lambda: replica_status(state, 1).startswith("UP"), 60, "the resumed replica back in HAProxy")
    key = api_key_header(stack.credentials()["api_key"])
    stats = httpx.get(f"{state['replicas'][1]['url']}/metadata", headers=key, timeout=5).json()["stats"]
    return {
        "what": f"replica 1 stopped (SIGSTOP) {seconds:.0f} s under traffic, then resumed",
        "seconds_until_taken_out": round(taken_out, 1),
        "seconds_to_recover": round(back, 1),
        # woken, it refused these rather than log them: HAProxy had hung up on them, or they had waited too long;
        # withdrawn: committed before the stop, their records taken back before publication as their answer left late
        "requests_refused_by_the_woken_replica": {
            "client_hung_up": stats["abandoned"],
            "stale": stats["stale"],
            "withdrawn": stats["withdrawn"],
        },
    }


def fuzz_door(url: str, door: str, examples: int, headers: dict, trusted: str, answered: set) -> dict:
    """`examples` generated bodies (devtools.fuzzing: hypothesis, seeded) at one door: the statuses, and the answers
    that were wrong (a 5xx, a page not the server's, a message of more than one line). Images answered 200 go to
    `answered`."""
    from hypothesis import given, settings

    statuses: Counter = Counter()
    problems: list[str] = []

    @settings(FUZZ, max_examples=examples)
    @given(case=malformed(door))
    def send(case: tuple[bytes, str]) -> None:
        response = post(url + door, *case, headers=headers, verify=trusted)
        statuses[response.status_code] += 1
        problem = answer_problem(response)
        if problem is not None:
            problems.append(problem)
        elif response.status_code == 200:
            count_answered(response.headers["x-request-id"], response.json()["predictions"], answered)

    send()
    return {
        "cases": sum(statuses.values()),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "wrong_answers": len(problems),
        "first_wrong_answers": problems[:3],
    }


def fuzz_through_proxy(state: dict, examples: int = 150) -> dict:
    """The fuzz tests' bodies at both doors through HAProxy and TLS, as the server's own tests send them to it
    directly; then whether every image answered 200 reached the dataset, once, and the stack still answers."""
    url, trusted = state["proxy"]["url"], state["proxy"]["certificate"]
    key = api_key_header(stack.credentials()["api_key"])
    answered: set[tuple[str, int]] = set()
    doors = {door: fuzz_door(url, door, examples, key, trusted, answered) for door in ("/score", "/invocations")}
    ids = {request_id for request_id, _ in answered}
    until(lambda: answered <= dataset_rows(state, ids)[1], 60, "every image answered 200 in the dataset")
    written, present = dataset_rows(state, ids)
    return {
        "fault": "fuzzed_bodies_through_the_proxy",
        "what": f"{examples} generated bodies per door through HAProxy with TLS, the API key sent",
        **doors,
        "images_answered": len(answered),
        "images_in_dataset": len(present & answered),
        "images_written_twice": written - len(present),
        "ready_after": httpx.get(f"{url}/ready", verify=trusted, timeout=5).status_code,
    }


def component_down(name: str, key: str, seconds: float) -> Callable[[dict], dict]:
    """A fault that stops the stack's `key` process for `seconds`, then brings it back with `stack up`."""

    def fault(state: dict) -> dict:
        if key == "postgres":
            stop_postgres(state)
        else:
            stack.stop_pid(state[key]["pid"])
        time.sleep(seconds)
        restarted = time.monotonic()
        state.update(stack.up())
        return {
            "what": f"{name} stopped {seconds:.0f} s under traffic, then started again by `stack up`",
            "seconds_to_recover": round(time.monotonic() - restarted, 1),
        }

    return fault


def stop_postgres(state: dict) -> None:
    stop = [str(stack.PG_BIN / "pg_ctl"), "-D", state["postgres"]["data"], "-m", "fast", "-w", "stop"]
    subprocess.run(stack.as_postgres(stop), check=True, stdout=subprocess.DEVNULL)


def postgres_under_training(state: dict, down_seconds: float = 10.0) -> dict:
    """PostgreSQL stopped while a training job logs its epochs, then started again: the job's outcome."""
    import mlflow

    arguments = command("training", "keras", "--epochs", "3", *SMALL_TRAINING, "--run-name", "faults-postgres")
    job = start_on_stack(state, arguments)
    client = mlflow.MlflowClient(state["mlflow"]["url"])
    versions_before = len(client.search_model_versions("name = 'digits-cnn'"))
    until(lambda: run_named(client, "faults-postgres") is not None, 600, "the training run started")
    run = run_named(client, "faults-postgres")
    until(lambda: bool(client.get_metric_history(run.info.run_id, "loss")), 600, "a first epoch logged")
    stop_postgres(state)
    time.sleep(down_seconds)
    restarted = time.monotonic()
    state.update(stack.up())
    _, errors = job.communicate(timeout=900)
    finished = client.get_run(run.info.run_id)
    versions = client.search_model_versions("name = 'digits-cnn'")
    registered = [version for version in versions if version.run_id == run.info.run_id]
    return {
        "fault": "postgres_under_training",
        "what": f"PostgreSQL stopped {down_seconds:.0f} s after a training job's first epoch, then started by `stack up`",
        "job_exit": job.returncode,
        "job_error": errors.strip().splitlines()[-1] if job.returncode else "",
        "run_status": finished.info.status,
        "epochs_logged": len(client.get_metric_history(run.info.run_id, "loss")),
        "versions_registered": len(versions) - versions_before,
        "version_has_its_run": bool(registered) and all(version.source for version in registered),
        "seconds_from_restart_to_job_end": round(time.monotonic() - restarted, 1),
    }


def postgres_under_promotion(state: dict, down_seconds: float = 10.0) -> dict:
    """`training promote` started while PostgreSQL is down, PostgreSQL started again `down_seconds` later: either
    the alias moved to the challenger with the gate's decision on its run, or nothing moved."""
    import mlflow

    from training.registry import PROMOTION_TAG

    client = mlflow.MlflowClient(state["mlflow"]["url"])
    challenger = client.get_model_version_by_alias("digits-cnn", "challenger")
    before = client.get_model_version_by_alias("digits-cnn", "champion").version
    stop_postgres(state)
    job = start_on_stack(state, command("training", "promote", "--min-accuracy", "0"))
    time.sleep(down_seconds)
    restarted = time.monotonic()
    state.update(stack.up())
    _, errors = job.communicate(timeout=900)
    after = client.get_model_version_by_alias("digits-cnn", "champion").version
    decision = client.get_run(challenger.run_id).data.tags.get(PROMOTION_TAG, "")
    return {
        "fault": "postgres_under_promotion",
        "what": f"`training promote` started with PostgreSQL down, PostgreSQL started by `stack up` {down_seconds:.0f} s later",
        "job_exit": job.returncode,
        "job_error": errors.strip().splitlines()[-1] if job.returncode else "",
        "champion_before": before,
        "challenger": challenger.version,
        "champion_after": after,
        "gate_decision_on_the_challenger_run": decision,
        "alias_only_on_a_version_that_passed": (after == challenger.version) == (decision == "promoted"),
        "seconds_from_restart_to_job_end": round(time.monotonic() - restarted, 1),
    }


def run_named(client, name: str):
    """The run called `name` in any experiment of the stack's MLflow, or None."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(experiments, f"attributes.run_name = '{name}'", max_results=1)
    return found[0] if found else None


@dataclass(frozen=True)
class SparkJob:
    """A job of ours on the stack's cluster: its application's name, its command writing to an output folder, and
    its result read back in a stable order."""

    name: str
    application: str
    what: str
    arguments: Callable[[Path], list[str]]
    result: Callable[[Path], pd.DataFrame]


def spark_jobs(state: dict) -> list[SparkJob]:
    """Batch scoring of the Japanese writers' digits, and a full monitoring run of the stack's dataset, on the cluster."""
    master = ["--spark-master", state["spark_master"]["url"]]
    japanese = ["--input", str(load_settings().data_dir / "japanese"), "--layout", "japanese"]
    # the version that served the traffic: the promotion under a PostgreSQL restart moved @champion past it
    monitoring = ["run", "--log", state["prediction_dataset"], "--model", "models:/digits-cnn/1", "--engine", "spark"]
    monitoring += ["--full", "--no-mlflow"]
    return [
        SparkJob(
            "batch_scoring",
            "digitdrift-batch",
            "batch scoring of 10,800 images",
            lambda out: command("serving.batch", *japanese, "--output", str(out), *master),
            lambda out: pd.read_parquet(out).sort_values("request_id")[["request_id", "image_index", "predicted", "confidence"]],
        ),
        SparkJob(
            "monitoring",
            "digitdrift-monitoring",
            "a full monitoring run of the stack's dataset",
            lambda out: command("monitoring", *monitoring, "--out", str(out), *master),
            lambda out: pd.read_csv(out / "window_metrics.csv"),
        ),
    ]


def spark_worker_killed(state: dict, scratch: Path, job: SparkJob) -> dict:
    """`job` on the cluster, once whole and once with a worker SIGKILLed while the application runs: the same
    result? (Exactly for batch scoring's records; to 1e-9 for the monitor's sums, whose order may change.)"""

    def running() -> bool:
        applications = httpx.get(f"{state['spark_master']['ui']}/json/", timeout=5).json()["activeapps"]
        return any(app["name"] == job.application and app["state"] == "RUNNING" for app in applications)

    started = time.monotonic()
    whole = start_on_stack(state, job.arguments(scratch / f"{job.name}-whole"))
    _, errors = whole.communicate(timeout=900)
    if whole.returncode != 0:
        raise RuntimeError(f"{job.name} failed without a fault: {errors[-2000:]}")
    seconds_whole = time.monotonic() - started

    started = time.monotonic()
    broken = start_on_stack(state, job.arguments(scratch / f"{job.name}-broken"))
    until(running, 300, f"{job.name}: the application running")
    time.sleep(min(10.0, seconds_whole / 3))  # into the work, past the session's start
    killed_at = time.monotonic() - started
    os.kill(state["spark_workers"][0]["pid"], signal.SIGKILL)
    while_running = running()
    _, errors = broken.communicate(timeout=900)
    seconds_broken = time.monotonic() - started
    same = False
    if broken.returncode == 0:
        left = job.result(scratch / f"{job.name}-whole").reset_index(drop=True)
        right = job.result(scratch / f"{job.name}-broken").reset_index(drop=True)
        numbers = left.select_dtypes("number").columns
        same = (
            left.shape == right.shape
            and left.drop(columns=numbers).equals(right.drop(columns=numbers))
            and np.allclose(left[numbers], right[numbers], rtol=1e-9, atol=1e-12, equal_nan=True)
        )
    restarted = time.monotonic()
    state.update(stack.up())  # a new worker in the dead one's place
    return {
        "fault": f"spark_worker_killed_under_{job.name}",
        "what": f"a Spark worker SIGKILLed while {job.what} ran on the cluster, then replaced by `stack up`",
        "job_exit": broken.returncode,
        "job_error": errors.strip().splitlines()[-1] if broken.returncode else "",
        "killed_after_seconds": round(killed_at, 1),
        "application_running_after_the_kill": while_running,
        "seconds_whole": round(seconds_whole, 1),
        "seconds_with_the_fault": round(seconds_broken, 1),
        "same_result_as_whole": same,
        # the driver's own account of the kill (Spark's scheduler logs each executor it loses)
        "driver_saw": sorted({line.split(": ", 1)[-1][:160] for line in errors.splitlines() if "Lost executor" in line}),
        "seconds_to_replace_the_worker": round(time.monotonic() - restarted, 1),
    }


def train_champion(state: dict) -> None:
    for arguments in (
        command("training", "keras", "--epochs", "1", *SMALL_TRAINING, "--run-name", "faults-champion"),
        command("training", "promote", "--min-accuracy", "0"),
    ):
        done = run_on_stack(state, arguments)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(arguments[2:4])} failed on the stack: {done.stderr[-2000:]}")


def run_benchmark(scratch: Path, windows: int, requests: int) -> dict:
    state = stack.up()
    try:
        train_champion(state)
        state.update(stack.serve(MODEL))
        faults = []
        for seed, (name, fault) in enumerate(
            (
                ("replica_killed", kill_replica),
                ("replica_hung", hang_replica),
                ("blob_storage_down", component_down("Azurite (blob storage)", "azurite", 20)),
                ("mlflow_server_down", component_down("the MLflow server", "mlflow", 20)),
                ("postgres_down", component_down("PostgreSQL", "postgres", 20)),
            ),
            start=1,
        ):
            faults.append(under_traffic(state, scratch, name, windows, requests, seed, fault))
            log.info("%s: %s", name, faults[-1])
        for fault in (postgres_under_training, postgres_under_promotion):
            faults.append(fault(state))
            log.info("%s", faults[-1])
        for job in spark_jobs(state):
            faults.append(spark_worker_killed(state, scratch, job))
            log.info("%s", faults[-1])
        faults.append(fuzz_through_proxy(state))  # last: its records carry no window, which the monitoring above refuses
        log.info("%s", faults[-1])
    finally:
        stack.down()
    return {"traffic": {"windows": windows, "requests_per_window": requests, "concurrency": 4}, "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=6, help="windows of traffic per fault (default: %(default)s)")
    parser.add_argument("--requests-per-window", type=int, default=60, help="requests per window (default: %(default)s)")
    parser.add_argument("--result", default="bench/results/faults.json", help="where the figures go")
    args = parser.parse_args()
    configure_logging()
    with tempfile.TemporaryDirectory(prefix="digitdrift-faults-") as scratch:
        Path(scratch).chmod(0o755)  # PostgreSQL runs as its own user when this runs as root
        os.environ["DIGITDRIFT_DATA"] = str(load_settings().data_dir)  # read where it was; write nothing outside scratch
        os.environ["DIGITDRIFT_HOME"] = str(Path(scratch) / "home")
        os.environ["DIGITDRIFT_STACK_DIR"] = str(Path(scratch) / "stack")
        figures = run_benchmark(Path(scratch), args.windows, args.requests_per_window)
    write_result(args.result, "faults", figures, "bench.faults")


if __name__ == "__main__":
    main()
