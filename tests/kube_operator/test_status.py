"""Conditions, event de-duplication and reading pods' own words about what failed."""

from __future__ import annotations

from typing import Any

import pytest

from headrace_operator.conditions import CONDITION_TYPES, get_condition, set_condition
from headrace_operator.diagnosis import diagnose_pods
from headrace_operator.events import EventDeduper
from headrace_operator.observation import PodInfo
from headrace_operator.status import iso, parse_iso


def test_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    c = set_condition([], "Ready", "True", "Running", "2/2", 1, 100.0)
    c = set_condition(c, "Ready", "True", "Running", "3/3", 2, 500.0)
    ready = get_condition(c, "Ready")
    assert ready is not None
    assert ready["lastTransitionTime"] == iso(100.0)
    assert (ready["message"], ready["observedGeneration"]) == ("3/3", 2)
    c = set_condition(c, "Ready", "False", "PodsNotReady", "1/3", 2, 900.0)
    assert get_condition(c, "Ready")["lastTransitionTime"] == iso(900.0)  # type: ignore[index]


def test_conditions_are_kept_in_a_stable_order() -> None:
    c: list[dict[str, Any]] = []
    for t in reversed(CONDITION_TYPES):
        c = set_condition(c, t, "Unknown", "X", "", 1, 0.0)
    assert [x["type"] for x in c] == CONDITION_TYPES


def test_long_messages_are_cut() -> None:
    c = set_condition([], "Degraded", "True", "X", "m" * 5000, 1, 0.0)
    assert len(c[0]["message"]) == 1024


def test_iso_round_trip() -> None:
    assert parse_iso(iso(1_700_000_000.0)) == 1_700_000_000.0
    assert parse_iso("") is None


def test_event_dedup_is_per_object_and_message() -> None:
    d = EventDeduper(window=1800)
    assert d.allow("ns/a", "Warning", "R", "m", 0)
    assert not d.allow("ns/a", "Warning", "R", "m", 1799)
    assert d.allow("ns/b", "Warning", "R", "m", 10)
    assert d.allow("ns/a", "Warning", "R", "other", 10)
    assert d.allow("ns/a", "Warning", "R", "m", 1801)
    d.forget("ns/a")
    assert d.allow("ns/a", "Warning", "R", "m", 1802)


def test_event_dedup_by_key_with_resend_intervals() -> None:
    d = EventDeduper()
    report = "scale-up 2 -> 3 (not applied: recommend mode): utilisation {}%"
    # A recommendation evaluated every 30 s for an hour: two events, not 120.
    posted = [
        t for t in range(0, 3600, 30) if d.allow("ns/a", "Normal", "ScalingReport", report.format(t), t)
    ]
    assert posted == [0, 1800]
    # ... unless it changes.
    assert d.allow("ns/a", "Normal", "ScalingReport", "scale-up 2 -> 4 (not applied: x): y", 1830)
    # A transition's completion is always posted, identical text or not.
    assert all(
        d.allow("ns/a", "Normal", "Upgraded", "upgraded: all 2 pod(s) Ready in 5.0s", t) for t in (0, 1)
    )
    # A warning that lasts comes again after 10 minutes; a new crash at once.
    crash = "pod wc-1 exited with code 1 (restart {}): boom"
    assert d.allow("ns/a", "Warning", "WorkerCrashed", crash.format(1), 0)
    assert not d.allow("ns/a", "Warning", "WorkerCrashed", crash.format(1), 599)
    assert d.allow("ns/a", "Warning", "WorkerCrashed", crash.format(1), 600)
    assert d.allow("ns/a", "Warning", "WorkerCrashed", crash.format(2), 601)


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def test_pod_info_from_a_crash_looping_pod() -> None:
    pod = _pod(
        "wc-3",
        phase="Running",
        podIP="10.1.2.3",
        conditions=[{"type": "Ready", "status": "False"}],
        containerStatuses=[
            {
                "name": "worker",
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {
                    "terminated": {"exitCode": 2, "reason": "Error", "message": "error: can't import 'x'"}
                },
            },
            {"name": "sidecar", "restartCount": 99},
        ],
    )
    info = PodInfo.from_pod(pod)
    assert (info.ordinal, info.ip, info.ready, info.restarts) == (3, "10.1.2.3", False, 4)
    assert (info.waiting_reason, info.last_exit_code) == ("CrashLoopBackOff", 2)
    assert info.last_message == "error: can't import 'x'"


def test_pod_info_unschedulable_and_terminating() -> None:
    pod = {
        "metadata": {"name": "wc-0", "deletionTimestamp": "2024-01-01T00:00:00Z"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: insufficient cpu",
                }
            ],
        },
    }
    info = PodInfo.from_pod(pod)
    assert info.terminating and "insufficient cpu" in info.unschedulable


@pytest.mark.parametrize(
    ("pod", "reason", "words"),
    [
        (
            PodInfo("wc-0", 0, waiting_reason="ImagePullBackOff", waiting_message="not found"),
            "ImagePullError",
            "spec.imagePullSecrets",
        ),
        (
            PodInfo(
                "wc-0",
                0,
                waiting_reason="CreateContainerConfigError",
                waiting_message='secret "redis" not found',
            ),
            "ConfigError",
            'secret "redis"',
        ),
        (
            PodInfo(
                "wc-0",
                0,
                last_exit_code=2,
                restarts=1,
                last_message="Traceback\n  File x\nerror: can't import 'a.b': No module named 'a'",
            ),
            "StartupError",
            "No module named 'a'",
        ),
        (
            PodInfo("wc-0", 0, last_exit_code=137, last_reason="OOMKilled", restarts=1),
            "OOMKilled",
            "limits.memory",
        ),
        (
            PodInfo("wc-0", 0, last_exit_code=1, restarts=2, last_message="x\nerror: boom\n"),
            "WorkerCrashed",
            "error: boom",
        ),
        (
            PodInfo(
                "wc-0",
                0,
                last_exit_code=1,
                restarts=1,
                last_message="Traceback\nerror: error building sink in step 'f.o'\n"
                "caused by: ConnectionError: Redis at r:6379 is unreachable\n"
                "caused by: ConnectionRefusedError: [Errno 111] Connection refused\n",
            ),
            "WorkerCrashed",
            "in step 'f.o'; caused by: ConnectionError: Redis at r:6379 is unreachable; "
            "caused by: ConnectionRefusedError",
        ),
        (PodInfo("wc-0", 0, unschedulable="0/3 nodes"), "Unschedulable", "spec.nodeSelector"),
    ],
)
def test_diagnose_names_the_problem_and_the_fix(pod: PodInfo, reason: str, words: str) -> None:
    got = diagnose_pods([pod], image="app:1")
    assert got is not None and got[0] == reason and words in got[1]


def test_diagnose_prefers_the_root_cause_and_ignores_ready_pods() -> None:
    crashed_peer = PodInfo("wc-0", 0, last_exit_code=1, restarts=1, last_message="peer lost")
    bad_image = PodInfo("wc-1", 1, waiting_reason="ErrImagePull")
    recovered = PodInfo("wc-2", 2, ready=True, last_exit_code=1, restarts=5)
    assert diagnose_pods([crashed_peer, bad_image, recovered])[0] == "ImagePullError"  # type: ignore[index]
    assert diagnose_pods([recovered]) is None
