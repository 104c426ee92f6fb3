"""The team stack for real: PostgreSQL, Azurite, mlflow server, a Spark standalone cluster, replicas behind HAProxy,
and the whole chain run on it with the README's commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import psutil
import pytest
import yaml
from hypothesis import given, settings

from common.datasets import FOREIGN_LAYOUTS, load_png_digits
from common.prediction_dataset import filesystem, list_parts, read_parts
from common.settings import PROJECT_ROOT
from devtools.azurite import ACCOUNT_KEY, connection_string
from devtools.fuzzing import FUZZ, check_answer, malformed, post
from devtools.stack import MLFLOW_READER, PG_BIN, as_postgres, stack_environment
from tests.helpers import acknowledged, simulate_in_background, until_acknowledged

pytestmark = pytest.mark.slow

STACK = [sys.executable, "-m", "devtools.stack"]
DRIFT = {  # what the loop's controller is to notice: half the traffic Devanagari digits from window 2
    "name": "devanagari-from-window-2",
    "windows": 8,
    "requests_per_window": 30,
    "seed": 5,
    "mode": "mix",
    "sources": {"mnist": {"weight": {"constant": 1.0}}, "devanagari": {"weight": {"step": {"at": 2, "after": 1.0}}}},
}


def run(command: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def stack(shared_data):
    # pytest's temporary folders are private to root; PostgreSQL runs as the postgres user and must reach its data
    home = Path(tempfile.mkdtemp(prefix="digitdrift-stack-test-"))
    home.chmod(0o755)
    env = {"DIGITDRIFT_STACK_DIR": str(home / "stack"), "DIGITDRIFT_HOME": str(home), "DIGITDRIFT_DATA": str(shared_data)}
    try:
        first = run([*STACK, "up"], env, 600)
        again = run([*STACK, "up"], env, 120)  # idempotent: nothing new starts
        state = json.loads((home / "stack" / "stack.json").read_text())
        yield home, env, state, first.stdout, again.stdout, first.stderr
    finally:
        subprocess.run([*STACK, "down"], cwd=PROJECT_ROOT, env={**os.environ, **env}, timeout=300)
        shutil.rmtree(home, ignore_errors=True)


def stack_env(env: dict, state: dict) -> dict:
    """What `stack env` hands a user's shell: URLs, the admin's MLflow credentials, the API key, the trusted certificate."""
    return {**env, **stack_environment(state)}


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def replica_status(state: dict, name: str) -> str:
    """A replica's status as HAProxy's health checks see it (UP, DOWN, ...), from its stats CSV."""
    rows = httpx.get(f"{state['proxy']['stats']};csv", timeout=5).text.lstrip("# ").splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        fields = dict(zip(header, row.split(",")))
        if fields.get("pxname") == "replicas" and fields.get("svname") == name:
            return fields["status"]
    raise AssertionError(f"HAProxy's stats list no {name}")


def command_line(process: psutil.Process) -> str:
    """What `ps` shows of a process's command line; empty for one that has ended (a zombie has none)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


def served_versions(state: dict) -> set[str]:
    """The versions the replicas serve, as their /ready says."""
    return {httpx.get(f"{replica['url']}/ready", timeout=5).json()["version"] for replica in state["replicas"]}


def psql(state: dict, query: str, pgpass: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "/usr/lib/postgresql/15/bin/psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(state["postgres"]["port"]),
            "-U",
            "digitdrift",
            "-d",
            "mlflow",
            "-w",  # never ask a terminal for the password
            "-tAc",
            query,
        ],
        env={**os.environ, "PGPASSFILE": pgpass or state["postgres"]["pgpass"]},
        capture_output=True,
        text=True,
    )


def rows(state: dict, query: str) -> list[str]:
    done = psql(state, query)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_the_chain_runs_on_the_stack(stack, tmp_path, monkeypatch):
    home, env, state, first, again, logged = stack
    assert "MLflow server" in first and "Spark master" in first
    assert "azure.core" not in logged and len(logged.splitlines()) < 40  # what started and where, not the SDK's requests
    assert json.loads((home / "stack" / "stack.json").read_text())["mlflow"]["pid"] == state["mlflow"]["pid"]
    env = stack_env(env, state)
    master = state["spark_master"]["url"]

    # training: Keras here, Spark ML on the cluster; both register through the MLflow server
    small = "--train-limit 3000 --foreign-limit-per-class 3".split()
    run(python("training", "keras", "--epochs", "1", "--validation-size", "500", *small, "--run-name", "stack-keras"), env)
    run(python("training", "promote", "--min-accuracy", "0"), env)
    spark = "--classifier logistic --pca-k 20 --max-iter 20".split()
    run(python("training", "spark", *spark, *small, "--spark-master", master, "--run-name", "stack-spark"), env)

    # runs, params and registered models are rows of PostgreSQL
    runs = rows(state, "SELECT name FROM runs ORDER BY name")
    assert {"stack-keras", "stack-spark"} <= set(runs)
    params = "SELECT p.value FROM params p JOIN runs r ON p.run_uuid = r.run_uuid WHERE r.name = 'stack-spark'"
    assert rows(state, f"{params} AND p.key = 'classifier'") == ["logistic"]
    assert set(rows(state, "SELECT name FROM registered_models")) == {"digits-cnn", "digits-spark"}
    # artifacts are objects in the Azurite container
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])  # this process reads blobs and calls MLflow as the stack's admin
    fs, _ = filesystem("az://mlflow")
    objects = fs.find("mlflow/artifacts")
    assert any(path.endswith("MLmodel") for path in objects) and any("reference.npz" in path for path in objects)
    # the Spark application ran on the cluster's workers
    applications = httpx.get(f"{state['spark_master']['ui']}/json/", timeout=5).json()["completedapps"]
    assert any(app["name"] == "digitdrift-training" and app["cores"] >= 1 for app in applications)

    # serving: two replicas from models:/digits-cnn@champion, fetched through the server, behind HAProxy
    served = run([*STACK, "serve"], env, 600)
    state = json.loads((home / "stack" / "stack.json").read_text())
    assert "HAProxy" in served.stdout
    env = stack_env(env, state)
    proxy = state["proxy"]["url"]
    # TLS at HAProxy with the certificate the stack made: verified by who trusts it, refused by who does not
    trusted = ssl.create_default_context(cafile=state["proxy"]["certificate"])
    assert proxy.startswith("https://") and httpx.get(f"{proxy}/health", verify=trusted, timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{proxy}/health", timeout=5)
    assert oct((home / "stack" / "proxy.pem").stat().st_mode & 0o777) == "0o600"  # it holds the key
    run_dir = tmp_path / "run"
    traffic = "--scenario gradual-devanagari --windows 6 --requests-per-window 60".split()
    simulation = simulate_in_background(proxy, run_dir, env, *traffic)
    victim = state["replicas"][0]
    try:
        until_acknowledged(run_dir, 120)
        os.kill(victim["pid"], signal.SIGKILL)  # HAProxy stops routing to it; retries go to the other replica
        _, errors = simulation.communicate(timeout=600)
        assert simulation.returncode == 0, errors[-3000:]
    finally:
        if simulation.poll() is None:
            simulation.kill()
    ids = acknowledged(run_dir)
    assert len(ids) == 6 * 60  # every request acknowledged, through one URL, while a replica died
    key = {"authorization": f"Bearer {env['DIGITDRIFT_API_KEY']}"}
    survivor = httpx.get(f"{state['replicas'][1]['url']}/metadata", headers=key, timeout=5).json()
    assert survivor["stats"]["model_calls"] > 0 and survivor["model"]["version"] == "1"

    restarted = run([*STACK, "serve"], env, 600)  # the killed replica comes back and publishes what it had staged
    assert "replica 0" in restarted.stdout
    dataset = state["prediction_dataset"]
    fs, _ = filesystem(dataset)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = read_parts(fs, list_parts(fs, dataset.removeprefix("az://")), ["window"])
        if len(records) >= len(ids):
            break
        time.sleep(1)
    parts = list_parts(fs, dataset.removeprefix("az://"))
    assert len({Path(part.path).name.split("-")[1] for part in parts}) == 2  # both replicas served: the proxy spread it
    assert set(zip(records["request_id"], records["image_index"])) == ids
    # what it had staged waits two rounds, then goes out less what the proxy had retried on the other replica:
    # a request it committed just before the kill, whose answer never left, is written once
    restarted_url = state["replicas"][0]["url"]
    deadline = time.monotonic() + 60
    while (publishing := httpx.get(f"{restarted_url}/ready", timeout=5).json()["publishing"])["staged_records"]:
        assert time.monotonic() < deadline, f"the restarted replica did not publish what it had staged: {publishing}"
        time.sleep(0.5)
    parts = list_parts(fs, dataset.removeprefix("az://"))
    written_rows = sum(len(read_parts(fs, [part], ["window"])) for part in parts)
    print(f"rows of the kill's traffic written: {written_rows} for {len(ids)} acknowledged images")
    assert written_rows == len(ids)

    # batch scoring and monitoring on the cluster
    batch = tmp_path / "batch"
    digits = load_png_digits(Path(env["DIGITDRIFT_DATA"]) / "japanese", FOREIGN_LAYOUTS["japanese"], limit_per_class=30)
    japanese = tmp_path / "japanese.parquet"  # 300 of the Japanese writers' digits: the cluster's work, not its size
    pd.DataFrame({"pixels": list(digits.images.reshape(len(digits), -1).astype("float32"))}).to_parquet(japanese)
    run(python("serving.batch", "--input", str(japanese), "--output", str(batch), "--spark-master", master), env)
    assert len(pd.read_parquet(batch)) == len(digits) == 300
    cluster = ["--engine", "spark", "--spark-master", master, "--full", "--out", str(tmp_path / "monitor")]
    monitored = run(python("monitoring", "run", "--log", dataset, *cluster), env)
    lines = (tmp_path / "monitor" / "window_metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 and f"{len(ids)} records" in monitored.stdout
    applications = httpx.get(f"{state['spark_master']['ui']}/json/", timeout=5).json()
    names = [app["name"] for app in applications["completedapps"] + applications["activeapps"]]
    assert {"digitdrift-training", "digitdrift-batch", "digitdrift-monitoring"} <= set(names)
    # the labeling queue reads the same dataset on Azurite
    queued = run(
        python("labeling", "queue", "--prediction-log", dataset, "--per-window", "5", "--out", str(tmp_path / "q.csv")), env
    )
    assert "queued 30 images of 6 windows" in queued.stdout

    # both replicas follow @champion: MLflow's webhook tells each at once (their 30 s poll is the fallback)
    client = mlflow.MlflowClient(state["mlflow"]["url"])
    hooks = {hook.url for hook in client.list_webhooks()}
    assert hooks == {f"{replica['url']}/webhooks/mlflow" for replica in state["replicas"]}  # the restarted one replaced its own
    first_version = client.get_model_version("digits-cnn", "1")
    second = client.create_model_version("digits-cnn", first_version.source, run_id=first_version.run_id).version
    started = time.monotonic()
    client.set_registered_model_alias("digits-cnn", "champion", second)
    while served_versions(state) != {second}:
        assert time.monotonic() - started < 20, "the replicas did not follow the alias within 20 s (their poll is 30 s)"
        time.sleep(0.05)
    print(f"alias set -> both replicas serve version {second}: {time.monotonic() - started:.2f} s")
    assert oct((home / "stack" / "stack.json").stat().st_mode & 0o777) == "0o600"  # it holds the webhook secret

    # a replica that hangs (SIGSTOP), not dies: HAProxy's check takes it out, what it held is answered by the other one
    victim, hang_dir = state["replicas"][1], tmp_path / "run-hang"
    hang = "--scenario gradual-devanagari --seed 11 --windows 4 --requests-per-window 60".split()
    simulation = simulate_in_background(proxy, hang_dir, env, *hang)
    try:
        until_acknowledged(hang_dir, 60)
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped = time.monotonic()
        while "DOWN" not in replica_status(state, "replica1"):
            assert time.monotonic() - stopped < 30, "HAProxy did not take the hung replica out within 30 s"
            time.sleep(0.1)
        taken_out = time.monotonic() - stopped
        _, errors = simulation.communicate(timeout=600)
        assert simulation.returncode == 0, errors[-3000:]
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
        if simulation.poll() is None:
            simulation.kill()
    hung_ids = acknowledged(hang_dir)
    assert len(hung_ids) == 4 * 60  # every request answered, those the hung replica held by the other one
    print(f"hung replica taken out by HAProxy's check after {taken_out:.1f} s (inter 1s, fall 2, timeout check 1s)")
    assert taken_out < 5
    deadline = time.monotonic() + 90
    while True:
        parts = list_parts(fs, dataset.removeprefix("az://"))
        records = read_parts(fs, parts, ["window"])  # read: one record per (request id, image index)
        if hung_ids <= set(zip(records["request_id"], records["image_index"])):
            break
        assert time.monotonic() < deadline, "the requests of the hang never reached the dataset"
        time.sleep(1)
    # woken, the hung replica refuses what HAProxy hung up on, and takes back the records of a request it had
    # committed before it froze, whose answer would leave late: once it has published, no row is written twice
    deadline = time.monotonic() + 30
    while (woken := httpx.get(f"{victim['url']}/ready", timeout=5).json()["publishing"])["staged_records"]:
        assert time.monotonic() < deadline, f"the woken replica did not publish what it staged: {woken}"
        time.sleep(0.5)
    hang_requests = {request_id for request_id, _ in hung_ids}
    parts = list_parts(fs, dataset.removeprefix("az://"))
    written = sum(int(read_parts(fs, [part], ["window"])["request_id"].isin(hang_requests).sum()) for part in parts)
    stats = httpx.get(f"{victim['url']}/metadata", headers=key, timeout=5).json()["stats"]
    refused = f"{stats['abandoned']} hung-up and {stats['stale']} stale requests and withdrew {stats['withdrawn']}"
    print(f"woken, the replica refused {refused}; rows of the hang written twice: {written - len(hung_ids)} of {len(hung_ids)}")
    assert written == len(hung_ids)

    # PostgreSQL stops under the MLflow server as a monitoring run starts: MLflow's client retries its requests,
    # `stack up` brings PostgreSQL back (same data, same port), and the run completes, whole, in PostgreSQL
    stop = [str(PG_BIN / "pg_ctl"), "-D", state["postgres"]["data"], "-m", "fast", "-w", "stop"]
    subprocess.run(as_postgres(stop), check=True, stdout=subprocess.DEVNULL)
    out = tmp_path / "monitor-postgres-down"
    command = python("monitoring", "run", "--log", dataset, "--full", "--label", "postgres-down", "--out", str(out))
    monitoring = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(5)
        assert monitoring.poll() is None, "the monitoring run gave up while PostgreSQL was down"
        run([*STACK, "up"], env, 300)
        back = time.monotonic()
        printed, errors = monitoring.communicate(timeout=600)
    finally:
        if monitoring.poll() is None:
            monitoring.kill()
    assert monitoring.returncode == 0, errors[-3000:]
    print(f"PostgreSQL down 5 s: the monitoring run completed {time.monotonic() - back:.1f} s after `stack up` returned")
    run_id = printed.split("MLflow run ")[1].split()[0]
    assert rows(state, f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == ["FINISHED"]
    volume = f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}' AND key = 'traffic/volume'"
    assert rows(state, volume) == [str(len((out / "window_metrics.csv").read_text().splitlines()) - 1)]

    # the loop's controller on the stack: Devanagari digits arrive; the controller follows the dataset on Azurite and
    # queues after the first alert; once the annotator stand-in has answered, it retrains and gates on PostgreSQL's
    # MLflow while traffic goes on through HAProxy, and not one request fails; if the gate promotes, both replicas follow
    drift_dir, scenario = tmp_path / "run-drift", tmp_path / "devanagari-from-window-2.yaml"
    scenario.write_text(yaml.safe_dump(DRIFT))
    simulation = simulate_in_background(proxy, drift_dir, env, "--scenario", str(scenario))
    _, errors = simulation.communicate(timeout=600)
    assert simulation.returncode == 0, errors[-3000:]
    labels, controller = tmp_path / "labels.jsonl", tmp_path / "controller"
    loop = python("loop", "run", "--dataset", dataset, "--labels", str(labels), "--out", str(controller), "--close-windows")
    loop += ["--retrain-after", "5", "--epochs", "2", "--train-limit", "2000", "--foreign-limit-per-class", "3"]
    first_cycle = run([*loop, "--min-accuracy", "0"], env).stdout
    assert "labeling_started" in first_cycle and "queued" in first_cycle and "waiting_for_labels" in first_cycle
    truth = str(drift_dir / "ground_truth.db")
    run(python("labeling", "annotate", "--queue", str(controller / "queue.csv"), "--truth", truth, "--out", str(labels)), env)
    during_dir = tmp_path / "run-during-retrain"
    during = "--scenario gradual-devanagari --seed 12 --windows 30 --requests-per-window 20".split()
    simulation = simulate_in_background(proxy, during_dir, env, *during)
    try:
        until_acknowledged(during_dir, 20)
        second_cycle = run([*loop, "--min-accuracy", "0"], env).stdout
        champion_now, gated = client.get_model_version_by_alias("digits-cnn", "champion").version, time.monotonic()
        while served_versions(state) != {champion_now}:
            assert time.monotonic() - gated < 30, "the replicas did not follow the promotion within 30 s"
            time.sleep(0.2)
        _, errors = simulation.communicate(timeout=600)
        assert simulation.returncode == 0, errors[-3000:]
    finally:
        if simulation.poll() is None:
            simulation.kill()
    assert len(acknowledged(during_dir)) == 30 * 20  # every request answered while the controller retrained and gated
    assert "cycle 2: retrained" in second_cycle and ("cycle 2: promoted" in second_cycle) == (champion_now != second)
    decisions = [json.loads(line)["decision"] for line in (controller / "decisions.jsonl").read_text().splitlines()]
    controller_runs = rows(state, "SELECT status FROM runs WHERE name = 'loop-controller'")
    assert controller_runs == ["FINISHED", "FINISHED"] and decisions[-1] in ("promoted", "promotion_refused")
    print(f"the controller on the stack: {', '.join(decisions)}")

    # nobody gets in unasked. MLflow: anonymous requests are refused; the read-only user reads and changes nothing
    mlflow_url = state["mlflow"]["url"]
    assert httpx.get(f"{mlflow_url}/api/2.0/mlflow/registered-models/search", timeout=5).status_code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_READER)
    made = json.loads((home / "stack" / "credentials.json").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", made["mlflow_reader_password"])
    assert client.get_model_version_by_alias("digits-cnn", "champion").version == champion_now
    refused = {
        "a new version": lambda: client.create_model_version("digits-cnn", first_version.source, run_id=first_version.run_id),
        "the alias moved": lambda: client.set_registered_model_alias("digits-cnn", "champion", "1"),
        "the webhooks listed": client.list_webhooks,
        "a run": lambda: client.create_run("0"),
    }
    for what, attempt in refused.items():
        with pytest.raises(mlflow.exceptions.MlflowException, match="403"):
            attempt()
            pytest.fail(f"the read-only user got {what}")
    # PostgreSQL asks a password (none in its URL), Azurite refuses its well-known development key
    assert "@" in state["postgres"]["url"] and ":" not in state["postgres"]["url"].split("//")[1].split("@")[0]
    without = psql(state, "SELECT 1", pgpass=os.devnull)
    assert without.returncode != 0 and "password" in without.stderr
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    port = state["azurite"]["port"]
    for refused in (connection_string(port), connection_string(port, "digitdrift", ACCOUNT_KEY)):
        with pytest.raises(HttpResponseError):  # the well-known account, and the stack's account with the well-known key
            next(iter(BlobServiceClient.from_connection_string(refused).list_containers()))
    # the replicas' API key travels through HAProxy: without it 401, with it the answer
    body = {"data": [[[0.0] * 28] * 28]}
    assert httpx.post(f"{proxy}/score", json=body, verify=trusted, timeout=10).status_code == 401
    assert httpx.post(f"{proxy}/score", json=body, headers=key, verify=trusted, timeout=10).status_code == 200
    # what a careless or hostile client sends gets through HAProxy and TLS the answers it gets from a replica: a
    # one-line 4xx (never HAProxy's own page, never a 5xx), the stack keeps serving, and what was answered 200 is
    # in the dataset
    answered: set[tuple[str, int]] = set()

    @settings(FUZZ, max_examples=60)
    @given(case=malformed("/score"))
    def through_the_proxy(case: tuple[bytes, str]) -> None:
        check_answer(post(f"{proxy}/score", *case, headers=key, verify=trusted), answered)

    through_the_proxy()
    good = post(f"{proxy}/score", json.dumps(body).encode(), headers=key, verify=trusted)
    check_answer(good, answered)
    assert good.status_code == 200 and answered
    deadline = time.monotonic() + 60
    while True:
        records = read_parts(fs, list_parts(fs, dataset.removeprefix("az://")), ["window"])
        if answered <= set(zip(records["request_id"], records["image_index"])):
            break
        assert time.monotonic() < deadline, "an image answered 200 through the proxy never reached the dataset"
        time.sleep(1)

    # every secret the stack made is in its 0600 files and its processes' environments only: in no log it wrote,
    # no command line of a process it started, no MLflow param or tag
    for private in ("credentials.json", "stack.json", "pgpass", "mlflow-auth.ini", "proxy.pem"):
        assert oct((home / "stack" / private).stat().st_mode & 0o777) == "0o600", private
    logs = {path.relative_to(home): path.read_text(errors="replace") for path in (home / "stack").rglob("*.log")}
    assert len(logs) >= 5 and not [(path, name) for path, text in logs.items() for name, secret in made.items() if secret in text]
    now = json.loads((home / "stack" / "stack.json").read_text())  # PostgreSQL and a replica were started again
    pids = [now[name]["pid"] for name in ("postgres", "azurite", "mlflow", "spark_master", "proxy")]
    pids += [process["pid"] for process in now["replicas"] + now["spark_workers"]]
    processes = [psutil.Process(pid) for pid in pids]
    processes += [child for process in list(processes) for child in process.children(recursive=True)]
    commands = [line for line in map(command_line, processes) if line]
    assert len(pids) == 9 and len(commands) > 9  # with their workers, backends and executors
    assert not [name for name, secret in made.items() if any(secret in line for line in commands)]
    tables = ("params", "tags", "experiment_tags", "registered_model_tags", "model_version_tags")
    recorded = "\n".join(rows(state, " UNION ALL ".join(f"SELECT value FROM {table}" for table in tables)))
    assert recorded and not [name for name, secret in made.items() if secret in recorded]
