"""Promotion: move the champion role (alias and digitdrift_role tag) to the challenger only when it clears the
accuracy bar (and, for a retrained challenger, beats its parent on the replay set of labeled traffic it never
trained on)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from common.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS
from common.tracking import set_role, version_by_role

ACCURACY_METRIC = "mnist_test_accuracy"
REPLAY_METRIC = "replay_accuracy"  # a retrained challenger's accuracy on held-out labeled traffic
REPLAY_PARENT_METRIC = "replay_parent_accuracy"  # its parent's on the same images
PARENT_VERSION_TAG = "digitdrift.parent_version"
PROMOTION_TAG = "digitdrift.promotion"  # on the challenger's run: promoted or refused, with the reason beside it


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str | None
    reason: str


@dataclass(frozen=True)
class ReplayFigures:
    """A retrained challenger's and its parent's accuracy on the replay set, and which version the parent is."""

    challenger: float
    parent: float
    parent_version: str


def decide_promotion(
    version: str, accuracy: float | None, threshold: float, champion: str | None, replay: ReplayFigures | None = None
) -> PromotionDecision:
    """Whether challenger `version` with MNIST test `accuracy` (and, retrained, its replay figures) may become the champion."""
    if accuracy is None:
        return PromotionDecision(False, version, f"version {version}'s run has no {ACCURACY_METRIC} metric")
    if accuracy < threshold:
        return PromotionDecision(
            False, version, f"version {version} has MNIST test accuracy {accuracy:.4f}, under the threshold {threshold:.4f}"
        )
    if champion == version:
        return PromotionDecision(True, version, f"version {version} is already the champion")
    replayed = ""
    if replay is not None:
        if replay.parent_version != champion:
            return PromotionDecision(
                False,
                version,
                f"version {version} was retrained from version {replay.parent_version}, but the champion is now "
                f"{champion or 'none'}: its replay comparison is against the wrong model; retrain from the champion",
            )
        if replay.challenger <= replay.parent:
            return PromotionDecision(
                False,
                version,
                f"version {version} scores {replay.challenger:.4f} on the replay set of labeled traffic, not above the "
                f"champion's {replay.parent:.4f}",
            )
        replayed = f" and {replay.challenger:.4f} on the replay set against the champion's {replay.parent:.4f}"
    return PromotionDecision(
        True,
        version,
        f"version {version} has MNIST test accuracy {accuracy:.4f} >= {threshold:.4f}{replayed}; "
        f"champion moves from {champion or 'none'} to {version}",
    )


def champion_version(model_name: str) -> str | None:
    try:
        return str(version_by_role(mlflow.MlflowClient(), model_name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def promote(model_name: str, threshold: float) -> PromotionDecision:
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
    replay = None
    if REPLAY_METRIC in metrics:
        replay = ReplayFigures(metrics[REPLAY_METRIC], metrics[REPLAY_PARENT_METRIC], run.data.tags.get(PARENT_VERSION_TAG, ""))
    decision = decide_promotion(str(challenger.version), metrics.get(ACCURACY_METRIC), threshold, champion, replay)
    client.set_tag(challenger.run_id, PROMOTION_TAG, "promoted" if decision.promoted else "refused")
    client.set_tag(challenger.run_id, f"{PROMOTION_TAG}_reason", decision.reason)
    if decision.promoted:
        set_role(client, model_name, CHAMPION_ALIAS, str(challenger.version))
    return decision
