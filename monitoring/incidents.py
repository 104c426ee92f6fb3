"""Each window's checks (Pass / Warn / Fail per rule) and the incidents they make: rules firing together are one
incident, which opens, is updated while it lasts, and resolves after enough quiet windows. Pure; written out as
checks.csv, JUnit XML (for CI systems) and incidents.jsonl by the monitoring job."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from xml.etree import ElementTree

import pandas as pd

from monitoring.alerts import Rule, rule_firings
from monitoring.metrics import DATA_QUALITY_CAUSES

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
CHECK_LEVELS = {PASS: 0, WARN: 1, FAIL: 2}  # what MLflow logs per step (checks/<rule>)
DRIFT = "drift"  # the cause of a firing no data-quality rule explains


def rule_cause(rule: Rule) -> str:
    """The data-quality cause a rule watches (its metric is `<cause>_rate`), or '' for a drift rule."""
    cause = rule.metric.removesuffix("_rate")
    return cause if rule.metric.endswith("_rate") and cause in DATA_QUALITY_CAUSES else ""


def cause_of(firing: list[Rule]) -> str:
    """What explains rules firing together: the data-quality causes among them (comma-separated) when there are
    any, since a pipeline fault moves the drift signals too; else drift; '' when nothing fired."""
    causes = [rule_cause(rule) for rule in firing if rule_cause(rule)]
    return ",".join(dict.fromkeys(causes)) if causes else (DRIFT if firing else "")


def window_checks(metrics: pd.DataFrame, rules: tuple[Rule, ...]) -> pd.DataFrame:
    """One row per window: a column per rule, 'fail' (a critical rule fired), 'warn' (a warning rule fired), 'pass',
    or 'skip' (the window is too small to judge, or the metric is missing), the window's overall `status`, and its
    `cause` (`cause_of` the rules that fired)."""
    fired = {(firing.window, firing.rule.name) for firing in rule_firings(metrics, rules)}
    rows = []
    for row in metrics.sort_values("window").itertuples(index=False):
        checks = {}
        for rule in rules:
            value = getattr(row, rule.metric, None)
            if row.too_small or value is None or pd.isna(value):
                checks[rule.name] = SKIP
            elif (int(row.window), rule.name) in fired:
                checks[rule.name] = FAIL if rule.severity == "critical" else WARN
            else:
                checks[rule.name] = PASS
        judged = [check for check in checks.values() if check != SKIP]
        status = max(judged, key=CHECK_LEVELS.get) if judged else SKIP
        cause = cause_of([rule for rule in rules if checks[rule.name] in (WARN, FAIL)])
        rows.append({"window": int(row.window), **checks, "status": status, "cause": cause})
    return pd.DataFrame(rows, columns=["window", *(rule.name for rule in rules), "status", "cause"])


@dataclass(frozen=True)
class IncidentEvent:
    """One notice about an incident: opened, updated (a rule joined, or the severity rose), or resolved."""

    incident: int  # the window it opened in: its id within one monitored deployment
    event: str
    window: int
    rules: tuple[str, ...]  # every rule that has fired in it so far
    severity: str
    cause: str = ""  # data-quality causes among its rules (comma-separated), or drift
    window_start: str = ""
    window_end: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "rules": list(self.rules)}


def incident_events(checks: pd.DataFrame, rules: tuple[Rule, ...], resolve_after: int) -> list[IncidentEvent]:
    """The incidents of a run of windows, as events in window order. A window where any rule fires opens an incident
    (or updates the open one when a new rule joins it or it turns critical); `resolve_after` judged windows in a
    row with no rule firing resolve it. Windows too small to judge neither extend nor resolve an incident."""
    by_name = {rule.name: rule for rule in rules}

    def named(names: tuple[str, ...]) -> list[Rule]:
        return [by_name[name] for name in names]

    events: list[IncidentEvent] = []
    opened: int | None = None
    seen: tuple[str, ...] = ()
    severity = "warning"
    quiet = 0
    for row in checks.to_dict("records"):
        if row["status"] == SKIP:
            continue
        firing = tuple(rule.name for rule in rules if row.get(rule.name) in (WARN, FAIL))
        level = "critical" if any(row.get(rule.name) == FAIL for rule in rules) else "warning"
        if firing:
            quiet = 0
            if opened is None:
                opened, seen, severity = row["window"], firing, level
                events.append(IncidentEvent(opened, "opened", row["window"], seen, severity, cause_of(named(seen))))
            else:
                joined = tuple(dict.fromkeys((*seen, *firing)))
                worse = level == "critical" and severity == "warning"
                if joined != seen or worse:
                    seen, severity = joined, "critical" if worse else severity
                    events.append(IncidentEvent(opened, "updated", row["window"], seen, severity, cause_of(named(seen))))
        elif opened is not None:
            quiet += 1
            if quiet >= resolve_after:
                events.append(IncidentEvent(opened, "resolved", row["window"], seen, severity, cause_of(named(seen))))
                opened, seen, severity, quiet = None, (), "warning", 0
    return events


def junit_xml(checks: pd.DataFrame, rules: tuple[Rule, ...], suite: str, names: dict[int, str]) -> str:
    """The checks as JUnit XML, one test suite per window (named by `names`) and one test case per rule: Fail is a
    failure, Warn passes with a 'warning' property, a window too small to judge is skipped."""
    root = ElementTree.Element("testsuites", name=suite)
    for row in checks.to_dict("records"):
        window = ElementTree.SubElement(root, "testsuite", name=names.get(row["window"], f"window {row['window']}"))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for rule in rules:
            check = row[rule.name]
            case = ElementTree.SubElement(window, "testcase", classname=suite, name=f"{rule.name} ({rule.metric})")
            counts["tests"] += 1
            if check == FAIL:
                counts["failures"] += 1
                ElementTree.SubElement(case, "failure", message=rule.message, type=rule.severity)
            elif check == SKIP:
                counts["skipped"] += 1
                ElementTree.SubElement(case, "skipped", message="window too small to judge, or no value")
            elif check == WARN:
                properties = ElementTree.SubElement(case, "properties")
                ElementTree.SubElement(properties, "property", name="warning", value=rule.message)
        window.attrib.update({key: str(value) for key, value in counts.items()})
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
