"""The operator's decisions over whole lifecycles, driven through `plan` step by step.

`World` plays the cluster between plans: it applies a plan's actions the way
the API server and the StatefulSet controller would (apply stores the object,
scaling to 0 makes pods terminate and then vanish, Redis state can be deleted)
so that multi-step transitions (stop at a barrier, then start) can be followed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from headrace_operator import manifests as mf
from headrace_operator.autoscaler import WindowStats
from headrace_operator.reconcile import (
    LAST_APPLIED,
    SecretInfo,
    StoreInfo,
    backoff_delay,
    plan,
    plan_delete,
    pruned_fields,
)
from tests.support.kube_world import BASE, STATUS_SCHEMA, World, format_problems

STOP = ["dry_run", "dry_run", "dry_run", "scale"]  # check what starts after the stop, then stop


def test_create_deploys_statefulset_and_service_then_runs() -> None:
    w = World()
    p = w.step()
    kinds = [a.obj["kind"] for a in p.actions if a.obj]
    assert kinds == ["Pod", "Secret", "Service", "StatefulSet"]
    # A pod of the template is checked first (server-side dry run): the API
    # server accepts a StatefulSet whose pods it would refuse.
    assert p.actions[0].describe() == "check Pod wc-check-* (server-side dry run)"
    assert p.actions[0].obj["spec"] == p.actions[3].obj["spec"]["template"]["spec"]
    # The mesh Secret comes next (the pods need it to start), created, not applied.
    assert p.actions[1].kind == "create_secret"
    assert p.actions[1].describe() == "create Secret wc-mesh unless it exists"
    env = p.actions[3].obj["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HEADRACE_CLUSTER_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "wc-mesh", "key": "secret"}},
    } in env
    assert w.status["phase"] == "Deploying"
    assert w.cond("Ready")["status"] == "False"
    assert w.cond("Progressing")["status"] == "True"
    w.kubelet()
    p = w.step()
    assert w.status["phase"] == "Running"
    assert w.cond("Ready") | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "True",
        "reason": "Running",
        "message": "2/2 pods ready",
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    assert [t for t, _ in p.transitions] == ["deploy"]
    assert "Created" in w.reasons() and "Running" in w.reasons()
    assert w.status["observedGeneration"] == 1
    assert w.status["selector"] == "headrace.dev/dataflow=wc"
    assert w.status["partitions"]["assignment"][1] == {"pod": 1, "workers": "1", "keyGroups": "128-255"}


def test_ready_transition_time_only_moves_on_change() -> None:
    w = World()
    w.run_until_running()
    t0 = w.cond("Ready")["lastTransitionTime"]
    w.step(dt=120)
    assert w.cond("Ready")["lastTransitionTime"] == t0
    w.pods[0].ready = False
    w.step(dt=5)
    assert w.cond("Ready")["status"] == "False"
    assert w.cond("Ready")["lastTransitionTime"] != t0


def test_rescale_is_a_coordinated_stop_then_start_with_the_new_count() -> None:
    w = World()
    w.run_until_running()
    w.commit(7)
    w.edit(replicas=3)
    p = w.step()
    assert [a.kind for a in p.actions] == STOP and p.actions[-1].replicas == 0
    assert w.status["phase"] == "Scaling"
    assert w.status["transition"]["type"] == "rescale"
    assert w.status["transition"]["stage"] == "Stopping"
    # Every old pod terminating (each commits the barrier's epoch as it goes): the new
    # StatefulSet at once; the controller starts each new pod when its namesake is gone.
    assert all(pod.terminating for pod in w.pods)
    p = w.step(dt=2)
    sts = next(a.obj for a in p.actions if a.obj and a.obj["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HEADRACE_REPLICAS"] == "3" and env["HEADRACE_EXPECT_EPOCH"] == "7"
    assert [m for _t, r, m in w.events if r == "Restored"] == [
        "starting 3 pod(s) x 1 worker(s) from epoch >= 7 (written by 2 workers)"
    ]
    assert w.status["phase"] == "Scaling" and w.status["transition"]["stage"] == "Starting"
    w.commit(8)  # the barrier's snapshot
    w.kubelet()  # the old pods gone, the new ones started
    p = w.step(dt=3)
    assert w.status["phase"] == "Running"
    ((ttype, took),) = p.transitions
    assert ttype == "rescale" and took == 5.0
    assert "transition" not in w.status
    assert any(r == "Scaled" and "2 -> 3" in m for _t, r, m in w.events)


def test_a_snapshot_upgrade_waits_for_the_old_pods_to_go() -> None:
    """The state is checked (upgradeMode snapshot) between the stop and the start."""
    w = World({**BASE, "upgradeMode": "snapshot"})
    w.run_until_running()
    w.commit(7)
    w.edit(image="app:2")
    w.step()
    p = w.step()  # pods still terminating: wait, change nothing
    assert p.actions == [] and w.status["transition"]["stage"] == "Stopping"
    w.commit(8)
    w.kubelet()
    p = w.step()
    assert any(a.obj and a.obj["kind"] == "StatefulSet" for a in p.actions)
    assert "SnapshotCompleted" in w.reasons()


def test_scale_to_the_same_count_via_statefulset_tampering_is_repaired() -> None:
    w = World()
    w.run_until_running()
    assert w.sts is not None
    w.sts["spec"]["replicas"] = 1  # someone edited the StatefulSet directly
    p = w.step()
    assert [a.kind for a in p.actions] == STOP


def test_upgrade_last_state_keeps_redis_state() -> None:
    w = World()
    w.run_until_running()
    w.commit(3)
    w.edit(image="app:2")
    w.step()
    assert w.status["phase"] == "Upgrading"
    w.kubelet()
    p = w.step()
    assert "delete_state" not in [a.kind for a in p.actions]
    assert w.sts is not None
    assert w.sts["spec"]["template"]["spec"]["containers"][0]["image"] == "app:2"
    w.kubelet()
    p = w.step()
    assert [t for t, _ in p.transitions] == ["upgrade"]


def test_upgrade_stateless_deletes_state_before_starting() -> None:
    w = World({**BASE, "upgradeMode": "stateless"})
    w.run_until_running()
    w.commit(3)
    w.edit(image="app:2")
    w.step()
    w.kubelet()
    p = w.step()
    kinds = [a.kind for a in p.actions]
    assert kinds.index("delete_state") < kinds.index("apply")
    assert "StateDeleted" in w.reasons()


def test_snapshot_mode_reports_a_missing_barrier_snapshot_and_falls_back() -> None:
    w = World({**BASE, "upgradeMode": "snapshot"})
    w.run_until_running()
    w.commit(3)
    w.edit(image="app:2")
    w.step()
    w.kubelet()  # pods gone without a new commit (unhealthy)
    p = w.step()
    assert "SnapshotFailed" in w.reasons()
    assert any(a.kind == "apply" for a in p.actions)  # still starts: last-state fallback


def test_reset_state_nonce_deletes_state_and_restores_nothing() -> None:
    w = World()
    w.run_until_running()
    w.commit(9)
    w.edit(resetStateNonce=1)
    w.step()
    assert w.status["transition"]["type"] == "reset"
    w.kubelet()
    p = w.step()
    assert "delete_state" in [a.kind for a in p.actions]
    assert "Restored" not in [r for _t, r, _m in p.events]
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert w.sts is not None
    assert w.sts["metadata"]["annotations"][mf.ANN_RESET_NONCE] == "1"


def test_restart_nonce_restarts_without_touching_state() -> None:
    w = World()
    w.run_until_running()
    w.edit(restartNonce=5)
    p = w.step()
    assert [a.kind for a in p.actions] == STOP
    assert "Restarting" in w.reasons()
    w.kubelet()
    p = w.step()
    assert "delete_state" not in [a.kind for a in p.actions]
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"


def test_suspend_then_resume() -> None:
    w = World()
    w.run_until_running()
    w.edit(state="suspended")
    w.step()
    assert w.status["phase"] == "Suspending"
    w.commit(4)
    w.kubelet()
    p = w.step()
    assert w.status["phase"] == "Suspended"
    assert [t for t, _ in p.transitions] == ["suspend"]
    assert w.cond("Ready")["reason"] == "Suspended"
    assert "SnapshotCompleted" in w.reasons()
    w.step(dt=60)
    assert w.status["phase"] == "Suspended" and w.last is not None and w.last.actions == []
    w.edit(state="running")
    w.step()
    assert w.status["phase"] == "Deploying"
    w.kubelet()
    p = w.step()
    assert w.status["phase"] == "Running"
    assert [t for t, _ in p.transitions] == ["resume"]


def test_created_suspended_makes_an_empty_statefulset() -> None:
    w = World({**BASE, "state": "suspended"})
    w.step()
    assert w.sts is not None and w.sts["spec"]["replicas"] == 0
    assert w.status["phase"] == "Suspended"


def test_invalid_update_keeps_the_last_valid_spec_running() -> None:
    w = World()
    w.run_until_running()
    sts_before = copy.deepcopy(w.sts)
    w.edit(replicas=300)  # more workers than partitions (CEL would reject it too)
    p = w.step()
    assert p.actions == []
    assert w.sts == sts_before
    assert w.status["phase"] == "Running"
    assert w.cond("Degraded")["status"] == "True"
    assert w.cond("Degraded")["reason"] == "InvalidSpec"
    ((etype, _reason, msg),) = [e for e in p.events if e[1] == "ValidationError"]
    assert etype == "Warning"
    assert "exceeds partitions = 256" in msg and "last valid spec keeps running" in msg
    assert w.status["lastError"]["reason"] == "InvalidSpec"
    w.edit(replicas=2)
    w.step()
    assert w.cond("Degraded")["status"] == "False"


def test_invalid_spec_at_creation_fails_with_a_message() -> None:
    w = World({"image": "app:1", "flow": {"import": "not an import"}})
    p = w.step()
    assert p.actions == []
    assert w.status["phase"] == "Failed"
    assert w.cond("Ready")["reason"] == "InvalidSpec"
    assert "spec.flow.import" in w.cond("Ready")["message"]


def test_unknown_field_from_kubectl_apply_is_reported() -> None:
    w = World()
    applied = {"apiVersion": "headrace.dev/v1alpha1", "kind": "Dataflow", "spec": {**BASE, "replcas": 4}}
    w.annotations[LAST_APPLIED] = json.dumps(applied)
    p = w.step()
    assert p.actions == []
    assert w.status["phase"] == "Failed"
    assert "spec.replcas" in w.cond("Ready")["message"]
    assert any(r == "ValidationError" and "spec.replcas" in m for _t, r, m in w.events)


def test_stale_last_applied_annotation_is_ignored() -> None:
    spec = {**BASE, "replcas": 4}
    # The object was patched later: the annotation no longer describes it.
    assert pruned_fields({**BASE, "replicas": 5}, {LAST_APPLIED: json.dumps({"spec": spec})}) == []
    assert pruned_fields(BASE, {LAST_APPLIED: json.dumps({"spec": spec})}) == ["spec.replcas"]


def test_missing_secret_at_creation_waits_in_pending() -> None:
    spec = {**BASE, "recovery": {"secretRef": {"name": "redis-creds"}}}
    w = World(spec)
    w.secret = SecretInfo("redis-creds", "url", found=False, has_key=False)
    p = w.step()
    assert [a.kind for a in p.actions] == []
    assert w.status["phase"] == "Pending"
    ready = w.cond("Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "kubectl -n prod create secret generic redis-creds --from-literal=url=" in ready["message"]
    w.secret = SecretInfo("redis-creds", "url", found=True, has_key=True)
    w.step()
    assert w.status["phase"] == "Deploying"


def test_missing_secret_blocks_an_upgrade_but_keeps_pods() -> None:
    spec = {**BASE, "recovery": {"secretRef": {"name": "redis-creds"}}}
    w = World(spec)
    w.secret = SecretInfo("redis-creds", "url", found=True, has_key=True)
    w.run_until_running()
    w.secret = SecretInfo("redis-creds", "url", found=True, has_key=False)
    w.edit(image="app:2")
    p = w.step()
    assert "scale" not in [a.kind for a in p.actions]
    assert w.cond("Degraded")["reason"] == "SecretNotFound"
    assert "has no key 'url'" in w.cond("Degraded")["message"]


def test_bad_import_in_the_pod_is_a_failed_phase_with_the_error() -> None:
    w = World()
    w.step()
    w.kubelet(ready=False)
    for p in w.pods:
        p.waiting_reason = "CrashLoopBackOff"
        p.restarts = 1
        p.last_exit_code = 2
        p.last_message = "Traceback...\nerror: can't import 'app.flows': No module named 'app'\n"
    w.step()
    assert w.status["phase"] == "Failed"
    ready = w.cond("Ready")
    assert ready["reason"] == "StartupError"
    assert "No module named 'app'" in ready["message"]
    assert "spec.flow.import" in ready["message"]
    assert w.status["lastError"]["reason"] == "StartupError"
    # Fixing the spec starts an upgrade.
    w.edit(flow={"import": "app2.flows:wc"})
    p = w.step()
    assert [a.kind for a in p.actions] == STOP


def test_unreachable_redis_shows_in_conditions() -> None:
    w = World()
    w.run_until_running()
    w.store = StoreInfo(ok=False, error="ConnectionError: Connection refused")
    w.step()
    snap = w.cond("SnapshotHealthy")
    assert snap["status"] == "False" and snap["reason"] == "RecoveryStoreUnreachable"
    assert w.cond("Degraded")["reason"] == "RecoveryStoreUnreachable"
    for p in w.pods:
        p.ready = False
    w.step()
    assert w.cond("Ready")["reason"] == "RecoveryStoreUnreachable"


def test_crash_loop_restarts_with_growing_backoff_then_gives_up() -> None:
    spec = {
        **BASE,
        "restartPolicy": {"maxRestarts": 2, "backoff": {"initialDelay": "10s", "maxDelay": "1m"}},
        "healthCheck": {"restartThreshold": 3},
    }
    w = World(spec)
    w.run_until_running()

    def crash(n: int) -> None:
        for p in w.pods:
            p.restarts += n
            p.ready = False
            p.last_exit_code = 1
            p.last_message = "error: boom"

    crash(3)
    p = w.step()
    assert [a.kind for a in p.actions] == ["scale"]
    assert w.status["transition"]["type"] == "unhealthy-restart"
    assert "RestartUnhealthy" in w.reasons()
    assert w.status["health"]["consecutiveRestarts"] == 1
    w.kubelet(ready=False)
    w.step()
    w.kubelet(ready=False)  # new pods, counts from zero
    crash(3)
    p = w.step(dt=1)
    assert "scale" not in [a.kind for a in p.actions]  # backoff: 20s not yet passed
    assert w.cond("Degraded")["reason"] in ("Unhealthy", "WorkerCrashed")
    p = w.step(dt=25)
    assert [a.kind for a in p.actions] == ["scale"]
    assert w.status["health"]["consecutiveRestarts"] == 2
    w.kubelet(ready=False)
    w.step()
    w.kubelet(ready=False)
    crash(3)
    w.step(dt=100)
    assert w.status["phase"] == "Failed"
    assert w.cond("Ready")["reason"] == "RestartLimit"


def test_health_counter_resets_after_a_healthy_period() -> None:
    w = World()
    w.run_until_running()
    w.status["health"]["consecutiveRestarts"] = 3
    w.step(dt=1)
    w.step(dt=601)
    assert w.status["health"]["consecutiveRestarts"] == 0


def test_not_ready_for_longer_than_ready_timeout_restarts() -> None:
    w = World({**BASE, "healthCheck": {"readyTimeout": "1m"}})
    w.step()
    w.kubelet(ready=False)
    w.step(dt=30)
    assert w.status["phase"] == "Deploying"
    p = w.step(dt=40)
    assert [a.kind for a in p.actions] == ["scale"]
    assert any("not all pods Ready" in m for _t, r, m in w.events if r == "RestartUnhealthy")


def test_snapshot_nonce_waits_for_the_next_commit() -> None:
    w = World()
    w.run_until_running()
    w.commit(1)
    w.edit(snapshotNonce=1)
    w.step()
    assert w.status["snapshot"]["requestedNonce"] == 1
    assert w.status["snapshot"].get("completedNonce", 0) == 0
    w.now += 5
    w.commit(2)
    w.step()
    assert w.status["snapshot"]["completedNonce"] == 1
    assert any(r == "SnapshotCompleted" and "epoch 2" in m for _t, r, m in w.events)


def test_autoscaler_apply_patches_replicas_then_rescales() -> None:
    spec = {
        **BASE,
        "scaling": {"mode": "auto"},
        "autoscaler": {"metricsWindow": "1m", "stabilizationWindow": "0s", "evaluationInterval": "10s"},
    }
    w = World(spec)
    w.run_until_running()
    w.metrics = WindowStats(
        utilization=1.0, input_rate=1000.0, lag=5000.0, lag_growth=100.0, coverage=60.0, workers=2
    )
    p = w.step(dt=30)
    assert [a.kind for a in p.actions] == ["patch_replicas"]
    assert w.spec["replicas"] > 2
    assert w.spec["replicas"] * 1 <= 256 and 256 % w.spec["replicas"] == 0
    assert w.status["autoscaler"]["lastEvaluation"]["applied"] is True
    assert any(r == "ScalingReport" for _t, r, _m in w.events)
    p = w.step()
    assert [a.kind for a in p.actions] == STOP
    assert w.status["phase"] == "Scaling"


def test_autoscaler_recommend_mode_never_patches() -> None:
    spec = {**BASE, "autoscaler": {"mode": "recommend", "metricsWindow": "1m", "stabilizationWindow": "0s"}}
    w = World(spec)
    w.run_until_running()
    w.metrics = WindowStats(
        utilization=1.0, input_rate=1000.0, lag=5000.0, lag_growth=100.0, coverage=60.0, workers=2
    )
    p = w.step(dt=60)
    assert "patch_replicas" not in [a.kind for a in p.actions]
    ev = w.status["autoscaler"]["lastEvaluation"]
    assert ev["action"] == "scale-up" and ev["blocked"] == "mode is recommend: not applied"
    assert w.cond("Autoscaling")["reason"] == "Blocked"


def test_autoscaler_waits_while_a_transition_runs() -> None:
    spec = {
        **BASE,
        "scaling": {"mode": "auto"},
        "autoscaler": {"metricsWindow": "1m", "stabilizationWindow": "0s"},
    }
    w = World(spec)
    w.step()
    w.kubelet(ready=False)
    w.metrics = WindowStats(
        utilization=1.0, input_rate=1000.0, lag=5000.0, lag_growth=100.0, coverage=60.0, workers=2
    )
    p = w.step(dt=60)
    assert "patch_replicas" not in [a.kind for a in p.actions]
    assert w.status["autoscaler"]["lastEvaluation"]["blocked"] == "waiting for all pods to be Ready"


def test_pod_monitor_applied_when_enabled_and_warned_when_unsupported() -> None:
    w = World({**BASE, "observability": {"podMonitor": {"enabled": True}}})
    p = w.step()
    assert "PodMonitor" in [a.obj["kind"] for a in p.actions if a.obj]
    obs = w.observe()
    obs.pod_monitor_supported = False
    p = plan(obs)
    assert "PodMonitorUnsupported" in [r for _t, r, _m in p.events]


def test_every_status_written_validates_against_the_crd_schema() -> None:
    import openapi_schema_validator

    w = World(
        {
            **BASE,
            "scaling": {"mode": "auto"},
            "autoscaler": {"metricsWindow": "1m", "stabilizationWindow": "0s"},
        }
    )
    w.run_until_running()
    w.commit(1)
    w.metrics = WindowStats(
        utilization=0.1,
        input_rate=10.0,
        lag=0.0,
        lag_growth=0.0,
        coverage=60.0,
        workers=2,
        snapshot_duration=0.01,
    )
    w.step(dt=60)
    w.edit(replicas=4)
    w.step()
    openapi_schema_validator.validate(w.status, _strip_x(STATUS_SCHEMA))
    assert w.status["snapshot"]["duration"] == 0.01


def _strip_x(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_x(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_strip_x(v) for v in schema]
    return schema


def test_deletion_stops_at_a_barrier_then_deletes_state_when_asked() -> None:
    w = World({**BASE, "deletion": {"deleteState": True}})
    w.run_until_running()
    w.commit(5)
    p = plan_delete(w.observe())
    assert [a.kind for a in p.actions] == ["scale"] and not p.done
    assert p.status["phase"] == "Deleting"
    assert w.sts is not None
    w.sts["spec"]["replicas"] = 0
    for pod in w.pods:
        pod.terminating = True
    p = plan_delete(w.observe())
    assert p.actions == [] and not p.done
    w.pods = []
    p = plan_delete(w.observe())
    # The state is kept first (kept snapshots outlive the deletion).
    assert [a.describe() for a in p.actions] == ["keep snapshot deleted-19700112T134642Z", "delete_state"]
    assert p.done


def test_deletion_keeps_state_by_default_and_can_expire_it() -> None:
    w = World()
    w.commit(5)
    p = plan_delete(w.observe())
    assert p.done and p.actions == []
    assert any(r == "StateKept" for _t, r, _m in p.events)
    w = World({**BASE, "recovery": {**BASE["recovery"], "retention": "24h"}})
    p = plan_delete(w.observe())
    assert [(a.kind, a.seconds) for a in p.actions] == [("expire_state", 86400.0)]


def test_deletion_waits_while_redis_is_down_if_state_must_go() -> None:
    w = World({**BASE, "deletion": {"deleteState": True}})
    w.store = StoreInfo(ok=False, error="ConnectionError")
    p = plan_delete(w.observe())
    assert not p.done
    assert "remove the finalizer" in p.events[0][2]


def test_backoff_delay_is_capped() -> None:
    assert backoff_delay(0, 5, 60, 3) == 5
    assert backoff_delay(10, 5, 60, 3) == 60


def test_format_check_catches_what_the_api_server_rejects() -> None:
    bad = {"health": {"healthySince": ""}, "transition": {"type": "bogus"}}
    assert format_problems(STATUS_SCHEMA, bad) == [
        ".status.health.healthySince: '' is not a date-time",
        ".status.transition.type: 'bogus' not in "
        + str(STATUS_SCHEMA["properties"]["transition"]["properties"]["type"]["enum"]),
    ]


def test_a_deleted_mesh_secret_is_made_again_when_a_pod_needs_it() -> None:
    w = World()
    w.run_until_running()
    p = w.step()
    assert "create_secret" not in [a.kind for a in p.actions]  # running: no call each time
    w.pods[1].waiting_reason = "CreateContainerConfigError"
    w.pods[1].waiting_message = 'secret "wc-mesh" not found'
    p = w.step()
    assert [a.describe() for a in p.actions] == ["create Secret wc-mesh unless it exists"]
    assert "MeshSecretRecreated" in w.reasons()
    # Another Secret's absence is the user's to fix (reported, not created).
    w.pods[1].waiting_message = 'secret "redis-url" not found'
    assert "create_secret" not in [a.kind for a in w.step().actions]
