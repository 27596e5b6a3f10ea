"""Dataflows the operator keeps stopped: lost state, a finished input, a crash loop given up.

Each is driven through `plan` by `World`: the StatefulSet goes to 0 with the
state kept, the phase and ``status.stopped`` say why, and only the user's act
(a spec change, a nonce, Redis restored) runs the Dataflow again.
"""

from __future__ import annotations

from typing import Any

import pytest

from headrace_operator import manifests as mf
from headrace_operator.observation import PodInfo
from headrace_operator.reconcile import StoreInfo
from tests.support.kube_world import BASE, World


def _env(w: World) -> dict[str, Any]:
    assert w.sts is not None
    container = w.sts["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def _kinds(w: World) -> list[str]:
    assert w.last is not None
    return [a.kind for a in w.last.actions]


def _running_at(epoch: int, spec: dict[str, Any] | None = None) -> World:
    w = World(spec)
    w.run_until_running()
    w.commit(epoch)
    w.step()
    assert w.status["snapshot"]["epoch"] == epoch
    return w


def _stop_all(w: World) -> None:
    """The pods of a scale to 0 go."""
    w.kubelet()
    assert w.pods == []


# ------------------------------------------------------------------ the expected epoch


def test_every_started_pod_gets_the_epoch_the_status_recorded() -> None:
    w = World()
    w.step()
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "0"
    assert _env(w)[mf.TERMINATION_LOG_ENV] == "/dev/termination-log"
    w.kubelet()
    w.step()
    w.commit(7)
    w.step()
    hash_before = w.sts["metadata"]["annotations"][mf.ANN_TEMPLATE_HASH] if w.sts else ""
    w.edit(restartNonce=1)
    w.step()
    assert w.status["phase"] == "Restarting"
    _stop_all(w)
    w.step()
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "7"
    # The expected epoch is no part of the template hash: not an upgrade.
    assert w.sts is not None
    assert w.sts["metadata"]["annotations"][mf.ANN_TEMPLATE_HASH] == hash_before
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert w.last is not None and w.last.actions == []


def test_recovery_flags_become_the_runtimes_environment() -> None:
    w = World(
        {**BASE, "recovery": {**BASE["recovery"], "allowDroppedState": True, "allowEvictingRedis": True}}
    )
    w.step()
    env = _env(w)
    assert env["HEADRACE_ALLOW_DROPPED_STATE"] == "1"
    assert env["HEADRACE_ALLOW_EVICTING_REDIS"] == "1"
    plain = World()
    plain.step()
    assert "HEADRACE_ALLOW_DROPPED_STATE" not in _env(plain)
    assert "HEADRACE_ALLOW_EVICTING_REDIS" not in _env(plain)
    # Without recovery there is no epoch to expect.
    bare = World({"image": "app:1", "flow": {"import": "app.flows:wc"}})
    bare.step()
    assert mf.EXPECT_EPOCH_ENV not in _env(bare)


def test_a_reset_expects_nothing_and_forgets_the_recorded_epoch() -> None:
    w = _running_at(9)
    w.edit(resetStateNonce=1)
    w.step()
    _stop_all(w)
    w.step()
    assert "delete_state" in _kinds(w)
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "0"
    assert "epoch" not in w.status["snapshot"]
    w.kubelet()
    w.step()
    w.step()
    assert w.status["phase"] == "Running"
    assert "StateLost" not in w.reasons()


def test_a_stateless_upgrade_expects_nothing() -> None:
    w = _running_at(4, {**BASE, "upgradeMode": "stateless"})
    w.edit(image="app:2")
    w.step()
    assert w.status["phase"] == "Upgrading"
    _stop_all(w)
    w.step()
    assert "delete_state" in _kinds(w)
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "0"
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"


# ------------------------------------------------------------------ state lost


def test_redis_emptied_under_a_running_dataflow_stops_it_as_state_lost() -> None:
    w = _running_at(227)
    w.store = StoreInfo(ok=True, exists=False)  # Redis came back empty
    w.step()
    assert _kinds(w) == ["scale"]
    assert w.status["phase"] == "Failed"
    assert w.status["stopped"]["reason"] == "StateLost"
    assert w.status["stopped"]["epoch"] == 227
    ready = w.cond("Ready")
    assert ready["reason"] == "StateLost"
    assert "recorded committed epoch 227" in ready["message"]
    assert "holds no state of it" in ready["message"]
    assert "resetStateNonce" in ready["message"]
    assert w.status["lastError"]["reason"] == "StateLost"
    assert [r for t, r, _m in w.events if t == "Warning"] == ["StateLost"]
    assert w.status["snapshot"]["epoch"] == 227  # the witness stays
    _stop_all(w)
    for _ in range(3):
        w.step(dt=10)
        assert w.last is not None and w.last.actions == []
        assert w.status["phase"] == "Failed"
    assert w.reasons().count("StateLost") == 1


def test_state_lost_waits_for_the_user_after_redis_is_restored() -> None:
    w = _running_at(12)
    w.store = StoreInfo(ok=True, exists=True, epoch=5, committed_at=w.now)  # an older copy
    w.step()
    assert "holds only epoch 5" in w.cond("Ready")["message"]
    _stop_all(w)
    w.step()
    assert w.status["phase"] == "Failed"
    # Redis holds the epoch again (restored, or written back by a worker that
    # still ran when the keys went): not trusted by itself.
    w.commit(14)
    w.step()
    assert w.last is not None and w.last.actions == []
    assert w.status["phase"] == "Failed" and w.cond("Ready")["reason"] == "StateLost"
    # The user restored it and says so: the start checks it again, and expects it.
    w.edit(restartNonce=1)
    w.step()
    assert "apply" in _kinds(w)
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "14"
    assert "stopped" not in w.status
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"


def test_a_restart_nonce_over_a_store_still_lost_stays_stopped() -> None:
    w = _running_at(12)
    w.store = StoreInfo(ok=True, exists=False)
    w.step()
    _stop_all(w)
    w.edit(restartNonce=1)
    w.step()
    assert "apply" not in _kinds(w)
    assert w.status["phase"] == "Failed" and w.status["stopped"]["reason"] == "StateLost"


def test_state_lost_and_reset_state_nonce_starts_from_empty_state() -> None:
    w = _running_at(30)
    w.store = StoreInfo(ok=True, exists=False)
    w.step()
    _stop_all(w)
    w.step()
    w.edit(resetStateNonce=1)
    w.step()
    assert "delete_state" in _kinds(w)
    assert _env(w)[mf.EXPECT_EPOCH_ENV] == "0"
    assert w.status["phase"] == "Restarting"
    assert "stopped" not in w.status
    w.kubelet()
    w.step()
    w.step()
    assert w.status["phase"] == "Running"


def test_a_resume_from_suspended_does_not_start_over_a_lost_store() -> None:
    w = _running_at(8)
    w.edit(state="suspended")
    w.step()
    _stop_all(w)
    w.step()
    assert w.status["phase"] == "Suspended"
    w.store = StoreInfo(ok=True, exists=False)
    w.edit(state="running")
    w.step()
    assert w.status["phase"] == "Failed"
    assert w.cond("Ready")["reason"] == "StateLost"
    assert "apply" not in _kinds(w)


def test_an_unreachable_store_is_not_lost_state() -> None:
    w = _running_at(8)
    w.store = StoreInfo(ok=False, error="ConnectionError: refused")
    w.step()
    assert "scale" not in _kinds(w)
    assert w.status["phase"] == "Running"


# ------------------------------------------------------------------ finished


def _finish(w: World, pods: list[PodInfo]) -> None:
    for p in pods:
        p.finished = ["finished: every input ended"]
        p.last_exit_code = 0
        p.restarts += 1


def test_a_bounded_dataflow_finishes_and_stays_stopped() -> None:
    w = _running_at(40)
    _finish(w, w.pods[:1])
    w.step()
    assert "scale" not in _kinds(w)  # the other pod says so in a moment
    assert w.status["phase"] == "Running"
    _finish(w, w.pods[1:])
    w.step()
    assert _kinds(w) == ["scale"]
    assert w.status["phase"] == "Finished"
    assert w.status["stopped"] | {"since": None} == {
        "reason": "Finished",
        "message": "every input ended at epoch 40 (2 pod(s) x 1 worker(s); 2 container restart(s)): "
        "the pods are stopped and the state kept. Change spec.restartNonce (or the spec) to run it again",
        "since": None,
        "generation": 1,
        "resetStateNonce": 0,
        "epoch": 40,
        "workers": 2,
    }
    assert w.cond("Finished")["status"] == "True"
    assert w.cond("Ready")["reason"] == "Finished"
    assert w.cond("Degraded")["status"] == "False"
    assert [r for t, r, _m in w.events if t == "Warning"] == []
    assert "Finished" in w.reasons()
    _stop_all(w)
    for _ in range(3):
        w.step(dt=30)
        assert w.last is not None and w.last.actions == []
        assert w.status["phase"] == "Finished"
    # A restartNonce runs it again.
    w.edit(restartNonce=1)
    w.step()
    assert "apply" in _kinds(w)
    assert w.status["phase"] == "Restarting"
    assert w.cond("Finished")["status"] == "False"
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert "stopped" not in w.status


def test_a_finished_dataflow_runs_again_after_a_spec_change() -> None:
    w = _running_at(3)
    _finish(w, w.pods)
    w.step()
    _stop_all(w)
    w.step()
    assert w.status["phase"] == "Finished"
    w.edit(image="app:2")
    w.step()
    assert w.status["phase"] == "Upgrading"
    assert w.sts is not None
    assert w.sts["spec"]["template"]["spec"]["containers"][0]["image"] == "app:2"


def test_a_worker_stopped_on_request_is_not_finished() -> None:
    w = _running_at(3)
    for p in w.pods:  # exit 0 without the finished line: a stop, not an end of input
        p.last_exit_code = 0
        p.restarts += 1
    w.step()
    assert "scale" not in _kinds(w)
    assert w.status["phase"] == "Running"


def test_pod_info_reads_the_finished_line_of_either_container() -> None:
    done = {"terminated": {"exitCode": 0, "message": "finished: every input ended\n"}}
    pod = {
        "metadata": {"name": "wc-1"},
        "status": {"containerStatuses": [{"name": "worker", "restartCount": 1, "lastState": done}]},
    }
    assert PodInfo.from_pod(pod).finished == ["finished: every input ended\n"]
    crashed = {"terminated": {"exitCode": 1, "message": "finished: every input ended\n"}}
    pod["status"]["containerStatuses"][0]["lastState"] = crashed
    assert PodInfo.from_pod(pod).finished == []


# ------------------------------------------------------------------ crash loops


def _crash(w: World) -> None:
    for p in w.pods:
        p.restarts += 3
        p.ready = False
        p.last_exit_code = 1
        p.last_message = "error: poison item"


def test_restart_limit_stops_the_pods_until_a_restart_nonce() -> None:
    spec = {
        **BASE,
        "restartPolicy": {"maxRestarts": 1, "backoff": {"initialDelay": "10s", "maxDelay": "1m"}},
        "healthCheck": {"restartThreshold": 3},
    }
    w = World(spec)
    w.run_until_running()
    _crash(w)
    w.step()
    assert w.status["phase"] == "Restarting"
    assert w.status["transition"]["type"] == "unhealthy-restart"
    w.kubelet(ready=False)
    w.step()
    w.kubelet(ready=False)
    _crash(w)
    w.step(dt=30)
    assert _kinds(w) == ["scale"]
    assert w.status["phase"] == "Failed"
    assert w.status["stopped"]["reason"] == "RestartLimit"
    assert w.cond("Ready")["reason"] == "RestartLimit"
    _stop_all(w)
    for _ in range(3):
        w.step(dt=60)
        assert w.last is not None and w.last.actions == []
        assert w.status["phase"] == "Failed"
    w.edit(restartNonce=1)
    w.step()
    assert "apply" in _kinds(w)
    assert w.status["phase"] == "Restarting"
    assert w.status["health"]["consecutiveRestarts"] == 0
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_backoff_grows_past_five_restarts_and_healthy_since_really_goes() -> None:
    spec = {
        **BASE,
        "restartPolicy": {
            "maxRestarts": 7,
            "resetAfter": "10m",
            "backoff": {"initialDelay": "1s", "maxDelay": "1h", "multiplier": 2},
        },
        "healthCheck": {"restartThreshold": 3},
    }
    w = World(spec)
    w.run_until_running()
    delays = []
    for n in range(1, 8):
        # Ready for a while after each start (healthySince is set), then crashing.
        w.step(dt=1)
        assert "healthySince" in w.status["health"]
        _crash(w)
        w.step(dt=1)
        assert "healthySince" not in w.status["health"]  # removed by an explicit null
        waited = 0
        while "scale" not in _kinds(w):
            w.step(dt=1)
            waited += 1
            assert waited < 200
        delays.append(waited)
        assert w.status["health"]["consecutiveRestarts"] == n
        w.kubelet()
        w.step()
        w.kubelet()
        w.step()
        assert w.status["phase"] == "Running"
    # 1, 2, 4, ... 64 s after each restart, less the 4 s each start took: it grows.
    assert delays == [0, 0, 0, 4, 12, 28, 60]
    w.step(dt=1)
    _crash(w)
    w.step(dt=200)
    assert w.status["phase"] == "Failed"
    assert w.status["stopped"]["reason"] == "RestartLimit"
    assert "gave up after 7 restart(s)" in w.cond("Ready")["message"]
