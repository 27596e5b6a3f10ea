"""A Dataflow's status: the typed model the operator reads, changes and writes.

Placed in the flow: the handlers give `reconcile.plan` the status as the API
server stores it (JSON); `plan` reads it into a `DataflowStatus` once
(`DataflowStatus.read`), its steps change typed fields, and the plan's merge
patch is made once at the end (`DataflowStatus.patch`). The same dataclasses
generate the status part of the CRD (`crd`: the API server prunes undeclared
status fields), so each JSON name (``startedAt``, ...) is spelled once, here.

Fields the operator may leave out are optional: ``None`` is "absent" and
`schema.NULL` is "delete" (written as ``null`` in the merge patch). Objects
the operator always writes whole (a transition, an execution) have plain
fields.

>>> st = DataflowStatus.read({"phase": "Running", "transition": {"type": "rescale", "fromReplicas": 2}})
>>> st.phase is Phase.RUNNING, st.transition.type is Transition.RESCALE, st.transition.from_replicas
(True, True, 2)
>>> st.transition = None
>>> st.patch({"phase": "Running", "transition": {"type": "rescale"}})
{'phase': 'Running', 'transition': None}
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from headrace_operator.schema import Null, from_json, to_json
from headrace_operator.schema import meta as _m

__all__ = [
    "PHASES",
    "AutoscalerStatus",
    "Condition",
    "DataflowStatus",
    "Decision",
    "ExecutionStatus",
    "GapPhases",
    "HealthStatus",
    "LastError",
    "LastStableSpec",
    "PartitionStatus",
    "PendingScaleDown",
    "Phase",
    "PodAssignment",
    "RollbackState",
    "RollbackStatus",
    "SnapshotStatus",
    "Stage",
    "StepErrors",
    "StopReason",
    "StoppedStatus",
    "Transition",
    "TransitionRecord",
    "TransitionStatus",
    "iso",
    "iso_ms",
    "merge_patch",
    "parse_iso",
]


class Phase(StrEnum):
    """A Dataflow's lifecycle phase (``status.phase``).

    >>> Phase.SCALING == "Scaling", Phase("Running") is Phase.RUNNING
    (True, True)
    """

    PENDING = "Pending"
    DEPLOYING = "Deploying"
    RUNNING = "Running"
    UPGRADING = "Upgrading"
    SCALING = "Scaling"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"
    FINISHED = "Finished"
    FAILED = "Failed"
    DELETING = "Deleting"


PHASES = [p.value for p in Phase]


class Transition(StrEnum):
    """The kind of a coordinated stop/start (``status.transition.type``, a metric label).

    >>> Transition.UNHEALTHY_RESTART.value, f"{Transition.RESCALE} 2 -> 3"
    ('unhealthy-restart', 'rescale 2 -> 3')
    """

    DEPLOY = "deploy"
    RESCALE = "rescale"
    UPGRADE = "upgrade"
    RESTART = "restart"
    RESET = "reset"
    SUSPEND = "suspend"
    RESUME = "resume"
    UNHEALTHY_RESTART = "unhealthy-restart"
    ROLLBACK = "rollback"


class StopReason(StrEnum):
    """Why the operator keeps a Dataflow's pods stopped (``status.stopped.reason``).

    >>> StopReason("StateLost") is StopReason.STATE_LOST
    True
    """

    FINISHED = "Finished"
    RESTART_LIMIT = "RestartLimit"
    STATE_LOST = "StateLost"


class RollbackState(StrEnum):
    """Where an automatic rollback is (``status.rollback.state``).

    Watching: a spec change started and must get Ready before its deadline;
    RollingBack: it did not, the last stable spec is being started again;
    RolledBack: the last stable spec runs, until the user changes the spec.

    >>> [s.value for s in RollbackState]
    ['Watching', 'RollingBack', 'RolledBack']
    """

    WATCHING = "Watching"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"


class Stage(StrEnum):
    """Where a transition is: stopping the old pods, or starting the new ones.

    >>> [s.value for s in Stage]
    ['Stopping', 'Starting']
    """

    STOPPING = "Stopping"
    STARTING = "Starting"


def iso(t: float) -> str:
    """RFC 3339 UTC time as Kubernetes writes it.

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def iso_ms(t: float) -> str:
    """RFC 3339 UTC time with milliseconds (for the times of an output gap).

    >>> iso_ms(100.25)
    '1970-01-01T00:01:40.250Z'
    """
    ms = round(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch of an `iso` (or `iso_ms`) time (``None`` stays ``None``).

    >>> parse_iso("1970-01-01T00:01:40Z"), parse_iso("1970-01-01T00:01:40.250Z")
    (100.0, 100.25)
    """
    if not text:
        return None
    whole, _, frac = text.rstrip("Z").partition(".")
    secs = float(calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")))
    return secs + (float(f"0.{frac}") if frac else 0.0)


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

    epoch: int | None = field(default=None, metadata=_m(name="epoch", doc="Last committed epoch."))
    time: str | None = field(default=None, metadata=_m(name="time", format="date-time", doc="Commit time."))
    duration: float | None = field(
        default=None,
        metadata=_m(name="duration", doc="Mean seconds to write a worker's snapshot (from worker metrics)."),
    )
    bytes: int | None = field(
        default=None, metadata=_m(name="bytes", doc="Bytes written for the last epoch.")
    )
    worker_count: int | None = field(
        default=None, metadata=_m(name="workerCount", doc="Workers that wrote it.")
    )
    requested_nonce: int | None = field(
        default=None, metadata=_m(name="requestedNonce", doc="Last snapshotNonce seen.")
    )
    requested_at: str | None = field(
        default=None,
        metadata=_m(name="requestedAt", format="date-time", doc="When that snapshot was requested."),
    )
    completed_nonce: int | None = field(
        default=None,
        metadata=_m(name="completedNonce", doc="Last snapshotNonce answered by a committed snapshot."),
    )


@dataclass
class KeptSnapshotStatus:
    """A kept snapshot in the recovery store (``python -m headrace.recovery snapshots``)."""

    name: str = field(default="", metadata=_m(name="name", doc="Its name."))
    epoch: int = field(default=0, metadata=_m(name="epoch", doc="The committed epoch it holds."))
    time: str | None = field(
        default=None, metadata=_m(name="time", format="date-time", doc="When it was taken.")
    )
    size: int = field(default=0, metadata=_m(name="size", doc="Bytes of its keys and values."))
    flow_id: str | None = field(
        default=None, metadata=_m(name="flowId", doc="The id of the dataflow it was taken from.")
    )
    steps: list[str] | None = field(
        default=None, metadata=_m(name="steps", doc="The steps whose state it holds.")
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
    utilization: float | None = field(
        default=None, metadata=_m(name="utilization", doc="Mean busy fraction of workers.")
    )
    input_rate: float | None = field(
        default=None, metadata=_m(name="inputRate", doc="Items/s read by the sources.")
    )
    arrival_rate: float | None = field(
        default=None, metadata=_m(name="arrivalRate", doc="Items/s arriving (input rate + lag growth).")
    )
    true_processing_rate: float | None = field(
        default=None,
        metadata=_m(name="trueProcessingRate", doc="Items/s the current workers could do at 100% busy."),
    )
    needed_rate: float | None = field(
        default=None, metadata=_m(name="neededRate", doc="Capacity needed, items/s.")
    )
    lag: float | None = field(default=None, metadata=_m(name="lag", doc="Backlog of the sources, items."))
    lag_growth: float | None = field(
        default=None, metadata=_m(name="lagGrowth", doc="Backlog change, items/s.")
    )


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
    decisions: list[Decision] | None = field(
        default=None,
        metadata=_m(name="decisions", doc="The last 3 decisions that recommended a change."),
    )
    # NULL once an evaluation settled it: the merge patch deletes the stored one.
    pending_scale_down: PendingScaleDown | Null | None = field(
        default=None, metadata=_m(name="pendingScaleDown", doc="Delayed scale-down.")
    )
    metrics_coverage: float | None = field(
        default=None, metadata=_m(name="metricsCoverage", doc="Seconds of metrics in the window.")
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

    type: Transition = field(
        default=Transition.DEPLOY,
        metadata=_m(name="type", enum=[t.value for t in Transition], doc="What is happening."),
    )
    stage: Stage = field(
        default=Stage.STOPPING, metadata=_m(name="stage", enum=[s.value for s in Stage], doc="Stage.")
    )
    started_at: str = field(
        default="", metadata=_m(name="startedAt", format="date-time", doc="Start of the stop.")
    )
    from_replicas: int = field(default=0, metadata=_m(name="fromReplicas", doc="Replicas before."))
    to_replicas: int = field(default=0, metadata=_m(name="toReplicas", doc="Replicas after."))
    epoch_before: int = field(
        default=0, metadata=_m(name="epochBefore", doc="Committed epoch when stopping began.")
    )
    last_output_at: str | None = field(
        default=None,
        metadata=_m(
            name="lastOutputAt",
            format="date-time",
            doc="The old pods' last output (from the recovery store).",
        ),
    )
    pods_started_at: str | None = field(
        default=None,
        metadata=_m(name="podsStartedAt", format="date-time", doc="When the new pods were applied."),
    )
    previous_execution: str | None = field(
        default=None, metadata=_m(name="previousExecution", doc="The execution id of the old pods.")
    )


@dataclass
class GapPhases:
    """Where an output gap went, in seconds; the phases add up to ``gapSeconds``."""

    stop: float = field(
        default=0.0,
        metadata=_m(name="stop", doc="Last output to the new pods applied (barrier, exit, noticing it)."),
    )
    pods_start: float = field(
        default=0.0,
        metadata=_m(name="podsStart", doc="New pods applied to process 0's Python running headrace.run."),
    )
    imports: float = field(default=0.0, metadata=_m(name="imports", doc="Importing the flow and the engine."))
    restore: float = field(
        default=0.0,
        metadata=_m(name="restore", doc="Connecting the cluster, taking the store over, restoring state."),
    )
    first_epoch: float = field(
        default=0.0, metadata=_m(name="firstEpoch", doc="State restored to the first output.")
    )


@dataclass
class TransitionRecord:
    """A finished transition: how long the pods took to get Ready, and the output gap."""

    type: Transition = field(
        default=Transition.DEPLOY,
        metadata=_m(name="type", enum=[t.value for t in Transition], doc="What happened."),
    )
    from_replicas: int = field(default=0, metadata=_m(name="fromReplicas", doc="Replicas before."))
    to_replicas: int = field(default=0, metadata=_m(name="toReplicas", doc="Replicas after."))
    started_at: str = field(
        default="", metadata=_m(name="startedAt", format="date-time", doc="Start of the stop.")
    )
    ready_seconds: float = field(
        default=0.0, metadata=_m(name="readySeconds", doc="Start of the stop to all new pods Ready.")
    )
    gap_seconds: float | None = field(
        default=None,
        metadata=_m(
            name="gapSeconds", doc="Last output before the stop to the first output after (none: unknown)."
        ),
    )
    phases: GapPhases | None = field(
        default=None, metadata=_m(name="phases", doc="Where the gap went (with gapSeconds).")
    )
    last_output_at: str | None = field(
        default=None, metadata=_m(name="lastOutputAt", format="date-time", doc="Last output before.")
    )
    first_output_at: str | None = field(
        default=None, metadata=_m(name="firstOutputAt", format="date-time", doc="First output after.")
    )
    pods_started_at: str | None = field(
        default=None,
        metadata=_m(name="podsStartedAt", format="date-time", doc="When the new pods were applied."),
    )
    previous_execution: str | None = field(
        default=None, metadata=_m(name="previousExecution", doc="The execution id of the old pods.")
    )
    ready_at: str | None = field(
        default=None, metadata=_m(name="readyAt", format="date-time", doc="When all new pods were Ready.")
    )
    reported: bool = field(
        default=False,
        metadata=_m(name="reported", doc="Whether its completion event was posted (it waits for the gap)."),
    )


@dataclass
class StoppedStatus:
    """The pods are kept stopped (StatefulSet at 0, state kept) until the user acts."""

    reason: StopReason = field(
        default=StopReason.FINISHED,
        metadata=_m(
            name="reason",
            enum=[r.value for r in StopReason],
            doc="Finished (every input ended), RestartLimit (maxRestarts reached) or StateLost.",
        ),
    )
    message: str = field(default="", metadata=_m(name="message", doc="What happened and the way out."))
    since: str = field(default="", metadata=_m(name="since", format="date-time", doc="When it stopped."))
    generation: int = field(
        default=0, metadata=_m(name="generation", doc="Generation of the spec when it stopped.")
    )
    reset_state_nonce: int = field(
        default=0, metadata=_m(name="resetStateNonce", doc="spec.resetStateNonce when it stopped.")
    )
    epoch: int | None = field(default=None, metadata=_m(name="epoch", doc="Last committed epoch."))
    workers: int | None = field(default=None, metadata=_m(name="workers", doc="Workers of the last run."))


@dataclass
class HealthStatus:
    """Bookkeeping of health checks and restart backoff."""

    window_start: str | None = field(
        default=None,
        metadata=_m(name="windowStart", format="date-time", doc="Start of the restart-counting window."),
    )
    restarts_at_window_start: int | None = field(
        default=None,
        metadata=_m(name="restartsAtWindowStart", doc="Highest pod restart count at the window start."),
    )
    consecutive_restarts: int | None = field(
        default=None,
        metadata=_m(name="consecutiveRestarts", doc="Operator restarts without a healthy period between."),
    )
    last_restart: str | None = field(
        default=None,
        metadata=_m(name="lastRestart", format="date-time", doc="Last operator-initiated restart."),
    )
    healthy_since: str | None = field(
        default=None, metadata=_m(name="healthySince", format="date-time", doc="All pods ready since.")
    )


@dataclass
class StepErrors:
    """Items one step's user function raised on that its error policy handled."""

    step_id: str = field(default="", metadata=_m(name="stepId", doc="The step's id."))
    policy: str = field(default="", metadata=_m(name="policy", doc="Its error policy: skip or dead_letter."))
    count: int = field(default=0, metadata=_m(name="count", doc="Items, over the Dataflow's life."))
    last_seen: str | None = field(
        default=None, metadata=_m(name="lastSeen", format="date-time", doc="When the count last grew.")
    )


@dataclass
class LastStableSpec:
    """The last spec that ran with all pods Ready (with ``spec.rollback.enabled``)."""

    generation: int = field(default=0, metadata=_m(name="generation", doc="Its generation."))
    time: str | None = field(
        default=None, metadata=_m(name="time", format="date-time", doc="When all its pods were Ready.")
    )
    spec: dict[str, Any] = field(
        default_factory=dict, metadata=_m(name="spec", raw="object", doc="The spec, as the user wrote it.")
    )


@dataclass
class RollbackStatus:
    """A spec change watched for readiness, being rolled back, or rolled back."""

    state: RollbackState = field(
        default=RollbackState.WATCHING,
        metadata=_m(
            name="state", enum=[s.value for s in RollbackState], doc="Watching, RollingBack or RolledBack."
        ),
    )
    generation: int = field(
        default=0,
        metadata=_m(
            name="generation", doc="The changed spec's generation (once rolled back: the failed one)."
        ),
    )
    started_at: str = field(
        default="",
        metadata=_m(name="startedAt", format="date-time", doc="When the changed spec's pods were started."),
    )
    snapshot: str | None = field(
        default=None,
        metadata=_m(
            name="snapshot", doc="The kept snapshot of the state before the change (none: no state then)."
        ),
    )
    epoch: int | None = field(default=None, metadata=_m(name="epoch", doc="The epoch that snapshot holds."))
    stable_generation: int | None = field(
        default=None, metadata=_m(name="stableGeneration", doc="The generation rolled back to.")
    )
    reason: str | None = field(
        default=None, metadata=_m(name="reason", doc="Why it was rolled back (CamelCase).")
    )
    message: str | None = field(default=None, metadata=_m(name="message", doc="Why, and what to do."))
    time: str | None = field(
        default=None, metadata=_m(name="time", format="date-time", doc="When the rollback began.")
    )


@dataclass
class DataflowStatus:
    """What the operator observed and did."""

    observed_generation: int | None = field(
        default=None, metadata=_m(name="observedGeneration", doc="Generation of the spec last reconciled.")
    )
    deployed_generation: int | None = field(
        default=None, metadata=_m(name="deployedGeneration", doc="Generation of the spec the pods run.")
    )
    phase: Phase | None = field(default=None, metadata=_m(name="phase", enum=PHASES, doc="Lifecycle phase."))
    conditions: list[Condition] | None = field(
        default=None,
        metadata=_m(
            name="conditions",
            doc="Ready, Progressing, Degraded, SnapshotHealthy, Autoscaling, Finished.",
            extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        ),
    )
    replicas: int | None = field(default=None, metadata=_m(name="replicas", doc="Pods that exist."))
    ready_replicas: int | None = field(
        default=None, metadata=_m(name="readyReplicas", doc="Pods that are Ready.")
    )
    selector: str | None = field(
        default=None, metadata=_m(name="selector", doc="Label selector of the pods (scale).")
    )
    partitions: PartitionStatus | None = field(
        default=None, metadata=_m(name="partitions", doc="Key-group placement.")
    )
    execution: ExecutionStatus | None = field(default=None, metadata=_m(name="execution", doc="Current run."))
    snapshot: SnapshotStatus | None = field(default=None, metadata=_m(name="snapshot", doc="Last snapshot."))
    snapshots: list[KeptSnapshotStatus] | None = field(
        default=None, metadata=_m(name="snapshots", doc="Kept snapshots, oldest first.")
    )
    autoscaler: AutoscalerStatus | None = field(
        default=None, metadata=_m(name="autoscaler", doc="Autoscaler evaluations.")
    )
    last_error: LastError | None = field(default=None, metadata=_m(name="lastError", doc="Last problem."))
    transition: TransitionStatus | None = field(
        default=None, metadata=_m(name="transition", doc="Coordinated stop/start in progress.")
    )
    last_transitions: list[TransitionRecord] | None = field(
        default=None,
        metadata=_m(name="lastTransitions", doc="The last 5 finished transitions, oldest first."),
    )
    health: HealthStatus | None = field(default=None, metadata=_m(name="health", doc="Health bookkeeping."))
    stopped: StoppedStatus | None = field(
        default=None, metadata=_m(name="stopped", doc="Why the pods are kept stopped, if they are.")
    )
    last_stable_spec: LastStableSpec | None = field(
        default=None,
        metadata=_m(name="lastStableSpec", doc="The last spec that ran Ready (spec.rollback.enabled)."),
    )
    rollback: RollbackStatus | None = field(
        default=None, metadata=_m(name="rollback", doc="Automatic rollback of the last spec change.")
    )
    errors: list[StepErrors] | None = field(
        default=None,
        metadata=_m(
            name="errors",
            doc="Item errors per step and error policy (on_error skip or dead_letter), as scraped.",
        ),
    )
    error_count: int | None = field(
        default=None, metadata=_m(name="errorCount", doc="Item errors of all steps (the sum of errors).")
    )

    @classmethod
    def read(cls, data: dict[str, Any] | None) -> DataflowStatus:
        """The status as stored (JSON) in the typed model.

        >>> DataflowStatus.read({"readyReplicas": 2}).ready_replicas
        2
        """
        return from_json(cls, data or {})

    def patch(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """The JSON merge patch (RFC 7386) turning ``stored`` into this status.

        A merge patch merges objects recursively, so a field this status no
        longer has is deleted only by an explicit ``null``, at any depth:
        every field set is written, and ``null`` goes to each field ``stored``
        has and this status cleared (lists are replaced whole).

        >>> DataflowStatus(phase=Phase.SUSPENDED).patch({"phase": "Running", "transition": {}})
        {'phase': 'Suspended', 'transition': None}
        >>> st = DataflowStatus(health=HealthStatus(consecutive_restarts=2))
        >>> st.patch({"health": {"consecutiveRestarts": 1, "healthySince": "1970-01-01T00:00:00Z"}})
        {'health': {'consecutiveRestarts': 2, 'healthySince': None}}
        """
        return merge_patch(stored or {}, to_json(self))


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns ``old`` into ``new`` (``null`` deletes a key).

    >>> merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1}})
    {'a': {'b': 1, 'c': None}, 'd': None}
    """
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            out[key] = merge_patch(before, value)
        else:
            out[key] = value
    for key in old:
        if key not in new:
            out[key] = None
    return out
