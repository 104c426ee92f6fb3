"""python -m training keras|spark|retrain|promote|reference: train and register digit classifiers, retrain the
champion on labeled traffic, promote the champion, (re)compute a model version's monitoring reference."""

from __future__ import annotations

import argparse
import sys

from common.datasets import DatasetError
from common.logs import configure_logging
from common.quiet import native_stderr_filtered
from common.settings import MODEL_NAME, PROMOTION_MIN_ACCURACY, PROMOTION_MIN_REPLAY_IMAGES, Settings, load_settings
from common.spark import DEFAULT_SPARK_MASTER
from common.tracking import use_tracking


def add_model_output_options(command: argparse.ArgumentParser, registration: str) -> None:
    """--model-output and --no-register, as a training command takes them (`registration`: what `cloud submit` does)."""
    command.add_argument("--model-output", help="also write the MLflow model folder (with reference.npz) here")
    command.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="keep the model only in --model-output: no MLflow logged model, no registration (an Azure ML job's "
        f"output, which `python -m cloud submit` {registration}); implied when MLflow tracks to an azureml:// workspace",
    )


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    keras_cmd = commands.add_parser("keras", help="train the Keras CNN on MNIST, log and register it")
    keras_cmd.add_argument(
        "--data-dir", default=str(settings.data_dir), help="datasets in their public layouts (default: %(default)s)"
    )
    keras_cmd.add_argument("--epochs", type=int, default=8, help="passes over the training split (default: %(default)s)")
    keras_cmd.add_argument("--batch-size", type=int, default=128, help="images per gradient step (default: %(default)s)")
    keras_cmd.add_argument(
        "--learning-rate", type=float, default=2e-3, help="Adam's initial rate, cosine-decayed (default: %(default)s)"
    )
    keras_cmd.add_argument(
        "--validation-size",
        type=int,
        default=5000,
        help="MNIST train images held out for validation and the monitoring reference (default: %(default)s)",
    )
    keras_cmd.add_argument(
        "--seed", type=int, default=42, help="seed of the split, weights and augmentation (default: %(default)s)"
    )
    keras_cmd.add_argument("--no-augment", dest="augment", action="store_false", help="train without random shifts and rotations")
    keras_cmd.add_argument(
        "--precision",
        choices=["auto", "float32", "mixed_bfloat16"],
        default="auto",
        help="the training step's Keras dtype policy; auto: mixed_bfloat16 on a CPU with bfloat16 instructions, else "
        "float32; the registered model is float32 either way (default: %(default)s)",
    )
    keras_cmd.add_argument(
        "--no-fused-batch-norm",
        dest="fused_batch_norm",
        action="store_false",
        help="train with Keras' own batch norm instead of TensorFlow's fused kernel (same model, slower)",
    )
    keras_cmd.add_argument("--train-limit", type=int, default=None, help="train on the first N shuffled images only")
    keras_cmd.add_argument(
        "--foreign-limit-per-class", type=int, default=None, help="evaluate on at most N foreign digits per class"
    )
    keras_cmd.add_argument("--run-name", default=None, help="the MLflow run's name (default: MLflow's)")
    add_model_output_options(keras_cmd, "registers")
    keras_cmd.add_argument("--skip-if-champion", action="store_true", help="do nothing when the model already has a @champion")

    spark_cmd = commands.add_parser(
        "spark", help="train a Spark ML classifier (PCA + perceptron or logistic), log and register it"
    )
    spark_cmd.add_argument(
        "--data-dir", default=str(settings.data_dir), help="datasets in their public layouts (default: %(default)s)"
    )
    spark_cmd.add_argument(
        "--classifier",
        choices=["mlp", "logistic"],
        default="mlp",
        help="perceptron or logistic regression (default: %(default)s)",
    )
    spark_cmd.add_argument("--pca-k", type=int, default=50, help="PCA components fed to the classifier (default: %(default)s)")
    spark_cmd.add_argument("--hidden", type=int, default=256, help="the perceptron's hidden units (default: %(default)s)")
    spark_cmd.add_argument("--max-iter", type=int, default=200, help="optimiser iterations (default: %(default)s)")
    spark_cmd.add_argument("--seed", type=int, default=42, help="seed of the split and the fit (default: %(default)s)")
    spark_cmd.add_argument("--train-limit", type=int, default=None, help="train on the first N shuffled images only")
    spark_cmd.add_argument(
        "--foreign-limit-per-class", type=int, default=None, help="evaluate on at most N foreign digits per class"
    )
    spark_cmd.add_argument("--spark-master", default=DEFAULT_SPARK_MASTER, help="local[*] here, or a cluster's master URL")
    spark_cmd.add_argument(
        "--shared-dir",
        help="a folder every Spark node reads; the training split is written there once as Parquet "
        "(default: .digitdrift/spark-data)",
    )
    spark_cmd.add_argument("--run-name", default=None, help="the MLflow run's name (default: MLflow's)")

    retrain_cmd = commands.add_parser(
        "retrain", help="fine-tune a registered model on MNIST plus labeled served digits; register it as @challenger"
    )
    retrain_cmd.add_argument("--labels", required=True, help="label file, CSV or JSONL: request_id,image_index,label")
    retrain_cmd.add_argument(
        "--prediction-log",
        default=str(settings.state_dir / "predictions.db"),
        help="where the labeled (flagged) images are: the SQLite prediction log, a Parquet export, or a prediction "
        "dataset (a folder, az://container/prefix, Azure ML's collector folder) (default: %(default)s)",
    )
    retrain_cmd.add_argument(
        "--parent", default=f"models:/{MODEL_NAME}@champion", help="the version to start from (default: %(default)s)"
    )
    retrain_cmd.add_argument(
        "--data-dir",
        help=f"datasets in their public layouts (default: the parent run's where it holds MNIST, else {settings.data_dir})",
    )
    retrain_cmd.add_argument("--epochs", type=int, default=2, help="passes over MNIST plus the labels (default: %(default)s)")
    retrain_cmd.add_argument("--learning-rate", type=float, default=5e-4, help="Adam's initial rate (default: %(default)s)")
    retrain_cmd.add_argument(
        "--replay-share",
        type=float,
        default=0.25,
        help="labeled images held out of training for the replay comparison (default: %(default)s)",
    )
    retrain_cmd.add_argument("--train-limit", type=int, default=None, help="train on the first N shuffled MNIST images only")
    retrain_cmd.add_argument(
        "--foreign-limit-per-class", type=int, default=None, help="evaluate on at most N foreign digits per class"
    )
    retrain_cmd.add_argument("--run-name", default=None, help="the MLflow run's name (default: MLflow's)")
    retrain_cmd.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="repeat the labeled images as they are (default: each repeat turned, scaled and moved a little)",
    )
    retrain_cmd.add_argument(
        "--no-self-training",
        dest="self_training",
        action="store_false",
        help="no epoch on the incident's unlabeled images the model is sure of (default: one, when there are enough)",
    )
    add_model_output_options(retrain_cmd, "registers with its parent")

    promote_cmd = commands.add_parser("promote", help="move @champion to @challenger if it clears the accuracy bar")
    promote_cmd.add_argument("--model-name", default=MODEL_NAME, help="the registered model (default: %(default)s)")
    promote_cmd.add_argument(
        "--min-accuracy",
        type=float,
        default=PROMOTION_MIN_ACCURACY,
        help="MNIST test accuracy the challenger must reach (default: %(default)s)",
    )
    promote_cmd.add_argument(
        "--min-replay-images",
        type=int,
        default=PROMOTION_MIN_REPLAY_IMAGES,
        help="a retrained challenger's labeled images held out for replay, at least (default: %(default)s)",
    )

    reference_cmd = commands.add_parser(
        "reference", help="(re)compute the monitoring reference of a registered model from its held-out split"
    )
    reference_cmd.add_argument("--model", default=f"models:/{MODEL_NAME}@champion", help="models:/name@alias")

    return parser


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    if args.command == "promote" and args.min_replay_images < 1:
        parser.error(f"--min-replay-images {args.min_replay_images}: a replay set needs at least 1 image to compare on")
    configure_logging()
    if args.command == "keras":
        return _train_keras(args, settings)
    if args.command == "spark":
        return _train_spark(args, settings)
    if args.command == "reference":
        return _reference(args, settings)
    if args.command == "retrain":
        return _retrain(args, settings)
    return _promote(args, settings)


def _train_spark(args: argparse.Namespace, settings) -> int:
    from training.spark_job import SparkJobConfig, run_spark_job

    config = SparkJobConfig(
        data_dir=args.data_dir,
        classifier=args.classifier,
        pca_k=args.pca_k,
        hidden=args.hidden,
        max_iter=args.max_iter,
        seed=args.seed,
        train_limit=args.train_limit,
        foreign_limit_per_class=args.foreign_limit_per_class,
        spark_master=args.spark_master,
        shared_dir=args.shared_dir,
        run_name=args.run_name,
    )
    try:
        result = run_spark_job(config, settings)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {result.run_id}: {config.classifier} trained in {result.train_seconds:.0f} s")
    _print_evaluations(result.evaluations)
    print(f"registered {config.model_name} version {result.model_version} as @challenger")
    return 0


def _print_evaluations(evaluations) -> None:
    for name, evaluation in evaluations.items():
        print(
            f"  {name:<11} accuracy {evaluation.accuracy:.4f}  low-confidence share "
            f"{evaluation.low_confidence_share:.4f}  mean confidence {evaluation.mean_confidence:.4f}"
        )


def _reference(args: argparse.Namespace, settings) -> int:
    with native_stderr_filtered():
        from training.keras_job import reference_for_registered

    use_tracking(settings)
    run_id, reference = reference_for_registered(args.model, settings)
    print(
        f"reference of {args.model} logged to run {run_id}: held-out accuracy {float(reference.accuracy):.4f}, "
        f"foreign threshold {reference.threshold:.2f}"
    )
    return 0


def _refuse_keeping_the_model_nowhere(args: argparse.Namespace) -> bool:
    """Whether a training command was asked to neither register its model nor write it anywhere (said on stderr)."""
    if not args.register and not args.model_output:
        print("error: --no-register needs --model-output: the model would be kept nowhere", file=sys.stderr)
        return True
    return False


def _train_keras(args: argparse.Namespace, settings) -> int:
    if _refuse_keeping_the_model_nowhere(args):
        return 2
    if args.skip_if_champion:
        from training.registry import champion_version

        use_tracking(settings)
        if version := champion_version(MODEL_NAME):
            print(f"reusing {MODEL_NAME} version {version}, the @champion (train anyway without --skip-if-champion)")
            return 0
    with native_stderr_filtered():  # TensorFlow loads only for this command
        from training.keras_job import KerasJobConfig, ModelKeptNowhere, run_keras_job

    config = KerasJobConfig(
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validation_size=args.validation_size,
        seed=args.seed,
        augment=args.augment,
        precision=args.precision,
        fused_batch_norm=args.fused_batch_norm,
        train_limit=args.train_limit,
        foreign_limit_per_class=args.foreign_limit_per_class,
        model_output=args.model_output,
        register=args.register,
        run_name=args.run_name,
    )
    try:
        result = run_keras_job(config, settings)
    except ModelKeptNowhere as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"run {result.run_name} ({result.run_id}): MNIST test accuracy {result.test_accuracy:.4f}, "
        f"trained in {result.train_seconds:.0f} s"
    )
    _print_evaluations(result.evaluations)
    if result.model_version:
        print(f"registered {config.model_name} version {result.model_version} as @challenger ({result.model_uri})")
    else:
        print(f"saved the model to {result.model_uri}, not registered (register it from there)")
    print(f"review it: mlflow ui --backend-store-uri {settings.tracking_uri}")
    return 0


def _retrain(args: argparse.Namespace, settings) -> int:
    from common.labels import LabelFileError
    from common.prediction_dataset import DatasetError as PredictionDataError

    if _refuse_keeping_the_model_nowhere(args):
        return 2
    with native_stderr_filtered():
        from training.keras_job import ModelKeptNowhere
        from training.retrain import RetrainConfig, RetrainError, run_retrain

    config = RetrainConfig(
        labels=args.labels,
        prediction_log=args.prediction_log,
        parent=args.parent,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        replay_share=args.replay_share,
        train_limit=args.train_limit,
        foreign_limit_per_class=args.foreign_limit_per_class,
        run_name=args.run_name,
        augment=args.augment,
        self_training=args.self_training,
        data_dir=args.data_dir,
        model_output=args.model_output,
        register=args.register,
    )
    try:
        result = run_retrain(config, settings)
    except ModelKeptNowhere as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (LabelFileError, RetrainError, DatasetError, PredictionDataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"run {result.run_id}: retrained version {result.parent_version} on {result.trained_on} labeled digits")
    _print_evaluations(result.evaluations)
    if result.replay_accuracy is not None:
        print(
            f"  replay set ({result.replay_images} labeled digits): challenger {result.replay_accuracy:.4f}, "
            f"parent {result.replay_parent_accuracy:.4f}"
        )
    if result.model_version:
        print(f"registered version {result.model_version} as @challenger (parent: version {result.parent_version})")
    if result.model_output:
        registered = "" if result.model_version else ", not registered (register it from there, tagged with its parent)"
        print(f"saved the model to {result.model_output}{registered} (parent: version {result.parent_version})")
    return 0


def _promote(args: argparse.Namespace, settings) -> int:
    from training.registry import promote

    use_tracking(settings)
    decision = promote(args.model_name, args.min_accuracy, args.min_replay_images)
    print(("promoted: " if decision.promoted else "not promoted: ") + decision.reason)
    return 0 if decision.promoted else 1


if __name__ == "__main__":
    sys.exit(main())
