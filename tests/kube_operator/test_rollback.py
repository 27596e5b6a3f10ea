"""Automatic rollback in the operator's plan (issue 26, item 2): ``spec.rollback``,
``status.lastStableSpec``, ``status.rollback``, the pre-upgrade snapshot.

Driven through `plan` with `World` (tests.support.kube_world), which plays
the cluster and Redis between plans; every plan starts from the stored status
alone, so an operator restart is a plan like any other (one is also cut off
after part of its actions, below).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from headrace_operator import manifests as mf
from headrace_operator.reconcile import StoreInfo, plan
from headrace_operator.spec import parse_spec, to_json
from tests.support.kube_world import BASE, World

SPEC = {**BASE, "rollback": {"enabled": True, "readyTimeout": "5m"}}
TIMEOUT = 300.0


def _stable(spec: dict[str, Any] | None = None) -> World:
    """Generation 1 runs Ready with epoch 5 committed."""
    w = World(copy.deepcopy(SPEC if spec is None else spec))
    w.run_until_running()
    w.commit(5)
    w.step()
    return w


def _image(w: World) -> str:
    assert w.sts is not None
    return str(w.sts["spec"]["template"]["spec"]["containers"][0]["image"])


def _kinds(w: World) -> list[str]:
    assert w.last is not None
    return [a.kind for a in w.last.actions]


def _crash_looping(w: World) -> None:
    """The new pods start, write some state, and never get Ready."""
    w.kubelet(ready=False)
    for p in w.pods:
        p.waiting_reason, p.restarts = "CrashLoopBackOff", 1
        p.last_exit_code, p.last_message = 1, "error: KeyError: 'user' in step wc.parse"


def _upgrade_to(w: World, image: str) -> None:
    """Change the image: stop at a barrier, then start the new spec (pods not there yet)."""
    w.edit(image=image)
    w.step()
    assert w.status["transition"]["type"] == "upgrade"
    w.kubelet()
    w.step()
    assert w.status["transition"]["stage"] == "Starting"


def _broken_then_rolled_back(w: World) -> None:
    """Generation 2 (image app:broken) commits epoch 7, then crash-loops past readyTimeout."""
    _upgrade_to(w, "app:broken")
    _crash_looping(w)
    w.commit(7)
    w.step(dt=TIMEOUT - 30)
    assert "RolledBack" not in w.reasons()
    w.step(dt=31)  # now past the deadline


def test_a_broken_image_is_rolled_back_with_the_state_kept_before_it() -> None:
    w = _stable()
    assert w.status["lastStableSpec"]["generation"] == 1
    assert w.status["lastStableSpec"]["spec"] == SPEC
    _upgrade_to(w, "app:broken")
    # The state at the stop barrier was kept before the new spec started.
    assert [(k.name, k.epoch) for k in w.store.kept] == [("pre-upgrade-g2", 5)]
    assert w.status["rollback"] == {
        "state": "Watching",
        "generation": 2,
        "startedAt": "1970-01-12T13:46:45Z",
        "snapshot": "pre-upgrade-g2",
        "epoch": 5,
        "stableGeneration": 1,
    }
    _crash_looping(w)
    w.commit(7)  # the broken spec wrote state before failing
    w.step(dt=TIMEOUT - 30)
    assert "RolledBack" not in w.reasons()
    w.step(dt=31)
    assert _kinds(w) == ["dry_run", "dry_run", "dry_run", "scale"]  # the stable spec is checked first
    [(etype, message)] = [(t, m) for t, r, m in w.events if r == "RolledBack"]
    assert etype == "Warning"
    assert message.startswith(
        "generation 2 failed (WorkerCrashed: not Ready 301s after its start (rollback.readyTimeout 5m): "
        "0/2 pod(s) Ready; "
    )
    assert message.endswith(
        "Rolling back to generation 1 (status.lastStableSpec) with the state kept before the change "
        "(snapshot 'pre-upgrade-g2', epoch 5); generation 2 is not retried: change the spec to try again"
    )
    assert w.status["transition"]["type"] == "rollback"
    assert w.status["phase"] == "Upgrading"
    assert w.status["rollback"]["state"] == "RollingBack"
    # Pods gone: the live state (epoch 7) is replaced by the kept snapshot (epoch 5).
    w.kubelet()
    w.step()
    assert [a for a in w.applied[-6:] if not a.startswith(("check", "create", "apply Service"))] == [
        "delete_state",
        "restore kept snapshot pre-upgrade-g2",
        "apply StatefulSet wc replicas=2",
    ]
    assert w.restored == [(None, "pre-upgrade-g2")]
    assert (w.store.exists, w.store.epoch) == (True, 5)
    assert _image(w) == "app:1"
    assert w.status["deployedGeneration"] == 1
    w.kubelet()
    w.step()
    assert w.reasons()[-1] == "RollbackFinished"
    assert w.status["phase"] == "Running"
    assert w.status["rollback"]["state"] == "RolledBack"
    assert w.status["lastStableSpec"]["generation"] == 1
    assert w.cond("Ready")["status"] == "True"
    degraded = w.cond("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert degraded["message"].startswith("generation 2 was rolled back to generation 1 (WorkerCrashed: ")
    assert degraded["message"].endswith("Fix the spec and apply it (a new generation) to try again")
    # The failed generation is not retried: the stable spec keeps running, the state moves on.
    w.commit(6)
    for _ in range(10):
        w.step(dt=60)
        assert [k for k in _kinds(w) if k != "prune_snapshots"] == []
    assert _image(w) == "app:1"
    assert w.status["rollback"]["state"] == "RolledBack"
    assert w.status["snapshot"]["epoch"] == 6
    assert w.reasons().count("RolledBack") == 1


def test_ready_in_time_records_the_new_stable_spec_and_never_rolls_back() -> None:
    w = _stable()
    _upgrade_to(w, "app:2")
    w.kubelet()
    w.step()
    assert w.reasons()[-1] == "Upgraded"
    assert w.status["lastStableSpec"]["generation"] == 2
    assert w.status["lastStableSpec"]["spec"]["image"] == "app:2"
    assert "rollback" not in w.status
    w.pods[0].ready = False  # later trouble is the health checks' business, not a rollback
    for _ in range(3):
        w.step(dt=TIMEOUT)
    assert "RolledBack" not in w.reasons()
    assert w.status["lastStableSpec"]["generation"] == 2


def test_rollback_disabled_behaves_as_without_the_field() -> None:
    def run(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]], list[str]]:
        w = _stable(spec)
        statuses = [copy.deepcopy(w.status)]
        _upgrade_to(w, "app:broken")
        _crash_looping(w)
        w.commit(7)
        for _ in range(8):
            w.step(dt=60)
            w.kubelet(ready=False)
            statuses.append(copy.deepcopy(w.status))
        assert _image(w) == "app:broken"
        return statuses, w.events, w.applied

    without = run(BASE)
    disabled = run({**BASE, "rollback": {"enabled": False}})
    assert disabled == without
    statuses, events, applied = without
    assert all("lastStableSpec" not in s and "rollback" not in s for s in statuses)
    assert "RolledBack" not in [r for _t, r, _m in events]
    # The state before the change is kept all the same (every spec change), never restored.
    assert [a for a in applied if a.startswith(("keep snapshot", "restore"))] == [
        "keep snapshot pre-upgrade-g2"
    ]


def test_a_new_spec_after_a_rollback_deploys_normally() -> None:
    w = _stable()
    _broken_then_rolled_back(w)
    w.kubelet()
    w.step()
    w.kubelet()
    w.step()
    assert w.status["rollback"]["state"] == "RolledBack"
    w.commit(8)
    _upgrade_to(w, "app:3")  # the user fixed the image: generation 3
    assert _image(w) == "app:3"
    # The state the stable spec left (epoch 8) is what is kept before generation 3.
    assert [(k.name, k.epoch) for k in w.store.kept] == [("pre-upgrade-g2", 5), ("pre-upgrade-g3", 8)]
    assert w.status["rollback"]["state"] == "Watching"
    assert w.status["rollback"]["generation"] == 3
    w.kubelet()
    w.step()
    assert w.reasons()[-1] == "Upgraded"
    assert "rollback" not in w.status
    assert w.status["lastStableSpec"]["generation"] == 3
    assert w.status["deployedGeneration"] == 3
    assert w.cond("Degraded")["reason"] == "AsExpected"
    assert w.restored == [(None, "pre-upgrade-g2")]


def test_a_rescale_is_never_rolled_back() -> None:
    w = _stable()
    w.edit(replicas=3)
    w.step()
    assert w.status["transition"]["type"] == "rescale"
    w.kubelet()
    w.step()
    w.kubelet(ready=False)  # the new pods never get Ready
    for _ in range(4):
        w.step(dt=TIMEOUT)
        w.kubelet(ready=False)
    assert "RolledBack" not in w.reasons()
    assert "rollback" not in w.status
    # Kept before the rescale as before any spec change; never restored.
    assert [a for a in w.applied if a.startswith(("keep snapshot", "restore"))] == [
        "keep snapshot pre-upgrade-g2"
    ]
    assert w.status["lastStableSpec"]["generation"] == 1
    assert w.sts is not None and w.sts["spec"]["replicas"] in (0, 3)


def test_a_change_stopped_at_max_restarts_is_rolled_back_at_once() -> None:
    spec = {**SPEC, "restartPolicy": {"maxRestarts": 1}}
    w = _stable(spec)
    _upgrade_to(w, "app:broken")
    for _ in range(6):
        _crash_looping(w)
        for p in w.pods:
            p.restarts = 5
        w.step(dt=20)
        if w.status.get("stopped"):
            break
        w.kubelet()
        w.step()
    assert w.status["stopped"]["reason"] == "RestartLimit"
    assert "RolledBack" not in w.reasons()
    w.kubelet()
    w.step()  # well before readyTimeout: a Dataflow stopped at maxRestarts won't get Ready
    [message] = [m for _t, r, m in w.events if r == "RolledBack"]
    assert message.startswith("generation 2 failed (RestartLimit: gave up after 1 restart(s)")
    assert "stopped" not in w.status
    assert w.restored == [(None, "pre-upgrade-g2")]
    assert _image(w) == "app:1"
    w.kubelet()
    w.step()
    assert w.status["rollback"]["state"] == "RolledBack"
    assert w.status["phase"] == "Running"


def test_an_operator_restart_mid_rollback_carries_it_out_from_the_status() -> None:
    w = _stable()
    _broken_then_rolled_back(w)
    w.kubelet()
    # The operator dies after deleting the live state, before restoring and before
    # patching the status: the next operator sees an empty store and the old status.
    cut = plan(w.observe())
    assert [a.kind for a in cut.actions if a.kind in ("delete_state", "restore_snapshot")] == [
        "delete_state",
        "restore_snapshot",
    ]
    w.store = StoreInfo(ok=True, exists=False, kept=w.store.kept)
    assert w.status["rollback"]["state"] == "RollingBack"
    assert w.status["transition"]["stage"] == "Stopping"
    w.step()
    assert w.restored == [(None, "pre-upgrade-g2")]
    assert (w.store.exists, w.store.epoch) == (True, 5)
    assert _image(w) == "app:1"
    # And once more between the start and the pods being Ready: nothing is redone.
    w.kubelet()
    w.step()
    assert w.status["rollback"]["state"] == "RolledBack"
    assert w.restored == [(None, "pre-upgrade-g2")]
    assert w.reasons().count("RolledBack") == 1
    assert json.loads(mf.sts_annotations(w.sts or {})[mf.ANN_SPEC])["image"] == "app:1"


def test_no_state_before_the_change_rolls_back_to_empty_state() -> None:
    w = World(copy.deepcopy(SPEC))
    w.run_until_running()  # nothing committed yet
    w.step()
    _upgrade_to(w, "app:broken")
    assert w.store.kept == []
    assert w.status["rollback"]["epoch"] == 0
    assert "snapshot" not in w.status["rollback"]
    _crash_looping(w)
    w.commit(3)
    w.step(dt=TIMEOUT + 1)
    assert any(r == "RolledBack" and "with the empty state it had before" in m for _t, r, m in w.events)
    w.kubelet()
    w.step()
    assert "delete_state" in _kinds(w)
    assert (w.store.exists, w.restored) == (False, [])
    assert _image(w) == "app:1"


def test_the_rolled_back_statefulset_is_the_last_stable_spec_of_its_generation() -> None:
    w = _stable()
    _broken_then_rolled_back(w)
    w.kubelet()
    w.step()
    assert w.sts is not None
    ann = mf.sts_annotations(w.sts)
    assert ann[mf.ANN_GENERATION] == "1"
    assert json.loads(ann[mf.ANN_SPEC]) == to_json(parse_spec(SPEC))
    w.kubelet()
    w.step()
    assert (w.status["observedGeneration"], w.status["deployedGeneration"]) == (2, 1)
    assert "autoscaler" not in w.status


def test_an_invalid_spec_is_not_taken_for_stable() -> None:
    w = _stable()
    w.edit(replicas=0)  # refused by parse_spec: the deployed spec keeps running
    for _ in range(3):
        w.step(dt=60)
    assert "ValidationError" in w.reasons()
    assert w.status["lastStableSpec"]["generation"] == 1
    assert w.status["lastStableSpec"]["spec"] == SPEC


def test_enabling_rollback_with_a_broken_change_has_nothing_to_go_back_to() -> None:
    w = _stable(BASE)
    w.edit(rollback={"enabled": True}, image="app:broken")
    w.step()
    w.kubelet()
    w.step()
    _crash_looping(w)
    w.step(dt=TIMEOUT + 1)
    assert "rollback" not in w.status and "lastStableSpec" not in w.status
    assert "RolledBack" not in w.reasons()
