"""The transition state machine: a coordinated stop at an epoch barrier, then a start.

Placed in the flow: `reconcile.plan` finds what differs between the spec and
what the StatefulSet records (`changes`) and walks one `Transition` through
its stages, recorded in ``status.transition`` so that any later reconcile
(level-based: it may be another operator process) picks it up::

    running --stop()--> Stopping --(no pods left)--> start() --> Starting
       ^                                                            |
       +------------------ arrived() (all pods Ready) <-------------+

`stop` scales the StatefulSet to 0 (every pod gets SIGTERM; the cluster
finishes its epoch, commits and exits 0); `start` applies the Service and
the StatefulSet at full size, and the pods resume from the last committed
epoch. A suspend stops and stays stopped (`suspended`); so does a Dataflow whose
input ended, one that reached ``maxRestarts``, and one whose recovery store
lost its state (`halt`: ``status.stopped``), until the user acts.

>>> [t.value for t in Transition][:4], phase_of(Transition.RESCALE)
(['deploy', 'rescale', 'upgrade', 'restart'], <Phase.SCALING: 'Scaling'>)
"""

from __future__ import annotations

import hashlib
from typing import Any

from headrace_operator import manifests as mf
from headrace_operator import output_gap
from headrace_operator.outcome import BUSY_REQUEUE, Action, Ctx
from headrace_operator.spec import DataflowSpec
from headrace_operator.status import (
    ExecutionStatus,
    Phase,
    Stage,
    StoppedStatus,
    StopReason,
    Transition,
    TransitionRecord,
    TransitionStatus,
    iso,
    parse_iso,
)

__all__ = [
    "Transition",
    "arrived",
    "change_message",
    "changes",
    "describe",
    "elapsed",
    "expected_epoch",
    "follow",
    "gerund",
    "halt",
    "phase_of",
    "recorded_epoch",
    "scale_to_zero",
    "start",
    "stop",
    "stop_finished",
    "stopped_phase",
    "suspended",
]

_PHASE_OF = {
    Transition.SUSPEND: Phase.SUSPENDING,
    Transition.RESCALE: Phase.SCALING,
    Transition.DEPLOY: Phase.DEPLOYING,
    Transition.RESUME: Phase.DEPLOYING,
    Transition.UPGRADE: Phase.UPGRADING,
    Transition.ROLLBACK: Phase.UPGRADING,
}
_GERUND = {
    Transition.DEPLOY: "Deploying",
    Transition.RESCALE: "Rescaling",
    Transition.UPGRADE: "Upgrading",
    Transition.RESTART: "Restarting",
    Transition.RESET: "ResettingState",
    Transition.SUSPEND: "Suspending",
    Transition.RESUME: "Resuming",
    Transition.UNHEALTHY_RESTART: "RestartingUnhealthy",
    Transition.ROLLBACK: "RollingBack",
}
# The event reason of a stop (deploy and resume start from nothing: never stopped).
_STOP_REASON = {
    Transition.SUSPEND: "Suspending",
    Transition.RESCALE: "Scaling",
    Transition.UPGRADE: "SpecChanged",
    Transition.RESTART: "Restarting",
    Transition.RESET: "ResettingState",
    Transition.UNHEALTHY_RESTART: "RestartUnhealthy",
    Transition.ROLLBACK: "RollingBack",
}


def phase_of(ttype: Transition) -> Phase:
    """The Dataflow's phase while ``ttype`` runs.

    Only a spec change is `Phase.UPGRADING`; a restart (a nonce, a crash loop,
    a state reset) is `Phase.RESTARTING`.

    >>> phase_of(Transition.UPGRADE), phase_of(Transition.RESTART)
    (<Phase.UPGRADING: 'Upgrading'>, <Phase.RESTARTING: 'Restarting'>)
    """
    return _PHASE_OF.get(ttype, Phase.RESTARTING)


def gerund(ttype: Transition) -> str:
    """The Ready and Progressing conditions' reason while ``ttype`` runs.

    >>> gerund(Transition.RESCALE)
    'Rescaling'
    """
    return _GERUND[ttype]


def describe(tr: TransitionStatus) -> str:
    """One line on a transition in progress (for the conditions).

    >>> describe(TransitionStatus(Transition.RESCALE, Stage.STOPPING, "", 2, 3, 7))
    'rescale 2 -> 3 pods: stopping at an epoch barrier'
    """
    what = "stopping at an epoch barrier" if tr.stage is Stage.STOPPING else "starting and restoring"
    return f"{tr.type} {tr.from_replicas} -> {tr.to_replicas} pods: {what}"


def elapsed(c: Ctx, tr: TransitionStatus | None) -> float:
    """Seconds since ``tr`` began (0 when there is none or its start is unknown)."""
    started = parse_iso(tr.started_at if tr is not None else None)
    return c.now - (started or c.now)


def _execution_id(uid: str, now: float) -> str:
    return hashlib.sha1(f"{uid}:{now}".encode()).hexdigest()[:12]


def changes(spec: DataflowSpec, sts: dict[str, Any], desired_hash: str) -> list[Transition]:
    """What differs between ``spec`` and what the StatefulSet records, most drastic first.

    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "a", "flow": {"import": "m:f"}, "replicas": 3})
    >>> sts = {"metadata": {"annotations": {mf.ANN_TEMPLATE_HASH: "h", mf.ANN_REPLICAS: "2"}},
    ...        "spec": {"replicas": 2}}
    >>> changes(spec, sts, "h")
    [<Transition.RESCALE: 'rescale'>]
    """
    ann = mf.sts_annotations(sts)
    out = []
    if ann.get(mf.ANN_RESET_NONCE, "0") != str(spec.reset_state_nonce):
        out.append(Transition.RESET)
    if ann.get(mf.ANN_TEMPLATE_HASH) != desired_hash:
        out.append(Transition.UPGRADE)
    deployed_replicas = int(ann.get(mf.ANN_REPLICAS, mf.sts_replicas(sts)) or 0)
    cur = mf.sts_replicas(sts)
    if deployed_replicas != spec.replicas or (cur > 0 and cur != deployed_replicas):
        out.append(Transition.RESCALE)
    if ann.get(mf.ANN_RESTART_NONCE, "0") != str(spec.restart_nonce):
        out.append(Transition.RESTART)
    return out


def change_message(ttype: Transition, spec: DataflowSpec, sts: dict[str, Any], gen: int) -> str:
    """The event message announcing the stop for ``ttype``."""
    ann = mf.sts_annotations(sts)
    n = mf.sts_replicas(sts)
    if ttype is Transition.SUSPEND:
        return f"suspending: stopping {n} pod(s) at an epoch barrier (state is committed first)"
    if ttype is Transition.RESCALE:
        return (
            f"rescaling {ann.get(mf.ANN_REPLICAS, n)} -> {spec.replicas} pod(s): stopping "
            "at an epoch barrier, then restarting with the new worker count"
        )
    if ttype is Transition.UPGRADE:
        return (
            f"spec changed (generation {gen}): stopping {n} pod(s) at an epoch barrier, "
            f"then starting the new spec (upgradeMode {spec.upgrade_mode})"
        )
    if ttype is Transition.ROLLBACK:
        return (
            f"rolling back generation {gen}: stopping {n} pod(s), then starting the last stable "
            "spec (status.lastStableSpec) with the state kept before the change"
        )
    if ttype is Transition.RESTART:
        return f"restartNonce is now {spec.restart_nonce}: restarting {n} pod(s)"
    return (
        f"resetStateNonce is now {spec.reset_state_nonce}: stopping {n} pod(s), deleting "
        "the Redis state, starting fresh"
    )


def stop(
    c: Ctx, ttype: Transition, from_replicas: int, to_replicas: int, message: str, scale: bool = True
) -> None:
    """Begin ``ttype``: scale the StatefulSet to 0 and record the transition as Stopping.

    ``scale`` False: the pods are stopped later (`reconcile`'s next set, once
    its pods stand by).
    """
    store = c.obs.store
    _report_pending(c)  # a new run's output would be taken for theirs
    if scale:
        scale_to_zero(c)
    c.st.transition = TransitionStatus(
        type=ttype,
        stage=Stage.STOPPING,
        started_at=iso(c.now),
        from_replicas=from_replicas,
        to_replicas=to_replicas,
        epoch_before=store.epoch if store is not None and store.ok else 0,
    )
    c.phase = phase_of(ttype)
    etype = "Warning" if ttype in (Transition.UNHEALTHY_RESTART, Transition.ROLLBACK) else "Normal"
    c.event(etype, _STOP_REASON[ttype], message)
    c.p.requeue = BUSY_REQUEUE


def scale_to_zero(c: Ctx, sts: dict[str, Any] | None = None) -> None:
    """Scale ``sts`` (default: the current set) to 0: its pods stop at an epoch barrier.

    >>> from headrace_operator.observation import Observation
    >>> c = Ctx(Observation("wc", "ns", "u", 1, {}, 0.0, sts={"metadata": {"name": "wc-b"}}))
    >>> scale_to_zero(c); [a.describe() for a in c.p.actions]
    ['scale StatefulSet wc-b to 0']
    """
    sts = sts if sts is not None else c.obs.sts
    name = mf.sts_name(sts) if sts is not None else ""
    c.act("scale", replicas=0, target=name if name and name != c.obs.name else None)


def stop_finished(c: Ctx, spec: DataflowSpec, tr: TransitionStatus) -> None:
    """All pods are gone after a coordinated stop: did it commit a snapshot?"""
    store = c.obs.store
    if spec.recovery is None or store is None:
        return
    started = parse_iso(tr.started_at) or c.now
    fresh = store.ok and store.committed_at + 1.0 >= started and store.epoch > tr.epoch_before
    wants_snapshot = tr.type is Transition.SUSPEND or spec.upgrade_mode == "snapshot"
    if fresh:
        c.event(
            "Normal",
            "SnapshotCompleted",
            f"epoch {store.epoch} committed at the stop barrier ({store.epoch_bytes} bytes)",
        )
    elif wants_snapshot:
        c.event(
            "Warning",
            "SnapshotFailed",
            "no new snapshot was committed while stopping (the pods were unhealthy or "
            f"Redis unreachable): falling back to the last committed epoch "
            f"{store.epoch if store.ok else '?'}",
        )


def start(
    c: Ctx,
    spec: DataflowSpec,
    owner: mf.Owner,
    ttype: Transition,
    from_replicas: int,
    epoch_before: int,
    set_name: str | None = None,
    seq: int | None = None,
) -> None:
    """Apply the Service and the StatefulSet at full size; record the execution (Starting).

    A transition already in status (stopped before) carries on; otherwise
    ``ttype`` begins here (a deploy, a resume). The StatefulSet is the
    current set, or the set ``set_name`` with sequence number ``seq`` (the
    next pods started while the old ones stop: `reconcile`'s early start).
    """
    obs = c.obs
    store = obs.store
    deleting = any(a.kind == "delete_state" for a in c.p.actions)
    stopped = c.st.transition is not None
    tr = c.st.transition or TransitionStatus(
        type=ttype, started_at=iso(c.now), from_replicas=from_replicas, epoch_before=epoch_before
    )
    output_gap.note_start(tr, store, c.now, stopped)
    fresh_state = (
        deleting
        or tr.type is Transition.RESET
        or (spec.upgrade_mode == "stateless" and tr.type in (Transition.UPGRADE, Transition.DEPLOY))
    )
    expect = 0 if fresh_state else expected_epoch(c)
    cur = obs.sts
    sts = mf.build_statefulset(
        spec,
        owner,
        expect_epoch=expect,
        set_name=set_name or (mf.sts_name(cur) if cur is not None else None),
        seq=seq if seq is not None else mf.set_seq(cur),
    )
    # The API server accepts a template it would refuse as a pod: check one
    # first, before anything else of this plan (a state reset included).
    c.p.actions.insert(0, Action("dry_run", obj=mf.build_check_pod(sts)))
    c.act("create_secret", obj=mf.build_mesh_secret(owner))
    c.act("apply", obj=mf.build_service(spec, owner))
    c.act("apply", obj=sts)
    tr.stage = Stage.STARTING
    tr.to_replicas = spec.replicas
    c.st.transition = tr
    c.st.stopped = None
    c.st.execution = ExecutionStatus(
        id=_execution_id(obs.uid, c.now),
        worker_count=spec.replicas * spec.workers_per_process,
        restarts=0,
        started_at=iso(c.now),
    )
    c.st.deployed_generation = owner.generation or obs.generation
    if c.st.health is not None:
        # New pods count their restarts from 0: so does the crash-loop window.
        c.st.health.window_start = iso(c.now)
        c.st.health.restarts_at_window_start = 0
    c.phase = phase_of(tr.type)
    if store is not None and store.ok and store.epoch > 0 and not fresh_state:
        c.event(
            "Normal",
            "Restored",
            f"starting {spec.replicas} pod(s) x {spec.workers_per_process} worker(s) from "
            f"committed epoch {store.epoch} (written by {store.worker_count} workers)",
        )
    c.p.requeue = BUSY_REQUEUE


def recorded_epoch(c: Ctx) -> int:
    """The last committed epoch the status recorded (``status.snapshot.epoch``; 0 if none)."""
    snap = c.st.snapshot
    return snap.epoch or 0 if snap is not None else 0


def expected_epoch(c: Ctx) -> int:
    """The epoch every started pod must find committed (``HEADRACE_EXPECT_EPOCH``).

    What the status recorded, or what Redis says now if that is later (it is
    what this reconcile records).
    """
    store = c.obs.store
    now = store.epoch if store is not None and store.ok and store.exists else 0
    return max(recorded_epoch(c), now)


def arrived(c: Ctx, tr: TransitionStatus, n: int) -> None:
    """All ``n`` pods are Ready after ``tr``: report how long it took, and end it.

    It becomes the newest of ``status.lastTransitions``; its completion event
    waits for the new pods' first output, to say the output gap (`follow`).
    """
    took = elapsed(c, tr)
    c.p.transitions.append((tr.type, took))
    rec = output_gap.record(tr, took, c.now)
    rec.to_replicas = n
    c.st.last_transitions = [*(c.st.last_transitions or []), rec][-output_gap.KEEP :]
    c.st.transition = None
    follow(c)


def follow(c: Ctx) -> None:
    """Finished transitions whose output gap is pending: fill it in from the store once the
    new pods' first output is committed, and post their completion events."""
    for rec in c.st.last_transitions or []:
        if not rec.reported and output_gap.settle(rec, c.obs.store, c.now):
            _report(c, rec)
    if any(not rec.reported for rec in c.st.last_transitions or []):
        c.p.requeue = min(c.p.requeue, BUSY_REQUEUE)


def _report_pending(c: Ctx) -> None:
    for rec in c.st.last_transitions or []:
        if not rec.reported:
            _report(c, rec)


def _report(c: Ctx, rec: TransitionRecord) -> None:
    """The completion event of ``rec``, with its output gap when known."""
    n, took = rec.to_replicas, rec.ready_seconds
    reason, text = {
        Transition.RESCALE: ("Scaled", f"rescaled {rec.from_replicas} -> {n} pod(s) in {took:.1f}s"),
        Transition.DEPLOY: ("Running", f"all {n} pod(s) Ready {took:.1f}s after creation"),
        Transition.RESUME: ("Resumed", f"resumed: all {n} pod(s) Ready in {took:.1f}s"),
        Transition.UPGRADE: ("Upgraded", f"upgraded: all {n} pod(s) Ready in {took:.1f}s"),
        Transition.ROLLBACK: (
            "RollbackFinished",
            f"rolled back: all {n} pod(s) of the last stable spec Ready in {took:.1f}s",
        ),
    }.get(rec.type, ("Restarted", f"restarted ({rec.type}): all {n} pod(s) Ready in {took:.1f}s"))
    c.event("Normal", reason, text + output_gap.describe(rec))
    rec.reported = True


def suspended(c: Ctx, tr: TransitionStatus, epoch: int) -> None:
    """A suspend's pods are all gone: report how long the stop took."""
    took = elapsed(c, tr)
    c.p.transitions.append((Transition.SUSPEND, took))
    c.event("Normal", "Suspended", f"all pods stopped in {took:.1f}s; state kept at epoch {epoch}")


def halt(
    c: Ctx,
    spec: DataflowSpec,
    reason: StopReason,
    message: str,
    epoch: int | None = None,
) -> None:
    """Stop the pods and keep them stopped (StatefulSet at 0, state kept) until the user acts.

    Phase `Phase.FINISHED` for a finished input, `Phase.FAILED` otherwise;
    ``status.stopped`` records why, and the event is posted when it begins.
    A spec change or a new ``restartNonce`` (``resetStateNonce`` for lost
    state) runs the Dataflow again.
    """
    sts = c.obs.sts
    if sts is not None and mf.sts_replicas(sts) > 0:
        scale_to_zero(c)
    prev = c.st.stopped
    again = prev is not None and prev.reason is reason
    c.st.stopped = StoppedStatus(
        reason=reason,
        message=message,
        since=prev.since if prev is not None and again else iso(c.now),
        generation=c.obs.generation,
        reset_state_nonce=spec.reset_state_nonce,
        epoch=epoch,
        workers=spec.replicas * spec.workers_per_process,
    )
    c.st.transition = None
    c.phase = stopped_phase(reason)
    if reason is not StopReason.FINISHED:
        c.failure = (reason.value, message)
    if not again:
        c.event("Normal" if reason is StopReason.FINISHED else "Warning", reason.value, message)


def stopped_phase(reason: StopReason) -> Phase:
    """The phase of a Dataflow kept stopped for ``reason``.

    >>> stopped_phase(StopReason.FINISHED), stopped_phase(StopReason.STATE_LOST)
    (<Phase.FINISHED: 'Finished'>, <Phase.FAILED: 'Failed'>)
    """
    return Phase.FINISHED if reason is StopReason.FINISHED else Phase.FAILED


def epoch_now(c: Ctx) -> int:
    """The store's committed epoch as last seen (0 without a store, or one not answering)."""
    store = c.obs.store
    return store.epoch if store is not None and store.ok else 0


def reset_asked(c: Ctx, target: DataflowSpec) -> bool:
    """A Dataflow kept stopped got a new ``resetStateNonce`` since it stopped."""
    stopped = c.st.stopped
    return stopped is not None and stopped.reset_state_nonce != target.reset_state_nonce


def changes_for(target: DataflowSpec, owner: mf.Owner, sts: dict[str, Any]) -> list[Transition]:
    """`changes` between ``target`` and the running StatefulSet ``sts``, by the template it would get."""
    desired = mf.build_statefulset(target, owner)
    return changes(target, sts, mf.sts_annotations(desired)[mf.ANN_TEMPLATE_HASH])
