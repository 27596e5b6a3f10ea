"""Observe -> decide: the pure core of the operator.

`plan` takes an `Observation` (the Dataflow, its StatefulSet and pods, the
Secret, what Redis says, the autoscaler's window of worker metrics) and
returns a `Plan`: actions to apply, the new status, events to post and when
to look again. `handlers` only gathers observations and applies plans, so
every decision here is testable without a cluster.

Level-based: nothing here relies on having seen a change. What runs is
recorded on the StatefulSet (annotations: template hash, spec, replicas,
nonces); the spec says what should run; the difference decides:

- a difference while pods run -> scale the StatefulSet to 0 (every pod gets
  SIGTERM; the cluster finishes its epoch, commits and exits 0) and record
  the transition in status;
- StatefulSet at 0 and no pods left -> delete state if asked (reset,
  stateless upgrade), then apply the new StatefulSet with the new replica
  count; the pods resume from the last committed epoch;
- pods at the desired spec -> health checks, snapshots, the autoscaler.

>>> obs = Observation(name="wc", namespace="ns", uid="u1", generation=1,
...                   spec={"image": "app:1", "flow": {"import": "app:flow"}, "replicas": 2},
...                   now=1000.0)
>>> p = plan(obs)
>>> [a.kind for a in p.actions], p.status["phase"]
(['create_secret', 'apply', 'apply'], 'Deploying')
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from headrace_operator import autoscaler as asc
from headrace_operator import manifests as mf
from headrace_operator.spec import (
    DataflowSpec,
    SpecError,
    duration_seconds,
    parse_spec,
    prune,
    unknown_fields,
)
from headrace_operator.status import (
    PodInfo,
    diagnose_pods,
    iso,
    parse_iso,
    set_condition,
)

__all__ = [
    "Action",
    "Observation",
    "Plan",
    "SecretInfo",
    "StoreInfo",
    "backoff_delay",
    "deployed_spec",
    "plan",
    "plan_delete",
]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PHASE_OF = {"suspend": "Suspending", "rescale": "Scaling", "deploy": "Deploying", "resume": "Deploying"}
_GERUND = {
    "deploy": "Deploying",
    "rescale": "Rescaling",
    "upgrade": "Upgrading",
    "restart": "Restarting",
    "reset": "ResettingState",
    "suspend": "Suspending",
    "resume": "Resuming",
    "unhealthy-restart": "RestartingUnhealthy",
}
_STEADY_REQUEUE = 10.0
_BUSY_REQUEUE = 2.0


@dataclass
class StoreInfo:
    """What Redis holds for the Dataflow (``ok`` False: unreachable, see ``error``)."""

    ok: bool = True
    error: str = ""
    exists: bool = False
    epoch: int = 0
    committed_at: float = 0.0
    worker_count: int = 0
    key_groups: int = 0
    epoch_bytes: int = 0


@dataclass
class SecretInfo:
    """Whether the Secret named by ``spec.recovery.secretRef`` exists and has the key."""

    name: str
    key: str
    found: bool
    has_key: bool


@dataclass
class Observation:
    """Everything `plan` looks at, gathered by the handlers."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]
    now: float
    status: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    sts: dict[str, Any] | None = None
    pods: list[PodInfo] = field(default_factory=list)
    secret: SecretInfo | None = None
    store: StoreInfo | None = None
    metrics: asc.WindowStats | None = None
    cluster_domain: str = "cluster.local"
    pod_monitor_supported: bool = True
    worker_service_account: str = ""


@dataclass
class Action:
    """One change to make: ``apply`` a manifest, ``create_secret`` unless it exists (with a
    random value), ``scale`` the StatefulSet, ``delete`` an object, ``delete_state`` /
    ``expire_state`` in Redis, ``patch_replicas`` of the Dataflow.

    >>> Action("scale", replicas=0).describe()
    'scale StatefulSet to 0'
    """

    kind: str
    obj: dict[str, Any] | None = None
    replicas: int | None = None
    seconds: float | None = None

    def describe(self) -> str:
        """A short human description (for logs)."""
        if self.kind == "apply" and self.obj is not None:
            reps = self.obj.get("spec", {}).get("replicas")
            extra = f" replicas={reps}" if self.obj.get("kind") == "StatefulSet" else ""
            return f"apply {self.obj['kind']} {self.obj['metadata']['name']}{extra}"
        if self.kind == "scale":
            return f"scale StatefulSet to {self.replicas}"
        if self.kind == "patch_replicas":
            return f"set spec.replicas to {self.replicas}"
        if self.kind == "delete" and self.obj is not None:
            return f"delete {self.obj['kind']} {self.obj['metadata']['name']}"
        if self.kind == "create_secret" and self.obj is not None:
            return f"create Secret {self.obj['metadata']['name']} unless it exists"
        return self.kind


@dataclass
class Plan:
    """What `plan` decided."""

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message
    requeue: float = _STEADY_REQUEUE
    transitions: list[tuple[str, float]] = field(default_factory=list)  # type, seconds
    decision: dict[str, Any] | None = None
    done: bool = True  # plan_delete: whether the finalizer may go


def backoff_delay(restarts: int, initial: float, maximum: float, multiplier: float) -> float:
    """Delay before operator restart number ``restarts + 1`` (Strimzi-style growth).

    >>> [backoff_delay(n, 10, 300, 2) for n in range(7)]
    [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    """
    return float(min(maximum, initial * multiplier ** max(0, restarts)))


def deployed_spec(sts: dict[str, Any] | None) -> DataflowSpec | None:
    """The spec the running StatefulSet was built from (its annotation), if readable.

    >>> deployed_spec(None) is None
    True
    """
    if not sts:
        return None
    raw = ((sts.get("metadata") or {}).get("annotations") or {}).get(mf.ANN_SPEC)
    if not raw:
        return None
    try:
        return parse_spec(json.loads(raw))
    except (ValueError, SpecError):
        return None


def _subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(_subset(v, big.get(k)) for k, v in small.items())
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(small) == len(big)
            and all(_subset(a, b) for a, b in zip(small, big, strict=True))
        )
    return bool(small == big)


def pruned_fields(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """Fields a ``kubectl apply`` sent that the API server dropped (not in the schema).

    Read from kubectl's last-applied annotation, and only while that
    annotation still describes this object (a later ``kubectl edit`` or
    ``patch`` makes it stale).

    >>> ann = {LAST_APPLIED: json.dumps({"spec": {"image": "a", "replcas": 3}})}
    >>> pruned_fields({"image": "a", "replicas": 1}, ann)
    ['spec.replcas']
    """
    raw = annotations.get(LAST_APPLIED)
    if not raw:
        return []
    try:
        applied = json.loads(raw).get("spec")
    except (ValueError, AttributeError):
        return []
    unknown = unknown_fields(DataflowSpec, applied)
    if not unknown or not _subset(prune(DataflowSpec, applied), spec):
        return []
    return unknown


def name_problems(name: str) -> list[tuple[str, str]]:
    """Dataflow names the children can't carry.

    >>> name_problems("9lives")[0][1]
    "'9lives' must start with a letter and contain only lowercase letters, digits and '-' ..."
    """
    out = []
    if not _NAME_RE.match(name):
        out.append(
            (
                "metadata.name",
                f"{name!r} must start with a letter and contain only "
                "lowercase letters, digits and '-' (it names a Service)",
            )
        )
    if len(name) > 52:
        out.append(
            (
                "metadata.name",
                f"{len(name)} characters is too long: at most 52 (the "
                "StatefulSet's pods carry it in a 63-character label)",
            )
        )
    return out


def _sts_replicas(sts: dict[str, Any]) -> int:
    return int((sts.get("spec") or {}).get("replicas") or 0)


def _ann(sts: dict[str, Any] | None) -> dict[str, str]:
    return ((sts or {}).get("metadata") or {}).get("annotations") or {}


class _Ctx:
    """Working state of one `plan` call."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = obs.now
        self.st: dict[str, Any] = copy.deepcopy(obs.status or {})
        self.p = Plan()
        self.failure: tuple[str, str] | None = None  # (reason, message) for Ready/Degraded
        self.degraded: tuple[str, str] | None = None
        self.ready = False
        self.phase = self.st.get("phase") or "Pending"

    def event(self, etype: str, reason: str, message: str) -> None:
        self.p.events.append((etype, reason, message))

    def act(self, kind: str, **kw: Any) -> None:
        self.p.actions.append(Action(kind, **kw))


def _problems_text(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {msg}" for path, msg in problems)


def _execution_id(uid: str, now: float) -> str:
    return hashlib.sha1(f"{uid}:{now}".encode()).hexdigest()[:12]


def _start(
    c: _Ctx, spec: DataflowSpec, owner: mf.Owner, ttype: str, from_replicas: int, epoch_before: int
) -> None:
    """Apply the Service and the StatefulSet at full size; record the execution."""
    obs = c.obs
    c.act("create_secret", obj=mf.build_mesh_secret(owner))
    c.act("apply", obj=mf.build_service(spec, owner))
    c.act("apply", obj=mf.build_statefulset(spec, owner))
    tr = c.st.get("transition") or {
        "type": ttype,
        "startedAt": iso(c.now),
        "fromReplicas": from_replicas,
        "epochBefore": epoch_before,
    }
    tr.update(stage="Starting", toReplicas=spec.replicas)
    c.st["transition"] = tr
    c.st["execution"] = {
        "id": _execution_id(obs.uid, c.now),
        "workerCount": spec.replicas * spec.workers_per_process,
        "restarts": 0,
        "startedAt": iso(c.now),
    }
    c.st["deployedGeneration"] = obs.generation
    c.phase = _PHASE_OF.get(tr["type"], "Upgrading")
    store = obs.store
    if (
        store is not None
        and store.ok
        and store.epoch > 0
        and tr["type"] != "reset"
        and not (spec.upgrade_mode == "stateless" and tr["type"] in ("upgrade", "deploy"))
    ):
        c.event(
            "Normal",
            "Restored",
            f"starting {spec.replicas} pod(s) x {spec.workers_per_process} worker(s) from "
            f"committed epoch {store.epoch} (written by {store.worker_count} workers)",
        )
    c.p.requeue = _BUSY_REQUEUE


def _stop(c: _Ctx, ttype: str, from_replicas: int, to_replicas: int, message: str) -> None:
    store = c.obs.store
    c.act("scale", replicas=0)
    c.st["transition"] = {
        "type": ttype,
        "stage": "Stopping",
        "startedAt": iso(c.now),
        "fromReplicas": from_replicas,
        "toReplicas": to_replicas,
        "epochBefore": store.epoch if store is not None and store.ok else 0,
    }
    c.phase = _PHASE_OF.get(ttype, "Upgrading")
    reason = {
        "suspend": "Suspending",
        "rescale": "Scaling",
        "upgrade": "SpecChanged",
        "restart": "Restarting",
        "reset": "ResettingState",
        "unhealthy-restart": "RestartUnhealthy",
    }[ttype]
    c.event("Warning" if ttype == "unhealthy-restart" else "Normal", reason, message)
    c.p.requeue = _BUSY_REQUEUE


def _changes(spec: DataflowSpec, sts: dict[str, Any], desired_hash: str) -> list[str]:
    ann = _ann(sts)
    out = []
    if ann.get(mf.ANN_RESET_NONCE, "0") != str(spec.reset_state_nonce):
        out.append("reset")
    if ann.get(mf.ANN_TEMPLATE_HASH) != desired_hash:
        out.append("upgrade")
    deployed_replicas = int(ann.get(mf.ANN_REPLICAS, _sts_replicas(sts)) or 0)
    cur = _sts_replicas(sts)
    if deployed_replicas != spec.replicas or (cur > 0 and cur != deployed_replicas):
        out.append("rescale")
    if ann.get(mf.ANN_RESTART_NONCE, "0") != str(spec.restart_nonce):
        out.append("restart")
    return out


def _change_message(ttype: str, spec: DataflowSpec, sts: dict[str, Any], gen: int) -> str:
    ann = _ann(sts)
    n = _sts_replicas(sts)
    if ttype == "suspend":
        return f"suspending: stopping {n} pod(s) at an epoch barrier (state is committed first)"
    if ttype == "rescale":
        return (
            f"rescaling {ann.get(mf.ANN_REPLICAS, n)} -> {spec.replicas} pod(s): stopping "
            "at an epoch barrier, then restarting with the new worker count"
        )
    if ttype == "upgrade":
        return (
            f"spec changed (generation {gen}): stopping {n} pod(s) at an epoch barrier, "
            f"then starting the new spec (upgradeMode {spec.upgrade_mode})"
        )
    if ttype == "restart":
        return f"restartNonce is now {spec.restart_nonce}: restarting {n} pod(s)"
    return (
        f"resetStateNonce is now {spec.reset_state_nonce}: stopping {n} pod(s), deleting "
        "the Redis state, starting fresh"
    )


def plan(obs: Observation) -> Plan:
    """Decide what to do about one Dataflow (see the module docstring)."""
    c = _Ctx(obs)
    owner = mf.Owner(
        obs.name, obs.namespace, obs.uid, obs.generation, obs.cluster_domain, obs.worker_service_account
    )
    problems: list[tuple[str, str]] = list(name_problems(obs.name))
    spec: DataflowSpec | None = None
    try:
        spec = parse_spec(obs.spec)
    except SpecError as exc:
        problems += exc.problems
    problems += [
        (p, "unknown field, dropped by the API server: remove it or fix its spelling")
        for p in pruned_fields(obs.spec, obs.annotations)
    ]
    deployed = deployed_spec(obs.sts)
    if spec is not None and deployed is not None and spec.partitions != deployed.partitions:
        problems.append(
            (
                "spec.partitions",
                f"can't change from {deployed.partitions} to {spec.partitions}: state is placed by key group",
            )
        )
    target = spec
    if problems:
        text = _problems_text(problems)
        keep = " The last valid spec keeps running." if deployed is not None else ""
        c.event("Warning", "ValidationError", f"invalid spec: {text}.{keep}")
        c.degraded = ("InvalidSpec", f"invalid spec (generation {obs.generation}): {text}")
        target = deployed
    if target is None:
        c.phase = "Failed"
        c.failure = (
            "InvalidSpec",
            f"invalid spec: {_problems_text(problems)}. Fix it with kubectl edit/apply",
        )
        # kubectl apply fixing a pruned field changes only an annotation: look again soon.
        c.p.requeue = 10.0
        return _finish(c, None, owner)

    store = obs.store
    if store is not None and store.ok and store.key_groups and store.key_groups != target.partitions:
        c.event(
            "Warning",
            "PartitionsMismatch",
            f"Redis state under prefix {mf.key_prefix(target, owner)!r} has "
            f"{store.key_groups} key groups but spec.partitions is {target.partitions}: the "
            "stored count wins; reset the state (resetStateNonce) to change it",
        )
    secret_problem: tuple[str, str] | None = None
    sec = obs.secret
    if sec is not None and not (sec.found and sec.has_key):
        what = (
            f"Secret {obs.namespace}/{sec.name} not found"
            if not sec.found
            else f"Secret {obs.namespace}/{sec.name} has no key {sec.key!r}"
        )
        secret_problem = (
            "SecretNotFound",
            f"{what} (spec.recovery.secretRef). Create it, e.g. kubectl -n "
            f"{obs.namespace} create secret generic {sec.name} "
            f"--from-literal={sec.key}=redis://redis:6379/0",
        )

    desired = mf.build_statefulset(target, owner)
    desired_hash = _ann(desired)[mf.ANN_TEMPLATE_HASH]
    sts = obs.sts
    want_running = target.state == "running"
    pods = [p for p in obs.pods]
    epoch_now = store.epoch if store is not None and store.ok else 0

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

    if sts is None:
        if secret_problem is not None:
            c.phase = "Pending"
            c.failure = secret_problem
            c.event("Warning", secret_problem[0], secret_problem[1])
            c.p.requeue = 15.0
        elif want_running:
            if (
                target.upgrade_mode == "stateless"
                and target.recovery is not None
                and store is not None
                and store.exists
            ):
                if not store.ok:
                    return _store_blocked(c, target, owner, "delete the old state first")
                c.act("delete_state")
            _start(c, target, owner, "deploy", 0, epoch_now)
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
            c.phase = "Suspended"
            c.event("Normal", "Created", f"created StatefulSet {obs.name}, suspended")
        return _finish(c, target, owner)

    cur = _sts_replicas(sts)
    changes = _changes(target, sts, desired_hash)
    if cur > 0:
        ttype = None
        if not want_running:
            ttype = "suspend"
        elif changes:
            ttype = changes[0]
        if ttype is not None and ttype != "suspend" and secret_problem is not None:
            c.degraded = secret_problem
            c.event(
                "Warning",
                secret_problem[0],
                f"{secret_problem[1]}. The change waits; the current pods keep running",
            )
            ttype = None
        if ttype is not None:
            deployed_n = int(_ann(sts).get(mf.ANN_REPLICAS, cur) or cur)
            _stop(
                c,
                ttype,
                deployed_n,
                target.replicas if want_running else 0,
                _change_message(ttype, target, sts, obs.generation),
            )
            # A change the user asked for starts the restart backoff afresh.
            health = {**(c.st.get("health") or {}), "consecutiveRestarts": 0}
            health.pop("healthySince", None)
            c.st["health"] = health
            return _finish(c, target, owner)
        _steady(c, target, owner, sts, pods)
        return _finish(c, target, owner)

    # The StatefulSet is at 0: stopping, stopped, or suspended.
    live = [p for p in pods]
    tr = c.st.get("transition")
    if live:
        ttype = (tr or {}).get("type") or ("suspend" if not want_running else "upgrade")
        c.phase = _PHASE_OF.get(ttype, "Upgrading")
        started = parse_iso((tr or {}).get("startedAt")) or c.now
        limit = duration_seconds(target.restart_policy.stop_timeout) + 60
        if c.now - started > limit:
            c.event(
                "Warning",
                "StopSlow",
                f"{len(live)} pod(s) still terminating {c.now - started:.0f}s after the "
                "stop began (stopTimeout "
                f"{target.restart_policy.stop_timeout}): check the pods' logs for a worker "
                "that can't finish its epoch",
            )
        c.p.requeue = _BUSY_REQUEUE
        return _finish(c, target, owner)

    if tr and tr.get("stage") == "Stopping":
        _stop_finished(c, target, tr)
    if not want_running:
        if tr and tr.get("type") == "suspend":
            started = parse_iso(tr.get("startedAt")) or c.now
            c.p.transitions.append(("suspend", c.now - started))
            c.event(
                "Normal",
                "Suspended",
                f"all pods stopped in {c.now - started:.1f}s; state kept at epoch {epoch_now}",
            )
        c.st["transition"] = None
        c.phase = "Suspended"
        c.p.requeue = 30.0
        return _finish(c, target, owner)
    if secret_problem is not None:
        c.phase = "Pending"
        c.failure = secret_problem
        c.event("Warning", secret_problem[0], secret_problem[1])
        c.p.requeue = 15.0
        return _finish(c, target, owner)
    ttype = (tr or {}).get("type") or "resume"
    need_reset = (
        "reset" in changes
        or ttype == "reset"
        or ("upgrade" in changes and target.upgrade_mode == "stateless")
    )
    if need_reset and target.recovery is not None:
        if store is None or not store.ok:
            return _store_blocked(c, target, owner, "delete the state before starting")
        c.act("delete_state")
        c.event(
            "Normal",
            "StateDeleted",
            f"deleted the Redis state under prefix {mf.key_prefix(target, owner)!r}; "
            "starting with empty state",
        )
    _start(c, target, owner, ttype, 0, epoch_now)
    if need_reset:
        c.p.events = [e for e in c.p.events if e[1] != "Restored"]
    return _finish(c, target, owner)


def _store_blocked(c: _Ctx, spec: DataflowSpec, owner: mf.Owner, what: str) -> Plan:
    err = c.obs.store.error if c.obs.store is not None else "not read"
    c.failure = (
        "RecoveryStoreUnreachable",
        f"can't {what}: Redis is unreachable ({err}). Check spec.recovery and that Redis runs; retrying",
    )
    c.event("Warning", "RecoveryStoreUnreachable", c.failure[1])
    c.p.requeue = 10.0
    return _finish(c, spec, owner)


def _stop_finished(c: _Ctx, spec: DataflowSpec, tr: dict[str, Any]) -> None:
    """All pods are gone after a coordinated stop: did it commit a snapshot?"""
    store = c.obs.store
    if spec.recovery is None or store is None:
        return
    started = parse_iso(tr.get("startedAt")) or c.now
    fresh = store.ok and store.committed_at + 1.0 >= started and store.epoch > int(tr.get("epochBefore") or 0)
    wants_snapshot = tr.get("type") == "suspend" or spec.upgrade_mode == "snapshot"
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


def _health(c: _Ctx, spec: DataflowSpec, pods: list[PodInfo], all_ready: bool) -> str:
    """Update health bookkeeping; return why the dataflow is unhealthy ('' if healthy)."""
    hc = spec.health_check
    h = dict(c.st.get("health") or {})
    now = c.now
    top = max((p.restarts for p in pods), default=0)
    window_start = parse_iso(h.get("windowStart"))
    base = int(h.get("restartsAtWindowStart") or 0)
    if window_start is None or now - window_start > duration_seconds(hc.restart_window):
        window_start, base = now, top
    base = min(base, top)  # pods were recreated: their counts restart from 0
    h["windowStart"], h["restartsAtWindowStart"] = iso(window_start), base
    if all_ready:
        since = parse_iso(h.get("healthySince")) or now
        h["healthySince"] = iso(since)
        if now - since >= duration_seconds(spec.restart_policy.reset_after):
            h["consecutiveRestarts"] = 0
    else:
        h.pop("healthySince", None)
    c.st["health"] = h
    if not hc.enabled:
        return ""
    started = parse_iso((c.st.get("execution") or {}).get("startedAt")) or now
    if top - base >= hc.restart_threshold:
        return f"crash loop: pods restarted {top - base} times within {hc.restart_window}"
    ready_timeout = duration_seconds(hc.ready_timeout)
    if not all_ready and now - started > ready_timeout:
        return f"not all pods Ready {now - started:.0f}s after the start (readyTimeout {hc.ready_timeout})"
    store = c.obs.store
    progress = duration_seconds(hc.progress_timeout)
    if (
        spec.recovery is not None
        and all_ready
        and store is not None
        and store.ok
        and now - started > progress
        and store.committed_at
        and now - store.committed_at > progress
    ):
        return (
            f"no snapshot committed for {now - store.committed_at:.0f}s (progressTimeout "
            f"{hc.progress_timeout}): the workers are stuck"
        )
    return ""


def _steady(c: _Ctx, spec: DataflowSpec, owner: mf.Owner, sts: dict[str, Any], pods: list[PodInfo]) -> None:
    """Pods run the desired spec: readiness, health, snapshots, autoscaler."""
    n = spec.replicas
    live = [p for p in pods if not p.terminating]
    ready = sum(1 for p in live if p.ready)
    all_ready = ready == n and len(live) == n
    tr = c.st.get("transition")
    if all_ready:
        c.ready = True
        c.phase = "Running"
        if tr:
            started = parse_iso(tr.get("startedAt")) or c.now
            took = c.now - started
            c.p.transitions.append((tr.get("type", "deploy"), took))
            reason, text = {
                "rescale": ("Scaled", f"rescaled {tr.get('fromReplicas')} -> {n} pod(s) in {took:.1f}s"),
                "deploy": ("Running", f"all {n} pod(s) Ready {took:.1f}s after creation"),
                "resume": ("Resumed", f"resumed: all {n} pod(s) Ready in {took:.1f}s"),
                "upgrade": ("Upgraded", f"upgraded: all {n} pod(s) Ready in {took:.1f}s"),
            }.get(
                tr.get("type", ""),
                ("Restarted", f"restarted ({tr.get('type')}): all {n} pod(s) Ready in {took:.1f}s"),
            )
            c.event("Normal", reason, text)
            c.st["transition"] = None
    else:
        c.phase = _PHASE_OF.get(tr["type"], "Upgrading") if tr else "Running"
        c.p.requeue = _BUSY_REQUEUE if tr else 5.0
    diag = diagnose_pods(pods, spec.image)
    unhealthy = _health(c, spec, pods, all_ready)
    if diag is not None and not all_ready:
        c.failure = diag
        c.event("Warning", diag[0], diag[1])
        if diag[0] in ("StartupError", "ImagePullError", "ConfigError"):
            # Restarting can't fix these; the kubelet keeps retrying the pods.
            c.phase = "Failed"
            unhealthy = ""
    store = c.obs.store
    if store is not None and not store.ok and not all_ready and c.failure is None:
        c.failure = (
            "RecoveryStoreUnreachable",
            f"Redis is unreachable ({store.error}): workers can't commit or resume. "
            "Check spec.recovery and that Redis runs",
        )
    if unhealthy:
        h = c.st["health"]
        rp = spec.restart_policy
        count = int(h.get("consecutiveRestarts") or 0)
        if rp.max_restarts and count >= rp.max_restarts:
            c.phase = "Failed"
            c.failure = (
                "RestartLimit",
                f"gave up after {count} restart(s): {unhealthy}. Fix "
                "the cause, then change spec.restartNonce",
            )
        else:

            def delay_of(k: int) -> float:
                return backoff_delay(
                    k,
                    duration_seconds(rp.backoff.initial_delay),
                    duration_seconds(rp.backoff.max_delay),
                    rp.backoff.multiplier,
                )

            delay = delay_of(count)
            last = parse_iso(h.get("lastRestart"))
            if last is None or c.now - last >= delay:
                h["consecutiveRestarts"] = count + 1
                h["lastRestart"] = iso(c.now)
                c.st["transition"] = None
                _stop(
                    c,
                    "unhealthy-restart",
                    n,
                    n,
                    f"{unhealthy}: restarting all {n} pod(s) (restart {count + 1}; next "
                    f"delay {delay_of(count + 1):.0f}s)",
                )
                c.st["health"] = h
                return
            c.degraded = ("Unhealthy", f"{unhealthy}; next restart in {delay - (c.now - last):.0f}s")
            c.p.requeue = min(c.p.requeue, max(1.0, delay - (c.now - last)))
    _snapshot_nonce(c, spec)
    _autoscale(c, spec, all_ready and not c.st.get("transition"))


def _snapshot_nonce(c: _Ctx, spec: DataflowSpec) -> None:
    snap = dict(c.st.get("snapshot") or {})
    nonce = spec.snapshot_nonce
    store = c.obs.store
    if nonce != int(snap.get("requestedNonce") or 0) and nonce != int(snap.get("completedNonce") or 0):
        snap["requestedNonce"] = nonce
        snap["requestedAt"] = iso(c.now)
        if spec.recovery is None:
            c.event(
                "Warning",
                "SnapshotFailed",
                f"snapshotNonce {nonce}: this Dataflow has no spec.recovery, so there are no snapshots",
            )
            snap["completedNonce"] = nonce
    requested = int(snap.get("requestedNonce") or 0)
    if requested != int(snap.get("completedNonce") or 0) and store is not None and store.ok:
        at = parse_iso(snap.get("requestedAt")) or c.now
        if store.committed_at >= at:
            snap["completedNonce"] = requested
            c.event(
                "Normal",
                "SnapshotCompleted",
                f"snapshotNonce {requested}: epoch {store.epoch} committed at "
                f"{iso(store.committed_at)} ({store.epoch_bytes} bytes)",
            )
    c.st["snapshot"] = snap


def _autoscale(c: _Ctx, spec: DataflowSpec, settled: bool) -> None:
    mode = spec.autoscaler.effective_mode(spec.scaling.mode)
    prev = c.st.get("autoscaler")
    params = asc.Params.from_spec(spec.autoscaler)
    if mode == "off":
        c.st["autoscaler"] = {"mode": "off"} if prev else None
        return
    last = parse_iso(((prev or {}).get("lastEvaluation") or {}).get("time"))
    if last is not None and c.now - last < params.evaluation_interval - 0.5:
        c.p.requeue = min(c.p.requeue, params.evaluation_interval - (c.now - last))
        return
    started = parse_iso((c.st.get("execution") or {}).get("startedAt"))
    decision, status, apply = asc.evaluate(
        prev=prev,
        mode=mode,
        current=spec.replicas,
        stats=c.obs.metrics,
        params=params,
        workers_per_process=spec.workers_per_process,
        partitions=spec.partitions,
        now=c.now,
        started_at=started,
        busy_reason="" if settled else "waiting for all pods to be Ready",
    )
    c.st["autoscaler"] = status
    c.p.decision = decision
    c.p.requeue = min(c.p.requeue, params.evaluation_interval)
    if decision is not None and decision["action"] != "none":
        how = "applied" if decision["applied"] else f"not applied: {decision['blocked']}"
        c.event(
            "Normal",
            "ScalingReport",
            f"{decision['action']} {decision['currentReplicas']} -> "
            f"{decision['recommendedReplicas']} ({how}): {decision['reason']}",
        )
    if apply is not None:
        c.act("patch_replicas", replicas=apply)


def _finish(c: _Ctx, spec: DataflowSpec | None, owner: mf.Owner) -> Plan:
    """Fill in status fields and conditions from what the plan found."""
    obs, st, now, gen = c.obs, c.st, c.now, c.obs.generation
    pods = [p for p in obs.pods if not p.terminating]
    st["observedGeneration"] = gen
    st["phase"] = c.phase
    st["replicas"] = len(obs.pods)
    st["readyReplicas"] = sum(1 for p in pods if p.ready)
    st["selector"] = ",".join(f"{k}={v}" for k, v in mf.selector(obs.name).items())
    if obs.sts is not None:
        g = _ann(obs.sts).get(mf.ANN_GENERATION)
        if (
            g
            and g.isdigit()
            and not any(a.kind == "apply" and (a.obj or {}).get("kind") == "StatefulSet" for a in c.p.actions)
        ):
            st["deployedGeneration"] = int(g)
    store = obs.store
    if spec is not None:
        n = spec.replicas
        groups = store.key_groups if store is not None and store.ok and store.key_groups else spec.partitions
        st["partitions"] = {
            "keyGroups": groups,
            "workers": n * spec.workers_per_process,
            "assignment": mf.pod_assignment(n, spec.workers_per_process, groups),
        }
        ex = st.get("execution")
        if ex:
            ex["restarts"] = sum(p.restarts for p in obs.pods)
    if store is not None and store.ok and store.exists:
        snap = dict(st.get("snapshot") or {})
        snap.update(epoch=store.epoch, bytes=store.epoch_bytes, workerCount=store.worker_count)
        if store.committed_at:
            snap["time"] = iso(store.committed_at)
        if obs.metrics is not None and obs.metrics.snapshot_duration:
            snap["duration"] = round(obs.metrics.snapshot_duration, 4)
        st["snapshot"] = snap
    mesh = mf.mesh_secret_name(obs.name)
    if (
        obs.sts is not None
        and not any(a.kind == "create_secret" for a in c.p.actions)
        and any(
            p.waiting_reason == "CreateContainerConfigError" and f'"{mesh}"' in p.waiting_message
            for p in pods
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
    _conditions(c, spec)
    if c.failure or c.degraded:
        reason, message = c.failure or c.degraded  # type: ignore[misc]
        le = st.get("lastError") or {}
        if le.get("reason") != reason or le.get("message") != message:
            st["lastError"] = {"reason": reason, "message": message, "time": iso(now)}
    c.p.status = {k: v for k, v in st.items() if v is not None}
    for k, v in st.items():
        if v is None and k in (obs.status or {}):
            c.p.status[k] = None  # merge-patch deletion
    return c.p


def _describe(tr: dict[str, Any]) -> str:
    what = "stopping at an epoch barrier" if tr.get("stage") == "Stopping" else "starting and restoring"
    return f"{tr['type']} {tr.get('fromReplicas', 0)} -> {tr.get('toReplicas', 0)} pods: {what}"


def _conditions(c: _Ctx, spec: DataflowSpec | None) -> None:
    st, now, gen = c.st, c.now, c.obs.generation
    conds = list(st.get("conditions") or [])
    n = spec.replicas if spec is not None else 0
    ready_n = st.get("readyReplicas", 0)
    tr = st.get("transition")
    store = c.obs.store
    # Ready
    if c.ready and c.phase == "Running":
        ready = ("True", "Running", f"{ready_n}/{n} pods ready")
    elif c.failure is not None:
        ready = ("False", *c.failure)
    elif c.phase == "Suspended":
        ready = ("False", "Suspended", "spec.state is suspended; set it to running to resume")
    elif tr:
        ready = (
            "False",
            _GERUND.get(tr["type"], "Progressing"),
            f"{_describe(tr)}: {ready_n}/{n} pods ready",
        )
    elif c.phase == "Suspending":
        ready = ("False", "Suspending", "stopping at an epoch barrier")
    else:
        ready = ("False", "PodsNotReady", f"{ready_n}/{n} pods ready")
    conds = set_condition(conds, "Ready", *ready, gen, now)
    # Progressing
    if tr:
        prog = (
            "True",
            _GERUND.get(tr["type"], "Progressing"),
            f"{_describe(tr)} (since {tr.get('startedAt')})",
        )
    else:
        prog = ("False", "Stable", f"phase {c.phase}")
    conds = set_condition(conds, "Progressing", *prog, gen, now)
    # Degraded
    bad = c.degraded or c.failure
    if bad is None and store is not None and not store.ok:
        bad = ("RecoveryStoreUnreachable", f"Redis is unreachable: {store.error}")
    deg = ("True", *bad) if bad else ("False", "AsExpected", "")
    conds = set_condition(conds, "Degraded", *deg, gen, now)
    # SnapshotHealthy
    if spec is None or spec.recovery is None:
        snap = (
            "Unknown",
            "RecoveryDisabled",
            "no spec.recovery: state is lost on every restart, rescale and upgrade",
        )
    elif store is None:
        snap = ("Unknown", "NotChecked", "Redis not read yet")
    elif not store.ok:
        snap = (
            "False",
            "RecoveryStoreUnreachable",
            f"Redis is unreachable: {store.error}. Check spec.recovery and that Redis runs",
        )
    elif not store.exists or not store.committed_at:
        snap = ("Unknown", "NoSnapshotYet", "no epoch committed yet")
    else:
        age = now - store.committed_at
        limit = duration_seconds(spec.health_check.progress_timeout)
        if c.phase == "Running" and age > limit:
            snap = ("False", "SnapshotStale", f"last snapshot (epoch {store.epoch}) is {age:.0f}s old")
        else:
            snap = (
                "True",
                "SnapshotCommitted",
                f"epoch {store.epoch} committed at {iso(store.committed_at)}",
            )
    conds = set_condition(conds, "SnapshotHealthy", *snap, gen, now)
    # Autoscaling
    mode = spec.autoscaler.effective_mode(spec.scaling.mode) if spec is not None else "off"
    if mode == "off":
        auto = ("False", "Disabled", f"scaling.mode is {spec.scaling.mode if spec else '?'}")
    else:
        last = (st.get("autoscaler") or {}).get("lastEvaluation") or {}
        if last.get("blocked"):
            auto = (
                "True",
                "Waiting" if last.get("action") == "none" else "Blocked",
                f"{mode}: {last.get('blocked')}",
            )
        elif last:
            auto = (
                "True",
                "Applied" if last.get("applied") else "Evaluated",
                f"{mode}: {last.get('currentReplicas')} -> "
                f"{last.get('recommendedReplicas')}: {last.get('reason')}",
            )
        else:
            auto = ("True", "Waiting", f"{mode}: no evaluation yet")
    conds = set_condition(conds, "Autoscaling", *auto, gen, now)
    st["conditions"] = conds


def plan_delete(obs: Observation) -> Plan:
    """Deletion (the finalizer): stop at an epoch barrier, then keep, expire or delete state.

    ``Plan.done`` says whether the finalizer may be removed.

    >>> obs = Observation(name="wc", namespace="ns", uid="u", generation=1,
    ...                   spec={"image": "a", "flow": {"import": "m:f"}}, now=0.0)
    >>> plan_delete(obs).done
    True
    """
    c = _Ctx(obs)
    c.phase = "Deleting"
    spec: DataflowSpec | None
    try:
        spec = parse_spec(obs.spec)
    except SpecError:
        spec = deployed_spec(obs.sts)
    if spec is None:
        c.p.status = {"phase": "Deleting"}
        return c.p
    owner = mf.Owner(obs.name, obs.namespace, obs.uid, obs.generation, obs.cluster_domain)
    sts = obs.sts
    if spec.deletion.snapshot:
        if sts is not None and _sts_replicas(sts) > 0:
            c.act("scale", replicas=0)
            c.event(
                "Normal",
                "Deleting",
                f"stopping {_sts_replicas(sts)} pod(s) at an epoch barrier before deletion",
            )
            c.p.done = False
        elif obs.pods:
            c.p.done = False
    if c.p.done and spec.recovery is not None:
        store = obs.store
        prefix = mf.key_prefix(spec, owner)
        if spec.deletion.delete_state or spec.recovery.retention:
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
                c.act("delete_state")
                c.event("Normal", "StateDeleted", f"deleted the Redis state under {prefix!r}")
            else:
                secs = duration_seconds(spec.recovery.retention or "0s")
                c.act("expire_state", seconds=secs)
                c.event(
                    "Normal",
                    "StateKept",
                    f"state under {prefix!r} kept; it expires in {spec.recovery.retention}",
                )
        elif store is not None and store.ok and store.exists:
            c.event(
                "Normal",
                "StateKept",
                f"state under {prefix!r} kept at epoch {store.epoch} (deletion.deleteState "
                "is false): a Dataflow with the same name and namespace resumes from it",
            )
    c.p.requeue = _BUSY_REQUEUE
    c.p.status = {"phase": "Deleting", "observedGeneration": obs.generation}
    return c.p
