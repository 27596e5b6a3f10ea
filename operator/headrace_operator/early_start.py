"""The next pods of a transition, started before the old ones are gone (part of `reconcile`).

A rescale, a ``last-state`` upgrade or a restart has nothing to do to the
state between the old pods' stop and the new pods' start, so the new pods
need not wait for the old ones (docs/kubernetes.md, "How long output
stops in a transition"):

- with a recovery store and the Dataflow's other StatefulSet free
  (`next_set_now`), the next pods start at once in that set
  (`start_next_set`) and stand by until the old execution released the
  store; the old set runs on until they stand by (`standing_by`), then
  stops at its barrier and is deleted once its pods are gone (`old_set`);
- otherwise, in the one set, the new StatefulSet is applied as soon as
  every old pod is terminating (`start_early`).

`reconcile.plan` calls these at its steps; each writes into the plan of
its `Ctx` as the rest of `reconcile` does.
"""

from __future__ import annotations

from typing import Any

from headrace_operator import manifests as mf
from headrace_operator import rollback
from headrace_operator import transitions as tx
from headrace_operator.outcome import Ctx
from headrace_operator.spec import DataflowSpec
from headrace_operator.status import Stage, Transition, TransitionStatus, parse_iso

Problem = tuple[str, str]  # (reason, message) of a failure or degradation


def allowed(c: Ctx, target: DataflowSpec, owner: mf.Owner, sts: dict[str, Any], ttype: Transition) -> bool:
    """Nothing is to be done to the state between the stop and the start of ``ttype``:
    the next pods may start before the old ones are gone.

    A rescale, a ``last-state`` upgrade or a restart, without rollback, a
    state reset or a problem to report first.
    """
    if target.state != "running" or ttype not in (Transition.RESCALE, Transition.UPGRADE, Transition.RESTART):
        return False
    if c.lost is not None or c.st.stopped is not None:
        return False
    if target.rollback.enabled or rollback.active(c) or tx.reset_asked(c, target):
        return False
    changes = tx.changes_for(target, owner, sts)
    if Transition.RESET in changes or (Transition.UPGRADE in changes and target.upgrade_mode != "last-state"):
        return False
    store = c.obs.store
    return target.recovery is None or (store is not None and store.ok)


def next_set_now(
    c: Ctx, target: DataflowSpec, owner: mf.Owner, sts: dict[str, Any], ttype: Transition
) -> bool:
    """Start ``ttype``'s pods in the other set first, the old ones stopping once the new
    ones stand by (True; `old_set`).

    Only with a recovery store, whose lease keeps the new execution from
    running before the old one has committed its last epoch and let go
    (the runtime's standby start, ``HEADRACE_STANDBY_TIMEOUT``); and only
    when the other set is free: no StatefulSet of that name (another
    owner's, or the last set still going), no pod of it left, and a name
    short enough.
    """
    if target.recovery is None or not allowed(c, target, owner, sts, ttype):
        return False
    if c.obs.other_set_taken or c.obs.old_sts is not None or c.obs.old_pods:
        return False
    return len(c.obs.name) + len(mf.OTHER_SET_SUFFIX) <= mf.MAX_STS_NAME


def start_next_set(
    c: Ctx, target: DataflowSpec, owner: mf.Owner, ttype: Transition, name: str, seq: int
) -> None:
    """Apply the next set ``name`` at full size now: its pods start and import the flow
    while the old ones run on, and resume once the old execution, stopped at its
    barrier, released the store."""
    tx.start(c, target, owner, ttype, 0, tx.epoch_now(c), set_name=name, seq=seq)
    c.p.events = [
        e
        if e[1] != "Restored"
        else (e[0], e[1], e[2].replace(" from committed epoch ", " from epoch >= ") + f" as set {name}")
        for e in c.p.events
    ]


STANDBY_WAIT = 60.0
"""Seconds the old set runs on at most, waiting for the next one's pods to stand by."""


def standing_by(c: Ctx) -> bool:
    """The current set's process 0 said it waits for the old execution's lease, after
    its pods were applied (`StoreInfo.standby`)."""
    store, cur, tr = c.obs.store, c.obs.sts, c.st.transition
    if store is None or not store.ok or cur is None or tr is None:
        return False
    who, _, at = store.standby.partition(" ")
    applied = parse_iso(tr.pods_started_at) or 0.0
    try:
        noted = float(at)
    except ValueError:
        return False
    return who.startswith(mf.sts_name(cur) + "-") and noted >= applied - 1.0


def old_set(c: Ctx) -> None:
    """The last set: running on until the next set's pods stand by (they are up, with the
    flow imported, waiting for the store: `STANDBY_WAIT` at most), then stopped at its
    barrier; deleted once its pods are gone."""
    old = c.obs.old_sts
    if old is None:
        return
    if mf.sts_replicas(old) > 0:
        tr, cur = c.st.transition, c.obs.sts
        starting = (
            tr is not None and tr.stage is Stage.STARTING and cur is not None and mf.sts_replicas(cur) > 0
        )
        if starting and not standing_by(c) and tx.elapsed(c, tr) < STANDBY_WAIT:
            c.p.requeue = min(c.p.requeue, 0.5)  # the old pods write on meanwhile
            return
        tx.scale_to_zero(c, old)
    elif not c.obs.old_pods:
        meta = {"name": mf.sts_name(old), "namespace": c.obs.namespace}
        c.act("delete", obj={"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta})


def start_early(
    c: Ctx,
    target: DataflowSpec,
    owner: mf.Owner,
    sts: dict[str, Any],
    tr: TransitionStatus | None,
    secret_problem: Problem | None,
) -> bool:
    """Every old pod is terminating and nothing is to be done to the state between the
    stop and the start: apply the new StatefulSet now (True).

    A rescale, a ``last-state`` upgrade or a restart, without rollback: the
    StatefulSet controller then starts each new pod the moment its old
    namesake is gone (and new ordinals at once), instead of the next look
    after the last one went; the output gap is that much shorter. Each old
    pod commits at the stop barrier before it goes, and the new process 0
    takes the store over (fencing any old process still running).
    """
    if tr is None or tr.stage is not Stage.STOPPING or secret_problem is not None:
        return False
    if not all(p.terminating for p in c.obs.pods):
        return False
    if not allowed(c, target, owner, sts, tr.type):
        return False
    tx.start(c, target, owner, tr.type, 0, tx.epoch_now(c))
    # The old pods commit the stop barrier's epoch as they go: the new ones resume from it.
    c.p.events = [
        e if e[1] != "Restored" else (e[0], e[1], e[2].replace(" from committed epoch ", " from epoch >= "))
        for e in c.p.events
    ]
    return True
