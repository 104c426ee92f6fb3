"""Promotion: move the champion role (alias and digitdrift_role tag) to the challenger only when MLflow's model
validation passes it: the accuracy bar on MNIST test and, for a retrained challenger, a replay accuracy above its
parent's on the labeled traffic it never trained on (or, on a tie, a lower log loss there). The decision is logged
on the challenger's run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException

from common.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS, PROMOTION_MIN_REPLAY_IMAGES
from common.tracking import PARENT_VERSION_TAG, set_role, version_by_role

ACCURACY_METRIC = "mnist_test_accuracy"
REPLAY_METRIC = "replay_accuracy"  # a retrained challenger's accuracy on held-out labeled traffic
REPLAY_PARENT_METRIC = "replay_parent_accuracy"  # its parent's on the same images
REPLAY_LOSS_METRIC = "replay_log_loss"  # the challenger's mean -log P(true label) on them: breaks a tie in accuracy
REPLAY_PARENT_LOSS_METRIC = "replay_parent_log_loss"  # its parent's
REPLAY_IMAGES_METRIC = "replay_images"  # how many labeled images the replay set holds
REPLAY_IMAGES_PARAM = "labeled_replay_images"  # the same, as runs logged it before the metric
PROMOTION_TAG = "digitdrift.promotion"  # on the challenger's run: promoted or refused, with the reason beside it
GATE_ARTIFACT = "promotion/gate.json"  # on the challenger's run: the thresholds, both sides' metrics, the decision
# Replay accuracy must rise, not tie: MLflow's "at least baseline + change" with a change under any 1/n step (and,
# on a tie, the log loss must fall by it)
REPLAY_MIN_GAIN = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str | None
    reason: str
    gate: dict = field(default_factory=dict)  # what MLflow's validation was given, when it ran


@dataclass(frozen=True)
class ReplayFigures:
    """A retrained challenger's and its parent's accuracy on the replay set (None when it holds no image), how many
    images it holds, and which version the parent is."""

    challenger: float | None
    parent: float | None
    parent_version: str
    images: int
    challenger_loss: float | None = None  # the log losses on the same images (runs from before they were logged: None)
    parent_loss: float | None = None

    @property
    def tied(self) -> bool:
        """Both as accurate on the replay set, with the log losses that can tell them apart."""
        losses = (self.challenger_loss, self.parent_loss)
        known = None not in (self.challenger, self.parent, *losses) and all(map(math.isfinite, losses))
        return known and self.challenger == self.parent


def gate_thresholds(threshold: float, replay: ReplayFigures | None, min_replay_images: int) -> dict[str, MetricThreshold]:
    """The promotion gate as MLflow metric thresholds: the MNIST floor; for a retrained challenger, enough replay
    images to compare on and, when it has any, a replay accuracy above its parent's, or, when the two are as
    accurate (on a few dozen images two models a few points apart often get the same count right), as accurate and
    a lower log loss on the same images: the challenger puts more probability on the right answers."""
    thresholds = {ACCURACY_METRIC: MetricThreshold(threshold=threshold, greater_is_better=True)}
    if replay is not None:
        thresholds[REPLAY_IMAGES_METRIC] = MetricThreshold(threshold=min_replay_images, greater_is_better=True)
        if replay.tied:
            thresholds[REPLAY_METRIC] = MetricThreshold(threshold=replay.parent, greater_is_better=True)
            thresholds[REPLAY_LOSS_METRIC] = MetricThreshold(min_absolute_change=REPLAY_MIN_GAIN, greater_is_better=False)
        elif replay.challenger is not None:
            thresholds[REPLAY_METRIC] = MetricThreshold(min_absolute_change=REPLAY_MIN_GAIN, greater_is_better=True)
    return thresholds


def threshold_fields(rule: MetricThreshold) -> dict:
    """A metric threshold as the plain fields MLflow documents."""
    fields = ("threshold", "min_absolute_change", "min_relative_change", "greater_is_better")
    return {name: getattr(rule, name) for name in fields}


def decide_promotion(
    version: str,
    accuracy: float | None,
    threshold: float,
    champion: str | None,
    replay: ReplayFigures | None = None,
    champion_accuracy: float | None = None,
    min_replay_images: int = PROMOTION_MIN_REPLAY_IMAGES,
) -> PromotionDecision:
    """Whether challenger `version` with MNIST test `accuracy` (and, retrained, its replay figures) may become the
    champion, as `mlflow.validate_evaluation_results` judges it against the champion. A retrained challenger whose
    replay set holds fewer than `min_replay_images` fails it: it cannot be compared with its parent."""
    if accuracy is None:
        return PromotionDecision(False, version, f"version {version}'s run has no {ACCURACY_METRIC} metric")
    already = champion == version
    if already:  # the floor still holds; the replay comparison was settled when it was promoted
        replay = None
    if replay is not None and replay.parent_version != champion:
        return PromotionDecision(
            False,
            version,
            f"version {version} was retrained from version {replay.parent_version}, but the champion is now "
            f"{champion or 'none'}: its replay comparison is against the wrong model; retrain from the champion",
        )
    thresholds = gate_thresholds(threshold, replay, min_replay_images)
    candidate = {ACCURACY_METRIC: accuracy}
    baseline = None
    if replay is not None:  # MLflow reads every thresholded metric of a baseline it is given
        candidate[REPLAY_IMAGES_METRIC] = replay.images
        baseline = {ACCURACY_METRIC: champion_accuracy if champion_accuracy is not None else float("nan")}
        baseline[REPLAY_IMAGES_METRIC] = replay.images  # the same images, both sides
        if replay.challenger is not None:
            candidate[REPLAY_METRIC], baseline[REPLAY_METRIC] = replay.challenger, replay.parent
        if replay.tied:
            candidate[REPLAY_LOSS_METRIC], baseline[REPLAY_LOSS_METRIC] = replay.challenger_loss, replay.parent_loss
    gate = {  # as JSON: an unknown champion accuracy is null, not NaN
        "thresholds": {name: threshold_fields(rule) for name, rule in thresholds.items()},
        "candidate": {"version": version, **candidate},
        "baseline": None if baseline is None else {"version": champion, **baseline, ACCURACY_METRIC: champion_accuracy},
    }
    try:
        mlflow.validate_evaluation_results(
            thresholds,
            EvaluationResult(candidate, {}),
            None if baseline is None else EvaluationResult(baseline, {}),
        )
    except ModelValidationFailedException as failed:
        few = replay is not None and replay.images < min_replay_images
        advice = " (too few labeled images held out to compare with the champion: label more and retrain)" if few else ""
        failures = "; ".join(line.strip() for line in failed.message.splitlines() if line.strip())  # one per metric
        reason = f"version {version} fails MLflow's model validation: {failures}{advice}"
        return PromotionDecision(False, version, reason, gate)
    if already:
        return PromotionDecision(
            True, version, f"version {version} is already the champion and still clears {threshold:.4f}", gate
        )
    replayed = (
        ""
        if replay is None
        else f", and {replay.challenger:.4f} on {replay.images} replay images against the champion's {replay.parent:.4f}"
        + (
            f" (a tie: log loss {replay.challenger_loss:.4f} against the champion's {replay.parent_loss:.4f})"
            if replay.tied
            else ""
        )
    )
    reason = (
        f"version {version} passes MLflow's model validation: MNIST test accuracy {accuracy:.4f} >= {threshold:.4f}{replayed}; "
        f"champion moves from {champion or 'none'} to {version}"
    )
    return PromotionDecision(True, version, reason, gate)


def champion_version(model_name: str) -> str | None:
    try:
        return str(version_by_role(mlflow.MlflowClient(), model_name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def replay_figures(run) -> ReplayFigures | None:
    """A retrained challenger's replay figures from its MLflow run; None for a model trained from scratch."""
    metrics, params = run.data.metrics, run.data.params
    if PARENT_VERSION_TAG not in run.data.tags:
        return None
    images = int(metrics.get(REPLAY_IMAGES_METRIC, params.get(REPLAY_IMAGES_PARAM, 0)))
    return ReplayFigures(
        metrics.get(REPLAY_METRIC),
        metrics.get(REPLAY_PARENT_METRIC),
        run.data.tags[PARENT_VERSION_TAG],
        images,
        metrics.get(REPLAY_LOSS_METRIC),
        metrics.get(REPLAY_PARENT_LOSS_METRIC),
    )


def promote(model_name: str, threshold: float, min_replay_images: int = PROMOTION_MIN_REPLAY_IMAGES) -> PromotionDecision:
    """Read the challenger's accuracy from its run and move the champion role if it qualifies: the alias where the
    registry has aliases, and the digitdrift_role tag always (Azure ML's registry has tags, not aliases)."""
    client = mlflow.MlflowClient()
    try:
        challenger = version_by_role(client, model_name, CHALLENGER_ALIAS)
    except MlflowException:
        return PromotionDecision(False, None, f"model {model_name!r} has no @{CHALLENGER_ALIAS}: train one first")
    champion = champion_version(model_name)
    run = client.get_run(challenger.run_id)
    metrics = run.data.metrics
    champion_accuracy = None
    if champion is not None:
        champion_run = client.get_model_version(model_name, champion).run_id
        champion_accuracy = client.get_run(champion_run).data.metrics.get(ACCURACY_METRIC) if champion_run else None
    decision = decide_promotion(
        str(challenger.version),
        metrics.get(ACCURACY_METRIC),
        threshold,
        champion,
        replay_figures(run),
        champion_accuracy,
        min_replay_images,
    )
    if decision.promoted:  # the role first: a run is never tagged promoted while the alias stayed put
        set_role(client, model_name, CHAMPION_ALIAS, str(challenger.version))
    client.set_tag(challenger.run_id, PROMOTION_TAG, "promoted" if decision.promoted else "refused")
    client.set_tag(challenger.run_id, f"{PROMOTION_TAG}_reason", decision.reason[:5000])
    if decision.gate:
        client.log_dict(
            challenger.run_id, {**decision.gate, "promoted": decision.promoted, "reason": decision.reason}, GATE_ARTIFACT
        )
    return decision
