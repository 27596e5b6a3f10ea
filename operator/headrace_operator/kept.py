"""Kept snapshots in the plan: keep one, prune by count and age, restore one, list them.

Placed in the flow: `reconcile.plan` calls these while it decides. They
add actions (carried out in order by `_kube.apply_actions`, with
headrace's kept snapshots, ``python -m headrace.recovery snapshot|restore``
in a library call) and events, and fill ``status.snapshots`` from what the
store holds (`StoreInfo.kept`, read with the rest of the store's state):

- ``snapshotNonce``: once the next epoch after the request is committed,
  keep it as ``nonce-<value>`` (`nonce_name`);
- ``upgradeMode: stateless``: the old state is kept as
  ``stateless-g<generation>`` (`stateless_name`) before it is deleted;
- every spec change that stops the pods (a new pod template or a rescale,
  the autoscaler's included) of a Dataflow with recovery: the state at the
  stop's barrier is kept as ``pre-upgrade-g<generation>`` (`pre_upgrade_name`,
  `before_change`); with ``spec.rollback.enabled`` a rollback restores it;
- ``spec.recovery.snapshots.schedule``: ``scheduled-<UTC time>``
  (`scheduled_name`, `scheduled`) once the last scheduled one in the store is
  that old (none: at once), so an operator restart never repeats one;
- deletion that deletes the state or lets it expire: it is kept first as
  ``deleted-<UTC time>`` (`deleted_name`, `on_deletion`); kept snapshots
  outlive both, and a later Dataflow can ``restoreFrom`` it;
- ``spec.recovery.snapshots.keep`` / ``maxAge``: `retention`, never the
  newest one;
- ``spec.restoreFrom``: a new Dataflow, or one after ``resetStateNonce``,
  starts from a kept snapshot of itself or of another Dataflow
  (`restore`); the workers then refuse a snapshot whose steps the flow
  does not have, naming them, unless ``recovery.allowDroppedState``.

>>> nonce_name(3), stateless_name(7), pre_upgrade_name(8), scheduled_name(0.0), deleted_name(0.0)
('nonce-3', 'stateless-g7', 'pre-upgrade-g8', 'scheduled-19700101T000000Z', 'deleted-19700101T000000Z')
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from headrace_operator import manifests as mf
from headrace_operator.observation import KeptSnapshotInfo
from headrace_operator.status import KeptSnapshotStatus, iso

if TYPE_CHECKING:
    from headrace_operator.outcome import Ctx
    from headrace_operator.spec import DataflowSpec

__all__ = [
    "before_change",
    "deleted_name",
    "doomed",
    "keep",
    "nonce_name",
    "on_deletion",
    "pre_upgrade_name",
    "report",
    "restore",
    "restore_at_creation",
    "restore_own",
    "retention",
    "scheduled",
    "scheduled_name",
    "set_aside",
    "source_prefix",
    "stateless_name",
]


def nonce_name(nonce: int) -> str:
    """The name of the snapshot kept for ``snapshotNonce`` ``nonce``.

    >>> nonce_name(12)
    'nonce-12'
    """
    return f"nonce-{nonce}"


def stateless_name(generation: int) -> str:
    """The name of the old state kept by a stateless upgrade to ``generation``.

    >>> stateless_name(4)
    'stateless-g4'
    """
    return f"stateless-g{generation}"


def pre_upgrade_name(generation: int) -> str:
    """The name of the state kept before the spec change to ``generation`` (``spec.rollback``).

    >>> pre_upgrade_name(4)
    'pre-upgrade-g4'
    """
    return f"pre-upgrade-g{generation}"


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def scheduled_name(t: float) -> str:
    """The name of the snapshot ``spec.recovery.snapshots.schedule`` keeps at ``t`` (UTC).

    >>> scheduled_name(1_800_000_000.0)
    'scheduled-20270115T080000Z'
    """
    return f"{SCHEDULED}{_stamp(t)}"


def deleted_name(t: float) -> str:
    """The name of the state kept when the Dataflow is deleted at ``t`` (UTC).

    >>> deleted_name(1_800_000_000.0)
    'deleted-20270115T080000Z'
    """
    return f"{DELETED}{_stamp(t)}"


SCHEDULED, DELETED = "scheduled-", "deleted-"


def report(c: Ctx) -> None:
    """``status.snapshots`` from the store (left as it was while the store can't be read).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> k = KeptSnapshotInfo("nonce-1", 7, 0.0, 2048, "wc", ("wc.sum",))
    >>> obs = Observation("wc", "ns", "u", 1, {}, 0.0, store=StoreInfo(kept=[k]))
    >>> c = Ctx(obs); report(c); s = c.st.snapshots[0]
    >>> s.name, s.epoch, s.time, s.size, s.flow_id, s.steps
    ('nonce-1', 7, '1970-01-01T00:00:00Z', 2048, 'wc', ['wc.sum'])
    """
    store = c.obs.store
    if store is None or not store.ok:
        return
    c.st.snapshots = [
        KeptSnapshotStatus(k.name, k.epoch, iso(k.taken_at), k.size, k.flow_id or None, list(k.steps) or None)
        for k in store.kept
    ] or None


def doomed(kept: list[KeptSnapshotInfo], keep: int | None, max_age: float | None, now: float) -> list[str]:
    """The kept snapshots retention deletes: beyond the ``keep`` newest, or older than
    ``max_age`` seconds; never the newest (the rule of headrace's ``prune_snapshots``).

    >>> ks = [KeptSnapshotInfo(f"s{i}", i, 100.0 + i, 1) for i in range(4)]
    >>> doomed(ks, 2, None, 104.0), doomed(ks, None, 2.5, 104.0), doomed(ks, 1, 0.0, 999.0)
    (['s0', 's1'], ['s0', 's1'], ['s0', 's1', 's2'])
    """
    ordered = sorted(kept, key=lambda k: (k.taken_at, k.epoch, k.name))
    out = []
    for i, k in enumerate(ordered[:-1]):
        newer = len(ordered) - 1 - i
        if (keep is not None and newer >= keep) or (max_age is not None and now - k.taken_at > max_age):
            out.append(k.name)
    return out


def _limits(spec: DataflowSpec) -> tuple[int | None, float | None]:
    if spec.recovery is None:
        return None, None
    r = spec.recovery.snapshots
    return r.keep, (r.max_age.seconds if r.max_age is not None else None)


def keep(c: Ctx, spec: DataflowSpec, name: str, why: str) -> None:
    """Keep the committed epoch as ``name`` (then apply retention).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "restoreFrom": {"name": "n1"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"keep": 2}}})
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0)); keep(c, spec, "nonce-1", "why")
    >>> [a.describe() for a in c.p.actions]
    ['keep snapshot nonce-1', 'prune_snapshots']
    """
    c.act("keep_snapshot", name=name)
    c.event("Normal", "SnapshotKept", f"keeping the committed epoch as snapshot {name!r} ({why})")
    limit, age = _limits(spec)
    if limit is not None or age is not None:
        c.act("prune_snapshots", keep=limit, seconds=age)


def retention(c: Ctx, spec: DataflowSpec) -> None:
    """Delete kept snapshots beyond ``spec.recovery.snapshots`` (count and age).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "restoreFrom": {"name": "n1"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"keep": 2}}})
    >>> ks = [KeptSnapshotInfo(f"s{i}", i, float(i), 1) for i in range(3)]
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 9.0, store=StoreInfo(kept=ks))); retention(c, spec)
    >>> [(a.kind, a.keep) for a in c.p.actions], c.p.events[0][2]
    ([('prune_snapshots', 2)], 'deleting kept snapshots s0 (spec.recovery.snapshots)')
    """
    store = c.obs.store
    limit, age = _limits(spec)
    if store is None or not store.ok or (limit is None and age is None):
        return
    gone = doomed(store.kept, limit, age, c.now)
    if gone:
        c.act("prune_snapshots", keep=limit, seconds=age)
        c.event(
            "Normal",
            "SnapshotsPruned",
            f"deleting kept snapshots {', '.join(gone)} (spec.recovery.snapshots)",
        )


def source_prefix(spec: DataflowSpec, owner: mf.Owner) -> str | None:
    """The key prefix ``spec.restoreFrom`` names (``None``: this Dataflow's own).

    >>> from headrace_operator.spec import parse_spec
    >>> s = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": {"url": "redis://r/0"},
    ...                 "restoreFrom": {"name": "nonce-1", "dataflow": "prod"}})
    >>> source_prefix(s, mf.Owner("copy", "ns", "u"))
    'ns/prod'
    """
    rf = spec.restore_from
    if rf is None:
        return None
    if rf.key_prefix:
        return rf.key_prefix
    if rf.dataflow and rf.dataflow != owner.name:
        return f"{owner.namespace}/{rf.dataflow}"
    return None


def restore(c: Ctx, spec: DataflowSpec, owner: mf.Owner) -> None:
    """Restore ``spec.restoreFrom`` into the (empty) store before the pods start.

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "restoreFrom": {"name": "n1"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"keep": 2}}})
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0)); restore(c, spec, mf.Owner("wc", "ns", "u"))
    >>> c.p.actions[0].describe()
    'restore kept snapshot n1'
    """
    rf = spec.restore_from
    assert rf is not None
    source = source_prefix(spec, owner)
    c.act("restore_snapshot", name=rf.name, source=source)
    of = f" of {source!r}" if source else ""
    c.event(
        "Normal",
        "Restoring",
        f"restoring kept snapshot {rf.name!r}{of} into {mf.key_prefix(spec, owner)!r}: the "
        "workers resume from its epoch (a flow whose steps differ is refused, naming them)",
    )


def restore_own(c: Ctx, spec: DataflowSpec, owner: mf.Owner, name: str, why: str) -> None:
    """Restore this Dataflow's kept snapshot ``name`` into its (emptied) store, saying ``why``.

    >>> from headrace_operator.observation import Observation
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": {"url": "redis://r/0"}})
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0))
    >>> restore_own(c, spec, mf.Owner("wc", "ns", "u"), "pre-upgrade-g2", "a rollback")
    >>> c.p.actions[0].describe()
    'restore kept snapshot pre-upgrade-g2'
    >>> c.p.events[0][2]
    "restoring kept snapshot 'pre-upgrade-g2' into 'ns/wc' (a rollback)"
    """
    c.act("restore_snapshot", name=name, source=None)
    c.event(
        "Normal", "Restoring", f"restoring kept snapshot {name!r} into {mf.key_prefix(spec, owner)!r} ({why})"
    )


def restore_at_creation(c: Ctx, spec: DataflowSpec, owner: mf.Owner, emptied: bool) -> None:
    """A new StatefulSet: restore ``spec.restoreFrom`` unless the store holds state (and
    was not ``emptied`` just now), which wins: say so.

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "restoreFrom": {"name": "n1"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"keep": 2}}})
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0, store=StoreInfo(exists=True, epoch=3)))
    >>> restore_at_creation(c, spec, mf.Owner("wc", "ns", "u"), emptied=False)
    >>> c.p.actions, c.p.events[0][1]
    ([], 'RestoreSkipped')
    """
    store = c.obs.store
    if spec.restore_from is None or spec.recovery is None or store is None:
        return
    if store.exists and not emptied:
        c.event(
            "Warning",
            "RestoreSkipped",
            f"spec.restoreFrom {spec.restore_from.name!r} not restored: the store already holds "
            f"state of this Dataflow (prefix {mf.key_prefix(spec, owner)!r}); it resumes from "
            "that. Change spec.resetStateNonce to start from the snapshot",
        )
        return
    restore(c, spec, owner)


def set_aside(c: Ctx, spec: DataflowSpec) -> None:
    """A stateless upgrade: keep the old state as a snapshot before it is deleted.

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "restoreFrom": {"name": "n1"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"keep": 2}}})
    >>> c = Ctx(Observation("wc", "ns", "u", 5, {}, 0.0, store=StoreInfo(exists=True, epoch=3)))
    >>> set_aside(c, spec); c.p.actions[0].describe()
    'keep snapshot stateless-g5'
    """
    store = c.obs.store
    if store is not None and store.epoch > 0:
        keep(
            c,
            spec,
            stateless_name(c.obs.generation),
            f"upgradeMode stateless: the state of epoch {store.epoch} is set aside, not deleted",
        )


def _committed(c: Ctx, spec: DataflowSpec) -> bool:
    """The store holds a committed epoch to keep (and was read)."""
    store = c.obs.store
    return spec.recovery is not None and store is not None and store.ok and store.exists and store.epoch > 0


def _planned(c: Ctx, name: str) -> bool:
    store = c.obs.store
    return any(a.kind == "keep_snapshot" and a.name == name for a in c.p.actions) or (
        store is not None and any(k.name == name for k in store.kept)
    )


def before_change(c: Ctx, spec: DataflowSpec) -> None:
    """A spec change is about to start (the old pods stopped at a barrier): keep the state
    as ``pre-upgrade-g<generation>``, unless kept already (or nothing is committed).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": {"url": "redis://r/0"}})
    >>> c = Ctx(Observation("wc", "ns", "u", 5, {}, 0.0, store=StoreInfo(exists=True, epoch=3)))
    >>> before_change(c, spec); before_change(c, spec); [a.describe() for a in c.p.actions]
    ['keep snapshot pre-upgrade-g5']
    """
    name = pre_upgrade_name(c.obs.generation)
    if not _committed(c, spec) or _planned(c, name):
        return
    store = c.obs.store
    assert store is not None
    keep(c, spec, name, f"the state of epoch {store.epoch} before generation {c.obs.generation}")


def scheduled(c: Ctx, spec: DataflowSpec) -> None:
    """``spec.recovery.snapshots.schedule``: keep the committed epoch when the newest
    ``scheduled-`` snapshot in the store is that old, or there is none; else look again then.

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"},
    ...                    "recovery": {"url": "redis://r/0", "snapshots": {"schedule": "1h"}}})
    >>> last = KeptSnapshotInfo(scheduled_name(0.0), 2, 0.0, 1)
    >>> def at(now):
    ...     store = StoreInfo(exists=True, epoch=3, kept=[last])
    ...     c = Ctx(Observation("wc", "ns", "u", 1, {}, now, store=store))
    ...     scheduled(c, spec); return [a.describe() for a in c.p.actions]
    >>> at(600.0), at(3600.0)
    ([], ['keep snapshot scheduled-19700101T010000Z'])
    """
    r = spec.recovery
    every = r.snapshots.schedule if r is not None else None
    if every is None or not _committed(c, spec):
        return
    store = c.obs.store
    assert store is not None
    last = max((k.taken_at for k in store.kept if k.name.startswith(SCHEDULED)), default=None)
    due = c.now if last is None else last + every.seconds
    if c.now < due:
        c.p.requeue = min(c.p.requeue, due - c.now)
        return
    name = scheduled_name(c.now)
    if not _planned(c, name):
        keep(c, spec, name, f"spec.recovery.snapshots.schedule {every}: epoch {store.epoch}")
    c.p.requeue = min(c.p.requeue, every.seconds)


def on_deletion(c: Ctx, spec: DataflowSpec) -> None:
    """The Dataflow is deleted and its state deleted or left to expire: keep the committed
    epoch first as ``deleted-<UTC time>`` (kept snapshots outlive both), unless a
    ``deleted-`` snapshot of this very state exists (a retried deletion).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> from headrace_operator.outcome import Ctx
    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": {"url": "redis://r/0"}})
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0,
    ...                     store=StoreInfo(exists=True, epoch=3, committed_at=0.0)))
    >>> on_deletion(c, spec); c.p.actions[0].describe()
    'keep snapshot deleted-19700101T000000Z'
    """
    if not _committed(c, spec):
        return
    store = c.obs.store
    assert store is not None
    if any(
        k.name.startswith(DELETED) and k.epoch == store.epoch and k.taken_at >= store.committed_at
        for k in store.kept
    ):
        return
    keep(
        c,
        spec,
        deleted_name(c.now),
        f"the Dataflow is deleted: the state of epoch {store.epoch}, for a later spec.restoreFrom",
    )
