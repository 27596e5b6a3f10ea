"""The typed `Dataflow` spec: fields, defaults, constraints, and the rules across them.

One source of truth: the dataclasses below carry every field's JSON name,
description, default and constraints; the generic engine in `schema` turns
them into the CRD's ``openAPIV3Schema`` (see `crd`) and `parse_spec` applies
the same defaults and checks in Python (the API server may be older than the
CEL rules, and the operator must never trust its input). Cross-field rules
exist twice on purpose: as CEL in the CRD (`CEL_RULES`, rejected at
``kubectl apply``) and as `validate` here (reported as a ``ValidationError``
event while the last valid spec keeps running).

Durations are parsed here, at the boundary: every duration field is a
`Duration`, the text as written with its ``seconds``. The module is over 800 lines
because it is the whole spec: each field with its documentation, which
the CRD carries.

>>> spec = parse_spec({"image": "app:1", "flow": {"import": "app.flows:wordcount"}})
>>> spec.replicas, spec.partitions, spec.upgrade_mode, spec.autoscaler.metrics_window.seconds
(1, 256, 'last-state', 900.0)
>>> spec.autoscaler.effective_mode(spec.scaling.mode)
'off'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from headrace_operator.schema import (
    DURATION_PATTERN,
    Duration,
    Problems,
    duration_seconds,
    parse,
    prune,
    to_json,
    unknown_fields,
)
from headrace_operator.schema import meta as _m

__all__ = [
    "CEL_RULES",
    "CLUSTER_PORT",
    "DURATION_PATTERN",
    "AutoscalerSpec",
    "DataflowSpec",
    "Duration",
    "KeptSnapshotsSpec",
    "RestoreFromSpec",
    "RollbackSpec",
    "SpecError",
    "duration_seconds",
    "parse_spec",
    "prune",
    "to_json",
    "unknown_fields",
    "validate",
]

Raw = dict[str, Any]
"""A Kubernetes-native structure passed through as is (``x-kubernetes-preserve-unknown-fields``)."""

# A module path, optionally ':attr' or ':factory(args)', or a file path with ':attr'.
CLUSTER_PORT = 2101
"""The port the workers of a Dataflow talk to each other on (the metrics port must differ)."""
_IMPORT_RE = re.compile(r"^[A-Za-z_./][\w./-]*(:[A-Za-z_]\w*(\(.*\))?)?$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class SpecError(ValueError):
    """A `Dataflow` spec that can't run; ``problems`` lists each ``(path, message)``.

    >>> err = SpecError([("spec.replicas", "must be >= 1")])
    >>> str(err)
    'spec.replicas: must be >= 1'
    """

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


# ------------------------------------------------------------------ spec model


@dataclass
class LocalObjectReference:
    """A reference to an object in the same namespace by name."""

    name: str = field(
        default="", metadata=_m(name="name", doc="Name of the referent.", required=True, minLength=1)
    )


@dataclass
class FlowSpec:
    """What to run: ``python -m headrace.run <import> <args...>``."""

    import_str: str = field(
        default="",
        metadata=_m(
            name="import",
            required=True,
            minLength=1,
            maxLength=1024,
            doc="Import string of the dataflow: 'pkg.mod:flow', 'pkg.mod:factory(1)', 'pkg.mod' "
            "(its 'flow' attribute) or 'path/to/file.py:flow'.",
        ),
    )
    args: list[str] = field(
        default_factory=list,
        metadata=_m(
            name="args", doc="Extra arguments for `python -m headrace.run`, after the import string."
        ),
    )
    env: list[Raw] = field(
        default_factory=list,
        metadata=_m(
            name="env", raw="array", doc="Environment variables of the worker container (core/v1 EnvVar)."
        ),
    )
    env_from: list[Raw] = field(
        default_factory=list,
        metadata=_m(
            name="envFrom", raw="array", doc="Sources of environment variables (core/v1 EnvFromSource)."
        ),
    )
    bytewax_compat: bool = field(
        default=False,
        metadata=_m(
            name="bytewaxCompat",
            doc="Run a Bytewax program unchanged: its `bytewax.*` imports are Headrace's modules "
            "(sets HEADRACE_BYTEWAX_COMPAT=1, like `python -m headrace.run --bytewax`).",
        ),
    )


@dataclass
class SecretKeyRef:
    """A key of a Secret in the Dataflow's namespace."""

    name: str = field(
        default="", metadata=_m(name="name", required=True, minLength=1, doc="Name of the Secret.")
    )
    key: str = field(
        default="url", metadata=_m(name="key", minLength=1, doc="Key in the Secret holding the value.")
    )


@dataclass
class KeptSnapshotsSpec:
    """Kept snapshots: on a schedule, and their retention (every kept snapshot: ``snapshotNonce``,
    ``upgradeMode: stateless``, before each spec change, on deletion, scheduled)."""

    keep: int | None = field(
        default=None,
        metadata=_m(
            name="keep", minimum=1, doc="Keep the N newest kept snapshots (the newest is never deleted)."
        ),
    )
    max_age: Duration | None = field(
        default=None,
        metadata=_m(
            name="maxAge", doc="Delete kept snapshots older than this (the newest is never deleted)."
        ),
    )
    schedule: Duration | None = field(
        default=None,
        metadata=_m(
            name="schedule",
            doc="Keep the committed epoch as 'scheduled-<UTC time>' this often (e.g. 1h); the "
            "last one's time is read from the store, so an operator restart does not repeat it.",
        ),
    )


SNAPSHOT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""A kept snapshot's name (as ``python -m headrace.recovery snapshot`` takes it)."""


@dataclass
class RestoreFromSpec:
    """A kept snapshot to start from: a new Dataflow, or one after ``resetStateNonce``."""

    name: str = field(
        default="",
        metadata=_m(
            name="name", required=True, pattern=SNAPSHOT_NAME_PATTERN, doc="The kept snapshot's name."
        ),
    )
    dataflow: str | None = field(
        default=None,
        metadata=_m(
            name="dataflow",
            maxLength=253,
            doc="The Dataflow in this namespace that kept it (default: this one); its steps must match.",
        ),
    )
    key_prefix: str | None = field(
        default=None,
        metadata=_m(
            name="keyPrefix",
            maxLength=253,
            doc="That Dataflow's key prefix if it set one (default '<namespace>/<dataflow>').",
        ),
    )


@dataclass
class RecoverySpec:
    """Where epoch snapshots live (Redis)."""

    url: str | None = field(
        default=None,
        metadata=_m(
            name="url",
            pattern=r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://.+",
            doc="Redis URL (redis://host:port/db, rediss://..., unix://...), or a Redis Cluster's "
            "(redis+cluster://host:port[,host:port...]/0, rediss+cluster://...: state sharded by "
            "key group over its primaries). Prefer secretRef when it holds a password.",
        ),
    )
    secret_ref: SecretKeyRef | None = field(
        default=None, metadata=_m(name="secretRef", doc="Secret key holding the Redis URL.")
    )
    key_prefix: str | None = field(
        default=None,
        metadata=_m(
            name="keyPrefix",
            maxLength=253,
            doc="Key prefix of this dataflow's state in Redis (default: '<namespace>/<name>').",
        ),
    )
    snapshot_interval: Duration = field(
        default=Duration("10s"),
        metadata=_m(
            name="snapshotInterval",
            doc="Epoch length: a snapshot is committed this often.",
        ),
    )
    backup_interval: Duration | None = field(
        default=None,
        metadata=_m(
            name="backupInterval",
            doc="How much snapshot history Redis keeps before compacting it (runtime default if unset).",
        ),
    )
    retention: Duration | None = field(
        default=None,
        metadata=_m(
            name="retention",
            doc="When the Dataflow is deleted and its state kept, let the state expire after "
            "this long (default: keep forever).",
        ),
    )
    allow_dropped_state: bool = field(
        default=False,
        metadata=_m(
            name="allowDroppedState",
            doc="Resume even when the store holds state for steps the flow no longer has, "
            "dropping it (HEADRACE_ALLOW_DROPPED_STATE; as Flink's allowNonRestoredState).",
        ),
    )
    allow_evicting_redis: bool = field(
        default=False,
        metadata=_m(
            name="allowEvictingRedis",
            doc="Accept a Redis whose maxmemory-policy may evict keys (HEADRACE_ALLOW_EVICTING_REDIS); "
            "evicted state then stops the run with LostStateError.",
        ),
    )
    snapshots: KeptSnapshotsSpec = field(
        default_factory=KeptSnapshotsSpec,
        metadata=_m(name="snapshots", doc="Kept snapshots: a schedule, and retention by count and age."),
    )


@dataclass
class DeletionSpec:
    """What happens to state when the Dataflow is deleted."""

    snapshot: bool = field(
        default=True,
        metadata=_m(
            name="snapshot",
            doc="Stop at an epoch barrier (committing a final snapshot) before deleting the pods.",
        ),
    )
    delete_state: bool = field(
        default=False,
        metadata=_m(name="deleteState", doc="Delete the dataflow's Redis state after stopping."),
    )


@dataclass
class BackoffSpec:
    """Growing delay between operator-initiated restarts of an unhealthy dataflow."""

    initial_delay: Duration = field(
        default=Duration("10s"),
        metadata=_m(name="initialDelay", doc="Delay before the first restart."),
    )
    max_delay: Duration = field(
        default=Duration("10m"), metadata=_m(name="maxDelay", doc="Upper bound of the delay.")
    )
    multiplier: float = field(
        default=2.0,
        metadata=_m(
            name="multiplier",
            minimum=1.0,
            maximum=10.0,
            doc="Factor applied to the delay after each restart.",
        ),
    )


@dataclass
class RestartPolicySpec:
    """Crash-loop handling: coordinated restarts with a growing delay."""

    backoff: BackoffSpec = field(
        default_factory=BackoffSpec,
        metadata=_m(name="backoff", doc="Delay between restarts (grows by multiplier)."),
    )
    max_restarts: int = field(
        default=0,
        metadata=_m(
            name="maxRestarts",
            minimum=0,
            doc="Restarts in a row before the phase becomes Failed and the "
            "operator stops restarting (0: never give up).",
        ),
    )
    reset_after: Duration = field(
        default=Duration("10m"),
        metadata=_m(
            name="resetAfter",
            doc="Healthy time after which the restart count goes back to 0.",
        ),
    )
    stop_timeout: Duration = field(
        default=Duration("2m"),
        metadata=_m(
            name="stopTimeout",
            doc="How long a coordinated stop may take: pods' termination grace period.",
        ),
    )


@dataclass
class HealthCheckSpec:
    """When the operator deems a running dataflow unhealthy and restarts it."""

    enabled: bool = field(default=True, metadata=_m(name="enabled", doc="Restart unhealthy dataflows."))
    ready_timeout: Duration = field(
        default=Duration("5m"),
        metadata=_m(
            name="readyTimeout",
            doc="All pods must be Ready this long after a start.",
        ),
    )
    progress_timeout: Duration = field(
        default=Duration("10m"),
        metadata=_m(
            name="progressTimeout",
            doc="With recovery, a snapshot must commit at least this often while Running.",
        ),
    )
    restart_threshold: int = field(
        default=3,
        metadata=_m(
            name="restartThreshold",
            minimum=1,
            doc="Container restarts within restartWindow that count as a crash loop.",
        ),
    )
    restart_window: Duration = field(
        default=Duration("10m"),
        metadata=_m(name="restartWindow", doc="Window for restartThreshold."),
    )


@dataclass
class RollbackSpec:
    """Automatic rollback of a spec change that does not get Ready (``status.lastStableSpec``)."""

    enabled: bool = field(
        default=False,
        metadata=_m(
            name="enabled",
            doc="Roll a spec change that is not Ready within readyTimeout back to the last spec "
            "that ran Ready, with the state kept before the change ('pre-upgrade-g<generation>').",
        ),
    )
    ready_timeout: Duration = field(
        default=Duration("5m"),
        metadata=_m(
            name="readyTimeout",
            doc="All pods of a changed spec must be Ready this long after its start, or it is rolled back.",
        ),
    )


@dataclass
class ScalingSpec:
    """Who owns spec.replicas."""

    mode: str = field(
        default="manual",
        metadata=_m(
            name="mode",
            enum=["manual", "external", "auto"],
            doc="manual: you (kubectl scale); external: an HPA or KEDA through the "
            "scale subresource; auto: the built-in autoscaler.",
        ),
    )


@dataclass
class AutoscalerSpec:
    """The built-in autoscaler (see docs/operator-internals.md for the algorithm).

    >>> AutoscalerSpec().effective_mode("auto"), AutoscalerSpec().effective_mode("manual")
    ('apply', 'off')
    """

    mode: str | None = field(
        default=None,
        metadata=_m(
            name="mode",
            enum=["off", "recommend", "apply"],
            doc="off; recommend (status and events only); apply (needs "
            "scaling.mode auto). Default: apply when scaling.mode is auto, "
            "else off.",
        ),
    )
    min_replicas: int = field(
        default=1, metadata=_m(name="minReplicas", minimum=1, doc="Lower bound of replicas.")
    )
    max_replicas: int = field(
        default=10, metadata=_m(name="maxReplicas", minimum=1, doc="Upper bound of replicas.")
    )
    target_utilization: float = field(
        default=0.7,
        metadata=_m(
            name="targetUtilization",
            minimum=0.05,
            maximum=1.0,
            doc="Busy fraction the workers should run at.",
        ),
    )
    utilization_boundary: float = field(
        default=0.3,
        metadata=_m(
            name="utilizationBoundary",
            minimum=0.0,
            maximum=1.0,
            doc="Dead band: no change while utilization is within "
            "target +- boundary and the backlog does not grow.",
        ),
    )
    metrics_window: Duration = field(
        default=Duration("15m"),
        metadata=_m(name="metricsWindow", doc="Window over which rates are averaged."),
    )
    evaluation_interval: Duration = field(
        default=Duration("30s"),
        metadata=_m(
            name="evaluationInterval",
            doc="How often metrics are scraped and a decision made.",
        ),
    )
    stabilization_window: Duration = field(
        default=Duration("5m"),
        metadata=_m(
            name="stabilizationWindow",
            doc="No decisions this long after any (re)start.",
        ),
    )
    scale_down_delay: Duration = field(
        default=Duration("1h"),
        metadata=_m(
            name="scaleDownDelay",
            doc="A scale-down must be wanted this long; requests within it merge.",
        ),
    )
    max_scale_up_factor: float = field(
        default=4.0,
        metadata=_m(
            name="maxScaleUpFactor", minimum=0.0, doc="At most current x (1 + factor) replicas per step."
        ),
    )
    max_scale_down_factor: float = field(
        default=0.6,
        metadata=_m(
            name="maxScaleDownFactor",
            minimum=0.0,
            maximum=0.99,
            doc="At most current x factor fewer replicas per step.",
        ),
    )
    catch_up_duration: Duration = field(
        default=Duration("30m"),
        metadata=_m(
            name="catchUpDuration",
            doc="Size for draining the current backlog within this long.",
        ),
    )
    align_partitions: bool = field(
        default=True,
        metadata=_m(
            name="alignPartitions", doc="Prefer replica counts whose workers divide partitions evenly."
        ),
    )

    def effective_mode(self, scaling_mode: str) -> str:
        """The mode in force: ``mode`` if set, else apply under auto scaling, else off."""
        if self.mode is not None:
            return self.mode
        return "apply" if scaling_mode == "auto" else "off"


@dataclass
class PodMonitorSpec:
    """A Prometheus Operator PodMonitor for the workers."""

    enabled: bool = field(
        default=False,
        metadata=_m(name="enabled", doc="Create a PodMonitor (needs the Prometheus Operator's CRDs)."),
    )
    labels: dict[str, str] = field(
        default_factory=dict,
        metadata=_m(name="labels", doc="Extra labels, e.g. the one your Prometheus selects."),
    )
    interval: Duration = field(default=Duration("30s"), metadata=_m(name="interval", doc="Scrape interval."))


@dataclass
class ObservabilitySpec:
    """Metrics, logs and traces of the workers."""

    metrics_port: int = field(
        default=3030,
        metadata=_m(
            name="metricsPort",
            minimum=1,
            maximum=65535,
            doc="Port of /metrics, /dataflow, /healthz and /readyz.",
        ),
    )
    pod_monitor: PodMonitorSpec = field(
        default_factory=PodMonitorSpec, metadata=_m(name="podMonitor", doc="PodMonitor settings.")
    )
    log_level: str = field(
        default="INFO",
        metadata=_m(name="logLevel", enum=["DEBUG", "INFO", "WARNING", "ERROR"], doc="Worker log level."),
    )
    log_format: str = field(
        default="json", metadata=_m(name="logFormat", enum=["json", "text"], doc="Worker log format.")
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=_m(
            name="otlpEndpoint",
            doc="OpenTelemetry collector endpoint for traces (sets OTEL_EXPORTER_OTLP_ENDPOINT).",
        ),
    )


@dataclass
class DataflowSpec:
    """The desired state of a `Dataflow`."""

    image: str = field(
        default="",
        metadata=_m(
            name="image",
            required=True,
            minLength=1,
            doc="Container image holding Python, headrace and the dataflow's code.",
        ),
    )
    image_pull_policy: str = field(
        default="IfNotPresent",
        metadata=_m(
            name="imagePullPolicy",
            enum=["Always", "IfNotPresent", "Never"],
            doc="Image pull policy of the worker container.",
        ),
    )
    image_pull_secrets: list[LocalObjectReference] = field(
        default_factory=list, metadata=_m(name="imagePullSecrets", doc="Secrets for pulling the image.")
    )
    flow: FlowSpec = field(
        default_factory=FlowSpec, metadata=_m(name="flow", required=True, doc="The dataflow to run.")
    )
    replicas: int = field(
        default=1,
        metadata=_m(
            name="replicas", minimum=1, maximum=10000, doc="Pods (processes); the scale subresource's target."
        ),
    )
    workers_per_process: int = field(
        default=1,
        metadata=_m(name="workersPerProcess", minimum=1, maximum=256, doc="Worker threads per pod."),
    )
    partitions: int = field(
        default=256,
        metadata=_m(
            name="partitions",
            minimum=1,
            maximum=65536,
            doc="Key groups: the unit of state placement and rescale. Fixed at creation.",
        ),
    )
    state: str = field(
        default="running",
        metadata=_m(
            name="state",
            enum=["running", "suspended"],
            doc="running, or suspended (stop at an epoch barrier, keep state).",
        ),
    )
    upgrade_mode: str = field(
        default="last-state",
        metadata=_m(
            name="upgradeMode",
            enum=["stateless", "snapshot", "last-state"],
            doc="stateless: start with empty state (the old state is kept as snapshot "
            "'stateless-g<generation>'); snapshot: require a fresh "
            "snapshot at the stop barrier (else fall back to last-state); "
            "last-state: resume from the last committed epoch.",
        ),
    )
    restart_nonce: int = field(
        default=0,
        metadata=_m(name="restartNonce", doc="Change to restart all pods (coordinated stop and start)."),
    )
    snapshot_nonce: int = field(
        default=0,
        metadata=_m(
            name="snapshotNonce",
            doc="Change to keep the next committed epoch as snapshot 'nonce-<value>' (status.snapshots).",
        ),
    )
    restore_from: RestoreFromSpec | None = field(
        default=None,
        metadata=_m(
            name="restoreFrom",
            doc="Start from a kept snapshot: at creation, and after each resetStateNonce.",
        ),
    )
    reset_state_nonce: int = field(
        default=0,
        metadata=_m(name="resetStateNonce", doc="Change to stop, delete the Redis state, and start fresh."),
    )
    recovery: RecoverySpec | None = field(
        default=None,
        metadata=_m(name="recovery", doc="Snapshot store. Without it state is lost on every restart."),
    )
    deletion: DeletionSpec = field(
        default_factory=DeletionSpec, metadata=_m(name="deletion", doc="Behaviour on deletion.")
    )
    restart_policy: RestartPolicySpec = field(
        default_factory=RestartPolicySpec, metadata=_m(name="restartPolicy", doc="Crash-loop handling.")
    )
    health_check: HealthCheckSpec = field(
        default_factory=HealthCheckSpec,
        metadata=_m(name="healthCheck", doc="Health checks of a running dataflow."),
    )
    rollback: RollbackSpec = field(
        default_factory=RollbackSpec,
        metadata=_m(name="rollback", doc="Automatic rollback of a spec change that does not get Ready."),
    )
    scaling: ScalingSpec = field(
        default_factory=ScalingSpec, metadata=_m(name="scaling", doc="Who owns spec.replicas.")
    )
    autoscaler: AutoscalerSpec = field(
        default_factory=AutoscalerSpec, metadata=_m(name="autoscaler", doc="Built-in autoscaler settings.")
    )
    resources: Raw = field(
        default_factory=dict,
        metadata=_m(
            name="resources", raw="object", doc="Worker container resources (core/v1 ResourceRequirements)."
        ),
    )
    pod_template: Raw = field(
        default_factory=dict,
        metadata=_m(
            name="podTemplate",
            raw="object",
            doc="Merged into the pod template: metadata.labels/annotations, "
            "spec fields, extra containers and volumes; a container named "
            "'worker' is merged into the worker container.",
        ),
    )
    node_selector: dict[str, str] = field(
        default_factory=dict, metadata=_m(name="nodeSelector", doc="Pod node selector.")
    )
    tolerations: list[Raw] = field(
        default_factory=list, metadata=_m(name="tolerations", raw="array", doc="Pod tolerations.")
    )
    affinity: Raw = field(
        default_factory=dict, metadata=_m(name="affinity", raw="object", doc="Pod affinity.")
    )
    service_account_name: str | None = field(
        default=None, metadata=_m(name="serviceAccountName", doc="Service account of the worker pods.")
    )
    observability: ObservabilitySpec = field(
        default_factory=ObservabilitySpec, metadata=_m(name="observability", doc="Metrics, logs and traces.")
    )


# CEL rules: (path of the object carrying the rule, rule, message).
CEL_RULES: list[tuple[str, str, str]] = [
    (
        "spec",
        "self.replicas * self.workersPerProcess <= self.partitions",
        "replicas x workersPerProcess must not exceed partitions (key groups): lower replicas "
        "or workersPerProcess (partitions can't change after creation)",
    ),
    (
        "spec",
        "!has(self.autoscaler) || !has(self.autoscaler.mode) || "
        "self.autoscaler.mode != 'apply' || (has(self.scaling) && self.scaling.mode == "
        "'auto')",
        "autoscaler.mode 'apply' needs scaling.mode 'auto'; use 'recommend' to only see recommendations",
    ),
    (
        "spec.partitions",
        "self == oldSelf",
        "partitions is immutable: state is placed by key group; create a new Dataflow (or reset "
        "its state) to change it",
    ),
    # has(): the API server also checks the bare default {} against this rule.
    (
        "spec.autoscaler",
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "autoscaler.minReplicas must be <= autoscaler.maxReplicas",
    ),
    (
        "spec.recovery",
        "has(self.url) != has(self.secretRef)",
        "set exactly one of recovery.url and recovery.secretRef",
    ),
    (
        "spec.observability",
        f"!has(self.metricsPort) || self.metricsPort != {CLUSTER_PORT}",
        f"observability.metricsPort may not be {CLUSTER_PORT}: the workers' cluster port",
    ),
    (
        "spec",
        "!has(self.restoreFrom) || has(self.recovery)",
        "restoreFrom needs spec.recovery: kept snapshots live in the recovery store",
    ),
]


# ------------------------------------------------------------------ parsing


def parse_spec(data: Any) -> DataflowSpec:
    """Parse and validate a Dataflow's ``spec``; raise `SpecError` listing every problem.

    >>> parse_spec({"image": "app:1", "flow": {"import": "app:flow"}, "replicas": 0})
    Traceback (most recent call last):
    ...
    headrace_operator.spec.SpecError: spec.replicas: must be >= 1; got 0
    """
    problems: Problems = []
    spec = parse(DataflowSpec, data, "spec", problems)
    if not problems:
        problems += validate(spec)
    if problems:
        raise SpecError(problems)
    return spec


def validate(spec: DataflowSpec) -> Problems:
    """Cross-field checks (the CEL rules, and what CEL can't say); ``[]`` when valid.

    >>> s = parse_spec({"image": "a", "flow": {"import": "m:f"}})
    >>> s.replicas = 300
    >>> validate(s)
    [('spec.replicas', 'replicas x workersPerProcess = 300 exceeds partitions = 256: ...')]
    """
    p: Problems = []
    if spec.replicas * spec.workers_per_process > spec.partitions:
        p.append(
            (
                "spec.replicas",
                f"replicas x workersPerProcess = {spec.replicas * spec.workers_per_process} "
                f"exceeds partitions = {spec.partitions}: every worker needs at least one "
                "key group; lower replicas or workersPerProcess",
            )
        )
    a = spec.autoscaler
    if a.min_replicas > a.max_replicas:
        p.append(
            ("spec.autoscaler.minReplicas", f"minReplicas {a.min_replicas} > maxReplicas {a.max_replicas}")
        )
    if a.mode == "apply" and spec.scaling.mode != "auto":
        p.append(
            (
                "spec.autoscaler.mode",
                f"'apply' needs scaling.mode 'auto' (it is {spec.scaling.mode!r}); use "
                "'recommend' to only see recommendations",
            )
        )
    if not _IMPORT_RE.match(spec.flow.import_str.strip()):
        p.append(
            (
                "spec.flow.import",
                f"{spec.flow.import_str!r} is not an import string: write 'pkg.module:flow' "
                "(or 'pkg.module:factory(args)', 'path/to/file.py:flow')",
            )
        )
    r = spec.recovery
    if r is not None:
        if (r.url is None) == (r.secret_ref is None):
            p.append(("spec.recovery", "set exactly one of recovery.url and recovery.secretRef"))
        if r.url is not None and r.url.startswith(("redis+cluster://", "rediss+cluster://")):
            from headrace._engine import check_location

            try:
                check_location(r.url)
            except ValueError as exc:
                p.append(("spec.recovery.url", str(exc)))
        if r.backup_interval is not None and r.backup_interval.seconds < r.snapshot_interval.seconds:
            p.append(
                (
                    "spec.recovery.backupInterval",
                    "must be at least snapshotInterval (it is a span of snapshot history)",
                )
            )
        if r.snapshot_interval.seconds <= 0:
            p.append(("spec.recovery.snapshotInterval", "must be greater than 0"))
        sched = r.snapshots.schedule
        if sched is not None and sched.seconds < 1:
            p.append(("spec.recovery.snapshots.schedule", "must be at least 1s"))
    if spec.restore_from is not None and r is None:
        p.append(("spec.restoreFrom", "needs spec.recovery: kept snapshots live in the recovery store"))
    for i, env in enumerate(spec.flow.env):
        name = env.get("name") if isinstance(env, dict) else None
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            p.append((f"spec.flow.env[{i}].name", f"{name!r} is not a valid environment variable name"))
    if spec.observability.metrics_port == CLUSTER_PORT:
        p.append(
            (
                "spec.observability.metricsPort",
                f"may not be {CLUSTER_PORT}: the workers' cluster port; choose another (default 3030)",
            )
        )
    b = spec.restart_policy.backoff
    if b.initial_delay.seconds > b.max_delay.seconds:
        p.append(("spec.restartPolicy.backoff", "initialDelay must not be longer than maxDelay"))
    if not math.isfinite(spec.autoscaler.max_scale_up_factor):
        p.append(("spec.autoscaler.maxScaleUpFactor", "must be a finite number"))
    return p
