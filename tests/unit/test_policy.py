"""The policy file (rules, thresholds, severities, cooldowns) and what it makes: checks per window and incidents."""

from xml.etree import ElementTree

import pandas as pd
import pytest
import yaml

from monitoring.alerts import evaluate_rules
from monitoring.incidents import incident_events, junit_xml, window_checks
from monitoring.policy import DEFAULT_POLICY, PolicyError, load_policy, suggested_policy


def test_the_packaged_policy_is_the_rules_the_monitor_had(reference):
    policy = load_policy(None, reference)
    # the rules as they were written in code before the policy file: name, metric, threshold, below, streak, severity
    expected = [
        ("foreign_digits", "foreign_p", 1e-4, True, 1, "critical"),
        ("class_mix_drift", "class_mix_p", 1e-4, True, 1, "warning"),
        ("confidence_drift", "confidence_p", 1e-4, True, 1, "warning"),
        ("embedding_drift", "embedding_p", 0.0025, True, 2, "warning"),
        # on the calibrated confidence's bound, which the estimate's interval was before it widened for foreign images
        ("accuracy_drop", "confidence_accuracy_high", float(reference.accuracy) - 0.03, True, 1, "critical"),
    ]
    # and the data-quality rules that came after them, one per cause
    expected += [
        ("inverted_images", "inverted_rate", 0.02, False, 1, "critical"),
        ("blank_images", "blank_rate", 0.05, False, 1, "critical"),
        ("saturated_images", "saturated_rate", 0.02, False, 1, "warning"),
        ("off_centre_images", "off_centre_rate", 0.05, False, 1, "warning"),
        ("wrong_scale_images", "wrong_scale_rate", 0.05, False, 1, "warning"),
        ("duplicate_bursts", "duplicate_rate", 0.02, False, 1, "warning"),
    ]
    got = [(r.name, r.metric, r.threshold, r.below, r.consecutive, r.severity) for r in policy.rules]
    assert [row[:2] + row[3:] for row in got] == [row[:2] + row[3:] for row in expected]
    assert [row[2] for row in got] == pytest.approx([row[2] for row in expected], abs=1e-12)
    assert policy.cooldown_windows == 5 and policy.resolve_after_quiet_windows == 3


def metrics_of(foreign_p, class_mix_p=None, too_small=None):
    windows = range(len(foreign_p))
    return pd.DataFrame(
        {
            "window": list(windows),
            "too_small": too_small or [False] * len(foreign_p),
            "foreign_p": foreign_p,
            "class_mix_p": class_mix_p or [0.5] * len(foreign_p),
        }
    )


def write_policy(path, foreign_below=1e-4, **extra):
    rules = {
        "foreign_digits": {"metric": "foreign_p", "below": foreign_below, "severity": "critical"},
        "class_mix_drift": {"metric": "class_mix_p", "below": 1e-4},
    }
    path.write_text(yaml.safe_dump({"cooldown_windows": 5, "rules": rules, **extra}))
    return path


def test_editing_one_threshold_in_the_file_changes_the_alerts(reference, tmp_path):
    metrics = metrics_of([0.5, 1e-3, 1e-3, 0.5, 0.5, 0.5, 0.5, 0.5, 1e-6])
    strict = load_policy(write_policy(tmp_path / "strict.yaml"), reference)
    lenient = load_policy(write_policy(tmp_path / "lenient.yaml", foreign_below=1e-2), reference)
    assert [alert.window for alert in evaluate_rules(metrics, strict.rules, "m", "1", strict.cooldown_windows)] == [8]
    alerted = evaluate_rules(metrics, lenient.rules, "m", "1", lenient.cooldown_windows)
    assert [(alert.window, alert.severity) for alert in alerted] == [(1, "critical"), (8, "critical")]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"x": {"metric": "foreign_p", "below": 1, "above": 2}}, "rules.x: give exactly one of 'below'"),
        (
            {"x": {"metric": "foreign_p", "below": 1, "severity": "loud"}},
            "rules.x.severity = 'loud': Input should be 'warning' or 'critical'",
        ),
        ({"x": {"metric": "foreign_p", "below": 1, "colour": "red"}}, "rules.x.colour = 'red': Extra inputs are not permitted"),
        ({"x": {"metric": "foreign_p", "below": 1, "consecutive": 0}}, "rules.x.consecutive = 0: Input should be greater than 0"),
    ],
)
def test_a_bad_policy_names_the_file_the_field_and_the_value(reference, tmp_path, rules, message):
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}))
    with pytest.raises(PolicyError) as raised:
        load_policy(path, reference)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_a_threshold_the_reference_cannot_give_is_named(reference, tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({"rules": {"x": {"metric": "embedding_p", "below": {"reference_chunks": 3}}}}))
    with pytest.raises(PolicyError, match=r"rules.x: the reference gives no 'embedding_p'"):
        load_policy(path, reference)
    with pytest.raises(PolicyError, match="no policy file here"):
        load_policy(tmp_path / "missing.yaml", reference)


def test_thresholds_derived_from_the_reference_follow_that_version(reference, tmp_path):
    path = tmp_path / "monitor.yaml"
    rules = {
        "low_confidence": {"metric": "low_confidence_rate", "above": {"reference_chunks": 4, "chunk": 100}},
        "accuracy_drop": {"metric": "estimated_accuracy_high", "below": {"reference": "accuracy", "minus": 0.03}},
    }
    path.write_text(yaml.safe_dump({"rules": rules}))
    by_name = {rule.name: rule for rule in load_policy(path, reference).rules}
    low_confidence, accuracy = by_name["low_confidence"], by_name["accuracy_drop"]
    assert accuracy.threshold == pytest.approx(float(reference.accuracy) - 0.03)
    share = float((reference.sample_confidence < 0.9).mean())
    assert share < low_confidence.threshold < 1 and not low_confidence.below


def test_a_suggested_policy_is_a_valid_file_of_this_versions_numbers(reference, tmp_path):
    suggested = suggested_policy(reference)
    path = tmp_path / "suggested.yaml"
    path.write_text(yaml.safe_dump(suggested))
    policy = load_policy(path, reference)
    assert {rule.name for rule in policy.rules} >= {rule.name for rule in load_policy(DEFAULT_POLICY, reference).rules}
    assert all(isinstance(spec.get("below", spec.get("above")), float) for spec in suggested["rules"].values())


def test_rules_firing_together_are_one_incident_that_resolves_after_quiet_windows(reference, tmp_path):
    policy = load_policy(write_policy(tmp_path / "p.yaml", incidents={"resolve_after_quiet_windows": 2}), reference)
    metrics = metrics_of(
        foreign_p=[0.5, 1e-6, 1e-6, 1e-6, 0.5, 0.5, 0.5, 0.5, 1e-6, 0.5],
        class_mix_p=[0.5, 0.5, 1e-6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        too_small=[False, False, False, False, False, True, False, False, False, False],
    )
    checks = window_checks(metrics, policy.rules)
    assert checks["status"].tolist() == ["pass", "fail", "fail", "fail", "pass", "skip", "pass", "pass", "fail", "pass"]
    assert checks["class_mix_drift"].tolist()[2] == "warn"
    events = incident_events(checks, policy.rules, policy.resolve_after_quiet_windows)
    assert [(e.incident, e.event, e.window, e.rules) for e in events] == [
        (1, "opened", 1, ("foreign_digits",)),
        (1, "updated", 2, ("foreign_digits", "class_mix_drift")),
        (1, "resolved", 6, ("foreign_digits", "class_mix_drift")),  # window 5 too small: neither quiet nor firing
        (8, "opened", 8, ("foreign_digits",)),
    ]
    xml = ElementTree.fromstring(junit_xml(checks, policy.rules, "suite", {1: "2026-12-01T00:00:00+00:00/..."}))
    suites = xml.findall("testsuite")
    assert len(suites) == 10 and suites[1].get("name") == "2026-12-01T00:00:00+00:00/..." and suites[1].get("failures") == "1"
    assert (
        suites[5].get("skipped") == "2"
        and suites[2].find("testcase[@name='class_mix_drift (class_mix_p)']/properties/property").get("name") == "warning"
    )


def test_a_signed_body_verifies_only_with_its_secret_and_while_fresh():
    from monitoring.routes import signature, verify_signature

    header = signature(b'{"a": 1}', "key", 1_000)
    assert verify_signature(b'{"a": 1}', header, "key", now=1_100)
    assert not verify_signature(b'{"a": 1}', header, "other", now=1_100)
    assert not verify_signature(b'{"a": 2}', header, "key", now=1_100)
    assert not verify_signature(b'{"a": 1}', header, "key", now=2_000)  # a replay after the tolerance
    assert not verify_signature(b'{"a": 1}', "garbage", "key", now=1_000)


def test_a_route_a_rule_names_must_be_declared_and_complete(reference, tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({"rules": {"x": {"metric": "foreign_p", "below": 1, "routes": ["ops"]}}}))
    with pytest.raises(PolicyError, match=r"rules.x.routes names ops, not in 'routes' \(declared: none\)"):
        load_policy(path, reference)
    path.write_text(yaml.safe_dump({"routes": {"ops": {"type": "email", "smtp_host": "h"}}, "rules": {}}))
    with pytest.raises(PolicyError, match=r"routes.ops: an email route needs 'smtp_host', 'from' and 'to'"):
        load_policy(path, reference)
