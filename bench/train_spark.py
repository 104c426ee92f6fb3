"""Spark ML training on full MNIST: python -m bench.train_spark [--classifier mlp] [--max-iter 200]."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import describe_machine
from common.settings import load_settings
from training.spark_job import SparkJobConfig, run_spark_job

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(settings.data_dir))
    parser.add_argument("--classifier", default="mlp")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--pca-k", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = SparkJobConfig(
        data_dir=args.data_dir,
        classifier=args.classifier,
        max_iter=args.max_iter,
        pca_k=args.pca_k,
        run_name=f"bench-spark-{args.classifier}",
    )
    result = run_spark_job(config, settings)
    run_id, evaluations, seconds = result.run_id, result.evaluations, result.train_seconds
    figures = {
        "benchmark": "Spark ML training on full MNIST train (55,000 train), Spark local[*], evaluated on MNIST test",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(("pyspark", "mlflow", "numpy")),
        "classifier": config.classifier,
        "pca_k": config.pca_k,
        "hidden": config.hidden,
        "max_iter": config.max_iter,
        "mnist_test_accuracy": evaluations["mnist_test"].accuracy,
        "fit_seconds": round(seconds, 1),
        "evaluation": {name: vars(evaluation) for name, evaluation in evaluations.items()},
        "run_id": run_id,
        "command": f"python -m bench.train_spark --classifier {config.classifier} --max-iter {config.max_iter}",
    }
    (RESULTS / f"spark_training_{config.classifier}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
