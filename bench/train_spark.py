"""Spark ML training on full MNIST: python -m bench.train_spark [--classifier mlp] [--max-iter 200] [--spark-master URL].

Before and after in one run, on the same master: the training set shipped from the driver inside every task
(`createDataFrame` of the images, as the job did until the Parquet data path) and the job as it is (Parquet
parts read by the executors, features cached, classifier fitted over them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from bench.result_file import write_result
from common.datasets import load_mnist
from common.logs import configure_logging
from common.settings import PROJECT_ROOT, load_settings
from common.spark import DEFAULT_SPARK_MASTER, spark_session
from training.configs import SparkJobConfig
from training.data import split_train_validation
from training.spark_job import build_pipeline, pixels_frame, probabilities_of, run_spark_job, with_vectors

RESULTS = Path(__file__).parent / "results"
ISSUE_BASELINE_SECONDS = 168.0
SPARK_BLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0=libopenblas0-pthread"  # as the Makefile names it


def driver_shipped_fit(config: SparkJobConfig) -> dict:
    """The fit as it was: the training images in a DataFrame created on the driver, shipped inside the tasks."""
    spark = spark_session(config.spark_master, "digitdrift-training")
    data = Path(config.data_dir) / "mnist"
    train, _ = split_train_validation(load_mnist(data, "train"), config.validation_size, config.seed, config.train_limit)
    frame = with_vectors(spark.createDataFrame(pixels_frame(train))).cache()
    started = time.perf_counter()
    model = build_pipeline(config).fit(frame)
    seconds = time.perf_counter() - started
    frame.unpersist()
    probabilities, labels = probabilities_of(model, spark.createDataFrame(pixels_frame(load_mnist(data, "test"))))
    return {"fit_seconds": round(seconds, 1), "mnist_test_accuracy": float((probabilities.argmax(1) == labels).mean())}


def blas_in_use(master: str) -> str:
    """Which BLAS Spark ML's netlib picked in this session's JVM: JNIBLAS (the system's native library) or
    VectorBLAS (Java's vector code, when there is none)."""
    spark = spark_session(master, "digitdrift-training")
    return spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(settings.data_dir))
    parser.add_argument("--classifier", default="mlp")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--pca-k", type=int, default=50)
    parser.add_argument("--spark-master", default=DEFAULT_SPARK_MASTER)
    parser.add_argument("--skip-before", action="store_true", help="measure the job only, not the driver-shipped fit")
    args = parser.parse_args()
    configure_logging()
    config = SparkJobConfig(
        data_dir=args.data_dir,
        classifier=args.classifier,
        max_iter=args.max_iter,
        pca_k=args.pca_k,
        spark_master=args.spark_master,
        run_name=f"bench-spark-{args.classifier}",
    )
    # the native BLAS `make test` installs (Debian's OpenBLAS), found or installed like the other system packages
    subprocess.run([str(PROJECT_ROOT / "scripts" / "debian-packages.sh"), SPARK_BLAS], check=True)
    blas = blas_in_use(config.spark_master)
    before = None if args.skip_before else driver_shipped_fit(config)
    result = run_spark_job(config, settings)
    run_id, evaluations, seconds = result.run_id, result.evaluations, result.train_seconds
    measured = {
        "classifier": config.classifier,
        "pca_k": config.pca_k,
        "hidden": config.hidden,
        "max_iter": config.max_iter,
        "mnist_test_accuracy": evaluations["mnist_test"].accuracy,
        "spark_master": config.spark_master,
        "blas": blas,
        "fit_seconds": round(seconds, 1),
        "before_driver_shipped": before,
        "speedup": round(before["fit_seconds"] / seconds, 2) if before else None,
        # the driver-shipped fit's figure when this benchmark was first set (an Intel Xeon machine, Java's vector BLAS)
        "issue_baseline_seconds": ISSUE_BASELINE_SECONDS,
        "speedup_vs_issue_baseline": round(ISSUE_BASELINE_SECONDS / seconds, 2),
        "evaluation": {name: vars(evaluation) for name, evaluation in evaluations.items()},
        "run_id": run_id,
    }
    figures = write_result(
        RESULTS / f"spark_training_{config.classifier}.json",
        "Spark ML training on full MNIST train (55,000 train), Spark local[*], evaluated on MNIST test",
        measured,
        "bench.train_spark",
        ("pyspark", "mlflow", "numpy"),
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
