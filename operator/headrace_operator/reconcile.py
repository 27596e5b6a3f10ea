"""Observe -> decide: the pure core of the operator, `plan(Observation) -> Plan`.

`plan` takes an `Observation` (the Dataflow, its StatefulSet and pods, the
Secret, what Redis says, the autoscaler's window of worker metrics) and
returns a `Plan`: actions to apply, the new status, events to post and when
to look again. `handlers` only gathers observations and applies plans, so
every decision here is testable without a cluster.

Level-based: nothing here relies on having seen a change. What runs is
recorded on the StatefulSet (annotations: template hash, spec, replicas,
nonces); the spec says what should run; the difference decides. `plan` reads
as its steps:

1. `target.valid_target`: the spec to run (an invalid new spec leaves the deployed
   one running);
2. checks that never block: key groups in Redis, the PodMonitor;
3. by the StatefulSet: none yet -> `_create`; pods running -> `_running`
   (a difference starts a transition, else `_steady`: readiness, health,
   snapshots, the autoscaler); scaled to 0 -> `_stopped` (wait for the pods
   to go, then start what the spec says);
4. `_finish`: the status fields, the conditions, the merge patch.

The transitions themselves (stop at a barrier, start, arrive) are in
`transitions`, the next pods started before the old ones are gone in
`early_start`, health and restarts in `health`, rollback in `rollback`, the
conditions in `conditions`. It is over 800 lines because the named steps of
one decision read best in one place; each of those modules took out what
stands on its own.

>>> obs = Observation(name="wc", namespace="ns", uid="u1", generation=1,
...                   spec={"image": "app:1", "flow": {"import": "app:flow"}, "replicas": 2},
...                   now=1000.0)
>>> p = plan(obs)
>>> [a.kind for a in p.actions], p.status["phase"]
(['dry_run', 'create_secret', 'apply', 'apply'], 'Deploying')
"""

from __future__ import annotations

from typing import Any

from headrace_operator import autoscaler as asc
from headrace_operator import early_start as es
from headrace_operator import kept, rollback, step_errors
from headrace_operator import manifests as mf
from headrace_operator import transitions as tx
from headrace_operator.conditions import update_conditions
from headrace_operator.diagnosis import UNFIXABLE_BY_RESTART, diagnose_pods, finished_report
from headrace_operator.health import backoff_delay, check_health, restart_unhealthy
from headrace_operator.observation import Observation, PodInfo, SecretInfo, StoreInfo
from headrace_operator.outcome import BUSY_REQUEUE, Action, Ctx, Plan
from headrace_operator.schema import from_json
from headrace_operator.spec import DataflowSpec, SpecError, parse_spec
from headrace_operator.status import (
    AutoscalerStatus,
    DataflowStatus,
    HealthStatus,
    LastError,
    PartitionStatus,
    Phase,
    PodAssignment,
    SnapshotStatus,
    Stage,
    StopReason,
    Transition,
    TransitionStatus,
    iso,
    parse_iso,
)
from headrace_operator.target import (
    LAST_APPLIED,
    deployed_spec,
    name_problems,
    pruned_fields,
    valid_target,
)

__all__ = [
    "LAST_APPLIED",
    "Action",
    "Observation",
    "Plan",
    "SecretInfo",
    "StoreInfo",
    "apply_failed",
    "backoff_delay",
    "deployed_spec",
    "name_problems",
    "plan",
    "plan_delete",
    "pruned_fields",
]

Problem = tuple[str, str]  # (reason, message) of a failure or degradation


# ------------------------------------------------------------------ the recovery Secret


def _secret_problem(obs: Observation) -> Problem | None:
    """The recovery Secret is missing or lacks its key: what to tell the user."""
    sec = obs.secret
    if sec is None or (sec.found and sec.has_key):
        return None
    what = (
        f"Secret {obs.namespace}/{sec.name} not found"
        if not sec.found
        else f"Secret {obs.namespace}/{sec.name} has no key {sec.key!r}"
    )
    return (
        "SecretNotFound",
        f"{what} (spec.recovery.secretRef). Create it, e.g. kubectl -n "
        f"{obs.namespace} create secret generic {sec.name} "
        f"--from-literal={sec.key}=redis://redis:6379/0",
    )


def _waiting_for_secret(c: Ctx, problem: Problem) -> None:
    c.phase = Phase.PENDING
    c.failure = problem
    c.event("Warning", problem[0], problem[1])
    c.p.requeue = 15.0


def _store_blocked(c: Ctx, what: str) -> None:
    err = c.obs.store.error if c.obs.store is not None else "not read"
    c.failure = (
        "RecoveryStoreUnreachable",
        f"can't {what}: Redis is unreachable ({err}). Check spec.recovery and that Redis runs; retrying",
    )
    c.event("Warning", "RecoveryStoreUnreachable", c.failure[1])
    c.p.requeue = 10.0


# ------------------------------------------------------------------ checks that never block


def _check_stored_partitions(c: Ctx, target: DataflowSpec, owner: mf.Owner) -> None:
    store = c.obs.store
    if store is not None and store.ok and store.key_groups and store.key_groups != target.partitions:
        c.event(
            "Warning",
            "PartitionsMismatch",
            f"Redis state under prefix {mf.key_prefix(target, owner)!r} has "
            f"{store.key_groups} key groups but spec.partitions is {target.partitions}: the "
            "stored count wins; reset the state (resetStateNonce) to change it",
        )


def _pod_monitor(c: Ctx, target: DataflowSpec, owner: mf.Owner, deployed: DataflowSpec | None) -> None:
    obs = c.obs
    if target.observability.pod_monitor.enabled:
        if obs.pod_monitor_supported:
            c.act("apply", obj=mf.build_pod_monitor(target, owner))
        else:
            c.event(
                "Warning",
                "PodMonitorUnsupported",
                "observability.podMonitor.enabled is true but the PodMonitor CRD "
                "(monitoring.coreos.com) is not installed: install the Prometheus "
                "Operator or disable it",
            )
    elif deployed is not None and deployed.observability.pod_monitor.enabled and obs.pod_monitor_supported:
        c.act(
            "delete",
            obj={
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": {"name": obs.name, "namespace": obs.namespace},
            },
        )


def _state_lost(c: Ctx, target: DataflowSpec, owner: mf.Owner) -> Problem | None:
    """Redis no longer holds the epoch the status recorded as committed: what to tell the user."""
    store = c.obs.store
    recorded = tx.recorded_epoch(c)
    if target.recovery is None or store is None or not store.ok or recorded <= 0:
        return None
    if store.exists and store.epoch >= recorded:
        return None
    holds = f"holds only epoch {store.epoch}" if store.exists else "holds no state of it"
    return (
        StopReason.STATE_LOST.value,
        f"the recovery store lost this dataflow's state: status recorded committed epoch "
        f"{recorded}, but Redis under prefix {mf.key_prefix(target, owner)!r} {holds}. Not "
        "starting, which would silently start over. Restore Redis from a backup holding "
        "that epoch and change spec.restartNonce, or change spec.resetStateNonce to start "
        "from empty state (the sources start from the beginning)",
    )


def _delete_state(
    c: Ctx, target: DataflowSpec, owner: mf.Owner, then: str = "starting with empty state"
) -> None:
    """Delete the Redis state, and forget the epoch the status recorded with it."""
    c.act("delete_state")
    _forget_epoch(c)
    c.event(
        "Normal",
        "StateDeleted",
        f"deleted the Redis state under prefix {mf.key_prefix(target, owner)!r}; {then}",
    )


def _forget_epoch(c: Ctx) -> None:
    """The state is replaced: the epoch the status recorded no longer binds."""
    c.lost = None
    if c.st.snapshot is not None:
        snap = c.st.snapshot
        snap.epoch = snap.time = snap.bytes = snap.worker_count = snap.duration = None


def _halt_state_lost(c: Ctx, target: DataflowSpec) -> None:
    assert c.lost is not None
    tx.halt(c, target, StopReason.STATE_LOST, c.lost[1], epoch=tx.recorded_epoch(c))
    c.p.requeue = 10.0


# ------------------------------------------------------------------ the plan


def plan(obs: Observation) -> Plan:
    """Decide what to do about one Dataflow (see the module docstring)."""
    c = Ctx(obs)
    owner = mf.Owner(
        obs.name, obs.namespace, obs.uid, obs.generation, obs.cluster_domain, obs.worker_service_account
    )
    deployed = deployed_spec(obs.sts)
    target = valid_target(c, deployed)
    if target is None:
        return _finish(c, None, owner)
    c.own_spec = target is not deployed
    target, owner = rollback.target(c, target, owner)
    if rollback.active(c):
        c.own_spec = False
    _check_stored_partitions(c, target, owner)
    kept.report(c)
    c.lost = _state_lost(c, target, owner)
    secret_problem = _secret_problem(obs)
    _pod_monitor(c, target, owner, deployed)
    if obs.sts is None:
        _create(c, target, owner, secret_problem)
    elif mf.sts_replicas(obs.sts) > 0:
        _running(c, target, owner, obs.sts, secret_problem)
    else:
        _stopped(c, target, owner, obs.sts, secret_problem)
    es.old_set(c)
    if c.degraded is None:
        c.degraded = rollback.degraded(c)
    return _finish(c, target, owner)


def _create(c: Ctx, target: DataflowSpec, owner: mf.Owner, secret_problem: Problem | None) -> None:
    """No StatefulSet yet: create the children (at 0 replicas when suspended)."""
    obs, store = c.obs, c.obs.store
    if secret_problem is not None:
        _waiting_for_secret(c, secret_problem)
    elif target.state == "running":
        reset = tx.reset_asked(c, target)
        if c.lost is not None and not reset:
            _halt_state_lost(c, target)
            return
        stateless = target.upgrade_mode == "stateless" and store is not None and store.exists
        emptied = False
        if (reset or stateless) and target.recovery is not None and store is not None:
            if not store.ok:
                _store_blocked(c, "delete the old state first")
                return
            if stateless and not reset:
                kept.set_aside(c, target)
            _delete_state(c, target, owner)
            emptied = True
        if target.restore_from is not None and store is not None and not store.ok:
            _store_blocked(c, "restore the kept snapshot")
            return
        kept.restore_at_creation(c, target, owner, emptied)
        tx.start(c, target, owner, Transition.DEPLOY, 0, tx.epoch_now(c))
        c.event(
            "Normal",
            "Created",
            f"created StatefulSet {obs.name}: {target.replicas} pod(s) x "
            f"{target.workers_per_process} worker(s) running {target.flow.import_str!r} "
            f"({target.partitions} partitions)",
        )
    else:
        c.act("create_secret", obj=mf.build_mesh_secret(owner))
        c.act("apply", obj=mf.build_service(target, owner))
        c.act("apply", obj=mf.build_statefulset(target, owner, replicas=0))
        c.phase = Phase.SUSPENDED
        c.event("Normal", "Created", f"created StatefulSet {obs.name}, suspended")


def _running(
    c: Ctx, target: DataflowSpec, owner: mf.Owner, sts: dict[str, Any], secret_problem: Problem | None
) -> None:
    """Pods run: a difference from the spec starts a transition; else the steady checks."""
    want_running = target.state == "running"
    changes = tx.changes_for(target, owner, sts)
    ttype: Transition | None = None
    if not want_running:
        ttype = Transition.SUSPEND
    elif changes:
        ttype = Transition.ROLLBACK if rollback.rolling_back(c) else changes[0]
    if want_running and c.lost is not None and Transition.RESET not in changes:
        _halt_state_lost(c, target)
        return
    if ttype is None and _finished(c, target):
        return
    if ttype is not None and ttype is not Transition.SUSPEND and secret_problem is not None:
        c.degraded = secret_problem
        c.event(
            "Warning",
            secret_problem[0],
            f"{secret_problem[1]}. The change waits; the current pods keep running",
        )
        ttype = None
    if ttype is None:
        _steady(c, target, c.obs.pods)
        return
    cur = mf.sts_replicas(sts)
    deployed_n = int(mf.sts_annotations(sts).get(mf.ANN_REPLICAS, cur) or cur)
    to_replicas = target.replicas if want_running else 0
    early = want_running and es.next_set_now(c, target, owner, sts, ttype)
    name, seq = mf.sts_name(sts), mf.set_seq(sts)
    if early:
        name, seq = mf.other_set(c.obs.name, name), seq + 1
    if want_running:
        # What will be applied after the stop is checked first: a spec the API
        # server refuses never takes down running pods (see `apply_failed`).
        sts_next = mf.build_statefulset(
            target, owner, expect_epoch=tx.expected_epoch(c), set_name=name, seq=seq
        )
        c.act("dry_run", obj=mf.build_service(target, owner))
        c.act("dry_run", obj=sts_next)
        c.act("dry_run", obj=mf.build_check_pod(sts_next))
    message = tx.change_message(ttype, target, sts, c.obs.generation)
    if early:
        message = message.replace("stopping ", "starting the next pods in the other set, then stopping ", 1)
    tx.stop(c, ttype, deployed_n, to_replicas, message, scale=not early)
    if early:
        es.start_next_set(c, target, owner, ttype, name, seq)
        if Transition.UPGRADE in changes or Transition.RESCALE in changes:
            # After the apply: the copy runs while the new pods start. It is
            # the last epoch committed before the change (not the barrier's).
            kept.before_change(c, target)
    # A change the user asked for starts the restart backoff afresh.
    health = c.st.health or HealthStatus()
    health.consecutive_restarts = 0
    health.healthy_since = None
    c.st.health = health


def _stopped(
    c: Ctx, target: DataflowSpec, owner: mf.Owner, sts: dict[str, Any], secret_problem: Problem | None
) -> None:
    """The StatefulSet is at 0: stopping (wait), stopped (start what the spec says), suspended,
    or kept stopped (finished, failed, state lost) until the user acts."""
    want_running = target.state == "running"
    tr = c.st.transition
    if c.obs.pods:
        if not es.start_early(c, target, owner, sts, tr, secret_problem):
            _still_stopping(c, target, tr, want_running)
        return
    if tr is not None and tr.stage is Stage.STOPPING:
        tx.stop_finished(c, target, tr)
    if not want_running:
        if tr is not None and tr.type is Transition.SUSPEND:
            tx.suspended(c, tr, tx.epoch_now(c))
        c.st.transition = None
        c.st.stopped = None
        c.phase = Phase.SUSPENDED
        c.p.requeue = 30.0
        return
    changes = tx.changes_for(target, owner, sts)
    rolling = rollback.rolling_back(c)  # the state is the one kept before the failed change
    reset = not rolling and (tx.reset_asked(c, target) or Transition.RESET in changes)
    was_stopped = c.st.stopped is not None
    if _kept_stopped(c, target, changes, reset):
        return
    if secret_problem is not None:
        _waiting_for_secret(c, secret_problem)
        return
    store = c.obs.store
    back_to: str | None = None  # a rollback: the state kept before the failed change
    if rolling:
        if target.recovery is not None and store is not None and not store.ok:
            _store_blocked(c, "restore the state kept before the failed change")
            return
        back_to = rollback.state_before(c, target)
    if c.lost is not None and not reset and back_to is None:
        _halt_state_lost(c, target)
        return
    ttype = tr.type if tr is not None else Transition.RESUME
    if tr is None and was_stopped and changes:
        ttype = changes[0]  # run again by a change: name it
    if rolling:
        ttype = Transition.ROLLBACK
        if tr is not None:
            tr.type = ttype
    need_reset = not rolling and (
        reset
        or ttype is Transition.RESET
        or (Transition.UPGRADE in changes and target.upgrade_mode == "stateless")
    )
    upgrade = Transition.UPGRADE in changes and not rolling and not reset and ttype is not Transition.RESET
    if not rollback.watch(c, target, ttype, upgrade):
        _store_blocked(c, "keep the state before the change (spec.rollback)")
        return
    if not rolling and not need_reset and (upgrade or Transition.RESCALE in changes):
        kept.before_change(c, target)  # every spec change: the state at the stop's barrier
    if back_to is not None and store is not None:
        _rollback_state(c, target, owner, store, back_to)
    if need_reset and target.recovery is not None:
        if store is None or not store.ok:
            _store_blocked(c, "delete the state before starting")
            return
        if not reset and ttype is not Transition.RESET and store.exists:
            kept.set_aside(c, target)  # a stateless upgrade: the old state is kept, not lost
        _delete_state(c, target, owner)
        if target.restore_from is not None and (reset or ttype is Transition.RESET):
            kept.restore(c, target, owner)  # a reset starts from it; a stateless upgrade from empty
    tx.start(c, target, owner, ttype, 0, tx.epoch_now(c))
    if need_reset:
        c.p.events = [e for e in c.p.events if e[1] != "Restored"]


def _rollback_state(c: Ctx, target: DataflowSpec, owner: mf.Owner, store: StoreInfo, name: str) -> None:
    """A rollback starts from the state kept before the failed change: kept snapshot
    ``name``, or empty state (``""``)."""
    _forget_epoch(c)  # also when the store is empty already (a rollback cut short before)
    if store.exists:
        then = f"restoring kept snapshot {name!r}" if name else "starting with the empty state of before"
        _delete_state(c, target, owner, then=f"{then} (rollback)")
    if name:
        kept.restore_own(c, target, owner, name, "rollback: the state before the failed change")


def _kept_stopped(c: Ctx, target: DataflowSpec, changes: list[Transition], reset: bool) -> bool:
    """A Dataflow kept stopped (``status.stopped``) stays so until the user acts (True).

    A spec change, a new ``restartNonce`` or ``resetStateNonce`` runs it again
    (the restart backoff starts afresh). Lost state does not count as found
    by itself when Redis holds an epoch again: a worker still running when
    the keys went may have written some back. After restoring Redis, the
    user says so with a ``restartNonce``, and the start checks it again.
    """
    stopped = c.st.stopped
    if stopped is None:
        return False
    if not changes and not reset:
        c.phase = tx.stopped_phase(stopped.reason)
        if stopped.reason is not StopReason.FINISHED:
            c.failure = (stopped.reason.value, c.lost[1] if c.lost is not None else stopped.message)
        c.p.requeue = 10.0 if stopped.reason is StopReason.STATE_LOST else 30.0
        return True
    c.st.stopped = None
    health = c.st.health or HealthStatus()
    health.consecutive_restarts = 0
    health.healthy_since = None
    health.last_restart = None
    c.st.health = health
    return False


def _finished(c: Ctx, target: DataflowSpec) -> bool:
    """Every pod's worker reported that its input ended: keep the pods stopped (True)."""
    report = finished_report(c.obs.pods, target.replicas)
    if report is None:
        return False
    if not report:
        # The others say so in a moment (their pods change: looked at then), or
        # this is a peer's stale line after a pod was asked to stop.
        return False
    store = c.obs.store
    epoch = store.epoch if store is not None and store.ok and store.exists else None
    at = f" at epoch {epoch}" if epoch is not None else ""
    restarts = sum(p.restarts for p in c.obs.pods)
    tx.halt(
        c,
        target,
        StopReason.FINISHED,
        f"every input ended{at} ({target.replicas} pod(s) x {target.workers_per_process} "
        f"worker(s); {restarts} container restart(s)): the pods are stopped and the state kept. Change "
        "spec.restartNonce (or the spec) to run it again",
        epoch=epoch,
    )
    return True


def _still_stopping(c: Ctx, target: DataflowSpec, tr: TransitionStatus | None, want_running: bool) -> None:
    """Scaled to 0 but pods are still terminating: wait; say so when it takes too long."""
    live = c.obs.pods
    if c.st.stopped is not None:
        c.phase = tx.stopped_phase(c.st.stopped.reason)
        if c.st.stopped.reason is not StopReason.FINISHED:
            c.failure = (c.st.stopped.reason.value, c.st.stopped.message)
    elif tr is not None:
        c.phase = tx.phase_of(tr.type)
    else:
        c.phase = tx.phase_of(Transition.RESTART if want_running else Transition.SUSPEND)
    took = tx.elapsed(c, tr)
    if took > target.restart_policy.stop_timeout.seconds + 60:
        c.event(
            "Warning",
            "StopSlow",
            f"{len(live)} pod(s) still terminating {took:.0f}s after the "
            "stop began (stopTimeout "
            f"{target.restart_policy.stop_timeout}): check the pods' logs for a worker "
            "that can't finish its epoch",
        )
    c.p.requeue = BUSY_REQUEUE


# ------------------------------------------------------------------ steady state


def _steady(c: Ctx, spec: DataflowSpec, pods: list[PodInfo]) -> None:
    """Pods run the desired spec: readiness, health, snapshots, autoscaler."""
    n = spec.replicas
    live = [p for p in pods if not p.terminating]
    ready = sum(1 for p in live if p.ready)
    all_ready = ready == n and len(live) == n
    tr = c.st.transition
    if all_ready:
        c.ready = True
        c.phase = Phase.RUNNING
        if tr is not None:
            tx.arrived(c, tr, n)
        else:
            tx.follow(c)
    else:
        c.phase = tx.phase_of(tr.type) if tr is not None else Phase.RUNNING
        c.p.requeue = BUSY_REQUEUE if tr is not None else 5.0
    diag = diagnose_pods(pods, spec.image)
    unhealthy = check_health(c, spec, pods, all_ready)
    if diag is not None and not all_ready:
        c.failure = diag
        c.event("Warning", diag[0], diag[1])
        if diag[0] in UNFIXABLE_BY_RESTART:
            # Restarting can't fix these; the kubelet keeps retrying the pods.
            c.phase = Phase.FAILED
            unhealthy = ""
    store = c.obs.store
    if store is not None and not store.ok and not all_ready and c.failure is None:
        c.failure = (
            "RecoveryStoreUnreachable",
            f"Redis is unreachable ({store.error}): workers can't commit or resume. "
            "Check spec.recovery and that Redis runs",
        )
    rollback.settle(c, spec, all_ready, c.own_spec)
    if unhealthy and restart_unhealthy(c, spec, n, unhealthy):
        return
    _snapshot_nonce(c, spec)
    if all_ready and c.st.transition is None:
        kept.scheduled(c, spec)
    kept.retention(c, spec)
    if not rollback.active(c):  # a new spec.replicas would retry the failed spec
        _autoscale(c, spec, all_ready and c.st.transition is None)


def _snapshot_nonce(c: Ctx, spec: DataflowSpec) -> None:
    """A new ``snapshotNonce``: wait for the next committed epoch, report it and keep it."""
    snap = c.st.snapshot or SnapshotStatus()
    nonce = spec.snapshot_nonce
    store = c.obs.store
    if nonce != (snap.requested_nonce or 0) and nonce != (snap.completed_nonce or 0):
        snap.requested_nonce = nonce
        snap.requested_at = iso(c.now)
        if spec.recovery is None:
            c.event(
                "Warning",
                "SnapshotFailed",
                f"snapshotNonce {nonce}: this Dataflow has no spec.recovery, so there are no snapshots",
            )
            snap.completed_nonce = nonce
    requested = snap.requested_nonce or 0
    if requested != (snap.completed_nonce or 0) and store is not None and store.ok:
        at = parse_iso(snap.requested_at) or c.now
        if store.committed_at >= at:
            snap.completed_nonce = requested
            c.event(
                "Normal",
                "SnapshotCompleted",
                f"snapshotNonce {requested}: epoch {store.epoch} committed at "
                f"{iso(store.committed_at)} ({store.epoch_bytes} bytes), kept as "
                f"{kept.nonce_name(requested)!r}",
            )
            kept.keep(c, spec, kept.nonce_name(requested), f"snapshotNonce {requested}")
    c.st.snapshot = snap


def _autoscale(c: Ctx, spec: DataflowSpec, settled: bool) -> None:
    mode = spec.autoscaler.effective_mode(spec.scaling.mode)
    prev = c.st.autoscaler
    params = asc.Params.from_spec(spec.autoscaler)
    if mode == "off":
        c.st.autoscaler = AutoscalerStatus(mode="off") if prev is not None else None
        return
    last = parse_iso(prev.last_evaluation.time if prev is not None and prev.last_evaluation else None)
    if last is not None and c.now - last < params.evaluation_interval - 0.5:
        c.p.requeue = min(c.p.requeue, params.evaluation_interval - (c.now - last))
        return
    decision, status, apply = asc.decide(
        prev=prev,
        mode=mode,
        current=spec.replicas,
        stats=c.obs.metrics,
        params=params,
        workers_per_process=spec.workers_per_process,
        partitions=spec.partitions,
        now=c.now,
        started_at=parse_iso(c.st.execution.started_at if c.st.execution is not None else None),
        busy_reason="" if settled else "waiting for all pods to be Ready",
    )
    c.st.autoscaler = status
    c.p.decision = decision
    c.p.requeue = min(c.p.requeue, params.evaluation_interval)
    if decision is not None and decision.action != "none":
        how = "applied" if decision.applied else f"not applied: {decision.blocked}"
        c.event(
            "Normal",
            "ScalingReport",
            f"{decision.action} {decision.current_replicas} -> "
            f"{decision.recommended_replicas} ({how}): {decision.reason}",
        )
    if apply is not None:
        c.act("patch_replicas", replicas=apply)


# ------------------------------------------------------------------ status


def _observed(c: Ctx) -> None:
    """What every reconcile reports: generation, phase, pod counts, selector."""
    obs, st = c.obs, c.st
    st.observed_generation = obs.generation
    st.phase = c.phase
    st.replicas = len(obs.pods)
    st.ready_replicas = sum(1 for p in obs.pods if not p.terminating and p.ready)
    st.selector = ",".join(f"{k}={v}" for k, v in mf.selector(obs.name).items())
    if obs.sts is not None:
        g = mf.sts_annotations(obs.sts).get(mf.ANN_GENERATION)
        applying = any(a.kind == "apply" and (a.obj or {}).get("kind") == "StatefulSet" for a in c.p.actions)
        if g and g.isdigit() and not applying:
            st.deployed_generation = int(g)


def _placement(c: Ctx, spec: DataflowSpec) -> None:
    """Key groups per pod, and the restarts of the current execution."""
    store = c.obs.store
    n = spec.replicas
    groups = store.key_groups if store is not None and store.ok and store.key_groups else spec.partitions
    c.st.partitions = PartitionStatus(
        key_groups=groups,
        workers=n * spec.workers_per_process,
        assignment=[
            from_json(PodAssignment, row) for row in mf.pod_assignment(n, spec.workers_per_process, groups)
        ],
    )
    if c.st.execution is not None:
        c.st.execution.restarts = sum(p.restarts for p in c.obs.pods)


def _snapshot_seen(c: Ctx) -> None:
    """The last committed snapshot, as Redis and the workers' metrics tell it."""
    obs, store = c.obs, c.obs.store
    if store is None or not store.ok or not store.exists or c.lost is not None:
        return  # lost state: the recorded epoch stays, the witness of what was committed
    if any(a.kind == "delete_state" for a in c.p.actions):
        return  # what Redis said is about to go
    snap = c.st.snapshot or SnapshotStatus()
    snap.epoch, snap.bytes, snap.worker_count = store.epoch, store.epoch_bytes, store.worker_count
    if store.committed_at:
        snap.time = iso(store.committed_at)
    if obs.metrics is not None and obs.metrics.snapshot_duration:
        snap.duration = round(obs.metrics.snapshot_duration, 4)
    c.st.snapshot = snap


def _repair_mesh_secret(c: Ctx, owner: mf.Owner) -> None:
    """The mesh Secret was deleted under running pods: make a new one."""
    obs = c.obs
    mesh = mf.mesh_secret_name(obs.name)
    if (
        obs.sts is not None
        and not any(a.kind == "create_secret" for a in c.p.actions)
        and any(
            p.waiting_reason == "CreateContainerConfigError" and f'"{mesh}"' in p.waiting_message
            for p in obs.pods
            if not p.terminating
        )
    ):
        # Deleted under a running Dataflow: a new value. Every worker reads it
        # when its container starts, and a worker's restart restarts them all
        # (its peers lose it), so they never hold different values for long.
        c.act("create_secret", obj=mf.build_mesh_secret(owner))
        c.event(
            "Warning",
            "MeshSecretRecreated",
            f"Secret {mesh} (the workers' cluster secret) was missing; created a new one",
        )


def _last_error(c: Ctx) -> None:
    bad = c.failure or c.degraded
    if bad is None:
        return
    reason, message = bad
    le = c.st.last_error
    if le is None or le.reason != reason or le.message != message:
        c.st.last_error = LastError(reason=reason, message=message, time=iso(c.now))


def _finish(c: Ctx, spec: DataflowSpec | None, owner: mf.Owner) -> Plan:
    """Fill in status fields and conditions from what the plan found; make the patch."""
    _observed(c)
    if spec is not None:
        _placement(c, spec)
    _snapshot_seen(c)
    step_errors.record(c.st, c.obs.step_errors, c.now)
    _repair_mesh_secret(c, owner)
    update_conditions(c, spec)
    _last_error(c)
    c.p.status = c.st.patch(c.obs.status)
    return c.p


# ------------------------------------------------------------------ when applying fails


def apply_failed(obs: Observation, action: Action, message: str) -> Plan:
    """The plan after applying ``action`` failed with ``message`` (the API server's, or
    Redis's): the status and event that say so; nothing to apply.

    The actions before it were applied; those after it were not, and a stop
    is always preceded by a server-side dry run of what starts after it, so
    a refused spec leaves running pods running. The reconcile after the next
    edit tries again.

    >>> obs = Observation(name="wc", namespace="ns", uid="u", generation=2,
    ...                   spec={"image": "a", "flow": {"import": "m:f"}}, now=0.0)
    >>> p = apply_failed(obs, Action("apply", obj={"kind": "StatefulSet", "metadata": {"name": "wc"}}),
    ...                  'StatefulSet.apps "wc" is invalid: spec...image: Required value')
    >>> p.status["phase"], p.events[0][1]
    ('Failed', 'ApplyFailed')
    """
    c = Ctx(obs)
    running = obs.sts is not None and mf.sts_replicas(obs.sts) > 0 and bool(obs.pods)
    what = action.describe()
    text = f"{what} failed: {message}. Fix the spec and apply it again" + (
        "; the running pods keep running the last spec" if running else ""
    )
    c.event("Warning", "ApplyFailed", text)
    c.degraded = ("ApplyFailed", text)
    if not running:
        c.phase = Phase.FAILED
        c.failure = ("ApplyFailed", text)
    elif c.phase is Phase.PENDING:
        c.phase = Phase.RUNNING
    c.p.requeue = 10.0
    spec: DataflowSpec | None
    try:
        spec = parse_spec(obs.spec)
    except SpecError:
        spec = deployed_spec(obs.sts)
    c.ready = running and c.phase is Phase.RUNNING and c.st.transition is None
    c.st.observed_generation = obs.generation
    c.st.phase = c.phase
    update_conditions(c, spec)
    _last_error(c)
    c.p.status = c.st.patch(obs.status)
    return c.p


# ------------------------------------------------------------------ deletion


def plan_delete(obs: Observation) -> Plan:
    """Deletion (the finalizer): stop at an epoch barrier, then keep, expire or delete state.

    ``Plan.done`` says whether the finalizer may be removed.

    >>> obs = Observation(name="wc", namespace="ns", uid="u", generation=1,
    ...                   spec={"image": "a", "flow": {"import": "m:f"}}, now=0.0)
    >>> plan_delete(obs).done
    True
    """
    c = Ctx(obs)
    spec: DataflowSpec | None
    try:
        spec = parse_spec(obs.spec)
    except SpecError:
        spec = deployed_spec(obs.sts)
    if spec is None:
        c.p.status = DataflowStatus(phase=Phase.DELETING).patch(None)
        return c.p
    if spec.deletion.snapshot:
        _stop_before_deletion(c)
    if c.p.done and spec.recovery is not None:
        owner = mf.Owner(obs.name, obs.namespace, obs.uid, obs.generation, obs.cluster_domain)
        _state_on_deletion(c, spec, mf.key_prefix(spec, owner))
    c.p.requeue = BUSY_REQUEUE
    c.p.status = DataflowStatus(phase=Phase.DELETING, observed_generation=obs.generation).patch(None)
    return c.p


def _stop_before_deletion(c: Ctx) -> None:
    sts, old = c.obs.sts, c.obs.old_sts
    if old is not None and mf.sts_replicas(old) > 0:
        tx.scale_to_zero(c, old)
        c.p.done = False
    if sts is not None and mf.sts_replicas(sts) > 0:
        tx.scale_to_zero(c)
        c.event(
            "Normal",
            "Deleting",
            f"stopping {mf.sts_replicas(sts)} pod(s) at an epoch barrier before deletion",
        )
        c.p.done = False
    elif c.obs.pods or c.obs.old_pods:
        c.p.done = False


def _state_on_deletion(c: Ctx, spec: DataflowSpec, prefix: str) -> None:
    """Delete the Redis state, let it expire, or keep it, as ``spec.deletion`` and ``retention`` say
    (the first two keep it as a ``deleted-`` snapshot first: `kept.on_deletion`)."""
    assert spec.recovery is not None
    store = c.obs.store
    retention = spec.recovery.retention
    if not spec.deletion.delete_state and not retention:
        if store is not None and store.ok and store.exists:
            c.event(
                "Normal",
                "StateKept",
                f"state under {prefix!r} kept at epoch {store.epoch} (deletion.deleteState "
                "is false): a Dataflow with the same name and namespace resumes from it",
            )
        return
    if store is None or not store.ok:
        err = store.error if store is not None else "not read"
        c.event(
            "Warning",
            "RecoveryStoreUnreachable",
            f"can't {'delete' if spec.deletion.delete_state else 'expire'} the "
            f"state under prefix {prefix!r}: Redis is unreachable ({err}); "
            "retrying. To give up, remove the finalizer",
        )
        c.p.done = False
    elif spec.deletion.delete_state:
        kept.on_deletion(c, spec)
        c.act("delete_state")
        c.event("Normal", "StateDeleted", f"deleted the Redis state under {prefix!r}")
    else:
        kept.on_deletion(c, spec)
        c.act("expire_state", seconds=retention.seconds if retention is not None else 0.0)
        c.event("Normal", "StateKept", f"state under {prefix!r} kept; it expires in {retention}")
