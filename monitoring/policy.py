"""The monitor's policy file (monitor.yaml): its rules, their thresholds, severities, streaks and cooldowns, and
when an incident is over; validated with errors that name the file, the field and the value.

A threshold is a number, or derived from the monitored version's reference:
  {reference: accuracy, minus: 0.03}            the reference's value of a metric, less (or plus) a margin
  {reference_chunks: 4, chunk: 200}             the metric over chunks of the reference's held-out sample:
                                                mean minus (below) or plus (above) 4 standard deviations
so every version is judged against its own held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from common.reference import Reference, expected_accuracy
from common.settings import LOW_CONFIDENCE_THRESHOLD
from monitoring.alerts import Rule
from monitoring.routes import ROUTE_KINDS, Route

DEFAULT_POLICY = Path(__file__).with_name("monitor.yaml")
SEVERITIES = ("warning", "critical")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the field and the value."""


def reference_metric(reference: Reference, metric: str) -> np.ndarray:
    """A window metric computed image by image on the reference's held-out sample (its mean over images is the
    metric of a window of them); KeyError for a metric the reference cannot give."""
    confidence = np.asarray(reference.sample_confidence, dtype=float)
    per_image = {
        "confidence_mean": lambda: confidence,
        "low_confidence_rate": lambda: (confidence < LOW_CONFIDENCE_THRESHOLD).astype(float),
        "foreign_rate": lambda: (np.asarray(reference.sample_foreign_score, dtype=float) > reference.threshold).astype(float),
        "estimated_accuracy": lambda: expected_accuracy(reference, confidence).astype(float),
        "confidence_accuracy": lambda: expected_accuracy(reference, confidence).astype(float),
    }
    if metric == "accuracy":
        return np.full(len(confidence), float(reference.accuracy))
    return per_image[metric.removesuffix("_high").removesuffix("_low")]()


REFERENCE_METRICS = (
    "accuracy",
    "confidence_mean",
    "low_confidence_rate",
    "foreign_rate",
    "estimated_accuracy",
    "confidence_accuracy",
)


class _FromReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: Literal[REFERENCE_METRICS]  # type: ignore[valid-type]
    minus: float = 0.0
    plus: float = 0.0


class _FromChunks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference_chunks: float = Field(gt=0, description="standard deviations from the chunks' mean")
    chunk: PositiveInt = 200


class _Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal[ROUTE_KINDS]  # type: ignore[valid-type]
    url: str = ""
    secret_env: str = ""
    smtp_host: str = ""
    smtp_port: PositiveInt = 25
    sender: str = Field(default="", alias="from")
    to: list[str] = []
    username_env: str = ""
    password_env: str = ""
    starttls: bool = False

    @model_validator(mode="after")
    def complete(self) -> _Route:
        if self.type in ("webhook", "slack") and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"a {self.type} route needs 'url' (http:// or https://)")
        if self.type == "email" and not (self.smtp_host and self.sender and self.to):
            raise ValueError("an email route needs 'smtp_host', 'from' and 'to'")
        return self


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    below: float | _FromReference | _FromChunks | None = None
    above: float | _FromReference | _FromChunks | None = None
    severity: Literal[SEVERITIES] = "warning"  # type: ignore[valid-type]
    consecutive: PositiveInt = 1
    cooldown: int | None = Field(default=None, ge=0)
    message: str = ""
    routes: list[str] = []

    @model_validator(mode="after")
    def one_direction(self) -> _Rule:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' (fire under the threshold) or 'above' (fire over it)")
        return self


class _Incidents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolve_after_quiet_windows: PositiveInt = 3


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cooldown_windows: int = Field(default=5, ge=0)
    incidents: _Incidents = _Incidents()
    routes: dict[str, _Route] = {}
    rules: dict[str, _Rule]

    @model_validator(mode="after")
    def routes_exist(self) -> _Policy:
        for name, rule in self.rules.items():
            unknown = [route for route in rule.routes if route not in self.routes]
            if unknown:
                declared = ", ".join(self.routes) or "none"
                raise ValueError(f"rules.{name}.routes names {', '.join(unknown)}, not in 'routes' (declared: {declared})")
        return self


@dataclass(frozen=True)
class Policy:
    """A policy resolved against one version's reference: plain rules with numbers."""

    rules: tuple[Rule, ...]
    cooldown_windows: int = 5
    resolve_after_quiet_windows: int = 3
    source: str = str(DEFAULT_POLICY)
    routes: dict[str, Route] = field(default_factory=dict)
    rule_routes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rule name -> the routes its incidents go to


def _where(error: ValidationError) -> str:
    first = error.errors()[0]
    field_path = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("float", "_From", "function")))
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{field_path}{shown}: {message}" if field_path else message


def parse_policy(raw: object, origin: str) -> _Policy:
    """The policy file's text as checked fields; a PolicyError names the file, the field and the value."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{origin}: expected a mapping with 'rules' (and optionally 'cooldown_windows', 'incidents')")
    try:
        return _Policy.model_validate(raw)
    except ValidationError as err:
        raise PolicyError(f"{origin}: {_where(err)}") from None


def _threshold(spec, metric: str, below: bool, reference: Reference, where: str) -> float:
    if isinstance(spec, (int, float)):
        return float(spec)
    source = spec.reference if isinstance(spec, _FromReference) else metric
    try:
        values = reference_metric(reference, source)
    except KeyError:
        raise PolicyError(
            f"{where}: the reference gives no {source!r}; a derived threshold takes one of {', '.join(REFERENCE_METRICS)}"
        ) from None
    if isinstance(spec, _FromReference):
        return float(values.mean()) - spec.minus + spec.plus
    chunks = [values[start : start + spec.chunk].mean() for start in range(0, len(values) - spec.chunk + 1, spec.chunk)]
    if len(chunks) < 2:
        raise PolicyError(f"{where}: the reference's sample ({len(values)}) holds fewer than two chunks of {spec.chunk}")
    mean, spread = float(np.mean(chunks)), float(np.std(chunks, ddof=1))
    return mean - spec.reference_chunks * spread if below else mean + spec.reference_chunks * spread


def resolve_policy(checked: _Policy, reference: Reference, origin: str) -> Policy:
    """Every rule's threshold as a number for this reference."""
    rules = []
    for name, rule in checked.rules.items():
        below = rule.below is not None
        threshold = _threshold(rule.below if below else rule.above, rule.metric, below, reference, f"{origin}: rules.{name}")
        rules.append(
            Rule(
                name,
                rule.metric,
                threshold,
                below,
                rule.message or f"{rule.metric} {'under' if below else 'over'} {threshold:.4g}",
                rule.consecutive,
                rule.severity,
                rule.cooldown,
            )
        )
    routes = {
        name: Route(
            name,
            route.type,
            route.url,
            route.secret_env,
            route.smtp_host,
            route.smtp_port,
            route.sender,
            tuple(route.to),
            route.username_env,
            route.password_env,
            route.starttls,
        )
        for name, route in checked.routes.items()
    }
    rule_routes = {name: tuple(rule.routes) for name, rule in checked.rules.items()}
    return Policy(
        tuple(rules), checked.cooldown_windows, checked.incidents.resolve_after_quiet_windows, origin, routes, rule_routes
    )


def load_policy(path: str | Path | None, reference: Reference) -> Policy:
    """The policy at `path` (default: the packaged monitor.yaml) resolved against `reference`."""
    path = Path(path) if path else DEFAULT_POLICY
    if not path.is_file():
        raise PolicyError(f"{path}: no policy file here (write one with `python -m monitoring suggest --out {path}`)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    return resolve_policy(parse_policy(raw, str(path)), reference, str(path))


def suggested_policy(reference: Reference, k: float = 4.0, chunk: int = 200) -> dict:
    """A policy file with constant thresholds derived from `reference` (as SageMaker's suggest_baseline writes its
    constraints): the packaged policy's rules, each derived threshold computed once for this version."""
    checked = parse_policy(yaml.safe_load(DEFAULT_POLICY.read_text()), str(DEFAULT_POLICY))
    policy = resolve_policy(checked, reference, str(DEFAULT_POLICY))
    rules = {}
    for rule in policy.rules:
        spec = checked.rules[rule.name]
        rules[rule.name] = {
            "metric": rule.metric,
            ("below" if rule.below else "above"): round(rule.threshold, 6),
            "severity": rule.severity,
            "consecutive": rule.consecutive,
            **({"cooldown": spec.cooldown} if spec.cooldown is not None else {}),
            "message": rule.message,
        }
    for metric, name in (("low_confidence_rate", "low_confidence"), ("foreign_rate", "foreign_flag_rate")):
        threshold = _threshold(_FromChunks(reference_chunks=k, chunk=chunk), metric, False, reference, "suggest")
        rules[name] = {
            "metric": metric,
            "above": round(threshold, 6),
            "severity": "warning",
            "consecutive": 2,
            "message": f"{metric} over the reference's chunks' mean plus {k:g} standard deviations",
        }
    return {
        "cooldown_windows": checked.cooldown_windows,
        "incidents": {"resolve_after_quiet_windows": checked.incidents.resolve_after_quiet_windows},
        "rules": rules,
    }
