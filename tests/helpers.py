"""Helpers for tests: small dataset writers, free ports, process control, settings."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.settings import PROJECT_ROOT, Settings

SHARED_DATA = Path(os.environ.get("DIGITDRIFT_MIRROR", PROJECT_ROOT.parent / "shared" / "data"))
VENV_BIN = Path(sys.executable).parent


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` (uint8) as a gzip idx file, as MNIST's files are written."""
    magic = 2048 + array.ndim
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())
    return path


def write_mnist(folder: Path, count: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four small MNIST-layout files in `folder`; returns the test (images, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def write_png_classes(root: Path, pattern: str, side: int, per_class: int = 2) -> None:
    """PNG class folders (pattern formatted with the digit) of `side`x`side` grey images."""
    rng = np.random.default_rng(1)
    for digit in range(10):
        folder = root / pattern.format(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(folder / f"{index:03d}.png")


def settings_for(home: Path, tracking_uri: str | None = None, data_dir: Path = SHARED_DATA) -> Settings:
    """Settings with state under `home`, reading data from `data_dir`."""
    return Settings(
        state_dir=home,
        data_dir=data_dir,
        mirror=None,
        tracking_uri=tracking_uri or f"sqlite:///{home / 'mlflow.db'}",
        experiment="digitdrift-tests",
    )


@dataclass(frozen=True)
class ChampionModel:
    """A registered, promoted model for serving tests: its store, URI, downloaded folder and version."""

    tracking_uri: str
    uri: str
    folder: Path
    version: str
    keras_model: object


@dataclass(frozen=True)
class SparkModel:
    """A small digits-spark pipeline trained for real and registered @challenger: its store, URI, folder, run."""

    tracking_uri: str
    uri: str
    folder: Path
    version: str
    run_id: str
    pipeline: object  # the fitted PipelineModel


def serving_command(model: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving", "--model", model, "--port", str(port), *extra]


def acknowledged(run_dir: Path) -> set[tuple[str, int]]:
    """The images a simulation was told were scored (its sidecar is written only after an answer)."""
    from simulation.sidecar import acknowledged_images

    return acknowledged_images(run_dir / "ground_truth.db")


def simulate_in_background(url: str, run_dir: Path, env: dict, *options: str) -> subprocess.Popen:
    """`python -m simulation run` against `url` (no MLflow run, 4 connections) with `options`, started and left
    running; its output piped."""
    command = [sys.executable, "-m", "simulation", "run", *options, "--url", url, "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*command, "--no-mlflow", "--concurrency", "4"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def until_acknowledged(run_dir: Path, count: int, timeout: float = 180.0) -> None:
    """Wait until a running simulation has `count` requests acknowledged (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(acknowledged(run_dir)) < count:
        time.sleep(0.2)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before port {port} opened")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


def assert_same_frames(left, right, exact):
    """Columns in `exact` equal; every other column within 1e-9 (NaN where the other is NaN)."""
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right)
    for column in left.columns:
        a, b = left[column].to_numpy(), right[column].to_numpy()
        if column in exact or a.dtype in (bool, object):  # flags and names (window_start, ...) compare exactly
            assert (a == b).all(), column
        else:
            assert np.allclose(a.astype(float), b.astype(float), rtol=0, atol=1e-9, equal_nan=True), column


@contextmanager
def collector_sidecar(root: Path, endpoint: str = "digitdrift-digits", deployment: str = "blue"):
    """What Azure runs beside a deployment with data collection on: it takes the Collector's posts
    (POST /modeldata/log) and stores each as one JSON line in Azure's layout under `root`:
    <endpoint>/<deployment>/<collection>/YYYY/MM/DD/HH/<instance>.jsonl. Yields the port to give the
    deployment as AZUREML_MDC_PORT."""
    import json
    import threading
    import uuid
    from datetime import UTC, datetime
    from http.server import BaseHTTPRequestHandler

    instance = uuid.uuid4().hex
    lock = threading.Lock()

    class Sidecar(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers["content-length"]))
            kind = self.headers["ce-type"]  # azureml.inference.<collection>
            now = datetime.now(UTC)
            event = {
                "specversion": "1.0",
                "id": self.headers["trace-id"],
                "source": f"/subscriptions/local/onlineEndpoints/{endpoint}/deployments/{deployment}",
                "type": kind,
                "datacontenttype": "application/json",
                "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "data": json.loads(body),
                "correlationid": self.headers.get("ce-x-request-id"),
                "collectdatatype": self.headers["ce-collect-data-type"],
                "agent": self.headers["ce-agent"],
            }
            folder = root / endpoint / deployment / kind.rsplit(".", 1)[1] / now.strftime("%Y/%m/%d/%H")
            with lock:
                folder.mkdir(parents=True, exist_ok=True)
                with (folder / f"{instance}.jsonl").open("a") as stream:
                    stream.write(json.dumps(event) + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with loopback_http(Sidecar) as port:
        yield port


@contextmanager
def loopback_http(handler):
    """A threading HTTP server for `handler` on a free loopback port, in a background thread; yields the port."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


# What Azure ML's MLflow tracking answers differently from an MLflow server: MLflow 3's logged-models API has
# answered 404 (azure-sdk-for-python#44896) and its registry documents no aliases.
AZURE_MISSING_ROUTES = ("/mlflow/logged-models", "/mlflow/registered-models/alias")


@contextmanager
def azure_like_tracking(upstream: str):
    """A loopback proxy in front of a real `mlflow server` that answers 404 ENDPOINT_NOT_FOUND where Azure ML's
    tracking does (AZURE_MISSING_ROUTES) and forwards everything else. Yields its URL (an MLFLOW_TRACKING_URI)."""
    import json
    from http.server import BaseHTTPRequestHandler

    import httpx

    refused: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def forward(self):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if any(route in self.path for route in AZURE_MISSING_ROUTES):
                refused.append(f"{self.command} {self.path}")
                answer = json.dumps({"error_code": "ENDPOINT_NOT_FOUND", "message": f"{self.path} not found"}).encode()
                self.send_response(404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "content-length")}
            response = httpx.request(self.command, f"{upstream}{self.path}", content=body, headers=headers, timeout=120)
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() not in ("transfer-encoding", "content-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("content-length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # noqa: N815 (the http.server API)

        def log_message(self, *args):
            pass

    with loopback_http(Proxy) as port:
        yield f"http://127.0.0.1:{port}", refused


def chromium_dom(url: str, profile: Path, budget_ms: int = 10000) -> str:
    """The DOM real headless Chromium builds for `url` after `budget_ms` of virtual time (scripts run)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed for this test (`make test` installs Debian's chromium)"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=max(120, budget_ms / 1000 + 60),
    )
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    return result.stdout


class ChromiumPage:
    """Real headless Chromium driven over the DevTools protocol: open a page, run scripts, press keys as a person."""

    KEY_CODES = {"Enter": 13, "Backspace": 8, " ": 32}

    def __init__(self, profile: Path) -> None:
        import shutil

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "Chromium is needed for this test (`make test` installs Debian's chromium)"
        profile.mkdir(parents=True, exist_ok=True)
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
        command += ["--disable-background-networking", "--remote-debugging-port=0", f"--user-data-dir={profile}"]
        self.process = subprocess.Popen([*command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            assert self.process.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import httpx
        from websockets.sync.client import connect

        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(target for target in targets if target["type"] == "page")
        self.connection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.socket = self.connection.__enter__()  # websockets 17 wants its connections entered
        self.calls = 0

    def call(self, method: str, **params) -> dict:
        """One DevTools command and its result (events in between are passed over)."""
        import json

        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.calls:
                assert "error" not in message, message["error"]
                return message["result"]

    def evaluate(self, expression: str):
        """The value of a script in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll a script until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"the page never made {expression!r} true"
            time.sleep(0.05)
        return value

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body !== null")

    def type_text(self, text: str) -> None:
        self.call("Input.insertText", text=text)

    def press(self, key: str) -> None:
        """A key pressed and released, as a keyboard sends it."""
        code = self.KEY_CODES.get(key, ord(key.upper()) if len(key) == 1 else 0)
        text = {"Enter": "\r", " ": " "}.get(key, key if len(key) == 1 else "")
        down = {"type": "keyDown", "key": key, "windowsVirtualKeyCode": code, **({"text": text} if text else {})}
        self.call("Input.dispatchKeyEvent", **down)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=code)

    def close(self) -> None:
        self.connection.__exit__(None, None, None)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def synthetic_digits(count, seed, thickness=1):
    """Bars of ink at random places: a stand-in population of 'digits' with a stroke thickness."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for image in images:
        row, column = rng.integers(6, 20, 2)
        image[row - 5 : row + 5, column : column + thickness] = 255
        image[row, column - 3 : column + 3] = 200
    labels = rng.integers(0, 10, count)
    return images, labels


def cli(module: str, args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m module args...` in the project's folder with `env` over this environment, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
