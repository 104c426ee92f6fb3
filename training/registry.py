"""Promotion: move the champion alias to the challenger only when it clears the accuracy bar."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from common.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS

ACCURACY_METRIC = "mnist_test_accuracy"


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str | None
    reason: str


def decide_promotion(version: str, accuracy: float | None, threshold: float, champion: str | None) -> PromotionDecision:
    """Whether challenger `version` with MNIST test `accuracy` may become the champion."""
    if accuracy is None:
        return PromotionDecision(False, version, f"version {version}'s run has no {ACCURACY_METRIC} metric")
    if accuracy < threshold:
        return PromotionDecision(
            False, version, f"version {version} has MNIST test accuracy {accuracy:.4f}, under the threshold {threshold:.4f}"
        )
    if champion == version:
        return PromotionDecision(True, version, f"version {version} is already the champion")
    return PromotionDecision(
        True,
        version,
        f"version {version} has MNIST test accuracy {accuracy:.4f} >= {threshold:.4f}; "
        f"champion moves from {champion or 'none'} to {version}",
    )


def champion_version(model_name: str) -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model_name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def promote(model_name: str, threshold: float) -> PromotionDecision:
    """Read the challenger's accuracy from its run and move the champion alias if it qualifies."""
    client = mlflow.MlflowClient()
    try:
        challenger = client.get_model_version_by_alias(model_name, CHALLENGER_ALIAS)
    except MlflowException:
        return PromotionDecision(False, None, f"model {model_name!r} has no @{CHALLENGER_ALIAS}: train one first")
    champion = champion_version(model_name)
    accuracy = client.get_run(challenger.run_id).data.metrics.get(ACCURACY_METRIC)
    decision = decide_promotion(str(challenger.version), accuracy, threshold, champion)
    if decision.promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, challenger.version)
    return decision
