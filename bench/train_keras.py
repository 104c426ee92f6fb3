"""Time-to-accuracy of the Keras job on full MNIST, before and after in one run: python -m bench.train_keras [--epochs 4].

Both runs are the job as `make demo` runs it (4 epochs, batch 128, Adam from 2e-3 cosine-decayed, augmentation);
"before" as it was when issue 16 was filed (Keras' default batch-norm momentum 0.99, float32, Keras' own batch
norm), "after" as it is (momentum 0.9, bfloat16 compute, batch norm on TensorFlow's fused kernel).
MNIST test accuracy of the model as it would be served (`servable_copy`: float32, plain batch norm) is measured
every quarter epoch on a clock that leaves those measurements out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import keras

from bench.result_file import write_result
from common.datasets import Digits, load_mnist
from common.images import to_model_input
from common.logs import configure_logging
from common.settings import load_settings
from training.configs import FLOAT32, KerasJobConfig
from training.keras_job import run_keras_job
from training.model import resolve_precision, servable_copy

RESULTS = Path(__file__).parent / "results"
TARGET_ACCURACY = 0.993
MEASURES_PER_EPOCH = 4
# What differs between the runs; everything else is the job's default.
VARIANTS = {
    "before": {"batch_norm_momentum": 0.99, "precision": FLOAT32, "fused_batch_norm": False},
    "after": {},
}
log = logging.getLogger(__name__)


class TestAccuracyClock(keras.callbacks.Callback):
    """MNIST test accuracy of the model as served, `per_epoch` times an epoch, against training seconds that leave
    these measurements (and the copy they score) out."""

    def __init__(self, test: Digits, per_epoch: int) -> None:
        super().__init__()
        self.images, self.labels = to_model_input(test.images), test.labels
        self.per_epoch = per_epoch
        self.points: list[dict] = []

    def on_train_begin(self, logs=None) -> None:
        self.steps_per_epoch = self.params["steps"]  # what fit counts for the data it was given
        self.every = max(self.steps_per_epoch // self.per_epoch, 1)
        self.step, self.started, self.measuring = 0, time.perf_counter(), 0.0

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.step += 1
        if self.step % self.every == 0:
            self._measure()

    def on_train_end(self, logs=None) -> None:
        if self.step % self.every:
            self._measure()

    def _measure(self) -> None:
        seconds = time.perf_counter() - self.started - self.measuring
        began = time.perf_counter()
        predicted = servable_copy(self.model).predict(self.images, batch_size=1000, verbose=0).argmax(axis=1)
        accuracy = float((predicted == self.labels).mean())
        self.measuring += time.perf_counter() - began
        epoch = self.step / self.steps_per_epoch
        self.points.append({"epoch": round(epoch, 2), "train_seconds": round(seconds, 1), "mnist_test_accuracy": accuracy})
        log.info("epoch %.2f, %.0f s of training: MNIST test accuracy %.4f", epoch, seconds, accuracy)


def first_reaching(points: list[dict], accuracy: float) -> dict | None:
    """The first measurement at or above `accuracy`, or None."""
    return next((point for point in points if point["mnist_test_accuracy"] >= accuracy), None)


def measure(config: KerasJobConfig, settings, test: Digits) -> dict:
    """One job run with the clock on `test`: its time to the target, its final accuracy and its whole curve."""
    clock = TestAccuracyClock(test, MEASURES_PER_EPOCH)
    started = time.perf_counter()
    result = run_keras_job(config, settings, callbacks=[clock])
    reached = first_reaching(clock.points, TARGET_ACCURACY)
    return {
        "batch_norm_momentum": config.batch_norm_momentum,
        "precision": resolve_precision(config.precision),  # what `auto` means on this machine
        "fused_batch_norm": config.fused_batch_norm,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "augment": config.augment,
        "seconds_to_target": reached["train_seconds"] if reached else None,
        "epochs_to_target": reached["epoch"] if reached else None,
        "final_mnist_test_accuracy": result.test_accuracy,
        "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": round(result.train_seconds / config.epochs, 1),
        "job_seconds_with_evaluation_and_logging": round(time.perf_counter() - started, 1),
        "curve": clock.points,
        "run_id": result.run_id,
    }


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(settings.data_dir))
    parser.add_argument("--epochs", type=int, default=4, help="each run's epochs (default: make demo's %(default)s)")
    parser.add_argument("--skip-before", action="store_true", help="measure the job as it is only")
    parser.add_argument("--out", type=Path, default=RESULTS / "keras_training.json", help="result file (default: %(default)s)")
    args = parser.parse_args()
    configure_logging()
    test = load_mnist(Path(args.data_dir) / "mnist", "test")
    runs = {}
    for name, variant in VARIANTS.items():
        if name == "before" and args.skip_before:
            continue
        config = KerasJobConfig(data_dir=args.data_dir, epochs=args.epochs, run_name=f"bench-keras-{name}", **variant)
        runs[name] = measure(config, settings, test)
    measured = {"target_accuracy": TARGET_ACCURACY, **runs}
    if "before" in runs and runs["before"]["seconds_to_target"] and runs["after"]["seconds_to_target"]:
        measured["time_to_target_ratio"] = round(runs["after"]["seconds_to_target"] / runs["before"]["seconds_to_target"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    benchmark = (
        "keras training, full MNIST train (55,000 train / 5,000 validation): training seconds until MNIST test "
        f"accuracy first reaches {TARGET_ACCURACY:.1%} (measured every 1/{MEASURES_PER_EPOCH} epoch), and the final accuracy"
    )
    figures = write_result(args.out, benchmark, measured, "bench.train_keras")
    print(json.dumps({key: value for key, value in figures.items() if key not in ("before", "after")}, indent=2))
    for name, run in runs.items():
        print(name, {key: value for key, value in run.items() if key != "curve"})


if __name__ == "__main__":
    main()
