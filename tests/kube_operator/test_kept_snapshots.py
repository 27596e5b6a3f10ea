"""Kept snapshots in the operator's plan (issue 26, item 1): snapshotNonce, a schedule,
before every spec change, on deletion, retention, restoreFrom, stateless upgrades,
status.snapshots, and the CRD that carries them.

Driven through `plan` with `World` (tests.support.kube_world), which keeps
snapshots as the runtime does (`headrace_operator.kept.doomed` is the
runtime's retention rule; tests/engine/test_snapshots.py checks the runtime).
"""

from __future__ import annotations

from functools import partial
from typing import cast

import pytest

from headrace._engine import SnapshotError, open_store
from headrace_operator import _kube
from headrace_operator.crd import openapi_schema
from headrace_operator.kept import doomed
from headrace_operator.observation import KeptSnapshotInfo
from headrace_operator.outcome import Action
from headrace_operator.reconcile import StoreInfo, plan_delete
from headrace_operator.spec import SpecError, parse_spec
from tests.support.kube_world import BASE, World
from tests.support.servers import RedisServer


def _kinds(w: World) -> list[str]:
    assert w.last is not None
    return [a.kind for a in w.last.actions]


def _snapshots(w: World) -> list[tuple[str, int, int]]:
    return [(s["name"], s["epoch"], s["size"]) for s in w.status.get("snapshots") or []]


def test_snapshot_nonce_keeps_the_next_committed_epoch_under_its_name() -> None:
    w = World()
    w.run_until_running()
    w.commit(1)
    w.edit(snapshotNonce=4)
    w.step()
    assert "keep_snapshot" not in _kinds(w)  # waits for the next commit
    w.now += 5
    w.commit(2)
    w.step()
    assert w.last is not None
    [keep] = [a for a in w.last.actions if a.kind == "keep_snapshot"]
    assert (keep.name, keep.describe()) == ("nonce-4", "keep snapshot nonce-4")
    assert "prune_snapshots" not in _kinds(w)  # no retention set
    assert any(r == "SnapshotCompleted" and m.endswith("kept as 'nonce-4'") for _t, r, m in w.events)
    w.step()
    assert _snapshots(w) == [("nonce-4", 2, 100)]
    assert w.status["snapshots"][0]["time"] == "1970-01-12T13:46:49Z"  # when kept
    w.step()
    assert "keep_snapshot" not in _kinds(w)  # once per nonce


def test_retention_by_count_and_age_never_deletes_the_newest() -> None:
    w = World({**BASE, "recovery": {**BASE["recovery"], "snapshots": {"keep": 2, "maxAge": "1h"}}})
    w.run_until_running()
    for nonce in (1, 2, 3):
        w.commit(10 * nonce)
        w.edit(snapshotNonce=nonce)
        w.step()
        w.now += 5
        w.commit(10 * nonce + 1)
        w.step()
        assert _kinds(w)[-2:] == ["keep_snapshot", "prune_snapshots"]
    w.step()
    assert _snapshots(w) == [("nonce-2", 21, 100), ("nonce-3", 31, 100)]
    # An hour later the older one goes by age; the newest stays, however old.
    w.now += 3600
    w.commit(40)
    w.step()
    assert "prune_snapshots" in _kinds(w)
    assert any(r == "SnapshotsPruned" and "nonce-2" in m for _t, r, m in w.events)
    w.now += 7200
    w.commit(41)
    w.step()
    assert _snapshots(w) == [("nonce-3", 31, 100)]
    assert "prune_snapshots" not in _kinds(w)


def test_doomed_is_the_runtime_rule() -> None:
    ks = [KeptSnapshotInfo(f"s{i}", i, 100.0 + i, 1) for i in range(5)]
    assert doomed(ks, 3, None, 105.0) == ["s0", "s1"]
    assert doomed(ks, None, 2.5, 105.0) == ["s0", "s1", "s2"]
    assert doomed(ks, 1, 0.0, 10_000.0) == ["s0", "s1", "s2", "s3"]
    assert doomed(ks[:1], 1, 0.0, 10_000.0) == []


def test_a_stateless_upgrade_keeps_the_old_state_before_deleting_it() -> None:
    w = World({**BASE, "upgradeMode": "stateless"})
    w.run_until_running()
    w.commit(7)
    w.edit(image="app:2")
    w.step()
    w.kubelet()
    w.step()
    kinds = _kinds(w)
    assert kinds.index("keep_snapshot") < kinds.index("delete_state") < kinds.index("apply")
    assert w.last is not None
    assert next(a.name for a in w.last.actions if a.kind == "keep_snapshot") == "stateless-g2"
    w.kubelet()
    w.step()
    assert _snapshots(w) == [("stateless-g2", 7, 100)]
    assert w.status["phase"] == "Running"


def test_a_stateless_upgrade_of_a_restored_dataflow_starts_empty() -> None:
    w = World({**BASE, "upgradeMode": "stateless", "restoreFrom": {"name": "nonce-1", "dataflow": "prod-wc"}})
    w.other_stores["prod/prod-wc"] = StoreInfo(
        ok=True, exists=True, epoch=40, kept=[KeptSnapshotInfo("nonce-1", 31, 500.0, 4096)]
    )
    w.run_until_running()
    w.commit(35)
    w.edit(image="app:2")
    w.step()
    w.kubelet()
    w.step()
    assert [a.describe() for a in w.last.actions if a.kind.endswith(("_state", "_snapshot"))] == [  # type: ignore[union-attr]
        "keep snapshot stateless-g2",
        "delete_state",
    ]
    assert w.restored == [("prod/prod-wc", "nonce-1")]  # at creation only


def test_a_reset_deletes_the_state_and_keeps_nothing() -> None:
    w = World()
    w.run_until_running()
    w.commit(9)
    w.edit(resetStateNonce=1)
    w.step()
    w.kubelet()
    w.step()
    assert "delete_state" in _kinds(w)
    assert "keep_snapshot" not in _kinds(w) and "restore_snapshot" not in _kinds(w)


def test_restore_from_starts_a_new_dataflow_from_another_dataflows_snapshot() -> None:
    w = World({**BASE, "restoreFrom": {"name": "nonce-3", "dataflow": "prod-wc"}})
    w.other_stores["prod/prod-wc"] = StoreInfo(
        ok=True, exists=True, epoch=40, kept=[KeptSnapshotInfo("nonce-3", 31, 500.0, 4096)]
    )
    w.step()
    kinds = _kinds(w)
    assert kinds.index("restore_snapshot") < kinds.index("apply")
    assert w.last is not None
    [restore] = [a for a in w.last.actions if a.kind == "restore_snapshot"]
    assert (restore.name, restore.source) == ("nonce-3", "prod/prod-wc")
    assert restore.describe() == "restore kept snapshot nonce-3 of 'prod/prod-wc'"
    assert w.restored == [("prod/prod-wc", "nonce-3")]
    assert any(r == "Restoring" and "into 'prod/wc'" in m for _t, r, m in w.events)
    w.run_until_running()
    assert w.store.epoch == 31
    assert "restore_snapshot" not in _kinds(w)  # once


def test_restore_from_after_a_reset_restores_its_own_snapshot() -> None:
    w = World()
    w.run_until_running()
    w.commit(5)
    w.edit(snapshotNonce=1)
    w.step()
    w.now += 5
    w.commit(6)
    w.step()
    w.commit(20)
    w.edit(restoreFrom={"name": "nonce-1"}, resetStateNonce=1)
    w.step()
    w.kubelet()
    w.step()
    kinds = _kinds(w)
    assert kinds.index("delete_state") < kinds.index("restore_snapshot") < kinds.index("apply")
    assert w.restored == [(None, "nonce-1")]
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert w.store.epoch == 6
    assert _snapshots(w) == [("nonce-1", 6, 100)]


def test_restore_from_is_skipped_when_the_store_holds_state() -> None:
    w = World({**BASE, "restoreFrom": {"name": "nonce-1"}})
    w.store = StoreInfo(ok=True, exists=True, epoch=12, key_groups=256)
    w.step()
    assert "restore_snapshot" not in _kinds(w)
    assert any(r == "RestoreSkipped" and "resetStateNonce" in m for _t, r, m in w.events)


def test_restore_from_waits_for_an_unreachable_store() -> None:
    w = World({**BASE, "restoreFrom": {"name": "nonce-1"}})
    w.store = StoreInfo(ok=False, error="ConnectionError: refused")
    w.step()
    assert "restore_snapshot" not in _kinds(w) and "apply" not in _kinds(w)
    assert "RecoveryStoreUnreachable" in w.reasons()


def test_the_spec_and_the_crd_carry_the_settings() -> None:
    spec = parse_spec(
        {
            **BASE,
            "recovery": {**BASE["recovery"], "snapshots": {"keep": 3, "maxAge": "168h"}},
            "restoreFrom": {"name": "nonce-1", "dataflow": "a", "keyPrefix": "p"},
        }
    )
    assert spec.recovery is not None
    assert spec.recovery.snapshots.keep == 3
    assert spec.recovery.snapshots.max_age is not None and spec.recovery.snapshots.max_age.seconds == 604800
    assert spec.restore_from is not None and (spec.restore_from.name, spec.restore_from.key_prefix) == (
        "nonce-1",
        "p",
    )
    with pytest.raises(SpecError, match=r"spec\.restoreFrom: needs spec\.recovery"):
        parse_spec({"image": "a", "flow": {"import": "m:f"}, "restoreFrom": {"name": "x"}})
    with pytest.raises(SpecError, match=r"spec\.restoreFrom\.name"):
        parse_spec({**BASE, "restoreFrom": {"name": "a b"}})
    with pytest.raises(SpecError, match=r"spec\.recovery\.snapshots\.keep"):
        parse_spec({**BASE, "recovery": {**BASE["recovery"], "snapshots": {"keep": 0}}})
    schema = openapi_schema()
    props = schema["properties"]["spec"]["properties"]
    assert props["restoreFrom"]["required"] == ["name"]
    assert set(props["recovery"]["properties"]["snapshots"]["properties"]) == {"keep", "maxAge", "schedule"}
    item = schema["properties"]["status"]["properties"]["snapshots"]["items"]["properties"]
    assert set(item) == {"name", "epoch", "time", "size", "flowId", "steps"}


def _kept_events(w: World) -> list[str]:
    return [m for _t, r, m in w.events if r == "SnapshotKept"]


def test_a_schedule_keeps_the_committed_epoch_every_interval_and_survives_an_operator_restart() -> None:
    spec = {**BASE, "recovery": {**BASE["recovery"], "snapshots": {"schedule": "1h", "keep": 2}}}
    w = World(spec)
    w.run_until_running()
    assert "keep_snapshot" not in _kinds(w)  # nothing committed yet
    w.commit(3)
    w.step()
    assert w.last is not None
    assert [a.describe() for a in w.last.actions] == [
        "keep snapshot scheduled-19700112T134643Z",
        "prune_snapshots",
    ]
    assert _kept_events(w) == [
        "keeping the committed epoch as snapshot 'scheduled-19700112T134643Z' "
        "(spec.recovery.snapshots.schedule 1h: epoch 3)"
    ]
    assert w.last.requeue == 10.0
    # Every reconcile within the hour (a restarted operator's first one too: it reads
    # the last one's time from the store) keeps nothing and looks again when it is due.
    w.status = {k: v for k, v in w.status.items() if k != "snapshots"}
    _later(w, 1800, 9)
    assert "keep_snapshot" not in _kinds(w)
    assert _snapshots(w) == [("scheduled-19700112T134643Z", 3, 100)]
    _later(w, 1799, 10)
    assert "keep_snapshot" not in _kinds(w)
    assert w.last is not None and w.last.requeue == 1.0
    _later(w, 1, 11)
    assert _kinds(w) == ["keep_snapshot", "prune_snapshots"]
    _later(w, 3600, 12)
    w.step()
    assert [k.name for k in w.store.kept] == ["scheduled-19700112T144643Z", "scheduled-19700112T154643Z"]
    assert len(_kept_events(w)) == 3


def _later(w: World, dt: float, epoch: int) -> None:
    """``dt`` seconds on, the workers have just committed ``epoch``: a reconcile."""
    w.now += dt - 1
    w.commit(epoch)
    w.step()


def test_no_scheduled_snapshot_while_a_transition_runs_or_without_a_schedule() -> None:
    w = World()
    w.run_until_running()
    w.commit(3)
    for _ in range(3):
        w.step(dt=7200)
    assert w.store.kept == [] and _kept_events(w) == []
    w = World({**BASE, "recovery": {**BASE["recovery"], "snapshots": {"schedule": "1h"}}})
    w.run_until_running()
    w.commit(3)
    w.edit(replicas=3)
    w.step()
    assert w.status["transition"]["type"] == "rescale"
    assert "keep_snapshot" not in _kinds(w)  # the stop first: what is kept is the barrier's state
    w.kubelet()
    w.step()
    assert [a.describe() for a in w.last.actions if a.kind == "keep_snapshot"] == [
        "keep snapshot pre-upgrade-g2"
    ]  # type: ignore[union-attr]


def test_every_spec_change_keeps_the_state_at_its_barrier_first() -> None:
    w = World()
    w.run_until_running()
    w.commit(7)
    w.edit(image="app:2")
    w.step()
    assert w.status["transition"]["type"] == "upgrade"
    assert "keep_snapshot" not in _kinds(w)
    w.kubelet()
    w.step()
    kinds = _kinds(w)
    assert kinds.index("keep_snapshot") < kinds.index("apply")
    assert "prune_snapshots" not in kinds and "delete_state" not in kinds
    assert _kept_events(w) == [
        "keeping the committed epoch as snapshot 'pre-upgrade-g2' (the state of epoch 7 before generation 2)"
    ]
    w.kubelet()
    w.step()
    assert w.status["phase"] == "Running"
    assert _snapshots(w) == [("pre-upgrade-g2", 7, 100)]
    # A rescale is a spec change too; a restartNonce is not.
    w.commit(11)
    w.edit(replicas=3)
    w.step()
    w.kubelet()
    w.step()
    assert [k.name for k in w.store.kept] == ["pre-upgrade-g2", "pre-upgrade-g3"]
    w.kubelet()
    w.run_until_running()
    w.edit(restartNonce=1)
    w.step()
    w.kubelet()
    w.step()
    assert w.status["transition"]["type"] == "restart"
    assert [k.name for k in w.store.kept] == ["pre-upgrade-g2", "pre-upgrade-g3"]
    # A retried start (the same generation) keeps it once.
    assert w.applied.count("keep snapshot pre-upgrade-g3") == 1


def test_retention_applies_to_pre_change_snapshots_and_keeps_the_newest() -> None:
    w = World({**BASE, "recovery": {**BASE["recovery"], "snapshots": {"keep": 1}}})
    w.run_until_running()
    for i, image in enumerate(("app:2", "app:3"), start=1):
        w.commit(10 * i)
        w.edit(image=image)
        w.step()
        w.kubelet()
        w.step()
        kinds = _kinds(w)
        assert kinds.index("keep_snapshot") + 1 == kinds.index("prune_snapshots") < kinds.index("apply")
        w.kubelet()
        w.step()
    assert [(k.name, k.epoch) for k in w.store.kept] == [("pre-upgrade-g3", 20)]


def test_no_snapshot_before_a_change_of_a_dataflow_without_state() -> None:
    w = World({"image": "app:1", "flow": {"import": "app.flows:wc"}, "replicas": 2})
    w.run_until_running()
    w.edit(image="app:2")
    w.step()
    w.kubelet()
    w.step()
    assert "keep_snapshot" not in _kinds(w)
    w = World()  # recovery, nothing committed yet
    w.run_until_running()
    w.edit(image="app:2")
    w.step()
    w.kubelet()
    w.step()
    assert "keep_snapshot" not in _kinds(w)


def _deleted(spec: dict[str, object]) -> World:
    """A Dataflow at epoch 5, its pods gone, being deleted."""
    w = World(spec)
    w.commit(5)
    return w


def test_deletion_keeps_the_state_as_a_snapshot_before_deleting_or_expiring_it() -> None:
    w = _deleted(
        {
            **BASE,
            "deletion": {"deleteState": True},
            "recovery": {**BASE["recovery"], "snapshots": {"keep": 3}},
        }
    )
    p = plan_delete(w.observe())
    assert [a.describe() for a in p.actions] == [
        "keep snapshot deleted-19700112T134640Z",
        "prune_snapshots",
        "delete_state",
    ]
    assert p.done
    assert [(r, m) for _t, r, m in p.events] == [
        (
            "SnapshotKept",
            "keeping the committed epoch as snapshot 'deleted-19700112T134640Z' (the Dataflow is "
            "deleted: the state of epoch 5, for a later spec.restoreFrom)",
        ),
        ("StateDeleted", "deleted the Redis state under 'prod/wc'"),
    ]
    w = _deleted({**BASE, "recovery": {**BASE["recovery"], "retention": "24h"}})
    p = plan_delete(w.observe())
    assert [a.describe() for a in p.actions] == ["keep snapshot deleted-19700112T134640Z", "expire_state"]
    # Retried (the finalizer's removal failed): that state is kept already.
    w.store.kept = [KeptSnapshotInfo("deleted-19700112T134640Z", 5, w.now, 100)]
    w.now += 30
    assert [a.kind for a in plan_delete(w.observe()).actions] == ["expire_state"]
    # State kept by default: nothing to keep apart.
    assert plan_delete(_deleted(BASE).observe()).actions == []
    # Nothing committed: nothing to keep.
    w = World({**BASE, "deletion": {"deleteState": True}})
    assert [a.kind for a in plan_delete(w.observe()).actions] == ["delete_state"]


def test_a_later_dataflow_restores_the_deleted_state() -> None:
    w = _deleted({**BASE, "deletion": {"deleteState": True}})
    for a in plan_delete(w.observe()).actions:
        w._kept_snapshot(a)
    [snap] = w.store.kept
    w2 = World({**BASE, "restoreFrom": {"name": snap.name, "dataflow": "old"}})
    w2.other_stores["prod/old"] = StoreInfo(ok=True, exists=False, kept=[snap])
    w2.run_until_running()
    assert w2.restored == [("prod/old", "deleted-19700112T134640Z")]
    assert w2.store.epoch == 5


# ------------------------------------------------------------ the actions on a real Redis


def test_the_actions_keep_prune_and_restore_on_a_real_redis(redis_server: RedisServer) -> None:
    url = redis_server.url
    store = open_store(url, "prod/a")
    store.start_execution(worker_count=1, key_groups=8)
    store.write_epoch(1, [("flow.count", 3, "k", b"v" * 10)])
    store.commit(1, 11)
    store.release()
    store.close()
    stores = _kube.Stores()
    run = partial(_kube.apply_actions, cast("_kube.Kube", None), stores, "prod", "a")
    run([Action("keep_snapshot", name="nonce-1")], url, "prod/a")
    run([Action("keep_snapshot", name="nonce-1")], url, "prod/a")  # again (a retried reconcile): no error
    run([Action("keep_snapshot", name="nonce-2"), Action("prune_snapshots", keep=1)], url, "prod/a")
    info = stores.info(url, "prod/a")
    assert [(k.name, k.epoch, k.size) for k in info.kept] == [("nonce-2", 1, 11)]
    # Another Dataflow starts from it; a restore into live state fails (and says why).
    run([Action("restore_snapshot", name="nonce-2", source="prod/a")], url, "prod/b")
    b = stores.info(url, "prod/b")
    assert (b.exists, b.epoch, b.key_groups, b.kept) == (True, 1, 8, [])
    with pytest.raises(SnapshotError, match="is not empty"):
        run([Action("restore_snapshot", name="nonce-2", source="prod/a")], url, "prod/b")
    # A reset keeps kept snapshots; an empty store has nothing to keep (not an error).
    run([Action("delete_state")], url, "prod/a")
    assert [k.name for k in stores.info(url, "prod/a").kept] == ["nonce-2"]
    run([Action("keep_snapshot", name="nonce-3")], url, "prod/a")
    assert [k.name for k in stores.info(url, "prod/a").kept] == ["nonce-2"]
    # Expiring the live state leaves kept snapshots alone (deletion with recovery.retention).
    store = open_store(url, "prod/a")
    store.start_execution(worker_count=1, key_groups=8)
    store.write_epoch(1, [("flow.count", 3, "k", b"v" * 10)])
    store.commit(1, 11)
    store.release()
    store.close()
    run([Action("keep_snapshot", name="deleted-1"), Action("expire_state", seconds=1.0)], url, "prod/a")
    import redis

    r = redis.Redis.from_url(url)
    ttls = {k.decode().split(":")[1]: r.ttl(k) for k in r.scan_iter(match="hr{prod/a}:*")}
    assert ttls["snaps"] == -1 and ttls["snap"] == -1 and ttls["meta"] == 1, ttls
    info = stores.info(url, "prod/a")
    assert [(k.name, k.epoch, k.steps) for k in info.kept] == [
        ("nonce-2", 1, ("flow.count",)),
        ("deleted-1", 1, ("flow.count",)),
    ]
