"""The bare Keras model in-process, the serving benchmark's peer: python -m bench.bare_model [--threads N].

`--threads 1` is issue 16's peer: the model as one traced graph (tf.function) on TensorFlow's default threads, one
call per batch. `--threads N` is how our server calls it: the frozen graph in the calling thread, each op on one
thread, batches cut into N chunks scored at once. Run as its own process, so that neither setting finds the other's
threads. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import mlflow
import numpy as np

from common.datasets import load_source
from common.quiet import native_stderr_filtered
from common.settings import load_settings
from serving.core import DEFAULT_MODEL_URI
from serving.model_calls import frozen_call, split_call, traced_call

BATCHES = (1, 8, 32, 256)


def bare_model(uri: str, images: np.ndarray, seconds: float, threads: int = 1) -> dict:
    """Images/s of the Keras model called directly (traced, or as served), and through model.predict at batch 1."""
    with native_stderr_filtered():
        model = mlflow.keras.load_model(uri)
    call = traced_call(model) if threads == 1 else split_call(frozen_call(model, op_threads=1), threads)
    flat = images.reshape(len(images), 784).astype(np.float32)
    figures: dict = {"threads": threads}
    for batch in BATCHES:
        call(flat[:batch])  # warm up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            start = done % (len(flat) - batch)
            call(flat[start : start + batch])
            done += batch
        figures[f"images_per_s_batch{batch}"] = round(done / (time.perf_counter() - started), 1)
    # One connection calls the model once per request, with the request's other work between calls: a call
    # after an idle gap finds TensorFlow's threads asleep. The p50 of one call back to back and after 2 ms idle.
    for gap_ms in (0, 2):
        times = []
        for index in range(300):
            time.sleep(gap_ms / 1000)
            started = time.perf_counter()
            call(flat[index : index + 1])
            times.append(time.perf_counter() - started)
        figures[f"batch1_call_ms_after_{gap_ms}ms_idle"] = round(float(np.median(times)) * 1000, 3)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict(flat[done % 100 : done % 100 + 1], verbose=0)
        done += 1
    figures["model_predict_images_per_s_batch1"] = round(done / (time.perf_counter() - started), 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_URI, help="MLflow model URI (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per batch size (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="1: the traced graph on TensorFlow's threads; N: as served")
    args = parser.parse_args()
    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    images = load_source("mnist", settings.data_dir).images[:4096]
    print(json.dumps(bare_model(args.model, images, args.seconds, args.threads)))


if __name__ == "__main__":
    main()
