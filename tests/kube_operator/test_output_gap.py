"""The output gap of a transition through `plan`: recorded in status and in its completion event.

A simulated world (`World`) whose store says, as the workers' commits do
(headrace's ``_engine._marks``), when output last came out and when the
execution that owns it started, imported, restored and first wrote output.
"""

from __future__ import annotations

from headrace_operator.observation import RunInfo, StoreInfo
from headrace_operator.output_gap import WAIT
from tests.support.kube_world import World

T0 = 1_000_000.0


def _commit(w: World, epoch: int, execution: str, last_output: float, run: RunInfo | None) -> None:
    """Redis after a commit of ``execution`` (with its marks)."""
    w.commit(epoch)
    w.store.execution_id = execution
    w.store.last_output_at = last_output
    w.store.run = run


def _rescaled_world() -> World:
    """Running 2 pods (execution e1), then rescaled to 3: all new pods Ready at T0 + 16."""
    w = World(now=T0)
    w.run_until_running()
    _commit(w, 5, "e1", T0 + 1.5, RunInfo("e1", first_output=T0 + 1.0))
    w.now = T0 + 10.0
    w.edit(replicas=3)
    w.step(dt=0)  # T0 + 10: the stop begins
    _commit(w, 6, "e1", T0 + 10.25, RunInfo("e1", first_output=T0 + 1.0))  # the stop barrier
    w.kubelet()
    w.step(dt=1.5)  # T0 + 11.5: all old pods gone, the new ones applied
    assert w.status["transition"]["lastOutputAt"] == "1970-01-12T13:46:50.250Z"
    assert w.status["transition"]["podsStartedAt"] == "1970-01-12T13:46:51.500Z"
    assert w.status["transition"]["previousExecution"] == "e1"
    w.kubelet()
    return w


def test_rescale_gap_and_its_phases_are_in_status_and_the_event() -> None:
    w = _rescaled_world()
    # The new execution started and committed its first output before all pods got Ready.
    run = RunInfo("e2", process=T0 + 12.5, imported=T0 + 13.25, restored=T0 + 13.5, first_output=T0 + 14.0)
    _commit(w, 7, "e2", T0 + 14.5, run)
    p = w.step(dt=4.5)  # T0 + 16
    assert w.status["phase"] == "Running"
    assert p.transitions == [("rescale", 6.0)]
    deploy, rec = w.status["lastTransitions"]
    assert deploy["type"] == "deploy" and deploy["reported"] is True and "gapSeconds" not in deploy
    assert rec == {
        "type": "rescale",
        "fromReplicas": 2,
        "toReplicas": 3,
        "startedAt": "1970-01-12T13:46:50Z",
        "readySeconds": 6.0,
        "gapSeconds": 3.75,
        "phases": {"stop": 1.25, "podsStart": 1.0, "imports": 0.75, "restore": 0.25, "firstEpoch": 0.5},
        "lastOutputAt": "1970-01-12T13:46:50.250Z",
        "firstOutputAt": "1970-01-12T13:46:54.000Z",
        "podsStartedAt": "1970-01-12T13:46:51.500Z",
        "previousExecution": "e1",
        "readyAt": "1970-01-12T13:46:56.000Z",
        "reported": True,
    }
    assert sum(rec["phases"].values()) == rec["gapSeconds"]
    assert [m for _t, r, m in w.events if r == "Scaled"] == [
        "rescaled 2 -> 3 pod(s) in 6.0s; output gap 3.8s (stop 1.2s, pods start 1.0s, "
        "imports 0.8s, restore 0.2s, first epoch 0.5s)"
    ]


def test_the_completion_event_waits_for_the_first_output() -> None:
    w = _rescaled_world()
    # All pods Ready, but the new execution has not committed any output yet.
    run = RunInfo("e2", process=T0 + 12.0, imported=T0 + 12.5, restored=T0 + 13.0)
    _commit(w, 7, "e2", T0 + 10.25, run)
    p = w.step(dt=4.5)  # T0 + 16
    assert w.status["phase"] == "Running" and p.transitions == [("rescale", 6.0)]
    rec = w.status["lastTransitions"][-1]
    assert "gapSeconds" not in rec and rec["reported"] is False
    assert "Scaled" not in w.reasons()
    assert p.requeue == 2.0
    run.first_output = T0 + 17.5
    _commit(w, 8, "e2", T0 + 18.0, run)
    w.step(dt=3)  # T0 + 19
    rec = w.status["lastTransitions"][-1]
    assert rec["gapSeconds"] == 7.25 and rec["reported"] is True
    assert rec["phases"] == {
        "stop": 1.25,
        "podsStart": 0.5,
        "imports": 0.5,
        "restore": 0.5,
        "firstEpoch": 4.5,
    }
    assert [m for _t, r, m in w.events if r == "Scaled"] == [
        "rescaled 2 -> 3 pod(s) in 6.0s; output gap 7.2s (stop 1.2s, pods start 0.5s, "
        "imports 0.5s, restore 0.5s, first epoch 4.5s)"
    ]
    w.step(dt=3)  # posted once
    assert w.reasons().count("Scaled") == 1


def test_no_output_within_the_wait_posts_the_event_without_a_gap() -> None:
    w = _rescaled_world()
    _commit(w, 7, "e2", T0 + 10.25, RunInfo("e2", process=T0 + 12.0))
    w.step(dt=4.5)  # T0 + 16: Ready
    w.step(dt=WAIT - 1)
    assert "Scaled" not in w.reasons()
    w.step(dt=1)
    assert [m for _t, r, m in w.events if r == "Scaled"] == [
        "rescaled 2 -> 3 pod(s) in 6.0s; no output yet after the transition"
    ]
    rec = w.status["lastTransitions"][-1]
    assert rec["reported"] is True and "gapSeconds" not in rec


def test_upgrade_gap_and_a_new_change_before_the_first_output() -> None:
    w = World(now=T0)
    w.run_until_running()
    _commit(w, 5, "e1", T0 + 2.0, RunInfo("e1", first_output=T0 + 1.0))
    w.now = T0 + 5.0
    w.edit(image="app:2")
    w.step()  # T0 + 6: stop
    _commit(w, 6, "e1", T0 + 6.5, RunInfo("e1", first_output=T0 + 1.0))
    w.kubelet()
    w.step()  # T0 + 7: start
    w.kubelet()
    w.step()  # T0 + 8: Ready; no output yet
    assert "Upgraded" not in w.reasons()
    # Changed again before any output: the first upgrade is reported without a gap,
    # and the second one's gap runs from the last output of e1.
    w.edit(image="app:3")
    w.step()  # T0 + 9: stop
    assert [m for _t, r, m in w.events if r == "Upgraded"] == [
        "upgraded: all 2 pod(s) Ready in 2.0s; no output yet after the transition"
    ]
    _commit(w, 7, "e2", T0 + 6.5, RunInfo("e2", process=T0 + 7.5))
    w.kubelet()
    w.step()  # T0 + 10: start
    w.kubelet()
    _commit(w, 8, "e3", T0 + 11.5, RunInfo("e3", T0 + 10.25, T0 + 10.5, T0 + 10.75, first_output=T0 + 11.0))
    w.step()  # T0 + 11
    _deploy, first, second = w.status["lastTransitions"]
    assert first["type"] == second["type"] == "upgrade"
    assert "gapSeconds" not in first
    assert second["gapSeconds"] == 4.5 and second["previousExecution"] == "e2"
    assert second["phases"] == {
        "stop": 3.5,
        "podsStart": 0.25,
        "imports": 0.25,
        "restore": 0.25,
        "firstEpoch": 0.25,
    }
    assert [m for _t, r, m in w.events if r == "Upgraded"][1] == (
        "upgraded: all 2 pod(s) Ready in 2.0s; output gap 4.5s (stop 3.5s, pods start 0.2s, "
        "imports 0.2s, restore 0.2s, first epoch 0.2s)"
    )


def test_without_marks_in_the_store_the_event_is_posted_at_once() -> None:
    """A store the workers wrote no marks to (no output yet, or an older runtime)."""
    w = World(now=T0)
    w.run_until_running()
    w.commit(3)
    w.edit(replicas=3)
    w.step()
    w.kubelet()
    w.step()
    w.kubelet()
    w.step()
    rec = w.status["lastTransitions"][-1]
    assert rec["reported"] is True and "lastOutputAt" not in rec
    assert [m for _t, r, m in w.events if r == "Scaled"] == ["rescaled 2 -> 3 pod(s) in 2.0s"]


def test_the_last_five_transitions_are_kept() -> None:
    w = World(now=T0)
    w.run_until_running()
    for n in (3, 2, 3, 2, 3, 2):
        w.edit(replicas=n)
        w.step()
        w.kubelet()
        w.step()
        w.kubelet()
        w.step()
    assert [(r["fromReplicas"], r["toReplicas"]) for r in w.status["lastTransitions"]] == [
        (3, 2),
        (2, 3),
        (3, 2),
        (2, 3),
        (3, 2),
    ]
    assert StoreInfo().run is None


def test_the_new_runs_own_record_of_the_last_output_wins() -> None:
    """The new execution read the last output from the store as it started: the old
    pods' last commit may have come after the operator noted it."""
    w = _rescaled_world()
    run = RunInfo("e2", T0 + 12.5, T0 + 13.0, T0 + 13.5, first_output=T0 + 14.0, previous_output=T0 + 10.75)
    _commit(w, 7, "e2", T0 + 14.5, run)
    w.step(dt=4.5)
    rec = w.status["lastTransitions"][-1]
    assert rec["lastOutputAt"] == "1970-01-12T13:46:50.750Z"
    assert rec["gapSeconds"] == 3.25
    assert rec["phases"] == {
        "stop": 0.75,
        "podsStart": 1.0,
        "imports": 0.5,
        "restore": 0.5,
        "firstEpoch": 0.5,
    }
