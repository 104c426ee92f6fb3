"""Alert rules over window metrics (the rules themselves are the policy file's): streaks, cooldown, de-duplication; and sinks."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Fires when `metric` is below (p-values) or above `threshold` in a window big enough to judge."""

    name: str
    metric: str
    threshold: float
    below: bool  # True: fire when metric < threshold (p-values); False: when metric > threshold
    message: str
    consecutive: int = 1  # windows in a row the condition must hold before the rule fires
    severity: str = "warning"  # warning or critical: a window's check is Warn or Fail when the rule fires
    cooldown: int | None = None  # quiet windows before it alerts again (None: the run's cooldown_windows)


@dataclass(frozen=True)
class Alert:
    window: int
    rule: str
    metric: str
    value: float
    threshold: float
    message: str
    model_name: str
    model_version: str
    severity: str = "warning"
    window_start: str = ""  # ISO-8601, for a window of wall-clock time ('' for a simulated window)
    window_end: str = ""


@dataclass(frozen=True)
class Firing:
    """A rule firing in a window, whether or not an alert is raised for it."""

    window: int
    rule: Rule
    value: float


def rule_firings(metrics: pd.DataFrame, rules: tuple[Rule, ...]) -> list[Firing]:
    """Every window and rule where the rule fires, in window order: its condition holds in `consecutive` judged
    windows in a row. Windows marked too small are never judged; no cooldown or de-duplication here."""
    firings: list[Firing] = []
    streak: dict[str, int] = {}
    for row in metrics.sort_values("window").itertuples(index=False):
        if row.too_small:
            continue
        for rule in rules:
            value = getattr(row, rule.metric, math.nan)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            holds = value < rule.threshold if rule.below else value > rule.threshold
            streak[rule.name] = streak.get(rule.name, 0) + 1 if holds else 0
            if streak[rule.name] >= rule.consecutive:
                firings.append(Firing(int(row.window), rule, float(value)))
    return firings


def evaluate_rules(
    metrics: pd.DataFrame, rules: tuple[Rule, ...], model_name: str, model_version: str, cooldown_windows: int = 5
) -> list[Alert]:
    """Alerts in window order. A rule that keeps firing raises once (de-duplication) and again only
    after `cooldown_windows` quiet windows."""
    alerts: list[Alert] = []
    last_fired: dict[str, int] = {}
    for firing in rule_firings(metrics, rules):
        rule = firing.rule
        previous = last_fired.get(rule.name)
        last_fired[rule.name] = firing.window
        cooldown = cooldown_windows if rule.cooldown is None else rule.cooldown
        if previous is not None and firing.window - previous <= cooldown:
            continue  # still the same episode: already raised
        alerts.append(
            Alert(
                firing.window,
                rule.name,
                rule.metric,
                firing.value,
                rule.threshold,
                rule.message,
                model_name,
                model_version,
                rule.severity,
            )
        )
    return alerts


def write_jsonl(alerts: list[Alert], path: Path) -> Path:
    with path.open("a") as stream:
        for alert in alerts:
            stream.write(json.dumps(asdict(alert)) + "\n")
    return path


def post_webhook(alerts: list[Alert], url: str, timeout_s: float = 10.0) -> int:
    """POST each alert as JSON; return how many the receiver accepted (2xx). Failures are logged, not raised."""
    accepted = 0
    with httpx.Client(timeout=timeout_s) as client:
        for alert in alerts:
            try:
                response = client.post(url, json={"source": "digitdrift", **asdict(alert)})
                accepted += response.is_success
                if not response.is_success:
                    log.warning("webhook %s answered %d for %s", url, response.status_code, alert.rule)
            except httpx.HTTPError as err:
                log.warning("webhook %s failed for %s: %s", url, alert.rule, err)
    return accepted


def firing_windows(metrics: pd.DataFrame, rules: tuple[Rule, ...]) -> list[int]:
    """Windows (big enough to judge) where any rule fires, alerted or not (before cooldown)."""
    return sorted({firing.window for firing in rule_firings(metrics, rules)})
