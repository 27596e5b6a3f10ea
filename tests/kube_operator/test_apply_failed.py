"""What the API server refuses is reported within one reconcile, and never stops running pods.

`World.refuse` plays the API server refusing an object (as the handlers meet
it: an exception from one action); `apply_failed` turns that into the phase,
the conditions, ``status.lastError`` and an event.
"""

from __future__ import annotations

from headrace_operator.outcome import Action
from headrace_operator.spec import CEL_RULES, SpecError, parse_spec
from tests.support.kube_world import BASE, World

REFUSED = (
    'StatefulSet.apps "wc" is invalid: spec.template.spec.containers[0].resources.limits[memory]: '
    'Invalid value: "lots": must be a quantity'
)


def _refuse_statefulsets(a: Action) -> str | None:
    if a.kind in ("apply", "dry_run") and a.obj is not None and a.obj["kind"] == "StatefulSet":
        return REFUSED
    return None


def test_a_refused_statefulset_at_creation_is_a_failed_phase_with_the_servers_words() -> None:
    w = World({**BASE, "resources": {"limits": {"memory": "lots"}}})
    w.refuse = _refuse_statefulsets
    w.step()
    assert w.status["phase"] == "Failed"
    ready = w.cond("Ready")
    assert ready["reason"] == "ApplyFailed"
    assert ready["message"] == (
        f"apply StatefulSet wc replicas=2 failed: {REFUSED}. Fix the spec and apply it again"
    )
    assert w.cond("Degraded")["reason"] == "ApplyFailed"
    assert w.status["lastError"]["reason"] == "ApplyFailed"
    assert w.status["observedGeneration"] == 1
    assert w.events == [("Warning", "ApplyFailed", ready["message"])]
    # The pod check, the Secret and the Service went before the refused StatefulSet.
    assert w.applied == [
        "check Pod wc-check-* (server-side dry run)",
        "create Secret wc-mesh unless it exists",
        "apply Service wc",
    ]
    # Fixed: the next reconcile creates it.
    w.refuse = lambda _a: None
    w.edit(resources={"limits": {"memory": "1Gi"}})
    w.step()
    assert w.status["phase"] == "Deploying"
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert w.cond("Degraded")["status"] == "False"


def test_a_refused_upgrade_is_checked_before_anything_stops() -> None:
    w = World()
    w.run_until_running()
    w.refuse = _refuse_statefulsets
    w.edit(podTemplate={"spec": {"containers": [{"name": "sidecar"}]}})
    w.step()
    assert w.applied[-1] == "check Service wc (server-side dry run)"
    assert "scale StatefulSet to 0" not in w.applied
    assert w.status["phase"] == "Running"
    assert "transition" not in w.status
    degraded = w.cond("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ApplyFailed"
    assert degraded["message"].startswith("check StatefulSet wc (server-side dry run) failed: ")
    assert degraded["message"].endswith("; the running pods keep running the last spec")
    assert w.cond("Ready")["status"] == "True"
    assert [r for _t, r, _m in w.events].count("ApplyFailed") == 1
    # The pods keep running, reconcile after reconcile, until the spec is fixed.
    for _ in range(3):
        w.step(dt=10)
        assert "scale StatefulSet to 0" not in w.applied
    w.refuse = lambda _a: None
    w.edit(podTemplate={"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}})
    w.step()
    assert w.applied[-1] == "scale StatefulSet to 0"
    assert w.status["phase"] == "Upgrading"


def test_a_pod_the_server_refuses_is_reported_before_the_statefulset_exists() -> None:
    w = World({**BASE, "podTemplate": {"spec": {"containers": [{"name": "sidecar"}]}}})

    def refuse_pods(a: Action) -> str | None:
        if a.kind == "dry_run" and a.obj is not None and a.obj["kind"] == "Pod":
            return 'Pod "wc-check-x" is invalid: spec.containers[1].image: Required value'
        return None

    w.refuse = refuse_pods
    w.step()
    assert w.applied == []
    assert w.sts is None
    assert w.status["phase"] == "Failed"
    assert w.cond("Ready")["message"] == (
        'check Pod wc-check-* (server-side dry run) failed: Pod "wc-check-x" is invalid: '
        "spec.containers[1].image: Required value. Fix the spec and apply it again"
    )


def test_a_suspend_needs_no_dry_run() -> None:
    w = World()
    w.run_until_running()
    w.edit(state="suspended")
    p = w.step()
    assert [a.kind for a in p.actions] == ["scale"]


def test_the_metrics_port_may_not_be_the_cluster_port() -> None:
    rule = next(r for r in CEL_RULES if r[0] == "spec.observability")
    assert rule[1] == "!has(self.metricsPort) || self.metricsPort != 2101"
    try:
        parse_spec({**BASE, "observability": {"metricsPort": 2101}})
    except SpecError as exc:
        assert exc.problems == [
            (
                "spec.observability.metricsPort",
                "may not be 2101: the workers' cluster port; choose another (default 3030)",
            )
        ]
    else:
        raise AssertionError("metricsPort 2101 accepted")
