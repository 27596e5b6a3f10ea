"""Automatic rollback (``spec.rollback``): a spec change that is not Ready in time goes back.

Placed in the flow: `reconcile.plan` asks `target` which spec to run right
after `target.valid_target` (the Dataflow's spec, or the last stable one
while a rollback of this generation is in force), `watch` when it starts a
changed spec, `state_before` when it starts a rollback, `settle` while the
pods run, and `degraded` for the condition. Everything is in the status, so
any later reconcile (another operator process) carries on:

- ``status.lastStableSpec``: the last spec whose pods were all Ready (its
  generation and the spec as written), recorded while ``rollback.enabled``;
- ``status.rollback``: ``Watching`` from the start of a changed spec (an
  upgrade: a new pod template; never a rescale, restart or suspend) until
  all its pods are Ready; if they are not within ``rollback.readyTimeout``
  of the start, or it was stopped after ``restartPolicy.maxRestarts``,
  ``RollingBack`` (event ``RolledBack``: the failed generation and why) and
  then ``RolledBack`` once the stable spec's pods are Ready. The failed
  generation is not run again: only a new generation (the user changed the
  spec) is.

The state: before each watched change the committed state is kept as
``pre-upgrade-g<generation>`` (`kept.pre_upgrade_name`; a stateless upgrade's
``stateless-g<generation>`` serves). A rollback always deletes the live state
and restores that snapshot (or starts empty if there was no state before the
change), even when the failed spec committed nothing: epochs in the live
state would then equal the snapshot, but one path is simpler to trust than
a comparison of epochs, and the copy costs little next to the stop.

>>> from headrace_operator.observation import Observation
>>> from headrace_operator.outcome import Ctx
>>> st = {"lastStableSpec": {"generation": 2, "spec": {}},
...       "rollback": {"state": "RolledBack", "generation": 3}}
>>> active(Ctx(Observation("wc", "ns", "u", 3, {}, 0.0, status=st)))
True
"""

from __future__ import annotations

import copy

from headrace_operator import kept
from headrace_operator import manifests as mf
from headrace_operator import transitions as tx
from headrace_operator.diagnosis import diagnose_pods
from headrace_operator.outcome import Ctx
from headrace_operator.spec import DataflowSpec, SpecError, parse_spec
from headrace_operator.status import (
    LastStableSpec,
    RollbackState,
    RollbackStatus,
    StopReason,
    Transition,
    iso,
    parse_iso,
)

__all__ = ["active", "degraded", "rolling_back", "settle", "state_before", "target", "watch"]


def active(c: Ctx) -> bool:
    """A rollback of the Dataflow's current generation is in force: the last stable spec runs.

    >>> from headrace_operator.observation import Observation
    >>> active(Ctx(Observation("wc", "ns", "u", 4, {}, 0.0,
    ...                        status={"rollback": {"state": "RolledBack", "generation": 3}})))
    False
    """
    rb = c.st.rollback
    return (
        rb is not None
        and rb.state is not RollbackState.WATCHING
        and rb.generation == c.obs.generation
        and c.st.last_stable_spec is not None
    )


def rolling_back(c: Ctx) -> bool:
    """`active`, and the last stable spec's pods are not all Ready yet.

    >>> from headrace_operator.observation import Observation
    >>> st = {"lastStableSpec": {"generation": 1, "spec": {}},
    ...       "rollback": {"state": "RollingBack", "generation": 2}}
    >>> rolling_back(Ctx(Observation("wc", "ns", "u", 2, {}, 0.0, status=st)))
    True
    """
    rb = c.st.rollback
    return active(c) and rb is not None and rb.state is RollbackState.ROLLING_BACK


def _stable(c: Ctx) -> DataflowSpec | None:
    ls = c.st.last_stable_spec
    if ls is None:
        return None
    try:
        return parse_spec(ls.spec)
    except SpecError:
        return None


def _all_ready(c: Ctx, spec: DataflowSpec) -> bool:
    sts = c.obs.sts
    live = [p for p in c.obs.pods if not p.terminating]
    return (
        sts is not None
        and mf.sts_replicas(sts) > 0
        and len(live) == spec.replicas
        and all(p.ready for p in live)
        and c.st.transition is None
    )


def _why_failed(c: Ctx, spec: DataflowSpec) -> tuple[str, str] | None:
    """Why the watched change failed (``(reason, message)``), or ``None`` while it may still get Ready."""
    rb = c.st.rollback
    assert rb is not None
    stopped = c.st.stopped
    if stopped is not None and stopped.reason is StopReason.RESTART_LIMIT:
        return stopped.reason.value, stopped.message
    if stopped is not None or spec.state != "running":
        return None  # finished, state lost, suspended: not the change's failure
    took = c.now - (parse_iso(rb.started_at) or c.now)
    if took <= spec.rollback.ready_timeout.seconds or _all_ready(c, spec):
        return None
    ready = sum(1 for p in c.obs.pods if p.ready and not p.terminating)
    late = (
        f"not Ready {took:.0f}s after its start (rollback.readyTimeout {spec.rollback.ready_timeout}): "
        f"{ready}/{spec.replicas} pod(s) Ready"
    )
    diag = diagnose_pods(c.obs.pods, spec.image)
    if diag is not None:
        return diag[0], f"{late}; {diag[1]}"
    return "NotReady", late


def target(c: Ctx, spec: DataflowSpec, owner: mf.Owner) -> tuple[DataflowSpec, mf.Owner]:
    """The spec to run and its owner: ``spec``, or the last stable spec while a rollback of
    this generation is in force (begun here when the watched change failed).

    >>> from headrace_operator.observation import Observation
    >>> spec = parse_spec({"image": "b", "flow": {"import": "m:f"}})
    >>> st = {"lastStableSpec": {"generation": 1, "spec": {"image": "a", "flow": {"import": "m:f"}}},
    ...       "rollback": {"state": "RolledBack", "generation": 2}}
    >>> c = Ctx(Observation("wc", "ns", "u", 2, {}, 0.0, status=st))
    >>> s, o = target(c, spec, mf.Owner("wc", "ns", "u", 2)); s.image, o.generation
    ('a', 1)
    """
    rb = c.st.rollback
    if not active(c):
        if not spec.rollback.enabled:
            c.st.last_stable_spec = c.st.rollback = None  # as if it had never been on
            return spec, owner
        if rb is None or rb.state is not RollbackState.WATCHING or not _begin(c, spec, owner):
            return spec, owner
    stable = _stable(c)
    ls = c.st.last_stable_spec
    if stable is None or ls is None:
        return spec, owner
    return stable, mf.Owner(
        owner.name, owner.namespace, owner.uid, ls.generation, owner.cluster_domain, owner.service_account
    )


def _begin(c: Ctx, spec: DataflowSpec, owner: mf.Owner) -> bool:
    """The watched change failed: begin rolling back (True)."""
    rb, ls, sts = c.st.rollback, c.st.last_stable_spec, c.obs.sts
    assert rb is not None
    if ls is None or sts is None or _stable(c) is None:
        return False
    desired = mf.sts_annotations(mf.build_statefulset(spec, owner))[mf.ANN_TEMPLATE_HASH]
    if Transition.UPGRADE in tx.changes(spec, sts, desired):
        return False  # a newer spec is on its way: its start watches it instead
    why = _why_failed(c, spec)
    if why is None:
        return False
    gen = c.obs.generation
    rb.state = RollbackState.ROLLING_BACK
    rb.generation = gen
    rb.stable_generation = ls.generation
    rb.reason, rb.message = why
    rb.time = iso(c.now)
    if spec.recovery is None:
        state = "(no spec.recovery: no state)"
    elif rb.snapshot:
        state = f"with the state kept before the change (snapshot {rb.snapshot!r}, epoch {rb.epoch})"
    else:
        state = "with the empty state it had before the change"
    c.event(
        "Warning",
        "RolledBack",
        f"generation {gen} failed ({why[0]}: {why[1]}). Rolling back to generation {ls.generation} "
        f"(status.lastStableSpec) {state}; generation {gen} is not retried: change the spec to try again",
    )
    return True


def watch(c: Ctx, spec: DataflowSpec, ttype: Transition, upgrade: bool) -> bool:
    """A start: from a changed pod template (``upgrade``), watch it until Ready, keeping the
    state before it; from a resume, the deadline starts again. False: Redis can't be read
    to keep the state (the start waits).

    >>> from headrace_operator.observation import Observation, StoreInfo
    >>> spec = parse_spec({"image": "b", "flow": {"import": "m:f"}, "rollback": {"enabled": True},
    ...                    "recovery": {"url": "redis://r/0"}})
    >>> st = {"lastStableSpec": {"generation": 1, "spec": {"image": "a", "flow": {"import": "m:f"}}}}
    >>> c = Ctx(Observation("wc", "ns", "u", 2, {}, 0.0, status=st,
    ...                     store=StoreInfo(exists=True, epoch=7)))
    >>> watch(c, spec, Transition.UPGRADE, True), c.p.actions[0].describe(), c.st.rollback.snapshot
    (True, 'keep snapshot pre-upgrade-g2', 'pre-upgrade-g2')
    """
    rb, ls, store = c.st.rollback, c.st.last_stable_spec, c.obs.store
    gen = c.obs.generation
    if not spec.rollback.enabled or ls is None or active(c):
        return True
    if not upgrade:
        if rb is not None and rb.state is RollbackState.WATCHING and ttype is Transition.RESUME:
            rb.started_at = iso(c.now)  # suspended before it got Ready: the deadline starts again
        return True
    if rb is not None and rb.state is RollbackState.WATCHING:
        # The last change never got Ready: its snapshot still holds the stable spec's state.
        snapshot, epoch = rb.snapshot, rb.epoch
    elif spec.recovery is None or store is None:
        snapshot, epoch = None, None
    elif not store.ok:
        return False
    elif store.exists and store.epoch > 0:
        epoch = store.epoch
        if spec.upgrade_mode == "stateless":
            snapshot = kept.stateless_name(gen)  # kept by `kept.set_aside` next
        else:
            snapshot = kept.pre_upgrade_name(gen)
            kept.keep(c, spec, snapshot, f"spec.rollback: the state of epoch {epoch} before generation {gen}")
    else:
        snapshot, epoch = None, 0
    c.st.rollback = RollbackStatus(
        state=RollbackState.WATCHING,
        generation=gen,
        started_at=iso(c.now),
        snapshot=snapshot,
        epoch=epoch,
        stable_generation=ls.generation,
    )
    return True


def state_before(c: Ctx, spec: DataflowSpec) -> str | None:
    """The state a rollback starts from, the one kept before the failed change: the kept
    snapshot to restore (the caller deletes the live state first, then restores it), ``""``
    to delete the live state (there was none before), ``None`` to resume from the live state
    (no recovery, or the snapshot is gone: said in an event).

    >>> from headrace_operator.observation import KeptSnapshotInfo, Observation, StoreInfo
    >>> spec = parse_spec({"image": "a", "flow": {"import": "m:f"}, "recovery": {"url": "redis://r/0"}})
    >>> st = {"rollback": {"state": "RollingBack", "generation": 2, "snapshot": "pre-upgrade-g2"}}
    >>> store = StoreInfo(exists=True, epoch=9, kept=[KeptSnapshotInfo("pre-upgrade-g2", 7, 0.0, 1)])
    >>> state_before(Ctx(Observation("wc", "ns", "u", 2, {}, 0.0, status=st, store=store)), spec)
    'pre-upgrade-g2'
    """
    rb, store = c.st.rollback, c.obs.store
    assert rb is not None
    if spec.recovery is None or store is None:
        return None
    if rb.snapshot and not any(k.name == rb.snapshot for k in store.kept):
        c.event(
            "Warning",
            "RollbackSnapshotMissing",
            f"kept snapshot {rb.snapshot!r} (the state before generation {rb.generation}) is gone "
            f"(spec.recovery.snapshots retention?): the last stable spec resumes from the live state "
            f"at epoch {store.epoch}, which may hold what generation {rb.generation} wrote",
        )
        return None
    if rb.snapshot:
        return rb.snapshot
    return "" if store.exists else None


def settle(c: Ctx, spec: DataflowSpec, all_ready: bool, from_spec: bool) -> None:
    """The pods run ``spec`` (``from_spec``: the Dataflow's own, valid): once all are Ready,
    a rollback is done, or the spec is the last stable one.

    >>> from headrace_operator.observation import Observation
    >>> raw = {"image": "b", "flow": {"import": "m:f"}, "rollback": {"enabled": True}}
    >>> st = {"rollback": {"state": "Watching", "generation": 2}}
    >>> c = Ctx(Observation("wc", "ns", "u", 2, raw, 0.0, status=st))
    >>> settle(c, parse_spec(raw), all_ready=True, from_spec=True)
    >>> c.st.last_stable_spec.generation, c.st.last_stable_spec.spec["image"], c.st.rollback
    (2, 'b', None)
    """
    if not all_ready or c.st.transition is not None:
        return
    rb = c.st.rollback
    if active(c):
        assert rb is not None
        rb.state = RollbackState.ROLLED_BACK
        return
    if not spec.rollback.enabled or not from_spec:
        return
    ls = c.st.last_stable_spec
    if ls is None or ls.generation != c.obs.generation or ls.spec != c.obs.spec:
        c.st.last_stable_spec = LastStableSpec(c.obs.generation, iso(c.now), copy.deepcopy(c.obs.spec))
    c.st.rollback = None


def degraded(c: Ctx) -> tuple[str, str] | None:
    """The Degraded condition while a rollback is in force (``(reason, message)``).

    >>> from headrace_operator.observation import Observation
    >>> st = {"lastStableSpec": {"generation": 1, "spec": {}},
    ...       "rollback": {"state": "RolledBack", "generation": 2, "stableGeneration": 1,
    ...                    "reason": "ImagePullError", "message": "can't pull"}}
    >>> degraded(Ctx(Observation("wc", "ns", "u", 2, {}, 0.0, status=st)))[0]
    'RolledBack'
    """
    rb = c.st.rollback
    if not active(c) or rb is None:
        return None
    return (
        "RolledBack",
        f"generation {rb.generation} was rolled back to generation {rb.stable_generation} "
        f"({rb.reason}: {rb.message}). Fix the spec and apply it (a new generation) to try again",
    )
