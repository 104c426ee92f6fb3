"""The Spark ML training job: pixels -> PCA(k) -> logistic regression or a perceptron, logged with MLflow's Spark flavor."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from common.datasets import FOREIGN_LAYOUTS, Digits, load_mnist
from common.images import NUM_CLASSES, PIXELS
from common.settings import CHALLENGER_ALIAS, LOW_CONFIDENCE_THRESHOLD, Settings
from common.spark import spark_session
from common.tracking import describe_run, log_digit_sets, set_role, use_tracking
from training.configs import SparkJobConfig
from training.data import split_train_validation
from training.evaluate import SetEvaluation, evaluate_probabilities
from training.tracking import start_training_run

log = logging.getLogger(__name__)

CLASSIFIERS = ("mlp", "logistic")
CLASS_COLUMN = "predicted_class"
PYFUNC_OUTPUT_COLUMN = "prediction"  # the column MLflow's Spark pyfunc returns


def write_split_parquet(digits: Digits, folder: Path, parts: int = 8) -> str:
    """A split written once as a folder of Parquet parts (pixels as 784 doubles, label), for executors to read.

    Written to a new name and renamed into place, so a reader never sees half of it; a split already there
    is reused. `parts` files give the cluster as many tasks to read them in parallel.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "_SUCCESS").is_file():
        return str(folder)
    temporary = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    temporary.mkdir(parents=True, exist_ok=True)
    flat = digits.images.reshape(len(digits), PIXELS).astype(np.float64)
    for index, rows in enumerate(np.array_split(np.arange(len(digits)), parts)):
        table = pa.table(
            {
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat[rows].ravel()), PIXELS).cast(pa.list_(pa.float64())),
                "label": pa.array(digits.labels[rows].astype(np.int64)),
            }
        )
        pq.write_table(table, temporary / f"part-{index:03d}.parquet", compression="zstd")
    (temporary / "_SUCCESS").touch()
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        temporary.rename(folder)
    except OSError:  # another job wrote it meanwhile
        shutil.rmtree(temporary, ignore_errors=True)
    return str(folder)


def pixels_frame(digits: Digits) -> pd.DataFrame:
    """Images as one column of 784 grey levels (0..255) per row, plus the label."""
    flat = digits.images.reshape(len(digits), PIXELS).astype(np.float64)
    return pd.DataFrame({"pixels": list(flat), "label": digits.labels.astype(np.int64)})


def with_vectors(frame):
    """The array column as the ML vector the pipeline reads (784 separate columns made Spark 50x slower)."""
    from pyspark.ml.functions import array_to_vector

    return frame.withColumn("pixels", array_to_vector("pixels"))


def read_png_folders(spark, folder: str | Path, source: str, limit_per_class: int | None = None):
    """A public PNG layout through Spark's image data source: 784 pixel columns and the label from the folder name."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType

    layout = FOREIGN_LAYOUTS[source]
    root = Path(folder) / layout.subdir
    images = spark.read.format("image").option("recursiveFileLookup", "true").load(str(root))
    pattern = layout.folder_pattern.replace("{}", "([0-9])").replace("{:02d}", "0([0-9])")

    @F.pandas_udf(ArrayType(DoubleType()))
    def to_pixels(data: pd.Series, height: pd.Series, width: pd.Series) -> pd.Series:
        from PIL import Image

        side = int(np.sqrt(PIXELS))
        out = []
        for raw, h, w in zip(data, height, width):
            image = Image.frombytes("L", (int(w), int(h)), bytes(raw))
            if image.size != (side, side):
                image = image.resize((side, side), Image.Resampling.LANCZOS)
            out.append(np.asarray(image, dtype=np.float64).ravel())
        return pd.Series(out)

    frame = images.select(
        to_pixels("image.data", "image.height", "image.width").alias("pixels"),
        F.regexp_extract("image.origin", f"/{pattern}/[^/]+$", 1).cast("long").alias("label"),
    )
    if limit_per_class:
        from pyspark.sql.window import Window

        rank = F.row_number().over(Window.partitionBy("label").orderBy(F.monotonically_increasing_id()))
        frame = frame.withColumn("rank", rank).where(F.col("rank") <= limit_per_class).drop("rank")
    return frame


def feature_stages(config: SparkJobConfig) -> list:
    """pixels (0..255) -> grey levels 0..1 -> PCA(k) -> centred features."""
    from pyspark.ml.feature import PCA, ElementwiseProduct, StandardScaler
    from pyspark.ml.linalg import Vectors

    return [
        ElementwiseProduct(scalingVec=Vectors.dense([1 / 255] * PIXELS), inputCol="pixels", outputCol="unit"),
        PCA(k=config.pca_k, inputCol="unit", outputCol="pca"),
        # centred, not scaled to unit variance: whitening lifts the last, noisiest components to the weight of
        # the first and the perceptron fits them (96.9% against 97.4% on MNIST test, 96.9 / 97.8% validation)
        StandardScaler(inputCol="pca", outputCol="features", withMean=True, withStd=False),
    ]


def classifier_stage(config: SparkJobConfig):
    """The classifier on the features: class in `predicted_class`, probabilities in `probability`."""
    from pyspark.ml.classification import LogisticRegression, MultilayerPerceptronClassifier

    if config.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {config.classifier!r}: expected one of {', '.join(CLASSIFIERS)}")
    if config.classifier == "mlp":
        return MultilayerPerceptronClassifier(
            layers=[config.pca_k, config.hidden, NUM_CLASSES],
            maxIter=config.max_iter,
            seed=config.seed,
            blockSize=256,
            predictionCol=CLASS_COLUMN,
        )
    return LogisticRegression(family="multinomial", maxIter=config.max_iter, regParam=1e-4, predictionCol=CLASS_COLUMN)


def output_stage():
    """The probabilities again as `prediction`: MLflow's Spark pyfunc answers with that column whatever the
    pipeline computes, so served through pyfunc, digits-spark answers ten probabilities like digits-cnn."""
    from pyspark.ml.feature import VectorAssembler

    return VectorAssembler(inputCols=["probability"], outputCol=PYFUNC_OUTPUT_COLUMN)


def build_pipeline(config: SparkJobConfig):
    """The whole pipeline, unfitted: features, classifier, output."""
    from pyspark.ml import Pipeline

    return Pipeline(stages=[*feature_stages(config), classifier_stage(config), output_stage()])


def fit_pipeline(config: SparkJobConfig, train):
    """Fit the features once, cache them in the executors, then fit the classifier over the cached features
    (its optimiser passes over them `max_iter` times); one PipelineModel of every stage."""
    from pyspark.ml import Pipeline, PipelineModel

    features = Pipeline(stages=feature_stages(config)).fit(train)
    cached = features.transform(train).select("features", "label").cache()
    try:
        classifier = classifier_stage(config).fit(cached)
    finally:
        cached.unpersist()
    return PipelineModel(stages=[*features.stages, classifier, output_stage()])


def probabilities_of(model, frame) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, 10), labels (N,)) of a Spark DataFrame through a fitted pipeline."""
    from pyspark.ml.functions import vector_to_array

    rows = model.transform(with_vectors(frame)).select(vector_to_array("probability").alias("p"), "label").toPandas()
    return np.stack(rows["p"].to_numpy()), rows["label"].to_numpy()


@dataclass(frozen=True)
class SparkJobResult:
    run_id: str
    model_version: str | None
    evaluations: dict[str, SetEvaluation]
    train_seconds: float
    model: object  # the fitted PipelineModel, in memory


def run_spark_job(config: SparkJobConfig, settings: Settings) -> SparkJobResult:
    """Train, evaluate on MNIST test and the foreign sets, log to one MLflow run, register digits-spark@challenger."""
    spark = spark_session(config.spark_master, "digitdrift-training")
    data_dir = Path(config.data_dir)
    train, _ = split_train_validation(
        load_mnist(data_dir / "mnist", "train"), config.validation_size, config.seed, config.train_limit
    )
    # the data goes to the executors as files, not inside every task from the driver
    shared = Path(config.shared_dir or settings.state_dir / "spark-data")
    split = f"mnist-train-seed{config.seed}-validation{config.validation_size}-limit{config.train_limit or 'all'}"
    train_frame = spark.read.parquet(write_split_parquet(train, shared / split))
    test = load_mnist(data_dir / "mnist", "test")
    test_path = write_split_parquet(test, shared / "mnist-test")
    evaluation_frames = {"mnist_test": spark.read.parquet(test_path)}
    for source in FOREIGN_LAYOUTS:
        evaluation_frames[source] = read_png_folders(spark, data_dir / source, source, config.foreign_limit_per_class)
    use_tracking(settings)
    with start_training_run(config.run_name) as run:
        mlflow.set_tags({"digitdrift.job": "train-spark", "model_name": config.model_name})
        mlflow.log_params({key: value for key, value in asdict(config).items() if key != "run_name"})
        mlflow.log_param("train_size", len(train))
        log_digit_sets({"mnist-train": (train, "training"), "mnist-test": (test, "evaluation")}, str(data_dir))
        describe_run(
            f"Spark ML {config.classifier} on PCA({config.pca_k}) features of {len(train)} MNIST images "
            f"(master {config.spark_master}), evaluated on MNIST test and the foreign sets; registered as "
            f"{config.model_name} @{CHALLENGER_ALIAS}."
        )
        started = time.perf_counter()
        model = fit_pipeline(config, with_vectors(train_frame))
        train_seconds = time.perf_counter() - started
        log.info("trained %s on %d images in %.0f s", config.classifier, len(train), train_seconds)
        mlflow.log_metric("train_seconds", train_seconds)
        evaluations = {}
        for name, frame in evaluation_frames.items():
            probabilities, labels = probabilities_of(model, frame)
            evaluations[name] = evaluate_probabilities(name, probabilities, labels, LOW_CONFIDENCE_THRESHOLD)
            mlflow.log_metrics(evaluations[name].metrics(name))
            log.info("%s: accuracy %.4f", name, evaluations[name].accuracy)
        example = with_vectors(spark.createDataFrame(pixels_frame(Digits(train.images[:2], train.labels[:2], "mnist"))))
        prediction = model.transform(example).select(PYFUNC_OUTPUT_COLUMN)
        info = mlflow.spark.log_model(
            model,
            "model",  # artifact_path: still required by MLflow 3.17's Spark flavor to register the model
            # in: pixels, a SparkML vector; out: prediction, the ten probabilities as a SparkML vector
            signature=infer_signature(example.select("pixels"), prediction),
            registered_model_name=config.model_name,
        )
        version = str(info.registered_model_version) if info.registered_model_version else None
        if version:
            set_role(mlflow.MlflowClient(), config.model_name, CHALLENGER_ALIAS, version)
        return SparkJobResult(run.info.run_id, version, evaluations, train_seconds, model)
