"""The kopf handlers: observe a Dataflow, ask `reconcile.plan`, apply the plan.

Thin on purpose. Every handler (create, update, resume, the periodic timer)
runs the same `reconcile_once` under a per-object lock, reading the
Dataflow afresh from the API so that two handlers never act on a stale
status. ``kopf run -m headrace_operator.handlers --all-namespaces`` works
as well as the ``headrace-operator`` console script.

kopf's own bookkeeping goes to annotations, not ``status``: the CRD's
structural schema would prune ``status.kopf``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import kopf

from headrace_operator import _kube, config, step_errors
from headrace_operator import autoscaler as asc
from headrace_operator import manifests as mf
from headrace_operator.conditions import find_condition
from headrace_operator.config import worker_service_account
from headrace_operator.crd import GROUP, PLURAL, VERSION
from headrace_operator.events import EventDeduper
from headrace_operator.metrics import EndpointServer, WatchMonitor, forget_dataflow, metric
from headrace_operator.observation import Observation
from headrace_operator.reconcile import Plan, apply_failed, deployed_spec, plan, plan_delete
from headrace_operator.spec import DataflowSpec, SpecError, parse_spec
from headrace_operator.status import PHASES, DataflowStatus, Phase, iso

__all__ = [
    "STATE",
    "TIMER_INTERVAL",
    "events_of",
    "reconcile_once",
    "serve_endpoints",
    "worker_service_account",
]

log = logging.getLogger("headrace.operator")

TIMER_INTERVAL = config.load().timer_interval
POD_LOOK_INTERVAL = 0.3
"""A pod's change makes its Dataflow looked at now, at most once per this many seconds
(pods change in bursts while they stop and start: a transition's output gap waits on it)."""


@dataclass
class _State:
    """Process-wide operator state (one operator process)."""

    settings: config.Settings = field(default_factory=config.load)
    kube: _kube.Kube | None = None
    stores: _kube.Stores = field(default_factory=_kube.Stores)
    dedup: EventDeduper = field(default_factory=EventDeduper)
    monitor: WatchMonitor = field(default_factory=WatchMonitor)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    next_due: dict[str, float] = field(default_factory=dict)
    last_look: dict[str, float] = field(default_factory=dict)  # uid -> when reconcile_once last ran
    uids: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, name) -> uid
    samples: dict[str, collections.deque[asc.Sample]] = field(default_factory=dict)
    sample_execution: dict[str, str] = field(default_factory=dict)
    # uid -> pod -> its last scraped error counters
    error_counters: dict[str, dict[str, step_errors.Counters]] = field(default_factory=dict)
    errors_scraped: dict[str, float] = field(default_factory=dict)  # uid -> when
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    looks_due: set[str] = field(default_factory=set)  # uids with a look scheduled by a pod's change
    server: EndpointServer | None = None
    console: Any = None  # console.server.ConsoleServer, when the console is on
    # (namespace, name) -> the last events posted for it, for the console
    events: dict[tuple[str, str], collections.deque[dict[str, str]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: bool = False
    guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, uid: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(uid, threading.Lock())


STATE = _State()


# ------------------------------------------------------------------ lifecycle


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Configure kopf, connect to the API, start the metrics/liveness endpoint."""
    STATE.settings = config.load()  # after `main` exported the namespaces it chose
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="headrace.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="headrace.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "headrace.dev/finalizer"
    # kopf's handler-log events would drown the operator's own Events.
    settings.posting.level = logging.WARNING
    # Watches are re-established at least this often, so a silently dead
    # connection heals by itself.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = STATE.settings.workers
    if not log.isEnabledFor(logging.DEBUG):
        # kopf logs every timer run at INFO; the store's retries are reported in status.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("headrace.recovery").setLevel(logging.ERROR)
    STATE.kube = _kube.Kube()
    serve_endpoints()
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("headrace")
    except PackageNotFoundError:
        ver = "unknown"
    metric("headrace_operator_info").labels(ver).set(1)
    threading.Thread(target=_liveness_loop, name="headrace-liveness", daemon=True).start()
    STATE.ready = True


def serve_endpoints() -> None:
    """Serve /metrics, /healthz, /readyz and the console (once). `main` calls it before
    leader election, so that a standby replica serves them too; kopf's startup otherwise."""
    with STATE.guard:
        if STATE.server is not None:
            return
        STATE.monitor = WatchMonitor(STATE.settings.stale_after)
        port = STATE.settings.metrics_port
        if port:
            STATE.server = EndpointServer("0.0.0.0", port, STATE.monitor, lambda: STATE.ready)
    if STATE.settings.console_port and STATE.console is None:
        from headrace_operator.console.server import ConsoleServer, KubeBackend

        # A standby's console reads the API like the leader's; the events it shows
        # are the ones its own process posted (none until it leads).
        backend = KubeBackend(_need_kube(), STATE.settings.namespaces, events_of)
        STATE.console = ConsoleServer(
            "0.0.0.0", STATE.settings.console_port, backend, STATE.settings.console_prometheus_url
        )
        log.info("console on port %d", STATE.console.port)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    """Stop the endpoint and the liveness loop."""
    STATE.stop.set()
    if STATE.server is not None:
        STATE.server.close()
    if STATE.console is not None:
        STATE.console.close()


EVENTS_KEPT = 50
"""Events kept per Dataflow for the console (the operator cannot list Events: no RBAC for it)."""


def events_of(namespace: str, name: str) -> list[dict[str, str]]:
    """The events this operator process posted for a Dataflow, oldest first (for the console)."""
    with STATE.guard:
        return list(STATE.events.get((namespace, name), ()))


def _liveness_loop() -> None:
    interval = STATE.settings.liveness_interval
    namespaces = STATE.settings.namespaces
    while not STATE.stop.wait(interval):
        if STATE.kube is None:
            continue
        try:
            listed = STATE.kube.list_dataflows(namespaces)
        except Exception as exc:  # an API outage is not the operator's fault
            log.warning("liveness: can't list Dataflows: %s", exc)
            continue
        ok, reason = STATE.monitor.check(listed, time.time())
        if not ok:
            log.error("liveness: %s", reason)


@kopf.on.event(GROUP, VERSION, PLURAL)
def watched(event: Any, body: kopf.Body, **_: Any) -> None:
    """Every watch event: feeds the stale-watch check."""
    meta = body.get("metadata") or {}
    uid = meta.get("uid", "")
    if event.get("type") == "DELETED":
        STATE.monitor.forget(uid)
        STATE.dedup.forget(f"{meta.get('namespace')}/{meta.get('name')}")
        STATE.phases.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        STATE.uids.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        with STATE.guard:
            STATE.events.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        _count_phases()
        forget_dataflow(meta.get("namespace", ""), meta.get("name", ""))
    else:
        STATE.monitor.seen(uid, meta.get("resourceVersion", ""), time.time())
        STATE.uids[(meta.get("namespace", ""), meta.get("name", ""))] = uid


@kopf.on.event("", "v1", "pods", labels={mf.LABEL_DATAFLOW: kopf.PRESENT})
def pod_changed(event: Any, body: kopf.Body, **_: Any) -> None:
    """A worker pod changed (started, became Ready, exited, went): look at its Dataflow now.

    At most once per `POD_LOOK_INTERVAL`: a change sooner after the last look
    is looked at when that interval is over (not at the next timer tick,
    which may be a second later: the last old pod going is what a
    transition's new pods wait for).
    """
    meta = body.get("metadata") or {}
    ns, name = meta.get("namespace", ""), (meta.get("labels") or {}).get(mf.LABEL_DATAFLOW, "")
    uid = STATE.uids.get((ns, name))
    if not uid:
        return
    wait = STATE.last_look.get(uid, 0.0) + POD_LOOK_INTERVAL - time.time()
    if wait > 0:
        # Waited for here, in kopf's handler thread (its events are posted from its
        # context); the changes of other pods meanwhile are seen by that one look.
        with STATE.guard:
            if uid in STATE.looks_due:
                return
            STATE.looks_due.add(uid)
        try:
            time.sleep(wait)
        finally:
            with STATE.guard:
                STATE.looks_due.discard(uid)
    reconcile_once(ns, name, uid, force=True)


# ------------------------------------------------------------------ reconcile


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def changed(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """A Dataflow appeared or changed: reconcile now."""
    reconcile_once(namespace or "", name, body.get("metadata", {}).get("uid", ""), force=True)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=TIMER_INTERVAL)
def tick(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Periodic reconcile (level-based), when the last plan asked to look again."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    reconcile_once(namespace or "", name, body.get("metadata", {}).get("uid", ""), force=False)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def deleted(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Deletion: stop at a barrier, then keep, expire or delete state; then let go."""
    kube = _need_kube()
    uid = body.get("metadata", {}).get("uid", "")
    namespace = namespace or ""
    with STATE.lock(uid):
        obj = kube.dataflow(namespace, name) or dict(body)
        obs, url, prefix = _observe(kube, obj)
        p = plan_delete(obs)
        _kube.apply_actions(kube, STATE.stores, namespace, name, p.actions, url, prefix)
        _post_events(obj, p)
        try:
            kube.patch_status(namespace, name, p.status)
        except Exception as exc:  # the object may be going away
            log.debug("status patch during deletion failed: %s", exc)
    if not p.done:
        raise kopf.TemporaryError(f"waiting for {name}'s pods to stop", delay=p.requeue)
    STATE.samples.pop(uid, None)
    STATE.error_counters.pop(uid, None)
    STATE.errors_scraped.pop(uid, None)
    STATE.next_due.pop(uid, None)
    STATE.last_look.pop(uid, None)
    with STATE.guard:
        STATE.locks.pop(uid, None)


def _need_kube() -> _kube.Kube:
    if STATE.kube is None:
        STATE.kube = _kube.Kube()
    return STATE.kube


def _target_spec(obj: dict[str, Any], sts: dict[str, Any] | None) -> DataflowSpec | None:
    try:
        return parse_spec(obj.get("spec") or {})
    except SpecError:
        return deployed_spec(sts)


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether ``obj``'s controller is the object of ``uid``.

    >>> _owned_by({"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}]}}, "u1")
    True
    """
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _observe(kube: _kube.Kube, obj: dict[str, Any]) -> tuple[Observation, str | None, str]:
    meta = obj.get("metadata") or {}
    ns, name = meta["namespace"], meta["name"]
    uid = meta.get("uid", "")
    other_name = mf.other_set(name, name)
    other = kube.statefulset(ns, other_name)
    taken = other is not None and not _owned_by(other, uid)
    sts, old = mf.current_set(kube.statefulset(ns, name), None if taken else other)
    pods = kube.pods(ns, name)
    old_name = mf.sts_name(old) if old is not None else None
    obs = Observation(
        name=name,
        namespace=ns,
        uid=uid,
        generation=int(meta.get("generation") or 0),
        spec=obj.get("spec") or {},
        status=obj.get("status") or {},
        annotations=meta.get("annotations") or {},
        now=time.time(),
        sts=sts,
        pods=[p for p in pods if old_name is None or p.set != old_name],
        old_sts=old,
        old_pods=[p for p in pods if old_name is not None and p.set == old_name],
        other_set_taken=taken,
        cluster_domain=STATE.settings.cluster_domain,
        pod_monitor_supported=kube.pod_monitor_supported(),
        worker_service_account=STATE.settings.service_account_for(ns),
    )
    spec = _target_spec(obj, sts)
    url: str | None = None
    prefix = ""
    if spec is not None and spec.recovery is not None:
        owner = mf.Owner(name, ns, obs.uid)
        prefix = mf.key_prefix(spec, owner)
        value = None
        if spec.recovery.secret_ref is not None:
            ref = spec.recovery.secret_ref
            obs.secret, value = kube.secret(ns, ref.name, ref.key)
        url = _kube.recovery_url(spec, value)
        if url:
            obs.store = STATE.stores.info(url, prefix)
    return obs, url, prefix


def _metrics_window(uid: str, spec: DataflowSpec, obs: Observation) -> None:
    """Scrape the workers when the autoscaler wants data; keep the window in memory."""
    if spec.autoscaler.effective_mode(spec.scaling.mode) == "off":
        STATE.samples.pop(uid, None)
        return
    status = DataflowStatus.read(obs.status)
    execution = status.execution.id if status.execution is not None else ""
    if STATE.sample_execution.get(uid) != execution:
        # Counters of a new execution start from zero on other workers: a fresh window.
        STATE.samples[uid] = collections.deque()
        STATE.sample_execution[uid] = execution
    buf = STATE.samples.setdefault(uid, collections.deque())
    window = spec.autoscaler.metrics_window.seconds
    period = asc.sample_period(window, spec.autoscaler.evaluation_interval.seconds)
    if status.phase is Phase.RUNNING and (not buf or obs.now - buf[-1].t >= period):
        buf.append(_kube.scrape(obs.pods, spec.observability.metrics_port))
    # Keep one sample older than the window: the baseline of its rates.
    while len(buf) > 1 and buf[1].t <= obs.now - window:
        buf.popleft()
    obs.metrics = asc.aggregate(buf, window, obs.now)


def _step_errors(uid: str, spec: DataflowSpec, obs: Observation) -> None:
    """What the workers' item error counters grew by since the last scrape (`step_errors`)."""
    status = DataflowStatus.read(obs.status)
    if status.phase is not Phase.RUNNING:
        return
    buf = STATE.samples.get(uid)
    if buf and buf[-1].t >= obs.now:
        sample = buf[-1]  # the autoscaler scraped in this reconcile
    elif obs.now - STATE.errors_scraped.get(uid, 0.0) >= step_errors.PERIOD:
        sample = _kube.scrape(obs.pods, spec.observability.metrics_port)
    else:
        return
    STATE.errors_scraped[uid] = obs.now
    restarts = {p.name: p.restarts for p in obs.pods}
    now = {pod: (restarts.get(pod, 0), s.errors) for pod, s in sample.pods.items()}
    before = STATE.error_counters.get(uid)
    if before is None and status.errors:
        before = now  # a new operator: what status holds is counted up to about here
    obs.step_errors = step_errors.increase(before or {}, now)
    STATE.error_counters[uid] = step_errors.remember(before or {}, now)


def reconcile_once(namespace: str, name: str, uid: str, force: bool) -> Plan | None:
    """Observe, plan, apply, record, for one Dataflow."""
    kube = _need_kube()
    now = time.time()
    # Half a tick early is on time: a look due every tick must not wait for two.
    if not force and now < STATE.next_due.get(uid, 0.0) - STATE.settings.timer_interval / 2:
        return None
    t0 = time.monotonic()
    STATE.last_look[uid] = now
    with STATE.lock(uid):
        try:
            obj = kube.dataflow(namespace, name)
            if obj is None or obj.get("metadata", {}).get("deletionTimestamp"):
                return None
            obs, url, prefix = _observe(kube, obj)
            spec = _target_spec(obj, obs.sts)
            if spec is not None:
                _metrics_window(uid, spec, obs)
                _step_errors(uid, spec, obs)
            p = plan(obs)
            p, applied = _apply(kube, obs, p, url, prefix)
            kube.patch_status(namespace, name, p.status)
            _post_events(obj, p)
            _record(namespace, name, p, obs)
            STATE.next_due[uid] = time.time() + p.requeue
            metric("headrace_operator_reconcile_total").labels("ok" if applied else "error").inc()
            return p
        except Exception:
            metric("headrace_operator_reconcile_total").labels("error").inc()
            STATE.next_due[uid] = time.time() + 5.0
            log.exception("reconcile of %s/%s failed; retrying", namespace, name)
            return None
        finally:
            metric("headrace_operator_reconcile_duration_seconds").observe(time.monotonic() - t0)
            STATE.monitor.reconciled(time.time())
            metric("headrace_operator_last_reconcile_timestamp_seconds").set(time.time())


def _apply(kube: _kube.Kube, obs: Observation, p: Plan, url: str | None, prefix: str) -> tuple[Plan, bool]:
    """Apply the plan's actions: ``(p, True)``, or if one fails, the plan that reports it
    (`apply_failed`) and False."""
    for i, action in enumerate(p.actions):
        try:
            _kube.apply_actions(kube, STATE.stores, obs.namespace, obs.name, [action], url, prefix)
        except Exception as exc:  # reported in status and as an event, within this reconcile
            log.warning("%s/%s: %s failed: %s", obs.namespace, obs.name, action.describe(), exc)
            failed = apply_failed(obs, action, _kube.api_message(exc))
            failed.actions = p.actions[:i]
            return failed, False
    return p, True


def _post_events(obj: dict[str, Any], p: Plan) -> None:
    meta = obj.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    for etype, reason, message in p.events:
        if not STATE.dedup.allow(key, etype, reason, message, time.time()):
            continue
        metric("headrace_operator_events_total").labels(etype, reason).inc()
        with STATE.guard:
            kept = STATE.events.setdefault(
                (meta.get("namespace", ""), meta.get("name", "")), collections.deque(maxlen=EVENTS_KEPT)
            )
            kept.append({"time": iso(time.time()), "type": etype, "reason": reason, "message": message})
        log.log(logging.WARNING if etype == "Warning" else logging.INFO, "%s %s: %s", key, reason, message)
        kopf.event(typing.cast(kopf.Body, obj), type=etype, reason=reason, message=message[:1024])


def _count_phases() -> None:
    counts: dict[tuple[str, str], int] = collections.Counter(
        (ns, ph) for (ns, _n), ph in STATE.phases.items()
    )
    g = metric("headrace_operator_dataflows")
    g.clear()
    for (ns, ph), n in counts.items():
        g.labels(ns, ph).set(n)


def _record(namespace: str, name: str, p: Plan, obs: Observation) -> None:
    st = DataflowStatus.read(p.status)
    phase = (st.phase or Phase.PENDING).value
    STATE.phases[(namespace, name)] = phase
    _count_phases()
    for ph in PHASES:
        metric("headrace_operator_dataflow_phase").labels(namespace, name, ph).set(1 if ph == phase else 0)
    ready = find_condition(st.conditions or [], "Ready")
    metric("headrace_operator_dataflow_ready").labels(namespace, name).set(
        1 if ready is not None and ready.status == "True" else 0
    )
    spec_replicas = (obs.spec or {}).get("replicas")
    if isinstance(spec_replicas, int):
        metric("headrace_operator_dataflow_replicas").labels(namespace, name).set(spec_replicas)
    metric("headrace_operator_dataflow_ready_replicas").labels(namespace, name).set(st.ready_replicas or 0)
    metric("headrace_operator_dataflow_restarts").labels(namespace, name).set(
        st.execution.restarts if st.execution is not None else 0
    )
    if obs.store is not None and obs.store.ok and obs.store.exists:
        metric("headrace_operator_snapshot_epoch").labels(namespace, name).set(obs.store.epoch)
        metric("headrace_operator_snapshot_timestamp_seconds").labels(namespace, name).set(
            obs.store.committed_at
        )
        metric("headrace_operator_snapshot_bytes").labels(namespace, name).set(
            (st.snapshot.bytes if st.snapshot is not None else None) or 0
        )
    for ttype, seconds in p.transitions:
        metric("headrace_operator_transition_seconds").labels(ttype.value).observe(seconds)
    d = p.decision
    if d is not None:
        lab = (namespace, name)
        metric("headrace_operator_autoscaler_utilization").labels(*lab).set(d.utilization or 0.0)
        metric("headrace_operator_autoscaler_input_rate").labels(*lab).set(d.input_rate or 0.0)
        metric("headrace_operator_autoscaler_true_processing_rate").labels(*lab).set(
            d.true_processing_rate or 0.0
        )
        metric("headrace_operator_autoscaler_lag").labels(*lab).set(d.lag or 0.0)
        metric("headrace_operator_autoscaler_recommended_replicas").labels(*lab).set(d.recommended_replicas)
        if d.action != "none":
            metric("headrace_operator_autoscaler_decisions_total").labels(
                *lab, d.action, str(d.applied).lower()
            ).inc()
