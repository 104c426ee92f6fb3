"""Retraining with lineage: the parent version fine-tuned on MNIST plus labeled served digits, registered as the challenger
(or written to a job's model output) with a reference that takes in the incident traffic the labels came from."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from common.datasets import FOREIGN_LAYOUTS, Digits, load_mnist, load_source
from common.images import fingerprint, to_model_input
from common.labels import read_labels
from common.prediction_dataset import read_records
from common.reference import Reference
from common.settings import CHALLENGER_ALIAS, Settings
from common.tracking import (
    PARENT_VERSION_TAG,
    describe_run,
    log_digit_sets,
    log_frame_input,
    resolve_registered,
    use_tracking,
)
from training.configs import RetrainConfig
from training.data import (
    MIN_INCIDENT_IMAGES,
    IncidentTraffic,
    LabeledImages,
    augmented_copies,
    incident_traffic,
    labeled_images,
    repeats_for,
    replay_mask,
    split_train_validation,
)
from training.evaluate import SetEvaluation, replay_log_loss
from training.keras_job import (
    check_model_kept,
    evaluate_and_log,
    fit_cnn,
    fit_model_reference,
    log_reference,
    log_served_graph,
    log_served_images,
    register_challenger,
    registers_in_mlflow,
    save_model_output,
)
from training.model import compile_cnn
from training.registry import (
    REPLAY_IMAGES_METRIC,
    REPLAY_IMAGES_PARAM,
    REPLAY_LOSS_METRIC,
    REPLAY_METRIC,
    REPLAY_PARENT_LOSS_METRIC,
    REPLAY_PARENT_METRIC,
)
from training.tracking import start_training_run

log = logging.getLogger(__name__)

TRAINED_FINGERPRINTS = "lineage/trained_fingerprints.txt"  # images this version trained on: never counted in evaluation
PSEUDO_LABEL_CONFIDENCE = 0.97  # unlabeled incident images the first fit is at least this sure of become training images
SERVED_IMAGES_PARAM = "reference_served_images"  # served images its reference took in (0: held-out MNIST alone)


class RetrainError(ValueError):
    """Labels that cannot retrain a model; the message says which file and what is missing."""


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    model_version: str | None
    model_output: str | None  # where the model folder went, when it was asked for
    parent_version: str
    trained_on: int  # labeled images in training
    replay_images: int
    replay_accuracy: float | None
    replay_parent_accuracy: float | None
    evaluations: dict[str, SetEvaluation]


def unseen(digits: Digits, trained_fingerprints: set[str]) -> Digits:
    """`digits` without the images a model trained on."""
    keep = np.array([fingerprint(image) not in trained_fingerprints for image in digits.images], dtype=bool)
    return digits.subset(np.flatnonzero(keep))


def run_retrain(config: RetrainConfig, settings: Settings) -> RetrainResult:
    """Fine-tune the parent on MNIST train plus the labeled images, evaluate, log the lineage, register @challenger;
    with `model_output`, also write the model folder there (an Azure ML job's output; only there without `register`)."""
    check_model_kept(config.register, config.model_output)
    use_tracking(settings)
    registers = registers_in_mlflow(config.register, config.model_output)
    labels = read_labels(config.labels)
    log_columns = {name: values.to_numpy() for name, values in read_records(config.prediction_log).items()}
    found, without_image = labeled_images(log_columns, labels)
    if without_image:
        log.info(
            "%d labeled records have no image in the log (it keeps flagged images only): estimates use them, training cannot",
            without_image,
        )
    if len(found.digits) == 0:
        raise RetrainError(f"{config.labels}: none of its {len(labels)} labels matches an image kept in {config.prediction_log}")
    parent = resolve_registered(config.parent)
    # what the parent and its ancestors trained on (self-labeled images too): never replay, reference or "unseen"
    seen_before = ancestor_fingerprints(parent.name, parent.version)
    held_out = replay_mask(found.request_ids, found.image_indexes, config.replay_share)
    held_out &= ~np.isin(found.fingerprints, list(seen_before))
    trained, replay = found.digits.subset(np.flatnonzero(~held_out)), found.digits.subset(np.flatnonzero(held_out))
    trained_fingerprints = set(found.fingerprints[~held_out])

    parent_params = mlflow.get_run(parent.run_id).data.params
    data_dir = _data_dir(config.data_dir, parent_params["data_dir"], settings)
    seed = int(parent_params["seed"])
    keras.utils.set_random_seed(seed)
    mnist_train, validation = split_train_validation(
        load_mnist(data_dir / "mnist", "train"), int(parent_params["validation_size"]), seed, config.train_limit
    )
    repeats = repeats_for(len(trained), len(mnist_train))
    labeled_copies = (
        augmented_copies(trained.images, repeats, seed) if config.augment else np.repeat(trained.images, repeats, axis=0)
    )
    images = np.concatenate([mnist_train.images, labeled_copies])
    targets = np.concatenate([mnist_train.labels, np.repeat(trained.labels, repeats)])
    evaluation_sets = {"mnist_test": load_source("mnist", data_dir)}
    for source in FOREIGN_LAYOUTS:
        evaluation_sets[f"{source}_unseen"] = unseen(
            load_source(source, data_dir, config.foreign_limit_per_class), trained_fingerprints | seen_before
        )

    traffic = incident_traffic(log_columns, labels, trained_fingerprints | seen_before)
    model = mlflow.keras.load_model(config.parent)
    parent_replay = model.predict(to_model_input(replay.images), verbose=0) if len(replay) else None
    compile_cnn(model, config.learning_rate, -(-len(images) // config.batch_size) * config.epochs)
    with start_training_run(config.run_name) as run:
        mlflow.set_tags(
            {
                "digitdrift.job": "retrain",
                "model_name": parent.name,
                PARENT_VERSION_TAG: parent.version,
                "digitdrift.parent_run_id": parent.run_id,
            }
        )
        # data_dir as resolved below: a parameter keeps its first value
        mlflow.log_params({key: value for key, value in asdict(config).items() if key not in ("run_name", "data_dir")})
        mlflow.log_params(
            {
                "parent_version": parent.version,
                # the parent's split, so that a retrain of this version (and its reference) splits MNIST the same way
                "data_dir": str(data_dir),
                "validation_size": int(parent_params["validation_size"]),
                "seed": seed,
                "labeled_train_images": len(trained),
                REPLAY_IMAGES_PARAM: len(replay),
                "labeled_repeats": repeats,
                "train_size": len(images),
            }
        )
        _log_label_sets(found, held_out, config.labels)
        log_digit_sets({"mnist-train": (mnist_train, "training")}, str(data_dir))
        describe_run(
            f"{parent.name} version {parent.version} fine-tuned for {config.epochs} epochs on {len(mnist_train)} MNIST images "
            f"and {len(trained)} labeled served digits (each repeated {repeats} times"
            f"{', turned, scaled and moved a little' if config.augment else ''}); {len(replay)} labeled digits held "
            f"out as the replay set promotion compares on. Foreign sets are evaluated without the images trained on. "
            + (
                f"Registered as {parent.name} @{CHALLENGER_ALIAS}."
                if registers
                else "The model is the job's model output, registered from there with its parent."
            )
        )
        fit_cnn(model, images, targets, validation, config.epochs, config.batch_size, run)
        if config.self_training and traffic is not None and len(traffic.images) >= 2 * MIN_INCIDENT_IMAGES:
            replay_fingerprints = set(found.fingerprints[held_out])
            pseudo, traffic = _self_train(model, traffic, replay_fingerprints, images, targets, validation, config, run)
            trained_fingerprints |= pseudo
            evaluation_sets = {name: unseen(digits, pseudo) for name, digits in evaluation_sets.items()}
        mlflow.log_params({f"{name}_images": len(digits) for name, digits in evaluation_sets.items()})
        evaluations, _ = evaluate_and_log(model, evaluation_sets, config.low_confidence_threshold)
        replay_accuracy = replay_parent_accuracy = None
        mlflow.log_metric(REPLAY_IMAGES_METRIC, len(replay))  # the gate refuses too few to compare on
        if parent_replay is not None:
            challenger_replay = model.predict(to_model_input(replay.images), verbose=0)
            replay_accuracy = float((challenger_replay.argmax(1) == replay.labels).mean())
            replay_parent_accuracy = float((parent_replay.argmax(1) == replay.labels).mean())
            mlflow.log_metrics(
                {
                    REPLAY_METRIC: replay_accuracy,
                    REPLAY_PARENT_METRIC: replay_parent_accuracy,
                    REPLAY_LOSS_METRIC: replay_log_loss(challenger_replay, replay.labels),
                    REPLAY_PARENT_LOSS_METRIC: replay_log_loss(parent_replay, replay.labels),
                }
            )
            log.info(
                "replay set (%d labeled digits): challenger %.4f, parent %.4f",
                len(replay),
                replay_accuracy,
                replay_parent_accuracy,
            )
        reference = _log_reference_with_traffic(model, validation, seed, traffic, run.info.run_id)
        log_served_graph(model, run.info.run_id)
        mlflow.log_text("\n".join(sorted(trained_fingerprints)) + "\n", TRAINED_FINGERPRINTS)
        example = to_model_input(validation.images[:2])
        model_version = None
        if registers:
            info = register_challenger(model, example, parent.name)
            model_version = str(info.registered_model_version) if info.registered_model_version else None
        if model_version:
            mlflow.MlflowClient().set_model_version_tag(parent.name, model_version, PARENT_VERSION_TAG, parent.version)
        if config.model_output:  # e.g. an Azure ML job's mlflow_model output, registered from there with its parent
            save_model_output(Path(config.model_output), model, example, reference)
        return RetrainResult(
            run.info.run_id,
            model_version,
            config.model_output,
            parent.version,
            len(trained),
            len(replay),
            replay_accuracy,
            replay_parent_accuracy,
            evaluations,
        )


def _self_train(
    model: keras.Model,
    traffic: IncidentTraffic,
    replay_fingerprints: set[str],
    images: np.ndarray,
    targets: np.ndarray,
    validation: Digits,
    config: RetrainConfig,
    run,
) -> tuple[set[str], IncidentTraffic]:
    """Self-training on the incident's unlabeled images: half of them (by fingerprint) labeled by the model just fitted
    where it is at least PSEUDO_LABEL_CONFIDENCE sure, then one more epoch with them beside MNIST and the labeled
    images; the other half stays unseen for the reference, and the replay set's images stay out of training.
    (the pseudo-labeled fingerprints, the traffic left for the reference)"""
    pool = replay_mask(traffic.fingerprints, np.zeros(len(traffic.fingerprints), dtype=int), 0.5)
    pool &= ~np.isin(traffic.fingerprints, list(replay_fingerprints))
    probabilities = model.predict(to_model_input(traffic.images[pool]), batch_size=512, verbose=0)
    sure = probabilities.max(axis=1) >= PSEUDO_LABEL_CONFIDENCE
    pseudo_images, pseudo_labels = traffic.images[pool][sure], probabilities[sure].argmax(axis=1)
    kept = replace(traffic, images=traffic.images[~pool], fingerprints=traffic.fingerprints[~pool])
    mlflow.log_params({"pseudo_label_pool": int(pool.sum()), "pseudo_labeled_images": len(pseudo_images)})
    log.info(
        "self-training: %d of %d unlabeled incident images labeled by the model (confidence >= %.2f); one more epoch",
        len(pseudo_images),
        int(pool.sum()),
        PSEUDO_LABEL_CONFIDENCE,
    )
    if len(pseudo_images) == 0:
        return set(), kept
    repeats = repeats_for(len(pseudo_images), len(images))
    copies = augmented_copies(pseudo_images, repeats, 1) if config.augment else np.repeat(pseudo_images, repeats, axis=0)
    more_images = np.concatenate([images, copies])
    more_targets = np.concatenate([targets, np.repeat(pseudo_labels, repeats)])
    compile_cnn(model, config.learning_rate / 2, -(-len(more_images) // config.batch_size))
    fit_cnn(model, more_images, more_targets, validation, 1, config.batch_size, run, initial_epoch=config.epochs)
    return set(traffic.fingerprints[pool][sure]), kept


def ancestor_fingerprints(model_name: str, version: str) -> set[str]:
    """Every image `version` and the versions it was retrained from trained on (their runs' lineage files); empty
    for a version trained from scratch."""
    client = mlflow.MlflowClient()
    found: set[str] = set()
    current: str | None = str(version)
    while current is not None:
        registered = client.get_model_version(model_name, current)
        current = registered.tags.get(PARENT_VERSION_TAG)
        if current is not None:
            text = mlflow.artifacts.load_text(f"runs:/{registered.run_id}/{TRAINED_FINGERPRINTS}")
            found |= set(filter(None, text.splitlines()))
    return found


def _data_dir(given: str | None, parents: str, settings: Settings) -> Path:
    """Where the datasets are: `given`; else the parent run's folder where it still holds MNIST (another machine's,
    or an earlier Azure ML job's mount path, does not), else the settings'."""
    if given:
        return Path(given)
    return Path(parents) if (Path(parents) / "mnist").is_dir() else settings.data_dir


def _log_reference_with_traffic(
    model: keras.Model, validation: Digits, seed: int, traffic: IncidentTraffic | None, run_id: str
) -> Reference:
    """The retrained version's reference, logged on its run and returned: held-out MNIST, and the incident traffic
    it was trained for when there is one, so that the traffic it now handles is no longer foreign to it (its images
    kept on the run)."""
    if traffic is None:
        mlflow.log_param(SERVED_IMAGES_PARAM, 0)
        reference = fit_model_reference(model, validation, seed)
        log_reference(reference, run_id)
        return reference
    mlflow.log_params(
        {
            SERVED_IMAGES_PARAM: len(traffic.images),
            "reference_served_share": round(traffic.share, 4),
            "reference_served_from": traffic.first_timestamp,
            "reference_served_to": traffic.last_timestamp,
        }
    )
    log.info(
        "reference: held-out MNIST and %d foreign-flagged served images not trained on (traffic %s to %s, %.0f%% foreign)",
        len(traffic.images),
        traffic.first_timestamp,
        traffic.last_timestamp,
        100 * traffic.share,
    )
    reference = fit_model_reference(model, validation, seed, traffic.images, traffic.share)
    log_reference(reference, run_id)
    log_served_images(run_id, traffic.images, traffic.fingerprints, traffic.share)
    return reference


def _log_label_sets(found: LabeledImages, held_out: np.ndarray, path: str) -> None:
    """The labeled images trained on and held out for replay, as the run's dataset inputs (source: the label file)."""
    frame = pd.DataFrame(
        {
            "request_id": found.request_ids,
            "image_index": found.image_indexes.astype(np.int64),
            "window": pd.array(found.windows, dtype="Int64"),  # none for real clients' records
            "label": found.digits.labels.astype(np.int64),
            "fingerprint": found.fingerprints,
        }
    )
    source = str(Path(path).resolve())
    for name, part, context in (("labels-train", frame[~held_out], "training"), ("labels-replay", frame[held_out], "evaluation")):
        log_frame_input(part.reset_index(drop=True), source, name, context)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / Path(path).name
        copy.write_bytes(Path(path).read_bytes())
        mlflow.log_artifact(str(copy), "lineage")
