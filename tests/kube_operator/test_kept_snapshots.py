"""Kept snapshots in the operator's plan (issue 26, item 1): snapshotNonce, retention,
restoreFrom, stateless upgrades, status.snapshots, and the CRD that carries them.

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
from headrace_operator.reconcile import StoreInfo
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
    assert set(props["recovery"]["properties"]["snapshots"]["properties"]) == {"keep", "maxAge"}
    item = schema["properties"]["status"]["properties"]["snapshots"]["items"]["properties"]
    assert set(item) == {"name", "epoch", "time", "size"}


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
