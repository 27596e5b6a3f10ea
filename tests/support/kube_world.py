"""`World`: a Dataflow, its StatefulSets, pods and Redis, advanced one `plan` at a time.

`World` plays the cluster between plans: it applies a plan's actions the way
the API server and the StatefulSet controller would (apply stores the object,
scaling to 0 makes pods terminate and then vanish, Redis state can be deleted,
a status patch is a JSON merge patch) so that multi-step transitions (stop at
a barrier, then start) can be followed. A Dataflow has up to two
StatefulSets (``wc`` and ``wc-b``, `headrace_operator.manifests.other_set`):
`World.sts` is the current one, as the handlers observe it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from headrace_operator import manifests as mf
from headrace_operator.autoscaler import WindowStats
from headrace_operator.conditions import get_condition
from headrace_operator.crd import openapi_schema, undeclared
from headrace_operator.kept import doomed
from headrace_operator.observation import KeptSnapshotInfo, PodInfo
from headrace_operator.reconcile import (
    Action,
    Observation,
    Plan,
    SecretInfo,
    StoreInfo,
    apply_failed,
    plan,
)

BASE = {
    "image": "app:1",
    "flow": {"import": "app.flows:wc"},
    "replicas": 2,
    "recovery": {"url": "redis://redis:6379/0", "snapshotInterval": "5s"},
}
STATUS_SCHEMA = openapi_schema()["properties"]["status"]


def _merge(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the API server does with a JSON merge patch (RFC 7386): objects merge
    recursively, ``null`` deletes a key at any depth, anything else replaces."""
    out = copy.deepcopy(status)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict):
            out[k] = _merge({}, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def format_problems(schema: dict[str, Any], obj: Any, path: str = ".status") -> list[str]:
    """Values the API server's format and enum checks would reject (None = field removed)."""
    out: list[str] = []
    if obj is None:
        return out
    if schema.get("format") == "date-time" and not _RFC3339.match(str(obj)):
        out.append(f"{path}: {obj!r} is not a date-time")
    if "enum" in schema and obj not in schema["enum"]:
        out.append(f"{path}: {obj!r} not in {schema['enum']}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = (schema.get("properties") or {}).get(k)
            if sub is not None:
                out += format_problems(sub, v, f"{path}.{k}")
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += format_problems(schema["items"], v, f"{path}[{i}]")
    return out


class World:
    """A Dataflow, its StatefulSet, pods and Redis, advanced one plan at a time."""

    def __init__(
        self, spec: dict[str, Any] | None = None, now: float = 1_000_000.0, next_set: bool = False
    ) -> None:
        """``next_set``: the other set's name is free, so a rescale, upgrade or restart
        starts the next pods in it at once (as on a cluster). Without it the name is
        another owner's (`Observation.other_set_taken`): every transition is a
        coordinated stop, then a start in the same set."""
        self.spec = copy.deepcopy(BASE if spec is None else spec)
        self.next_set = next_set
        self.generation = 1
        self.status: dict[str, Any] = {}
        self.annotations: dict[str, str] = {}
        self.sets: dict[str, dict[str, Any]] = {}  # StatefulSets by name
        self.pods: list[PodInfo] = []
        self.store = StoreInfo(ok=True, exists=False)
        self.secret: SecretInfo | None = None
        self.metrics: WindowStats | None = None
        self.step_errors: dict[tuple[str, str], float] | None = None  # grown since the last scrape
        self.now = now
        self.events: list[tuple[str, str, str]] = []
        self.applied: list[str] = []
        self.last: Plan | None = None
        self.refuse: Callable[[Action], str | None] = lambda _a: None
        self.other_stores: dict[str, StoreInfo] = {}  # other Dataflows' stores, by key prefix
        self.restored: list[tuple[str | None, str]] = []  # (source prefix, name) of restores

    @property
    def sts(self) -> dict[str, Any] | None:
        """The current StatefulSet (`headrace_operator.manifests.current_set`)."""
        return mf.current_set(self.sets.get("wc"), self.sets.get("wc-b"))[0]

    @sts.setter
    def sts(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self.sets.clear()
        else:
            self.sets[mf.sts_name(obj)] = obj

    def edit(self, **changes: Any) -> None:
        self.spec.update(changes)
        self.generation += 1

    def observe(self) -> Observation:
        cur, old = mf.current_set(self.sets.get("wc"), self.sets.get("wc-b"))
        old_name = mf.sts_name(old) if old is not None else None
        return Observation(
            name="wc",
            namespace="prod",
            uid="uid-1",
            generation=self.generation,
            spec=copy.deepcopy(self.spec),
            now=self.now,
            status=copy.deepcopy(self.status),
            annotations=dict(self.annotations),
            sts=copy.deepcopy(cur),
            pods=copy.deepcopy([p for p in self.pods if self._set_of(p) != old_name]),
            old_sts=copy.deepcopy(old),
            old_pods=copy.deepcopy([p for p in self.pods if self._set_of(p) == old_name]),
            other_set_taken=not self.next_set,
            secret=self.secret,
            store=self.store,
            metrics=self.metrics,
            step_errors=self.step_errors,
        )

    def step(self, dt: float = 1.0) -> Plan:
        self.now += dt
        obs = self.observe()
        p = plan(obs)
        for i, a in enumerate(p.actions):
            # The API server refuses what `refuse` says (as `handlers._apply` meets it).
            message = self.refuse(a)
            if message is not None:
                failed = apply_failed(obs, a, message)
                failed.actions = p.actions[:i]
                p = failed
                break
        self.last = p
        assert undeclared(STATUS_SCHEMA, p.status, ".status") == []
        assert format_problems(STATUS_SCHEMA, p.status) == []
        for a in p.actions:
            self.apply(a)
        self.status = _merge(self.status, p.status)
        self.events += p.events
        return p

    def apply(self, a: Action) -> None:
        """Carry out one action as the API server (and Redis) would."""
        self.applied.append(a.describe())
        if a.kind == "apply" and a.obj is not None and a.obj["kind"] == "StatefulSet":
            self.sets[mf.sts_name(a.obj)] = copy.deepcopy(a.obj)
        elif a.kind == "delete" and a.obj is not None and a.obj["kind"] == "StatefulSet":
            self.sets.pop(mf.sts_name(a.obj), None)
        elif a.kind == "scale":
            name = a.target or "wc"
            assert name in self.sets, (name, list(self.sets))
            self.sets[name]["spec"]["replicas"] = a.replicas
            for pod in self.pods:
                if self._set_of(pod) == name:
                    pod.terminating = True
                    pod.ready = False
        elif a.kind == "patch_replicas":
            self.edit(replicas=a.replicas)
        elif a.kind == "delete_state":  # kept snapshots stay
            self.store = StoreInfo(ok=True, exists=False, kept=self.store.kept)
        else:
            self._kept_snapshot(a)

    def _kept_snapshot(self, a: Action) -> None:
        """Kept snapshots as headrace's ``_engine._snapshots`` keeps them (`headrace_operator.kept`)."""
        st = self.store
        if a.kind == "keep_snapshot" and a.name and st.exists and not any(k.name == a.name for k in st.kept):
            st.kept = [*st.kept, KeptSnapshotInfo(a.name, st.epoch, self.now, st.epoch_bytes)]
        elif a.kind == "prune_snapshots":
            gone = doomed(st.kept, a.keep, a.seconds, self.now)
            st.kept = [k for k in st.kept if k.name not in gone]
        elif a.kind == "restore_snapshot" and a.name:
            assert not st.exists, "a snapshot is restored into an empty store"
            source = self.other_stores.get(a.source, st) if a.source else st
            snap = next(k for k in source.kept if k.name == a.name)
            self.restored.append((a.source, a.name))
            self.store = StoreInfo(
                ok=True,
                exists=True,
                epoch=snap.epoch,
                committed_at=snap.taken_at,
                key_groups=256,
                kept=st.kept,
            )

    @staticmethod
    def _set_of(pod: PodInfo) -> str:
        return pod.set or "wc"

    def kubelet(self, ready: bool = True) -> None:
        """The StatefulSet controller and kubelet: terminating pods go, missing pods come."""
        self.pods = [p for p in self.pods if not p.terminating]
        for name, sts in self.sets.items():
            want = int(sts["spec"]["replicas"])
            have = {p.ordinal for p in self.pods if self._set_of(p) == name}
            for i in range(want):
                if i not in have:
                    ip = f"10.0.{1 if name == 'wc-b' else 0}.{i}"
                    self.pods.append(PodInfo(f"{name}-{i}", i, phase="Running", ip=ip, set=name))
                    running = [o for n, o in self.sets.items() if n != name and int(o["spec"]["replicas"])]
                    if i == 0 and running and self.store.exists:
                        # Process 0 of the next set waits for the old execution's lease.
                        self.store.standby = f"{name}-0 {self.now!r}"
        for p in self.pods:
            # Standby pods (another set still runs) are not Ready: they wait for the store.
            others = [o for n, o in self.sets.items() if n != self._set_of(p) and int(o["spec"]["replicas"])]
            p.ready = ready and not others

    def commit(self, epoch: int) -> None:
        kept, standby = self.store.kept, self.store.standby
        self.store = StoreInfo(
            standby=standby,
            ok=True,
            exists=True,
            epoch=epoch,
            committed_at=self.now,
            worker_count=len(self.pods),
            key_groups=256,
            epoch_bytes=100,
            kept=kept,
        )

    def reasons(self) -> list[str]:
        return [r for _t, r, _m in self.events]

    def cond(self, ctype: str) -> dict[str, Any]:
        c = get_condition(self.status.get("conditions", []), ctype)
        assert c is not None
        return c

    def run_until_running(self) -> None:
        for _ in range(10):
            self.step()
            self.kubelet()
            if self.status.get("phase") == "Running":
                return
        raise AssertionError(f"never Running: {self.status}")
