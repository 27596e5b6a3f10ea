"""The next pods start in the other set while the old ones stop (issue 26, item 5).

A rescale, a ``last-state`` upgrade or a restart of a Dataflow with recovery
applies the next StatefulSet (``wc-b``, then ``wc`` again) in the same plan
that scales the current one to 0: its pods start Python, import the flow and
connect while the old ones stop at their barrier, and resume once the old
execution released the store (``HEADRACE_STANDBY_TIMEOUT``). `World` plays
the cluster (``next_set=True``: the other set's name is free).
"""

from __future__ import annotations

from typing import Any

from headrace_operator import manifests as mf
from headrace_operator.observation import PodInfo
from headrace_operator.reconcile import plan, plan_delete
from tests.support.kube_world import BASE, World


def _env(sts: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


def _running(spec: dict[str, Any] | None = None) -> World:
    w = World(spec, next_set=True)
    w.run_until_running()
    w.commit(7)
    return w


def test_a_rescale_starts_the_other_set_and_stops_the_old_one_once_it_stands_by() -> None:
    w = _running()
    w.edit(replicas=3)
    p = w.step()
    assert [a.describe() for a in p.actions] == [
        "check Pod wc-b-check-* (server-side dry run)",
        "check Service wc (server-side dry run)",
        "check StatefulSet wc-b (server-side dry run)",
        "check Pod wc-b-check-* (server-side dry run)",
        "create Secret wc-mesh unless it exists",
        "apply Service wc",
        "apply StatefulSet wc-b replicas=3",
        "keep snapshot pre-upgrade-g2",
    ]
    sts = w.sets["wc-b"]
    assert mf.sts_annotations(sts)[mf.ANN_SET] == "1"
    env = _env(sts)
    assert env["HEADRACE_PEER_PATTERN"] == "wc-b-{i}.wc.prod.svc.cluster.local:2101"
    assert (env["HEADRACE_REPLICAS"], env["HEADRACE_EXPECT_EPOCH"], env["HEADRACE_STANDBY_TIMEOUT"]) == (
        "3",
        "7",
        "110",  # within the startup probe's 2 minutes
    )
    # The same pod template as the old set's, but for the peers' names: no upgrade seen.
    assert (
        mf.sts_annotations(sts)[mf.ANN_TEMPLATE_HASH]
        == mf.sts_annotations(w.sets["wc"])[mf.ANN_TEMPLATE_HASH]
    )
    assert w.status["phase"] == "Scaling"
    tr = w.status["transition"]
    assert (tr["type"], tr["stage"], tr["fromReplicas"], tr["toReplicas"]) == ("rescale", "Starting", 2, 3)
    assert [m for _t, r, m in w.events if r == "Scaling"] == [
        "rescaling 2 -> 3 pod(s): starting the next pods in the other set, then stopping at an "
        "epoch barrier, then restarting with the new worker count"
    ]
    assert [m for _t, r, m in w.events if r == "Restored"] == [
        "starting 3 pod(s) x 1 worker(s) from epoch >= 7 (written by 2 workers) as set wc-b"
    ]
    # The old pods write on until the new ones stand by.
    p = w.step()
    assert p.actions == [] and p.requeue == 0.5
    assert [(pod.name, pod.terminating) for pod in w.pods] == [("wc-0", False), ("wc-1", False)]
    w.kubelet()  # the new pods up, process 0 waiting for the lease (not Ready)
    assert w.store.standby == f"wc-b-0 {w.now!r}"
    assert [(pod.name, pod.ready) for pod in w.pods][2:] == [
        ("wc-b-0", False),
        ("wc-b-1", False),
        ("wc-b-2", False),
    ]
    p = w.step()
    assert [a.describe() for a in p.actions] == ["scale StatefulSet to 0"]
    w.commit(8)  # the barrier's commit
    w.kubelet()
    p = w.step(dt=3)
    assert sorted(pod.name for pod in w.pods) == ["wc-b-0", "wc-b-1", "wc-b-2"]
    assert w.status["phase"] == "Running" and "transition" not in w.status
    assert p.transitions == [("rescale", 5.0)]
    assert w.status["replicas"] == 3 and w.status["readyReplicas"] == 3
    # The old set, stopped and without pods, goes.
    assert "delete StatefulSet wc" in [a.describe() for a in p.actions]
    assert list(w.sets) == ["wc-b"]


def test_without_a_standby_the_old_set_stops_after_a_minute() -> None:
    w = _running()
    w.edit(replicas=3)
    w.step()
    assert w.step(dt=59).actions == []
    assert [a.describe() for a in w.step(dt=1).actions] == ["scale StatefulSet to 0"]
    # A standby note of earlier pods (another transition) does not count.
    w = _running()
    w.store.standby = f"wc-b-0 {w.now - 100!r}"
    w.edit(replicas=3)
    w.step()
    assert w.step().actions == []


def _through(w: World) -> list[list[str]]:
    """A change made: apply the next set; its pods stand by; stop the old set; arrive."""
    out = []
    for _ in range(3):
        out.append([a.describe() for a in w.step().actions])
        w.kubelet()
    return out


def test_the_sets_alternate_and_each_change_scales_the_current_one() -> None:
    w = _running()
    w.edit(replicas=3)
    _through(w)
    assert list(w.sets) == ["wc-b"] and w.status["phase"] == "Running"
    w.edit(image="app:2")
    applied, stopped, arrived = _through(w)
    assert "apply StatefulSet wc replicas=3" in applied
    assert stopped == ["scale StatefulSet wc-b to 0"]
    assert arrived == ["delete StatefulSet wc-b"]
    assert mf.sts_annotations(w.sets["wc"])[mf.ANN_SET] == "2"
    assert w.sts is w.sets["wc"]  # the higher sequence number is the current set
    assert sorted(pod.name for pod in w.pods) == ["wc-0", "wc-1", "wc-2"]
    assert list(w.sets) == ["wc"] and w.status["phase"] == "Running"
    assert [r["type"] for r in w.status["lastTransitions"]][1:] == ["rescale", "upgrade"]
    # A restart too; a suspend stops the current set where it is.
    w.edit(restartNonce=1)
    _through(w)
    assert mf.sts_annotations(w.sets["wc-b"])[mf.ANN_SET] == "3" and list(w.sets) == ["wc-b"]
    w.edit(state="suspended")
    p = w.step()
    assert [a.describe() for a in p.actions] == ["scale StatefulSet wc-b to 0"]
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Suspended" and list(w.sets) == ["wc-b"]
    w.edit(state="running")
    p = w.step()
    assert "apply StatefulSet wc-b replicas=3" in [a.describe() for a in p.actions]


def _first_actions(w: World) -> list[str]:
    return [a.describe() for a in w.step().actions]


def test_a_change_that_must_touch_the_state_between_stop_and_start_stops_first() -> None:
    for spec, change in [
        ({**BASE, "upgradeMode": "snapshot"}, {"image": "app:2"}),
        ({**BASE, "upgradeMode": "stateless"}, {"image": "app:2"}),
        ({**BASE, "rollback": {"enabled": True}}, {"replicas": 3}),
        (BASE, {"resetStateNonce": 1}),
        ({k: v for k, v in BASE.items() if k != "recovery"}, {"replicas": 3}),
    ]:
        w = World(spec, next_set=True)
        w.run_until_running()
        w.commit(7)
        w.edit(**change)
        described = _first_actions(w)
        assert described[-1] == "scale StatefulSet to 0", (spec, change, described)
        assert "wc-b" not in str(described) and list(w.sets) == ["wc"]


def test_the_other_set_must_be_free() -> None:
    # Another owner's StatefulSet has the name: a coordinated stop in the same set.
    w = _running()
    w.next_set = False
    w.edit(replicas=3)
    assert _first_actions(w)[-1] == "scale StatefulSet to 0"
    # The last set's pods still going: the same.
    w = _running()
    w.edit(replicas=3)
    w.step()
    w.kubelet()
    w.pods.append(_going("wc-0", "wc"))  # one old pod still going
    w.step()
    assert list(w.sets) == ["wc", "wc-b"], "not deleted while its pod goes"
    w.edit(replicas=2)
    described = _first_actions(w)
    assert described[-1] == "scale StatefulSet wc-b to 0", described
    assert not any(d.startswith("apply StatefulSet") for d in described)


def _going(name: str, set_name: str) -> PodInfo:
    return PodInfo(name, int(name.rsplit("-", 1)[1]), phase="Running", terminating=True, set=set_name)


def test_a_long_name_keeps_one_set() -> None:
    w = World(next_set=True)
    w.run_until_running()
    w.commit(7)
    w.edit(replicas=3)
    obs = w.observe()
    obs.name = "x" * 51  # "-b" would make it 53: more than a StatefulSet name may have
    described = [a.describe() for a in plan(obs).actions]
    assert described[-1] == "scale StatefulSet wc to 0", described
    assert not any("-b" in d for d in described), described


def test_deletion_waits_for_both_sets_pods() -> None:
    w = _running()
    w.edit(replicas=3)
    w.step()  # wc running on, wc-b starting
    p = plan_delete(w.observe())
    assert [a.describe() for a in p.actions] == ["scale StatefulSet to 0", "scale StatefulSet wc-b to 0"]
    assert not p.done
    w.kubelet()
    w.step()
    obs = w.observe()
    obs.sts["spec"]["replicas"] = 0
    obs.pods = []
    obs.old_pods = [_going("wc-0", "wc")]
    obs.old_sts = {"metadata": {"name": "wc"}, "spec": {"replicas": 0}}
    assert plan_delete(obs).done is False
    obs.old_pods = []
    assert plan_delete(obs).done is True


def test_a_pod_names_the_set_that_owns_it() -> None:
    pod = {
        "metadata": {
            "name": "wc-b-1",
            "ownerReferences": [{"kind": "StatefulSet", "name": "wc-b", "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    info = PodInfo.from_pod(pod)
    assert (info.name, info.ordinal, info.set) == ("wc-b-1", 1, "wc-b")
    assert PodInfo.from_pod({"metadata": {"name": "wc-0"}}).set == ""
