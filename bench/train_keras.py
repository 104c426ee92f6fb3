"""Time-to-accuracy of the Keras job on full MNIST: python -m bench.train_keras [--epochs N]."""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from common.machine import describe_machine
from common.settings import load_settings
from training.keras_job import KerasJobConfig, run_keras_job

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(settings.data_dir))
    parser.add_argument("--epochs", type=int, default=KerasJobConfig.epochs)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = KerasJobConfig(data_dir=args.data_dir, epochs=args.epochs, run_name="bench-keras-full")
    started = time.perf_counter()
    result = run_keras_job(config, settings)
    figures = {
        "benchmark": "keras training, full MNIST train (55,000 train / 5,000 validation), evaluated on MNIST test",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "augment": config.augment,
        "mnist_test_accuracy": result.test_accuracy,
        "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": round(result.train_seconds / config.epochs, 1),
        "job_seconds_with_evaluation_and_logging": round(time.perf_counter() - started, 1),
        "foreign_sets": {name: vars(evaluation) for name, evaluation in result.evaluations.items()},
        "run_id": result.run_id,
        "command": f"python -m bench.train_keras --epochs {config.epochs}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "keras_training.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
