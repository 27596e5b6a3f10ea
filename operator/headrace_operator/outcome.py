"""What `reconcile.plan` returns (a `Plan`), and its working state while it decides (`Ctx`).

Placed in the flow: `plan` makes one `Ctx` from an `Observation`; its steps
(in `reconcile`, `transitions`, `health`, `conditions`) add actions and
events to ``ctx.p`` and change the typed status ``ctx.st``; at the end the
status becomes the plan's merge patch. The handlers then apply the actions
in order, patch the status and post the events.

>>> ctx = Ctx(Observation(name="wc", namespace="ns", uid="u", generation=1, spec={}, now=0.0))
>>> ctx.act("scale", replicas=0)
>>> ctx.phase.value, [a.describe() for a in ctx.p.actions]
('Pending', ['scale StatefulSet to 0'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headrace_operator.observation import Observation
from headrace_operator.status import DataflowStatus, Decision, Phase, Transition

__all__ = ["BUSY_REQUEUE", "STEADY_REQUEUE", "Action", "Ctx", "Plan"]

STEADY_REQUEUE = 10.0
"""Seconds until the next look when nothing is moving."""
BUSY_REQUEUE = 2.0
"""Seconds until the next look while pods stop or start."""


@dataclass
class Action:
    """One change to make: ``apply`` a manifest (``dry_run``: have the API server check it
    and store nothing), ``create_secret`` unless it exists (with a random value), ``scale``
    the StatefulSet, ``delete`` an object, ``delete_state`` / ``expire_state`` in Redis,
    ``keep_snapshot`` / ``prune_snapshots`` / ``restore_snapshot`` (kept snapshots in Redis),
    ``patch_replicas`` of the Dataflow.

    >>> Action("scale", replicas=0).describe()
    'scale StatefulSet to 0'
    """

    kind: str
    obj: dict[str, Any] | None = None
    replicas: int | None = None
    seconds: float | None = None
    name: str | None = None  # a kept snapshot's (keep_snapshot, restore_snapshot)
    source: str | None = None  # the key prefix a restored snapshot comes from (None: this one's)
    keep: int | None = None  # prune_snapshots: the newest to keep (seconds: the age)
    target: str | None = None  # scale: the StatefulSet (None: the one named as the Dataflow)

    def describe(self) -> str:
        """A short human description (for logs).

        >>> Action("patch_replicas", replicas=3).describe()
        'set spec.replicas to 3'
        """
        if self.kind == "apply" and self.obj is not None:
            reps = self.obj.get("spec", {}).get("replicas")
            extra = f" replicas={reps}" if self.obj.get("kind") == "StatefulSet" else ""
            return f"apply {self.obj['kind']} {self.obj['metadata']['name']}{extra}"
        if self.kind == "dry_run" and self.obj is not None:
            meta = self.obj["metadata"]
            name = meta.get("name") or f"{meta.get('generateName', '')}*"
            return f"check {self.obj['kind']} {name} (server-side dry run)"
        if self.kind == "scale":
            return f"scale StatefulSet {self.target + ' ' if self.target else ''}to {self.replicas}"
        if self.kind == "patch_replicas":
            return f"set spec.replicas to {self.replicas}"
        if self.kind == "delete" and self.obj is not None:
            return f"delete {self.obj['kind']} {self.obj['metadata']['name']}"
        if self.kind == "create_secret" and self.obj is not None:
            return f"create Secret {self.obj['metadata']['name']} unless it exists"
        if self.kind == "keep_snapshot":
            return f"keep snapshot {self.name}"
        if self.kind == "restore_snapshot":
            return f"restore kept snapshot {self.name}" + (f" of {self.source!r}" if self.source else "")
        return self.kind


@dataclass
class Plan:
    """What `plan` decided: actions in order, the status merge patch, events, when to look again.

    >>> Plan().requeue, Plan().done
    (10.0, True)
    """

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # a merge patch: null deletes
    events: list[tuple[str, str, str]] = field(default_factory=list)  # type, reason, message
    requeue: float = STEADY_REQUEUE
    transitions: list[tuple[Transition, float]] = field(default_factory=list)  # finished: kind, seconds
    decision: Decision | None = None  # the autoscaler's evaluation, if one ran
    done: bool = True  # plan_delete: whether the finalizer may go


class Ctx:
    """Working state of one `plan` call: the observation, the status being written, the plan.

    ``failure`` and ``degraded`` are ``(reason, message)`` for the Ready and
    Degraded conditions; ``ready`` says all pods run the desired spec;
    ``lost`` is ``(reason, message)`` when the recovery store lost state the
    status recorded as committed; ``own_spec`` says the spec to run is the
    Dataflow's own (not the deployed one kept for an invalid spec, nor the
    last stable one of a rollback).

    >>> Ctx(Observation("wc", "ns", "u", 1, {}, 0.0, status={"phase": "Running"})).phase
    <Phase.RUNNING: 'Running'>
    """

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = obs.now
        self.st = DataflowStatus.read(obs.status)
        self.p = Plan()
        self.failure: tuple[str, str] | None = None
        self.degraded: tuple[str, str] | None = None
        self.ready = False
        self.lost: tuple[str, str] | None = None
        self.own_spec = True  # the target is the Dataflow's spec (not the deployed or last stable one)
        self.phase: Phase = self.st.phase or Phase.PENDING

    def event(self, etype: str, reason: str, message: str) -> None:
        """Post an event (``Normal`` or ``Warning``) with the plan."""
        self.p.events.append((etype, reason, message))

    def act(self, kind: str, **kw: Any) -> None:
        """Add an `Action` to the plan."""
        self.p.actions.append(Action(kind, **kw))
