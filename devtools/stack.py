"""The team stack on one machine, on loopback: PostgreSQL, Azurite, `mlflow server`, a Spark standalone
cluster, and two serving replicas behind HAProxy.

    python -m devtools.stack up       # start what is not running yet (the replicas and the proxy once the stack's
                                     # MLflow has models:/digits-cnn@champion); print every URL; idempotent
    python -m devtools.stack serve    # (re)start the two replicas and the proxy
    python -m devtools.stack env      # the environment variables that point the commands at the stack
    python -m devtools.stack down     # stop exactly what `up` and `serve` started (by process id)

Everything lives under `.digitdrift/stack/` (or $DIGITDRIFT_STACK_DIR): data, logs, and `stack.json`, which
records each process id and URL. Each part is the real engine, from the registries: PostgreSQL 15 from
Debian (a throwaway cluster started with initdb and pg_ctl; as root they run as the `postgres` user,
since PostgreSQL refuses to run as root), Azurite from npm, MLflow from PyPI with its artifact store
in an Azurite container, Spark's own master and worker classes from pyspark, HAProxy from Debian, serving
TLS with a certificate made once by openssl (clients trust it through `SSL_CERT_FILE`, which `env` sets).

Nobody gets in unasked: PostgreSQL takes a password (scram-sha-256), Azurite an account key, MLflow a user and
password (its basic-auth app: `admin` registers and promotes, `reader` reads), the replicas an API key. Each
secret is made once and kept in the state folder, readable by its owner only (`credentials.json`, libpq's
`pgpass`, MLflow's `mlflow-auth.ini`); the processes get them through their environment, never their command line.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common.access import API_KEY_ENV, WEBHOOK_SECRET_ENV
from common.files import write_whole
from common.logs import VERBOSE_HELP, configure_logging
from common.prediction_dataset import CONNECTION_STRING_ENV, filesystem
from common.settings import PROJECT_ROOT, load_settings
from devtools.azurite import accounts_env, azurite_command, connection_string
from devtools.processes import alive, free_port, loopback_webhook_env, mlflow_server_command, new_fernet_key

log = logging.getLogger("stack")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ARTIFACT_CONTAINER = "mlflow"
PREDICTIONS_CONTAINER = "predictions"
STORAGE_ACCOUNT = "digitdrift"  # Azurite's own account with a generated key, in place of its well-known one
POSTGRES_USER = "digitdrift"
DATABASES = ("mlflow", "mlflow_auth")  # MLflow's tracking and registry tables; its basic-auth app's users
MLFLOW_ADMIN, MLFLOW_READER = "admin", "reader"
PRIVATE = 0o600  # files holding a secret: readable by their owner only
WORKERS = 2
REPLICAS = 2
FOLLOW_SECONDS = 30  # a replica's poll of its alias, when no webhook came


def stack_dir() -> Path:
    return Path(os.environ.get("DIGITDRIFT_STACK_DIR", load_settings().state_dir / "stack")).resolve()


def wait_for(check, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s (see the logs in {stack_dir()})")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str, trusted: Path | None = None) -> bool:
    """Whether `url` answers 200; over TLS, trusting the certificate in `trusted` (verified, never skipped)."""
    import httpx

    verify = ssl.create_default_context(cafile=str(trusted)) if trusted else True
    try:
        return httpx.get(url, timeout=2, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def spawn(name: str, command: list[str], env: dict | None = None, cwd: Path | None = None) -> int:
    """Start a long-lived process in its own session (it outlives this command); its output goes to <name>.log."""
    folder = stack_dir()
    output = open(folder / f"{name}.log", "ab")
    process = subprocess.Popen(
        command,
        cwd=cwd or PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process.pid


def load_state() -> dict:
    path = stack_dir() / "stack.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(state: dict) -> None:
    """The stack's state, its secrets included: readable by its owner only."""
    write_whole(stack_dir() / "stack.json", json.dumps(state, indent=2), mode=PRIVATE)


def credentials(folder: Path | None = None) -> dict[str, str]:
    """The stack's secrets, made on its first `up` and kept in credentials.json (0600) for as long as its data is:
    `down` leaves them, as it leaves PostgreSQL's cluster and MLflow's users, which were made with them. PostgreSQL's
    password, Azurite's account key, MLflow's two users' passwords, the key its forms are signed with and the key it
    encrypts webhook secrets with, the webhook signing secret, the replicas' API key."""
    path = (folder or stack_dir()) / "credentials.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    made = {
        "postgres_password": secrets.token_urlsafe(24),
        "azurite_key": base64.b64encode(secrets.token_bytes(64)).decode(),
        "mlflow_admin_password": secrets.token_urlsafe(24),
        "mlflow_reader_password": secrets.token_urlsafe(24),
        "mlflow_flask_secret": secrets.token_urlsafe(32),
        "webhook_key": new_fernet_key(),
        "webhook_secret": secrets.token_urlsafe(32),
        "api_key": secrets.token_urlsafe(32),
    }
    if set(made) - set(kept):
        kept = {**made, **kept}
        write_whole(path, json.dumps(kept, indent=2), mode=PRIVATE)
    return kept


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user Debian's package creates."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(state: dict) -> None:
    entry = state.get("postgres", {})
    password = credentials()["postgres_password"]
    # libpq's password file: psql, createdb, MLflow's SQLAlchemy (psycopg2) read the password from it, not a URL
    os.environ["PGPASSFILE"] = str(
        write_whole(stack_dir() / "pgpass", f"127.0.0.1:*:*:{POSTGRES_USER}:{password}\n", mode=PRIVATE)
    )
    if alive(entry.get("pid")):
        return
    folder = stack_dir() / "postgres"
    data = folder / "data"
    if not (PG_BIN / "initdb").is_file():
        raise SystemExit("PostgreSQL 15 is missing: apt-get install postgresql-15 (make stack installs it as root)")
    port = entry.get("port") or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        reachable = subprocess.run(as_postgres(["test", "-w", str(folder)]), check=False).returncode == 0
        if not reachable:
            raise SystemExit(
                f"the postgres user cannot reach {folder}: let it through the parent folders (chmod o+x), "
                "or set DIGITDRIFT_STACK_DIR to a folder it can reach"
            )
    if not (data / "PG_VERSION").is_file():
        with tempfile.TemporaryDirectory(dir=folder) as scratch:  # the password, read once by initdb
            given = write_whole(Path(scratch) / "password", password, mode=PRIVATE)
            if os.geteuid() == 0:
                shutil.chown(scratch, "postgres", "postgres")
                shutil.chown(given, "postgres", "postgres")
            initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "scram-sha-256", f"--pwfile={given}"]
            subprocess.run(as_postgres([*initdb, "-U", POSTGRES_USER, "-E", "UTF8"]), check=True, stdout=subprocess.DEVNULL)
    rules = [line.split() for line in (data / "pg_hba.conf").read_text().splitlines() if not line.startswith("#")]
    if any("trust" in rule for rule in rules):
        log.warning(
            "%s trusts every local client (made before the stack took passwords): remove %s for one that asks", data, stack_dir()
        )
    subprocess.run(
        as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "postgres.log"),
                "-w",
                "start",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    wait_for(lambda: port_open(port), "PostgreSQL")
    connect = ["-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER, "-w"]  # -w: never ask a terminal
    query = "SELECT datname FROM pg_database"
    listed = subprocess.run([str(PG_BIN / "psql"), *connect, "-d", "postgres", "-tAc", query], capture_output=True, text=True)
    if listed.returncode != 0:
        raise SystemExit(f"PostgreSQL refused the stack's own credentials: {listed.stderr.strip()}")
    for database in set(DATABASES) - set(listed.stdout.split()):
        subprocess.run([str(PG_BIN / "createdb"), *connect, database], check=True)
    base = f"postgresql+psycopg2://{POSTGRES_USER}@127.0.0.1:{port}"  # no password: libpq reads PGPASSFILE
    state["postgres"] = {
        "pid": pid,
        "port": port,
        "url": f"{base}/mlflow",
        "auth_url": f"{base}/mlflow_auth",
        "pgpass": os.environ["PGPASSFILE"],
        "data": str(data),
    }


def start_azurite(state: dict) -> None:
    entry = state.get("azurite", {})
    port = entry.get("port") or free_port()
    key = credentials()["azurite_key"]
    connection = connection_string(port, STORAGE_ACCOUNT, key)
    os.environ[CONNECTION_STRING_ENV] = connection  # this command's own blob calls, and the Spark workers it starts
    if alive(entry.get("pid")):
        return
    folder = stack_dir() / "azurite"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pid = spawn("azurite", azurite_command(port, folder), env=accounts_env(STORAGE_ACCOUNT, key))
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    wait_for(lambda: port_open(port), "Azurite")
    fs, _ = filesystem(f"az://{ARTIFACT_CONTAINER}")
    for container in (ARTIFACT_CONTAINER, PREDICTIONS_CONTAINER):
        if not fs.exists(container):
            fs.mkdir(container)
    state["azurite"] = {
        "pid": pid,
        "port": port,
        "url": f"http://127.0.0.1:{port}/{STORAGE_ACCOUNT}",
        "connection_string": connection,
    }


MLFLOW_AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = {database_uri}
admin_username = {admin}
admin_password = {password}
# a password check costs a scrypt hash (about 0.07 s of a core here): each worker keeps a passing check this long
# (a changed password reaches the other worker within it), or every artifact a replica fetches pays one
auth_cache_ttl_seconds = 60
"""


def mlflow_auth_config(state: dict) -> Path:
    """MLflow's basic-auth app's settings (its admin and password, its users' table in PostgreSQL), its users' tables
    made once here: the server's two workers would otherwise race to make them."""
    from mlflow.environment_variables import MLFLOW_AUTH_CONFIG_PATH

    path = stack_dir() / "mlflow-auth.ini"
    settings = {"database_uri": state["postgres"]["auth_url"], "admin": MLFLOW_ADMIN}
    write_whole(path, MLFLOW_AUTH_CONFIG.format(**settings, password=credentials()["mlflow_admin_password"]), mode=PRIVATE)
    os.environ[MLFLOW_AUTH_CONFIG_PATH.name] = str(path)
    with warnings.catch_warnings():  # the server's modules warn of their own deprecations on import: not the user's
        warnings.simplefilter("ignore")
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore().init_db(state["postgres"]["auth_url"])
    return path


def ensure_reader(url: str, password: str) -> None:
    """MLflow's read-only user: with the default permission READ it reads every experiment and model and changes
    none of them (no run in them, no version, no alias, no webhook). MLflow's basic-auth lets any signed-in user
    create experiments and registered models of its own."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=url)
    try:
        users.get_user(MLFLOW_READER)
    except MlflowException:
        users.create_user(MLFLOW_READER, password)


def start_mlflow(state: dict) -> None:
    entry = state.get("mlflow", {})
    made = credentials()
    # this command's own MLflow calls, and what `env` hands the other commands: the admin registers and promotes
    os.environ.update({"MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN, "MLFLOW_TRACKING_PASSWORD": made["mlflow_admin_password"]})
    if alive(entry.get("pid")) and http_ok(f"{entry['url']}/health"):
        return
    port = entry.get("port") or free_port()
    url = f"http://127.0.0.1:{port}"
    # MLflow accepts only *.blob.core.windows.net artifact URIs; the connection string sends the bytes to Azurite
    destination = f"wasbs://{ARTIFACT_CONTAINER}@{STORAGE_ACCOUNT}.blob.core.windows.net/artifacts"
    # kept across restarts: the webhook secrets stored in PostgreSQL are encrypted with it
    webhook_key = made["webhook_key"]
    auth_config = mlflow_auth_config(state)
    pid = spawn(
        "mlflow",
        [
            *mlflow_server_command(port, state["postgres"]["url"], destination, workers=2),
            "--app-name",
            "basic-auth",
            "--serve-artifacts",
            "--allowed-hosts",
            f"127.0.0.1:{port},localhost:{port}",
        ],
        env={
            "AZURE_STORAGE_CONNECTION_STRING": state["azurite"]["connection_string"],
            "PGPASSFILE": state["postgres"]["pgpass"],
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": made["mlflow_flask_secret"],
            **loopback_webhook_env(webhook_key),
        },
    )
    wait_for(lambda: http_ok(f"{url}/health"), "mlflow server", 180)
    ensure_reader(url, made["mlflow_reader_password"])
    state["mlflow"] = {
        "pid": pid,
        "port": port,
        "url": url,
        "artifacts": destination,
        "users": [MLFLOW_ADMIN, MLFLOW_READER],
    }


def spark_env() -> dict:
    return {
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": str(PROJECT_ROOT / ".venv" / "bin" / "python"),
        "SPARK_WORKER_DIR": str(stack_dir() / "spark-work"),
    }


def spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def start_spark(state: dict) -> None:
    master = state.get("spark_master", {})
    if not alive(master.get("pid")):
        port, ui = master.get("port") or free_port(), master.get("ui_port") or free_port()
        pid = spawn(
            "spark-master",
            [
                spark_class(),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=spark_env(),
        )
        wait_for(lambda: http_ok(f"http://127.0.0.1:{ui}/json/"), "the Spark master", 120)
        master = {"pid": pid, "port": port, "ui_port": ui, "url": f"spark://127.0.0.1:{port}", "ui": f"http://127.0.0.1:{ui}"}
        state["spark_master"] = master
    workers = state.get("spark_workers", [])
    workers = [worker for worker in workers if alive(worker.get("pid"))]
    while len(workers) < WORKERS:
        ui = free_port()
        pid = spawn(
            f"spark-worker-{len(workers)}",
            [
                spark_class(),
                "org.apache.spark.deploy.worker.Worker",
                master["url"],
                "--cores",
                "1",
                "--memory",
                "3g",
                "--webui-port",
                str(ui),
            ],
            env=spark_env(),
        )
        workers.append({"pid": pid, "ui_port": ui})
    state["spark_workers"] = workers

    def registered() -> bool:
        import httpx

        alive_workers = [w for w in httpx.get(f"{master['ui']}/json/", timeout=2).json()["workers"] if w["state"] == "ALIVE"]
        return len(alive_workers) >= WORKERS

    wait_for(registered, "two Spark workers", 120)


def stack_environment(state: dict) -> dict[str, str]:
    """What points digitdrift's commands at the stack, with the credentials they use there (MLflow's admin)."""
    env = {}
    made = credentials(Path(state["folder"])) if "folder" in state else {}
    if "postgres" in state:
        env["PGPASSFILE"] = state["postgres"]["pgpass"]
    if "mlflow" in state:
        env["MLFLOW_TRACKING_URI"] = state["mlflow"]["url"]
        env["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN
        env["MLFLOW_TRACKING_PASSWORD"] = made["mlflow_admin_password"]
    if "azurite" in state:
        env["AZURE_STORAGE_CONNECTION_STRING"] = state["azurite"]["connection_string"]
    if "spark_master" in state:
        env["DIGITDRIFT_SPARK_MASTER"] = state["spark_master"]["url"]
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
    if "proxy" in state:
        env["DIGITDRIFT_SERVING_URL"] = state["proxy"]["url"]
        env[API_KEY_ENV] = made["api_key"]
    if "trust" in state.get("proxy", {}):  # the system's certificate authorities and the stack's certificate
        env["SSL_CERT_FILE"] = state["proxy"]["trust"]
    return env


def start_replicas(state: dict, model: str) -> None:
    """Two replicas of `model`; of an alias, each follows it: told by an MLflow webhook, polling every
    FOLLOW_SECONDS as the fallback."""
    from common.settings import parse_registry_uri

    env = {**stack_environment(state), "DIGITDRIFT_HOME": str(stack_dir() / "serving-home")}
    made = credentials()
    env[WEBHOOK_SECRET_ENV] = made["webhook_secret"]
    env[API_KEY_ENV] = made["api_key"]  # HAProxy passes the clients' key through; /ready stays open to it
    follows = parse_registry_uri(model).alias is not None
    replicas = state.get("replicas", [{} for _ in range(REPLICAS)])
    for index, replica in enumerate(replicas):
        if alive(replica.get("pid")) and http_ok(f"{replica['url']}/ready"):
            continue
        port = replica.get("port") or free_port()
        pid = spawn(
            f"replica-{index}",
            [
                str(PROJECT_ROOT / ".venv" / "bin" / "python"),
                "-m",
                "serving",
                "--model",
                model,
                "--port",
                str(port),
                "--prediction-dataset",
                f"az://{PREDICTIONS_CONTAINER}/stack",
                "--staging-dir",
                str(stack_dir() / f"staging-{index}"),
                "--flush-seconds",
                "2",
                "--drop-abandoned",  # a request HAProxy timed out on and sent to the other replica is logged there only
                *(
                    ["--follow-seconds", str(FOLLOW_SECONDS), "--webhook-url", f"http://127.0.0.1:{port}/webhooks/mlflow"]
                    if follows
                    else []
                ),
            ],
            env=env,
        )
        replicas[index] = {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}"}
    for replica in replicas:
        wait_for(lambda replica=replica: http_ok(f"{replica['url']}/ready"), f"the replica on {replica['url']}", 240)
    state["replicas"] = replicas
    state["prediction_dataset"] = f"az://{PREDICTIONS_CONTAINER}/stack"


HAPROXY_CONFIG = """global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    # a replica that hangs (stopped, not dead) holds a request this long before it is sent to the other one;
    # a scoring request takes milliseconds, and the server answers 504 itself after its own 30 s at most
    timeout server 10s
    timeout check 1s
    # a request a dead or hung replica did not answer goes to the other one (and the hung one, woken, refuses it:
    # HAProxy has hung up on it)
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
    option http-buffer-request
frontend digits
    bind 127.0.0.1:{port} ssl crt {certificate}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /ready
    default-server inter 1s fall 2 rise 2
{servers}
frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


def proxy_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """The stack's TLS certificate for 127.0.0.1, self-signed by openssl the first time and kept: the PEM HAProxy
    serves (certificate and key, readable by its owner only), the certificate, and the bundle clients trust
    (the system's certificate authorities and the stack's certificate: SSL_CERT_FILE replaces the system's)."""
    served, trusted, bundle = folder / "proxy.pem", folder / "proxy-certificate.pem", folder / "trust.pem"
    if served.is_file() and trusted.is_file() and bundle.is_file():
        return served, trusted, bundle
    openssl = shutil.which("openssl")
    if not openssl:
        raise SystemExit("openssl is missing: apt-get install openssl (make stack installs it as root)")
    subject = ["-subj", "/CN=digitdrift stack", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", *subject]
    with tempfile.TemporaryDirectory() as scratch:  # the key alone, in a folder only its owner reads
        key = Path(scratch) / "key.pem"
        made = subprocess.run([*command, "-keyout", str(key), "-out", str(trusted)], capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"openssl could not make the stack's certificate: {made.stderr.strip()[-500:]}")
        write_whole(served, trusted.read_text() + key.read_text(), mode=PRIVATE)
    system = ssl.get_default_verify_paths()
    authorities = next((Path(path) for path in (system.cafile, system.openssl_cafile) if path and Path(path).is_file()), None)
    bundle.write_text((authorities.read_text() if authorities else "") + trusted.read_text())
    return served, trusted, bundle


def start_proxy(state: dict) -> None:
    entry = state.get("proxy", {})
    if alive(entry.get("pid")):
        os.kill(entry["pid"], signal.SIGTERM)  # the replicas' ports may have changed: start it anew
    haproxy = shutil.which("haproxy")
    if not haproxy:
        raise SystemExit("haproxy is missing: apt-get install haproxy (make stack installs it as root)")
    port = entry.get("port") or free_port()
    servers = "\n".join(
        f"    server replica{index} 127.0.0.1:{replica['port']} check" for index, replica in enumerate(state["replicas"])
    )
    config = stack_dir() / "haproxy.cfg"
    stats_port = entry.get("stats_port") or free_port()
    served, trusted, bundle = proxy_certificate(stack_dir())
    config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers, stats_port=stats_port, certificate=served))
    pid = spawn("haproxy", [haproxy, "-W", "-db", "-f", str(config)])
    url = f"https://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/health", trusted), "HAProxy", 60)
    # the replicas' state as HAProxy sees it: /stats (a page), /stats;csv (the status column: UP, DOWN)
    state["proxy"] = {
        "pid": pid,
        "port": port,
        "url": url,
        "stats_port": stats_port,
        "stats": f"http://127.0.0.1:{stats_port}/stats",
        "certificate": str(trusted),
        "trust": str(bundle),
    }


def up() -> dict:
    stack_dir().mkdir(parents=True, exist_ok=True)
    state = load_state()
    state["folder"] = str(stack_dir())
    for name, start in (
        ("PostgreSQL", start_postgres),
        ("Azurite", start_azurite),
        ("mlflow server", start_mlflow),
        ("Spark cluster", start_spark),
    ):
        log.info("%s...", name)
        start(state)
        save_state(state)
    return state


def champion_exists(state: dict, model: str) -> bool:
    import mlflow

    from common.settings import parse_registry_uri

    ref = parse_registry_uri(model)
    client = mlflow.MlflowClient(state["mlflow"]["url"])
    try:
        if ref.alias:
            client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            client.get_model_version(ref.name, ref.version)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def serve(model: str) -> dict:
    state = load_state()
    if "mlflow" not in state:
        raise SystemExit("the stack is not up: run `make stack` first")
    log.info("replicas of %s...", model)
    start_replicas(state, model)
    save_state(state)
    log.info("HAProxy...")
    start_proxy(state)
    save_state(state)
    return state


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def down() -> None:
    state = load_state()
    for replica in state.get("replicas", []):
        stop_pid(replica["pid"], 60)  # a graceful stop publishes what the replica staged
    for name in ("proxy", "mlflow", "azurite"):
        if name in state:
            stop_pid(state[name]["pid"])
    for worker in state.get("spark_workers", []):
        stop_pid(worker["pid"])
    if "spark_master" in state:
        stop_pid(state["spark_master"]["pid"])
    if "postgres" in state:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", state["postgres"]["data"], "-m", "fast", "-w", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stop_pid(state["postgres"]["pid"])
    path = stack_dir() / "stack.json"
    if path.is_file():
        path.unlink()


def describe(state: dict) -> str:
    lines = []
    if "postgres" in state:
        lines.append(f"PostgreSQL      {state['postgres']['url']}")
    if "azurite" in state:
        lines.append(f"Azurite (blob)  {state['azurite']['url']}  containers: {ARTIFACT_CONTAINER}, {PREDICTIONS_CONTAINER}")
    if "mlflow" in state:
        lines.append(f"MLflow server   {state['mlflow']['url']}  (artifacts: {state['mlflow']['artifacts']})")
        lines.append(
            f"MLflow users    {MLFLOW_ADMIN} (registers, promotes), {MLFLOW_READER} (reads); passwords in credentials.json"
        )
    if "spark_master" in state:
        lines.append(f"Spark master    {state['spark_master']['url']}  (UI {state['spark_master']['ui']}, {WORKERS} workers)")
    for index, replica in enumerate(state.get("replicas", [])):
        lines.append(f"replica {index}       {replica['url']}")
    if "proxy" in state:
        proxy = state["proxy"]
        tls = f"; TLS, certificate {proxy['certificate']}" if "certificate" in proxy else ""
        lines.append(f"HAProxy         {proxy['url']}  (the one URL clients use{tls})")
    lines.append('point the commands at it:  eval "$(.venv/bin/python -m devtools.stack env)"')
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "serve", "env", "down", "status"], help="what to do")
    parser.add_argument("--model", default="models:/digits-cnn@champion", help="with serve: the model the replicas serve")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    if args.command == "up":
        state = up()
        if champion_exists(state, args.model):
            state = serve(args.model)
        else:
            log.info("no %s in the stack's MLflow yet: train and promote, then `make stack` again serves it", args.model)
        print(describe(state))
    elif args.command == "serve":
        print(describe(serve(args.model)))
    elif args.command == "env":
        print("\n".join(f"export {key}='{value}'" for key, value in stack_environment(load_state()).items()))
    elif args.command == "status":
        state = load_state()
        print(describe(state) if state else "the stack is not up")
    else:
        down()
        print("stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
