"""The conditions of a Dataflow: Ready, Progressing, Degraded, SnapshotHealthy, Autoscaling, Finished.

Placed in the flow: at the end of every `reconcile.plan`, `update_conditions`
derives each condition from what the plan found (its phase, failure,
degradation, transition, what Redis says, the autoscaler's last
evaluation). A condition's ``lastTransitionTime`` moves only when its status
changes (`put_condition`), so ``kubectl wait`` and alerts see real changes.

>>> conds = put_condition([], "Ready", "False", "PodsNotReady", "0/2 ready", 1, 100.0)
>>> conds = put_condition(conds, "Ready", "False", "PodsNotReady", "1/2 ready", 1, 200.0)
>>> conds[0].last_transition_time, conds[0].message
('1970-01-01T00:01:40Z', '1/2 ready')
"""

from __future__ import annotations

from typing import Any

from headrace_operator import transitions
from headrace_operator.outcome import Ctx
from headrace_operator.schema import from_json, to_json
from headrace_operator.spec import DataflowSpec
from headrace_operator.status import Condition, Phase, iso

__all__ = [
    "CONDITION_TYPES",
    "find_condition",
    "get_condition",
    "put_condition",
    "set_condition",
    "update_conditions",
]

CONDITION_TYPES = ["Ready", "Progressing", "Degraded", "SnapshotHealthy", "Autoscaling", "Finished"]
_ORDER = {t: i for i, t in enumerate(CONDITION_TYPES)}

Verdict = tuple[str, str, str]
"""A condition's ``(status, reason, message)``."""


def find_condition(conds: list[Condition], ctype: str) -> Condition | None:
    """The condition of type ``ctype``, or ``None``.

    >>> find_condition([Condition(type="Ready", status="True")], "Ready").status
    'True'
    """
    return next((c for c in conds if c.type == ctype), None)


def put_condition(
    conds: list[Condition],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: float,
) -> list[Condition]:
    """A new condition list with ``ctype`` set; ``lastTransitionTime`` moves only on change.

    >>> c = put_condition([], "Degraded", "True", "InvalidSpec", "bad", 2, 0.0)
    >>> c = put_condition(c, "Degraded", "False", "AsExpected", "", 3, 60.0)
    >>> c[0].last_transition_time, c[0].observed_generation
    ('1970-01-01T00:01:00Z', 3)
    """
    old = find_condition(conds, ctype)
    changed = old is None or old.status != status
    new = Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message[:1024],
        last_transition_time=iso(now) if changed or old is None else old.last_transition_time or iso(now),
        observed_generation=generation,
    )
    out = [c for c in conds if c.type != ctype] + [new]
    return sorted(out, key=lambda c: _ORDER.get(c.type, 99))


def get_condition(conds: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    """`find_condition` on the CRD's JSON.

    >>> get_condition([{"type": "Ready", "status": "True"}], "Ready")["status"]
    'True'
    """
    for c in conds:
        if c.get("type") == ctype:
            return c
    return None


def set_condition(
    conds: list[dict[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: float,
) -> list[dict[str, Any]]:
    """`put_condition` on the CRD's JSON.

    >>> c = set_condition([], "Degraded", "True", "InvalidSpec", "bad", 2, 0.0)
    >>> c = set_condition(c, "Degraded", "False", "AsExpected", "", 3, 60.0)
    >>> c[0]["lastTransitionTime"], c[0]["observedGeneration"]
    ('1970-01-01T00:01:00Z', 3)
    """
    typed = [from_json(Condition, c) for c in conds]
    return [to_json(c) for c in put_condition(typed, ctype, status, reason, message, generation, now)]


# ------------------------------------------------------------------ the rules


def _ready(c: Ctx, n: int, ready_n: int) -> Verdict:
    tr = c.st.transition
    if c.ready and c.phase is Phase.RUNNING:
        return "True", "Running", f"{ready_n}/{n} pods ready"
    if c.failure is not None:
        return "False", *c.failure
    if c.phase is Phase.SUSPENDED:
        return "False", "Suspended", "spec.state is suspended; set it to running to resume"
    if c.phase is Phase.FINISHED and c.st.stopped is not None:
        return "False", "Finished", c.st.stopped.message
    if tr is not None:
        return "False", transitions.gerund(tr.type), f"{transitions.describe(tr)}: {ready_n}/{n} pods ready"
    if c.phase is Phase.SUSPENDING:
        return "False", "Suspending", "stopping at an epoch barrier"
    return "False", "PodsNotReady", f"{ready_n}/{n} pods ready"


def _progressing(c: Ctx) -> Verdict:
    tr = c.st.transition
    if tr is not None:
        return "True", transitions.gerund(tr.type), f"{transitions.describe(tr)} (since {tr.started_at})"
    return "False", "Stable", f"phase {c.phase}"


def _degraded(c: Ctx) -> Verdict:
    bad = c.degraded or c.failure
    store = c.obs.store
    if bad is None and store is not None and not store.ok:
        bad = ("RecoveryStoreUnreachable", f"Redis is unreachable: {store.error}")
    return ("True", *bad) if bad else ("False", "AsExpected", "")


def _snapshot_healthy(c: Ctx, spec: DataflowSpec | None) -> Verdict:
    store = c.obs.store
    if spec is None or spec.recovery is None:
        return (
            "Unknown",
            "RecoveryDisabled",
            "no spec.recovery: state is lost on every restart, rescale and upgrade",
        )
    if store is None:
        return "Unknown", "NotChecked", "Redis not read yet"
    if not store.ok:
        return (
            "False",
            "RecoveryStoreUnreachable",
            f"Redis is unreachable: {store.error}. Check spec.recovery and that Redis runs",
        )
    if not store.exists or not store.committed_at:
        return "Unknown", "NoSnapshotYet", "no epoch committed yet"
    age = c.now - store.committed_at
    if c.phase is Phase.RUNNING and age > spec.health_check.progress_timeout.seconds:
        return "False", "SnapshotStale", f"last snapshot (epoch {store.epoch}) is {age:.0f}s old"
    return "True", "SnapshotCommitted", f"epoch {store.epoch} committed at {iso(store.committed_at)}"


def _autoscaling(c: Ctx, spec: DataflowSpec | None) -> Verdict:
    mode = spec.autoscaler.effective_mode(spec.scaling.mode) if spec is not None else "off"
    if mode == "off":
        return "False", "Disabled", f"scaling.mode is {spec.scaling.mode if spec else '?'}"
    last = c.st.autoscaler.last_evaluation if c.st.autoscaler is not None else None
    if last is None:
        return "True", "Waiting", f"{mode}: no evaluation yet"
    if last.blocked:
        return "True", "Waiting" if last.action == "none" else "Blocked", f"{mode}: {last.blocked}"
    return (
        "True",
        "Applied" if last.applied else "Evaluated",
        f"{mode}: {last.current_replicas} -> {last.recommended_replicas}: {last.reason}",
    )


def _finished(c: Ctx) -> Verdict:
    stopped = c.st.stopped
    if c.phase is Phase.FINISHED and stopped is not None:
        return "True", "Finished", stopped.message
    return "False", "NotFinished", f"phase {c.phase}"


def update_conditions(c: Ctx, spec: DataflowSpec | None) -> None:
    """Set the conditions in ``c.st`` from what the plan found."""
    n = spec.replicas if spec is not None else 0
    ready_n = c.st.ready_replicas or 0
    verdicts = {
        "Ready": _ready(c, n, ready_n),
        "Progressing": _progressing(c),
        "Degraded": _degraded(c),
        "SnapshotHealthy": _snapshot_healthy(c, spec),
        "Autoscaling": _autoscaling(c, spec),
        "Finished": _finished(c),
    }
    conds = list(c.st.conditions or [])
    for ctype, verdict in verdicts.items():
        conds = put_condition(conds, ctype, *verdict, c.obs.generation, c.now)
    c.st.conditions = conds
