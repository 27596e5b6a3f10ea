"""Spec parsing: defaults, every validation message, unknown fields, durations."""

from __future__ import annotations

from typing import Any

import pytest

from headrace_operator.spec import (
    AutoscalerSpec,
    SpecError,
    duration_seconds,
    parse_spec,
    prune,
    to_json,
    unknown_fields,
)
from headrace_operator.spec import DataflowSpec as DS

MIN = {"image": "app:1", "flow": {"import": "app.flows:wc"}}


def _problems(**changes: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec({**MIN, **changes})
    return info.value.problems


def test_defaults_match_the_documented_ones() -> None:
    s = parse_spec(MIN)
    assert (s.replicas, s.workers_per_process, s.partitions) == (1, 1, 256)
    assert (s.state, s.upgrade_mode, s.image_pull_policy) == ("running", "last-state", "IfNotPresent")
    assert s.recovery is None
    assert (s.deletion.snapshot, s.deletion.delete_state) == (True, False)
    a = s.autoscaler
    assert (a.target_utilization, a.utilization_boundary, a.max_scale_down_factor) == (0.7, 0.3, 0.6)
    assert (a.metrics_window, a.stabilization_window, a.scale_down_delay) == ("15m", "5m", "1h")
    assert s.observability.metrics_port == 3030
    assert s.observability.pod_monitor.enabled is False
    assert s.scaling.mode == "manual"
    assert s.flow.bytewax_compat is False


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"replicas": 0}, "spec.replicas", "must be >= 1"),
        ({"replicas": "3"}, "spec.replicas", "must be an integer"),
        ({"replicas": True}, "spec.replicas", "must be an integer"),
        ({"replicas": 300}, "spec.replicas", "exceeds partitions = 256"),
        ({"replicas": 65, "workersPerProcess": 4}, "spec.replicas", "= 260 exceeds"),
        ({"state": "paused"}, "spec.state", "must be one of 'running', 'suspended'"),
        ({"upgradeMode": "savepoint"}, "spec.upgradeMode", "must be one of"),
        ({"image": ""}, "spec.image", "must not be empty"),
        ({"flow": {}}, "spec.flow.import", "is required"),
        (
            {"flow": {"import": "m:f", "bytewaxCompat": "yes"}},
            "spec.flow.bytewaxCompat",
            "must be true or false",
        ),
        ({"flow": {"import": "has spaces in it"}}, "spec.flow.import", "is not an import string"),
        (
            {"flow": {"import": "m:f", "env": [{"name": "1BAD", "value": "x"}]}},
            "spec.flow.env[0].name",
            "not a valid environment variable name",
        ),
        ({"recovery": {}}, "spec.recovery", "exactly one of recovery.url and recovery.secretRef"),
        ({"recovery": {"url": "redis://r/0", "secretRef": {"name": "s"}}}, "spec.recovery", "exactly one"),
        ({"recovery": {"url": "http://r/0"}}, "spec.recovery.url", "does not match"),
        ({"recovery": {"url": "redis+cluster://r/0"}}, "spec.recovery.url", "'r' is not HOST:PORT"),
        ({"recovery": {"url": "redis+cluster://r:6379/1"}}, "spec.recovery.url", "database 0 only"),
        (
            {"recovery": {"url": "redis://r/0", "snapshotInterval": "10"}},
            "spec.recovery.snapshotInterval",
            "is not a duration",
        ),
        (
            {"recovery": {"url": "redis://r/0", "snapshotInterval": "1m", "backupInterval": "10s"}},
            "spec.recovery.backupInterval",
            "at least snapshotInterval",
        ),
        (
            {"autoscaler": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.autoscaler.minReplicas",
            "minReplicas 5 > maxReplicas 2",
        ),
        ({"autoscaler": {"mode": "apply"}}, "spec.autoscaler.mode", "needs scaling.mode 'auto'"),
        ({"autoscaler": {"targetUtilization": 1.5}}, "spec.autoscaler.targetUtilization", "must be <= 1.0"),
        ({"scaling": {"mode": "hpa"}}, "spec.scaling.mode", "must be one of"),
        ({"observability": {"metricsPort": 0}}, "spec.observability.metricsPort", "must be >= 1"),
        (
            {"restartPolicy": {"backoff": {"initialDelay": "10m", "maxDelay": "1m"}}},
            "spec.restartPolicy.backoff",
            "initialDelay must not be longer than maxDelay",
        ),
        ({"replcas": 3}, "spec.replcas", "did you mean 'replicas'?"),
        ({"flow": {"import": "m:f", "argz": []}}, "spec.flow.argz", "did you mean 'args'?"),
        ({"nodeSelector": {"a": 1}}, "spec.nodeSelector.a", "must be a string"),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(changes: dict[str, Any], path: str, words: str) -> None:
    problems = _problems(**changes)
    assert any(p == path and words in m for p, m in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(replicas=0, state="x", image="")
    assert {p for p, _ in problems} == {"spec.replicas", "spec.state", "spec.image"}


@pytest.mark.parametrize(
    "good",
    [
        "app.flows:wc",
        "app.flows",
        "app.flows:make(1, 'a')",
        "flows/wc.py:flow",
        "wc:flow",
    ],
)
def test_import_strings_accepted(good: str) -> None:
    assert parse_spec({**MIN, "flow": {"import": good}}).flow.import_str == good


def test_apply_without_auto_scaling_is_rejected_but_recommend_is_fine() -> None:
    s = parse_spec({**MIN, "autoscaler": {"mode": "recommend"}})
    assert s.autoscaler.effective_mode(s.scaling.mode) == "recommend"
    s = parse_spec({**MIN, "scaling": {"mode": "auto"}})
    assert s.autoscaler.effective_mode(s.scaling.mode) == "apply"


def test_raw_kubernetes_structures_pass_through() -> None:
    tpl = {"spec": {"priorityClassName": "high", "anything": {"x": [1]}}}
    s = parse_spec({**MIN, "podTemplate": tpl, "resources": {"limits": {"cpu": "1"}}})
    assert s.pod_template == tpl and s.resources == {"limits": {"cpu": "1"}}
    assert unknown_fields(DS, {**MIN, "podTemplate": tpl}) == []


def test_to_json_round_trips() -> None:
    full = {
        **MIN,
        "replicas": 3,
        "recovery": {"secretRef": {"name": "r"}},
        "autoscaler": {"mode": "recommend"},
        "tolerations": [{"key": "k"}],
    }
    s = parse_spec(full)
    assert parse_spec(to_json(s)) == s


def test_prune_and_unknown_fields_agree() -> None:
    data = {
        **MIN,
        "oops": 1,
        "flow": {"import": "m:f", "x": 2},
        "imagePullSecrets": [{"name": "a", "nmae": "b"}],
    }
    assert unknown_fields(DS, data) == ["spec.flow.x", "spec.oops", "spec.imagePullSecrets[0].nmae"]
    assert unknown_fields(DS, prune(DS, data)) == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("bad", ["", "10", "1d", "m", "-1s", "1 s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(bad)


def test_autoscaler_mode_default_depends_on_scaling_mode() -> None:
    assert AutoscalerSpec().effective_mode("external") == "off"
    assert AutoscalerSpec(mode="off").effective_mode("auto") == "off"
