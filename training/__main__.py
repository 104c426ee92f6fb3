"""python -m training keras|spark|retrain|promote|reference: train and register digit classifiers, retrain the
champion on labeled traffic, promote the champion, (re)compute a model version's monitoring reference."""

from __future__ import annotations

import argparse
import sys

from common.cli import add_options, options_of
from common.datasets import DatasetError
from common.logs import configure_logging
from common.quiet import native_stderr_filtered
from common.settings import MODEL_NAME, PROMOTION_MIN_ACCURACY, PROMOTION_MIN_REPLAY_IMAGES, Settings, load_settings
from common.tracking import use_tracking
from training.configs import KerasJobConfig, RetrainConfig, SparkJobConfig


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The command line: every option with its help."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    keras_cmd = commands.add_parser("keras", help="train the Keras CNN on MNIST, log and register it")
    add_options(keras_cmd, KerasJobConfig, {"data_dir": str(settings.data_dir)})
    keras_cmd.add_argument("--skip-if-champion", action="store_true", help="do nothing when the model already has a @champion")

    spark_cmd = commands.add_parser(
        "spark", help="train a Spark ML classifier (PCA + perceptron or logistic), log and register it"
    )
    add_options(spark_cmd, SparkJobConfig, {"data_dir": str(settings.data_dir)})

    retrain_cmd = commands.add_parser(
        "retrain", help="fine-tune a registered model on MNIST plus labeled served digits; register it as @challenger"
    )
    add_options(retrain_cmd, RetrainConfig, {"prediction_log": str(settings.state_dir / "predictions.db")})

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
    from training.spark_job import run_spark_job

    config = SparkJobConfig(**options_of(args, SparkJobConfig))
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
        from training.keras_job import ModelKeptNowhere, run_keras_job

    config = KerasJobConfig(**options_of(args, KerasJobConfig))
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
        from training.retrain import RetrainError, run_retrain

    config = RetrainConfig(**options_of(args, RetrainConfig))
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
