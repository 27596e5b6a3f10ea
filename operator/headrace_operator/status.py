"""A Dataflow's status: its schema, conditions, pod diagnosis and event de-duplication.

Placed in the flow: `reconcile` observes and decides, and uses these pure
helpers to write status (conditions whose ``lastTransitionTime`` only moves
when their status changes) and to say, from the pods' own state, what is
wrong in words a user can act on. The dataclasses here exist for the CRD's
schema (the API server prunes undeclared status fields); the code itself
handles status as plain dicts.

>>> conds = set_condition([], "Ready", "False", "PodsNotReady", "0/2 ready", 1, 100.0)
>>> conds = set_condition(conds, "Ready", "False", "PodsNotReady", "1/2 ready", 1, 200.0)
>>> conds[0]["lastTransitionTime"], conds[0]["message"]
('1970-01-01T00:01:40Z', '1/2 ready')
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from headrace_operator.spec import _m

__all__ = [
    "CONDITION_TYPES",
    "PHASES",
    "DataflowStatus",
    "EventDeduper",
    "PodInfo",
    "diagnose_pods",
    "get_condition",
    "iso",
    "parse_iso",
    "set_condition",
]

PHASES = [
    "Pending",
    "Deploying",
    "Running",
    "Upgrading",
    "Scaling",
    "Suspending",
    "Suspended",
    "Failed",
    "Deleting",
]
CONDITION_TYPES = ["Ready", "Progressing", "Degraded", "SnapshotHealthy", "Autoscaling"]
EVENT_DEDUP_SECONDS = 30 * 60.0


def iso(t: float) -> str:
    """RFC 3339 UTC time as Kubernetes writes it.

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of an `iso` time (``None`` stays ``None``).

    >>> parse_iso("1970-01-01T00:01:40Z")
    100.0
    """
    if not text:
        return None
    import calendar

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


# ------------------------------------------------------------------ schema


@dataclass
class Condition:
    """A standard Kubernetes condition."""

    type: str = field(default="", metadata=_m(name="type", required=True, doc="Condition type."))
    status: str = field(
        default="Unknown",
        metadata=_m(
            name="status", required=True, enum=["True", "False", "Unknown"], doc="True, False or Unknown."
        ),
    )
    reason: str = field(default="", metadata=_m(name="reason", doc="CamelCase reason."))
    message: str = field(default="", metadata=_m(name="message", doc="What happened and what to do."))
    last_transition_time: str = field(
        default="",
        metadata=_m(name="lastTransitionTime", format="date-time", doc="When status last changed."),
    )
    observed_generation: int = field(
        default=0, metadata=_m(name="observedGeneration", doc="Generation the condition was computed for.")
    )


@dataclass
class PodAssignment:
    """Key groups owned by one pod."""

    pod: int = field(default=0, metadata=_m(name="pod", doc="Pod ordinal = process index."))
    workers: str = field(default="", metadata=_m(name="workers", doc="Global worker indexes, 'first-last'."))
    key_groups: str = field(
        default="", metadata=_m(name="keyGroups", doc="Key groups, 'first-last' (contiguous).")
    )


@dataclass
class PartitionStatus:
    """How key groups are placed on pods."""

    key_groups: int = field(
        default=0, metadata=_m(name="keyGroups", doc="Key groups in force (fixed at first run).")
    )
    workers: int = field(default=0, metadata=_m(name="workers", doc="Workers in the cluster."))
    assignment: list[PodAssignment] = field(
        default_factory=list, metadata=_m(name="assignment", doc="Per pod (the first 64 pods).")
    )


@dataclass
class ExecutionStatus:
    """The current run of the worker pods."""

    id: str = field(default="", metadata=_m(name="id", doc="Changes on every coordinated (re)start."))
    worker_count: int = field(default=0, metadata=_m(name="workerCount", doc="replicas x workersPerProcess."))
    restarts: int = field(
        default=0, metadata=_m(name="restarts", doc="Container restarts seen in this execution.")
    )
    started_at: str = field(default="", metadata=_m(name="startedAt", format="date-time", doc="Start time."))


@dataclass
class SnapshotStatus:
    """The last committed snapshot (epoch) in Redis."""

    epoch: int = field(default=0, metadata=_m(name="epoch", doc="Last committed epoch."))
    time: str = field(default="", metadata=_m(name="time", format="date-time", doc="Commit time."))
    duration: float = field(
        default=0.0,
        metadata=_m(name="duration", doc="Mean seconds to write a worker's snapshot (from worker metrics)."),
    )
    bytes: int = field(default=0, metadata=_m(name="bytes", doc="Bytes written for the last epoch."))
    worker_count: int = field(default=0, metadata=_m(name="workerCount", doc="Workers that wrote it."))
    requested_nonce: int = field(
        default=0, metadata=_m(name="requestedNonce", doc="Last snapshotNonce seen.")
    )
    requested_at: str = field(
        default="",
        metadata=_m(name="requestedAt", format="date-time", doc="When that snapshot was requested."),
    )
    completed_nonce: int = field(
        default=0,
        metadata=_m(name="completedNonce", doc="Last snapshotNonce answered by a committed snapshot."),
    )


@dataclass
class Decision:
    """One autoscaler evaluation."""

    time: str = field(default="", metadata=_m(name="time", format="date-time", doc="Evaluation time."))
    current_replicas: int = field(
        default=0, metadata=_m(name="currentReplicas", doc="Replicas when evaluated.")
    )
    recommended_replicas: int = field(
        default=0, metadata=_m(name="recommendedReplicas", doc="Recommendation.")
    )
    action: str = field(
        default="none",
        metadata=_m(
            name="action", enum=["none", "scale-up", "scale-down"], doc="What the recommendation means."
        ),
    )
    applied: bool = field(
        default=False, metadata=_m(name="applied", doc="Whether spec.replicas was changed.")
    )
    reason: str = field(default="", metadata=_m(name="reason", doc="Why this recommendation."))
    blocked: str = field(default="", metadata=_m(name="blocked", doc="Why nothing was applied, if so."))
    utilization: float = field(
        default=0.0, metadata=_m(name="utilization", doc="Mean busy fraction of workers.")
    )
    input_rate: float = field(default=0.0, metadata=_m(name="inputRate", doc="Items/s read by the sources."))
    arrival_rate: float = field(
        default=0.0, metadata=_m(name="arrivalRate", doc="Items/s arriving (input rate + lag growth).")
    )
    true_processing_rate: float = field(
        default=0.0,
        metadata=_m(name="trueProcessingRate", doc="Items/s the current workers could do at 100% busy."),
    )
    needed_rate: float = field(default=0.0, metadata=_m(name="neededRate", doc="Capacity needed, items/s."))
    lag: float = field(default=0.0, metadata=_m(name="lag", doc="Backlog of the sources, items."))
    lag_growth: float = field(default=0.0, metadata=_m(name="lagGrowth", doc="Backlog change, items/s."))


@dataclass
class PendingScaleDown:
    """A scale-down waiting for scaleDownDelay."""

    replicas: int = field(
        default=0, metadata=_m(name="replicas", doc="Target (the least aggressive request so far).")
    )
    since: str = field(default="", metadata=_m(name="since", format="date-time", doc="First requested."))


@dataclass
class AutoscalerStatus:
    """The autoscaler's memory and last decisions."""

    mode: str = field(default="off", metadata=_m(name="mode", doc="Mode in force."))
    last_evaluation: Decision | None = field(
        default=None, metadata=_m(name="lastEvaluation", doc="The last evaluation.")
    )
    decisions: list[Decision] = field(
        default_factory=list,
        metadata=_m(name="decisions", doc="The last 3 decisions that recommended a change."),
    )
    pending_scale_down: PendingScaleDown | None = field(
        default=None, metadata=_m(name="pendingScaleDown", doc="Delayed scale-down.")
    )
    metrics_coverage: float = field(
        default=0.0, metadata=_m(name="metricsCoverage", doc="Seconds of metrics in the window.")
    )


@dataclass
class LastError:
    """The last problem reported."""

    reason: str = field(default="", metadata=_m(name="reason", doc="CamelCase reason."))
    message: str = field(default="", metadata=_m(name="message", doc="What went wrong and what to do."))
    time: str = field(default="", metadata=_m(name="time", format="date-time", doc="When."))


@dataclass
class TransitionStatus:
    """A coordinated stop/start in progress."""

    type: str = field(
        default="",
        metadata=_m(
            name="type",
            enum=[
                "deploy",
                "rescale",
                "upgrade",
                "restart",
                "reset",
                "suspend",
                "resume",
                "unhealthy-restart",
            ],
            doc="What is happening.",
        ),
    )
    stage: str = field(default="", metadata=_m(name="stage", enum=["Stopping", "Starting"], doc="Stage."))
    started_at: str = field(
        default="", metadata=_m(name="startedAt", format="date-time", doc="Start of the stop.")
    )
    from_replicas: int = field(default=0, metadata=_m(name="fromReplicas", doc="Replicas before."))
    to_replicas: int = field(default=0, metadata=_m(name="toReplicas", doc="Replicas after."))
    epoch_before: int = field(
        default=0, metadata=_m(name="epochBefore", doc="Committed epoch when stopping began.")
    )


@dataclass
class HealthStatus:
    """Bookkeeping of health checks and restart backoff."""

    window_start: str = field(
        default="",
        metadata=_m(name="windowStart", format="date-time", doc="Start of the restart-counting window."),
    )
    restarts_at_window_start: int = field(
        default=0,
        metadata=_m(name="restartsAtWindowStart", doc="Highest pod restart count at the window start."),
    )
    consecutive_restarts: int = field(
        default=0,
        metadata=_m(name="consecutiveRestarts", doc="Operator restarts without a healthy period between."),
    )
    last_restart: str = field(
        default="",
        metadata=_m(name="lastRestart", format="date-time", doc="Last operator-initiated restart."),
    )
    healthy_since: str = field(
        default="", metadata=_m(name="healthySince", format="date-time", doc="All pods ready since.")
    )


@dataclass
class DataflowStatus:
    """What the operator observed and did."""

    observed_generation: int = field(
        default=0, metadata=_m(name="observedGeneration", doc="Generation of the spec last reconciled.")
    )
    deployed_generation: int = field(
        default=0, metadata=_m(name="deployedGeneration", doc="Generation of the spec the pods run.")
    )
    phase: str = field(default="Pending", metadata=_m(name="phase", enum=PHASES, doc="Lifecycle phase."))
    conditions: list[Condition] = field(
        default_factory=list,
        metadata=_m(
            name="conditions",
            doc="Ready, Progressing, Degraded, SnapshotHealthy, Autoscaling.",
            extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        ),
    )
    replicas: int = field(default=0, metadata=_m(name="replicas", doc="Pods that exist."))
    ready_replicas: int = field(default=0, metadata=_m(name="readyReplicas", doc="Pods that are Ready."))
    selector: str = field(default="", metadata=_m(name="selector", doc="Label selector of the pods (scale)."))
    partitions: PartitionStatus | None = field(
        default=None, metadata=_m(name="partitions", doc="Key-group placement.")
    )
    execution: ExecutionStatus | None = field(default=None, metadata=_m(name="execution", doc="Current run."))
    snapshot: SnapshotStatus | None = field(default=None, metadata=_m(name="snapshot", doc="Last snapshot."))
    autoscaler: AutoscalerStatus | None = field(
        default=None, metadata=_m(name="autoscaler", doc="Autoscaler evaluations.")
    )
    last_error: LastError | None = field(default=None, metadata=_m(name="lastError", doc="Last problem."))
    transition: TransitionStatus | None = field(
        default=None, metadata=_m(name="transition", doc="Coordinated stop/start in progress.")
    )
    health: HealthStatus | None = field(default=None, metadata=_m(name="health", doc="Health bookkeeping."))


# ------------------------------------------------------------------ conditions


def get_condition(conds: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    """The condition of type ``ctype``, or ``None``.

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
    """A new condition list with ``ctype`` set; ``lastTransitionTime`` moves only on change.

    >>> c = set_condition([], "Degraded", "True", "InvalidSpec", "bad", 2, 0.0)
    >>> c = set_condition(c, "Degraded", "False", "AsExpected", "", 3, 60.0)
    >>> c[0]["lastTransitionTime"], c[0]["observedGeneration"]
    ('1970-01-01T00:01:00Z', 3)
    """
    old = get_condition(conds, ctype)
    changed = old is None or old.get("status") != status
    new = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": iso(now)
        if changed
        else old.get("lastTransitionTime")  # type: ignore[union-attr]
        or iso(now),
        "observedGeneration": generation,
    }
    out = [c for c in conds if c.get("type") != ctype] + [new]
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.get("type", ""), 99))


# ------------------------------------------------------------------ events


class EventDeduper:
    """Lets an identical event through at most once per ``window`` seconds (per object).

    >>> d = EventDeduper()
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=0.0)
    True
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=60.0)
    False
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=1900.0)
    True
    """

    def __init__(self, window: float = EVENT_DEDUP_SECONDS) -> None:
        self.window = window
        self._last: dict[tuple[str, str, str, str], float] = {}

    def allow(self, obj: str, etype: str, reason: str, message: str, now: float) -> bool:
        """Whether to post this event now (and remember that it was posted)."""
        key = (obj, etype, reason, message)
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        self._last[key] = now
        if len(self._last) > 10000:
            self._last = {k: t for k, t in self._last.items() if now - t < self.window}
        return True

    def forget(self, obj: str) -> None:
        """Drop what was remembered about ``obj`` (it was deleted)."""
        self._last = {k: t for k, t in self._last.items() if k[0] != obj}


# ------------------------------------------------------------------ pods


@dataclass
class PodInfo:
    """What the operator needs of a worker pod, flattened from its status.

    >>> PodInfo.from_pod({"metadata": {"name": "wc-1"}, "status": {"phase": "Running"}}).ordinal
    1
    """

    name: str
    ordinal: int
    phase: str = "Pending"
    ready: bool = False
    restarts: int = 0
    waiting_reason: str = ""
    waiting_message: str = ""
    last_exit_code: int | None = None
    last_reason: str = ""
    last_message: str = ""
    unschedulable: str = ""
    terminating: bool = False
    ip: str = ""

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> PodInfo:
        """Flatten a core/v1 Pod (as a dict, camelCase keys)."""
        meta = pod.get("metadata") or {}
        st = pod.get("status") or {}
        name = meta.get("name", "")
        tail = name.rsplit("-", 1)[-1]
        info = cls(
            name=name,
            ordinal=int(tail) if tail.isdigit() else -1,
            phase=st.get("phase") or "Pending",
            ip=st.get("podIP") or "",
            terminating=bool(meta.get("deletionTimestamp")),
        )
        for c in st.get("conditions") or []:
            if c.get("type") == "Ready":
                info.ready = c.get("status") == "True"
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                info.unschedulable = c.get("message") or c.get("reason") or "unschedulable"
        for cs in st.get("containerStatuses") or []:
            if cs.get("name") != "worker":
                continue
            info.restarts = int(cs.get("restartCount") or 0)
            waiting = (cs.get("state") or {}).get("waiting") or {}
            info.waiting_reason = waiting.get("reason") or ""
            info.waiting_message = waiting.get("message") or ""
            term = (
                (cs.get("lastState") or {}).get("terminated")
                or (cs.get("state") or {}).get("terminated")
                or {}
            )
            if term:
                info.last_exit_code = term.get("exitCode")
                info.last_reason = term.get("reason") or ""
                info.last_message = term.get("message") or ""
        return info


def _last_line(text: str) -> str:
    r"""The worker's own summary of why it stopped, from its termination message.

    The CLI ends a failed run with ``error: ...`` and one ``caused by: ...``
    line per cause it had to add (see ``headrace.run``); they are kept
    together, on one line. Other output gives its last line that looks
    like an error, or its last line.

    >>> _last_line("Traceback ...\nerror: building sink 'f.out'\n"
    ...            "caused by: ConnectionError: Redis is unreachable\n")
    "error: building sink 'f.out'; caused by: ConnectionError: Redis is unreachable"
    >>> _last_line("x\nValueError: bad\nexiting")
    'ValueError: bad'
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            causes = [ln for ln in lines[i + 1 :] if ln.startswith("caused by:")]
            return "; ".join([lines[i], *causes])
    for ln in reversed(lines):
        if "Error" in ln:
            return ln
    return lines[-1] if lines else ""


_IMAGE_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}


def diagnose_pods(pods: list[PodInfo], image: str = "") -> tuple[str, str] | None:
    """``(reason, message)`` naming the most telling pod problem, or ``None``.

    >>> p = PodInfo("wc-0", 0, waiting_reason="CrashLoopBackOff", last_exit_code=2,
    ...             last_message="error: can't import 'app.flows': No module named 'app'")
    >>> diagnose_pods([p])[0]
    'StartupError'
    """
    found: list[tuple[int, str, str]] = []
    for p in sorted(pods, key=lambda p: p.ordinal):
        if p.ready or p.terminating:
            continue
        if p.waiting_reason in _IMAGE_REASONS:
            found.append(
                (
                    0,
                    "ImagePullError",
                    f"pod {p.name} can't pull image {image!r} ({p.waiting_reason}: "
                    f"{p.waiting_message}). Check spec.image, spec.imagePullPolicy and "
                    "spec.imagePullSecrets",
                )
            )
        elif p.waiting_reason in ("CreateContainerConfigError", "CreateContainerError"):
            found.append(
                (
                    1,
                    "ConfigError",
                    f"pod {p.name}: {p.waiting_message or p.waiting_reason}. Check that "
                    "the Secrets and ConfigMaps named in spec.recovery.secretRef, "
                    "spec.flow.env and spec.flow.envFrom exist",
                )
            )
        elif p.last_exit_code == 2:
            found.append(
                (
                    2,
                    "StartupError",
                    f"pod {p.name} exited with code 2: {_last_line(p.last_message)}. "
                    "Check spec.flow.import and spec.flow.args, and that the image "
                    "contains the module",
                )
            )
        elif p.last_reason == "OOMKilled":
            found.append(
                (
                    3,
                    "OOMKilled",
                    f"pod {p.name} ran out of memory (OOMKilled). Raise "
                    "spec.resources.limits.memory or lower workersPerProcess",
                )
            )
        elif p.last_exit_code not in (None, 0) and p.restarts > 0:
            found.append(
                (
                    4,
                    "WorkerCrashed",
                    f"pod {p.name} exited with code {p.last_exit_code}: "
                    f"{_last_line(p.last_message) or p.last_reason}. Its peers restart "
                    "and resume from the last committed epoch",
                )
            )
        elif p.unschedulable:
            found.append(
                (
                    5,
                    "Unschedulable",
                    f"pod {p.name} can't be scheduled: {p.unschedulable}. Check "
                    "spec.resources, spec.nodeSelector, spec.tolerations and "
                    "spec.affinity",
                )
            )
    if not found:
        return None
    _, reason, message = min(found, key=lambda f: f[0])
    return reason, message
