"""Local helper processes (servers for tests, benchmarks and the team stack): a free loopback port, start and wait, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.settings import PROJECT_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mlflow_server_command(port: int, backend_store_uri: str, artifacts_destination: str, workers: int) -> list[str]:
    """The project's `mlflow server` on 127.0.0.1:`port`, proxying artifacts to `artifacts_destination`."""
    return [
        str(PROJECT_ROOT / ".venv" / "bin" / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        str(workers),
    ]


def loopback_webhook_env(encryption_key: str) -> dict[str, str]:
    """What an `mlflow server` needs to deliver registry webhooks to servers on this machine: plain HTTP and
    loopback addresses allowed (MLflow refuses both by default), one key to encrypt webhook secrets (without it
    each server process makes its own, and one worker cannot read what another stored), the webhook list re-read
    every second (not every minute: a server that registers just after an alias event would miss the next)."""
    return {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": encryption_key,
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }


def new_fernet_key() -> str:
    """A key for MLflow's webhook-secret encryption (Fernet: 32 random bytes, URL-safe base64)."""
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def alive(pid: int | None) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 90.0, poll_s: float = 0.3) -> None:
    """Poll `url` every `poll_s` seconds until it answers 200, failing early if `process` dies."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the process started (by its handle): SIGTERM, then SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(
    command: list[str],
    health_url: str,
    env: dict | None = None,
    log_path: Path | None = None,
    timeout: float = 120.0,
    poll_s: float = 0.3,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Start `command` in the project's folder (or `cwd`), wait until `health_url` answers 200, and stop it
    afterwards; its output goes to `log_path` (whose tail a failed start quotes), else nowhere."""
    output = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        command, cwd=cwd or PROJECT_ROOT, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT
    )
    try:
        try:
            wait_for_http(health_url, process, timeout, poll_s)
        except (RuntimeError, TimeoutError) as err:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{err}\n{tail}") from None
        yield process
    finally:
        stop(process)
        if log_path:
            output.close()
