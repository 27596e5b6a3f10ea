"""What `reconcile.plan` looks at: the `Observation` of one Dataflow and its parts.

Placed in the flow: the handlers gather an `Observation` (through `_kube`:
the Dataflow, its StatefulSet and pods, the recovery Secret, what Redis
says, the autoscaler's window of worker metrics, what the workers' item
error counters grew by); `plan` decides from it
alone. The Dataflow's spec and status stay the API's JSON here: `plan`
parses the spec (`spec.parse_spec`) and reads the status
(`status.DataflowStatus.read`) itself, so what it was given is what a test
can write down.

>>> obs = Observation(name="wc", namespace="ns", uid="u1", generation=1,
...                   spec={"image": "app:1", "flow": {"import": "app:flow"}}, now=0.0)
>>> obs.sts is None, obs.pods, obs.cluster_domain
(True, [], 'cluster.local')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headrace_operator.autoscaler import WindowStats

__all__ = ["FINISHED_PREFIX", "Observation", "PodInfo", "RunInfo", "SecretInfo", "StoreInfo"]

FINISHED_PREFIX = "finished:"
"""How a worker whose every input ended starts its termination message (``headrace.run``)."""


@dataclass
class KeptSnapshotInfo:
    """A kept snapshot in the store (see headrace's ``_engine._snapshots``).

    >>> KeptSnapshotInfo("nonce-1", 7, 100.0, 2048).epoch
    7
    """

    name: str
    epoch: int
    taken_at: float
    size: int
    flow_id: str = ""
    steps: tuple[str, ...] = ()


@dataclass
class RunInfo:
    """When an execution's process 0 started, imported, restored and first wrote output.

    Wall-clock seconds from the store's meta (headrace's ``_engine._marks``);
    0.0: not (yet) known.

    >>> RunInfo("e1", process=1.0).first_output
    0.0
    """

    execution: str
    process: float = 0.0
    imported: float = 0.0
    restored: float = 0.0
    first_output: float = 0.0
    previous_output: float = 0.0  # the last output committed before it started


@dataclass
class StoreInfo:
    """What Redis holds for the Dataflow (``ok`` False: unreachable, see ``error``).

    >>> StoreInfo(ok=True, exists=True, epoch=7).epoch
    7
    """

    ok: bool = True
    error: str = ""
    exists: bool = False
    epoch: int = 0
    committed_at: float = 0.0
    worker_count: int = 0
    key_groups: int = 0
    epoch_bytes: int = 0
    kept: list[KeptSnapshotInfo] = field(default_factory=list)  # oldest first
    execution_id: str = ""  # the execution that owns the store
    last_output_at: float = 0.0  # when output last came out (0.0: unknown)
    run: RunInfo | None = None  # the start of the execution that committed last
    standby: str = ""  # "<pod> <time>": the next pods' process 0 waits for the lease


@dataclass
class SecretInfo:
    """Whether the Secret named by ``spec.recovery.secretRef`` exists and has the key.

    >>> SecretInfo("redis", "url", found=True, has_key=False).has_key
    False
    """

    name: str
    key: str
    found: bool
    has_key: bool


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
    finished: list[str] = field(default_factory=list)  # "finished: ..." messages of exits 0
    set: str = ""  # the StatefulSet that owns it ("" if none)

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
            set=next(
                (
                    r.get("name", "")
                    for r in meta.get("ownerReferences") or []
                    if r.get("kind") == "StatefulSet"
                ),
                "",
            ),
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
            for state in (cs.get("state"), cs.get("lastState")):
                done = (state or {}).get("terminated") or {}
                if done.get("exitCode") == 0 and (done.get("message") or "").startswith(FINISHED_PREFIX):
                    info.finished.append(done["message"])
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


@dataclass
class Observation:
    """Everything `plan` looks at, gathered by the handlers."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]  # as stored: parsed by `plan`
    now: float
    status: dict[str, Any] = field(default_factory=dict)  # as stored: read by `plan`
    annotations: dict[str, str] = field(default_factory=dict)
    sts: dict[str, Any] | None = None  # the current set (`manifests.current_set`)
    pods: list[PodInfo] = field(default_factory=list)  # of the current set (and any without one)
    old_sts: dict[str, Any] | None = None  # the other set: stopping or stopped
    old_pods: list[PodInfo] = field(default_factory=list)  # the old set's, while they go
    other_set_taken: bool = False  # the other set's name is another owner's StatefulSet
    secret: SecretInfo | None = None
    store: StoreInfo | None = None
    metrics: WindowStats | None = None
    step_errors: dict[tuple[str, str], float] | None = None  # (step, policy) -> grown since the last scrape
    cluster_domain: str = "cluster.local"
    pod_monitor_supported: bool = True
    worker_service_account: str = ""
