"""Batch scoring with Spark: python -m serving.batch --input FOLDER|PARQUET --output PARQUET [--model URI].

Images come from a folder in a public layout (read through common's loaders) or a Parquet file
with a `pixels` column of 784 grey levels (and optionally `request_id`); prediction records go
out as Parquet in the prediction log's columns, scored through MLflow's spark_udf. spark_udf
returns the probabilities only, so foreign scores and embeddings stay empty (NULL) here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from common.datasets import FOREIGN_LAYOUTS, DatasetError, load_mnist, load_png_digits
from common.images import NUM_CLASSES, PIXELS, fingerprint
from common.logs import configure_logging
from common.records import LOW_CONFIDENCE_FLAG, PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from common.settings import LOW_CONFIDENCE_THRESHOLD, load_settings
from common.spark import DEFAULT_SPARK_MASTER, spark_session
from serving.core import DEFAULT_MODEL_URI, identify_model

log = logging.getLogger(__name__)
LAYOUTS = ("mnist", *FOREIGN_LAYOUTS)


def images_frame(source: str, layout: str | None) -> pd.DataFrame:
    """request_id, image_index, pixels (784 float32) from a Parquet file or a folder in a public layout."""
    path = Path(source)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        if "pixels" not in frame:
            raise DatasetError(f"{path}: no 'pixels' column (784 grey levels per row)")
        frame["pixels"] = [np.asarray(values, dtype=np.float32) for values in frame["pixels"]]
        if {len(values) for values in frame["pixels"]} != {PIXELS}:
            raise DatasetError(f"{path}: every 'pixels' value must hold 784 grey levels")
        if "request_id" not in frame:
            frame["request_id"] = [f"{path.stem}-{index}" for index in range(len(frame))]
    else:
        if layout not in LAYOUTS:
            raise DatasetError(f"{path}: say how the folder is laid out with --layout ({', '.join(LAYOUTS)})")
        digits = load_mnist(path, "test") if layout == "mnist" else load_png_digits(path, FOREIGN_LAYOUTS[layout])
        frame = pd.DataFrame(
            {
                "request_id": [f"{path.name}-{index}" for index in range(len(digits))],
                "pixels": list(digits.images.reshape(len(digits), PIXELS).astype(np.float32)),
            }
        )
    frame["image_index"] = 0
    return frame[["request_id", "image_index", "pixels"]]


def batch_score(spark, model_uri: str, images: pd.DataFrame, window: int | None, threshold: float):
    """A Spark DataFrame of prediction records for `images`, scored by spark_udf."""
    import mlflow
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, StringType

    identity = identify_model(model_uri, None, None)
    score = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=ArrayType(FloatType()), env_manager="local")

    @F.pandas_udf(StringType())
    def image_fingerprint(pixels: pd.Series) -> pd.Series:
        return pd.Series([fingerprint(np.asarray(values).astype(np.uint8)) for values in pixels])

    scored = spark.createDataFrame(images).withColumn("probabilities", score("pixels"))
    confidence = F.array_max("probabilities")
    columns = {
        "request_id": F.col("request_id"),
        "image_index": F.col("image_index").cast("long"),
        "model_name": F.lit(identity.name),
        "model_version": F.lit(identity.version),
        "timestamp": F.lit(datetime.now(UTC).isoformat(timespec="microseconds")),
        "window": F.lit(window).cast("long"),
        "predicted": (F.array_position("probabilities", confidence) - 1).cast("long"),
        **{name: F.col("probabilities")[index].cast("double") for index, name in enumerate(PROBABILITY_COLUMNS)},
        "confidence": confidence.cast("double"),
        "flags": F.when(confidence < threshold, F.lit(LOW_CONFIDENCE_FLAG)).otherwise(F.lit("")),
        "fingerprint": image_fingerprint("pixels"),
    }
    kinds = {"REAL": "double", "BLOB": "binary"}
    for name, kind in PREDICTION_COLUMNS.items():  # foreign score, projection, image: not from spark_udf
        if name not in columns:
            columns[name] = F.lit(None).cast(kinds[kind.split()[0]])
    assert len(PROBABILITY_COLUMNS) == NUM_CLASSES
    return scored.select(*[columns[name].alias(name) for name in PREDICTION_COLUMNS])


def build_parser() -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="a folder in a public layout, or a .parquet with 'pixels'")
    parser.add_argument("--layout", choices=LAYOUTS, help="how the --input folder is laid out")
    parser.add_argument("--output", required=True, help="the Parquet folder to write the records to (must not exist)")
    parser.add_argument("--model", default=DEFAULT_MODEL_URI, help="MLflow model URI (default: %(default)s)")
    parser.add_argument("--window", type=int, default=None, help="the window to stamp on every record")
    parser.add_argument(
        "--low-confidence",
        type=float,
        default=LOW_CONFIDENCE_THRESHOLD,
        help="a top probability under this flags the prediction low_confidence (default: %(default)s)",
    )
    parser.add_argument(
        "--spark-master", default=DEFAULT_SPARK_MASTER, help="local[*] here, or a cluster's master URL (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    if Path(args.output).exists():
        print(f"error: {args.output} already exists; batch scoring never overwrites", file=sys.stderr)
        return 2
    try:
        images = images_frame(args.input, args.layout)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import mlflow

    mlflow.set_tracking_uri(load_settings().tracking_uri)
    spark = spark_session(args.spark_master, "digitdrift-batch")
    batch_score(spark, args.model, images, args.window, args.low_confidence).write.parquet(args.output)
    print(f"scored {len(images)} images with {args.model}: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
