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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll `url` until it answers 200, failing early if `process` dies."""
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
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


@contextmanager
def running(command: list[str], health_url: str, env: dict | None = None, log_path: Path | None = None, timeout: float = 120.0):
    """Start a server process, wait until `health_url` answers, and stop it afterwards."""
    output = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT
    )
    try:
        try:
            wait_for_http(health_url, process, timeout)
        except (RuntimeError, TimeoutError) as err:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{err}\n{tail}") from None
        yield process
    finally:
        stop(process)
        if log_path:
            output.close()


def serving_command(model: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving", "--model", model, "--port", str(port), *extra]
