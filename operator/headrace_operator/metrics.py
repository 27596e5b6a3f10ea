"""The operator's own metrics, its HTTP endpoint, and the stale-watch liveness check.

One port (default 8080) serves ``/metrics`` (Prometheus text, the operator's
own registry), ``/healthz`` (liveness: 500 once the watch on Dataflows has
gone stale or reconciles stopped) and ``/readyz``. `OPERATOR_CATALOGUE` is
the single list of metric names: the metric objects, the docs and the
chart's dashboard tests read it.

>>> "headrace_operator_transition_seconds" in OPERATOR_CATALOGUE
True
>>> "headrace_operator_transition_seconds_bucket" in exported_names()
True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "OPERATOR_CATALOGUE",
    "REGISTRY",
    "EndpointServer",
    "WatchMonitor",
    "exported_names",
    "forget_dataflow",
    "metric",
]

log = logging.getLogger("headrace.operator")

_DF = ("namespace", "dataflow")

# name -> (type, labels, help).
OPERATOR_CATALOGUE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "headrace_operator_info": ("gauge", ("version",), "Constant 1; the operator's version."),
    "headrace_operator_leader": (
        "gauge",
        (),
        "1 while this operator replica holds the leader Lease (or runs without leader election), "
        "0 while it is a standby.",
    ),
    "headrace_operator_dataflows": ("gauge", ("namespace", "phase"), "Dataflows by namespace and phase."),
    "headrace_operator_reconcile_total": ("counter", ("result",), "Reconciles, by result (ok, error)."),
    "headrace_operator_reconcile_duration_seconds": (
        "histogram",
        (),
        "Time of one reconcile (observe, decide, apply).",
    ),
    "headrace_operator_transition_seconds": (
        "histogram",
        ("transition",),
        "Time from the start of a coordinated stop to all pods Ready again (rescale, upgrade, "
        "restart, reset, resume, deploy, unhealthy-restart), or to all pods gone (suspend).",
    ),
    "headrace_operator_events_total": (
        "counter",
        ("type", "reason"),
        "Kubernetes Events posted (after de-duplication).",
    ),
    "headrace_operator_dataflow_phase": (
        "gauge",
        (*_DF, "phase"),
        "1 for a Dataflow's current phase, 0 for the others.",
    ),
    "headrace_operator_dataflow_ready": ("gauge", _DF, "1 while the Dataflow's Ready condition is True."),
    "headrace_operator_dataflow_replicas": ("gauge", _DF, "Desired pods (spec.replicas)."),
    "headrace_operator_dataflow_ready_replicas": ("gauge", _DF, "Ready pods."),
    "headrace_operator_dataflow_restarts": ("gauge", _DF, "Container restarts in the current execution."),
    "headrace_operator_snapshot_epoch": ("gauge", _DF, "Last committed epoch in Redis."),
    "headrace_operator_snapshot_timestamp_seconds": (
        "gauge",
        _DF,
        "Unix time of the last committed snapshot.",
    ),
    "headrace_operator_snapshot_bytes": ("gauge", _DF, "Bytes written for the last epoch."),
    "headrace_operator_autoscaler_utilization": (
        "gauge",
        _DF,
        "Mean busy fraction of the workers over the metrics window.",
    ),
    "headrace_operator_autoscaler_input_rate": (
        "gauge",
        _DF,
        "Items per second read by the sources over the metrics window.",
    ),
    "headrace_operator_autoscaler_true_processing_rate": (
        "gauge",
        _DF,
        "Items per second the current workers could process at 100% busy.",
    ),
    "headrace_operator_autoscaler_lag": ("gauge", _DF, "Source backlog, items."),
    "headrace_operator_autoscaler_recommended_replicas": (
        "gauge",
        _DF,
        "Replicas the autoscaler recommends.",
    ),
    "headrace_operator_autoscaler_decisions_total": (
        "counter",
        (*_DF, "action", "applied"),
        "Autoscaler decisions recommending a change.",
    ),
    "headrace_operator_watch_stale": (
        "gauge",
        (),
        "1 when the Dataflow watch or the reconcile loop has gone stale.",
    ),
    "headrace_operator_last_reconcile_timestamp_seconds": (
        "gauge",
        (),
        "Unix time of the last finished reconcile.",
    ),
}

REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _make(name: str) -> Counter | Gauge | Histogram:
    kind, labels, doc = OPERATOR_CATALOGUE[name]
    base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
    if kind == "counter":
        return Counter(base, doc, labels, registry=REGISTRY)
    if kind == "gauge":
        return Gauge(name, doc, labels, registry=REGISTRY)
    return Histogram(name, doc, labels, buckets=_BUCKETS, registry=REGISTRY)


_M: dict[str, Any] = {name: _make(name) for name in OPERATOR_CATALOGUE}


def metric(name: str) -> Any:
    """The metric object named in `OPERATOR_CATALOGUE`.

    >>> metric("headrace_operator_reconcile_total").labels("ok").inc()
    """
    return _M[name]


def forget_dataflow(namespace: str, name: str) -> int:
    """Drop every per-Dataflow series of a deleted Dataflow; return how many.

    >>> metric("headrace_operator_dataflow_ready").labels("doc", "gone").set(1)
    >>> forget_dataflow("doc", "gone")
    1
    """
    n = 0
    for mname, (_kind, labels, _doc) in OPERATOR_CATALOGUE.items():
        if labels[:2] != _DF:
            continue
        m = _M[mname]
        # prometheus-client keeps children by label values; it has no "remove matching".
        for values in list(m._metrics):
            if values[:2] == (namespace, name):
                m.remove(*values)
                n += 1
    return n


def exported_names() -> set[str]:
    """Every series name Prometheus sees from the operator.

    >>> "headrace_operator_reconcile_total" in exported_names()
    True
    """
    out: set[str] = set()
    for name, (kind, _labels, _doc) in OPERATOR_CATALOGUE.items():
        if kind == "counter":
            base = name[: -len("_total")] if name.endswith("_total") else name
            out |= {base + "_total", base + "_created"}
        elif kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        else:
            out.add(name)
    return out


class WatchMonitor:
    """Decides whether the operator's view of Dataflows has gone stale.

    The watch feeds `seen` (each event's resourceVersion); a periodic
    independent LIST feeds `check`. An object whose listed resourceVersion
    the watch has not delivered within ``stale_after`` seconds means the
    watch is stuck; so does no finished reconcile for that long while
    Dataflows exist (handlers hung).

    >>> m = WatchMonitor(stale_after=60)
    >>> m.seen("uid1", "5", now=0.0); m.reconciled(now=0.0)
    >>> m.check({"uid1": "6"}, now=10.0)
    (True, '')
    >>> m.check({"uid1": "6"}, now=80.0)
    (False, 'the watch has not delivered resourceVersion 6 of 1 Dataflow(s) for 70s')
    >>> m.seen("uid1", "6", now=81.0); m.reconciled(now=81.0)
    >>> m.check({"uid1": "6"}, now=82.0)
    (True, '')
    """

    def __init__(self, stale_after: float = 300.0) -> None:
        self.stale_after = stale_after
        self._seen: dict[str, str] = {}
        self._mismatch_since: dict[str, float] = {}
        self._last_reconcile: float | None = None
        self._lock = threading.Lock()
        self.healthy = True
        self.reason = ""

    def seen(self, uid: str, resource_version: str, now: float) -> None:
        """The watch delivered ``uid`` at ``resource_version``."""
        with self._lock:
            self._seen[uid] = resource_version
            self._mismatch_since.pop(uid, None)

    def reconciled(self, now: float) -> None:
        """A reconcile finished."""
        with self._lock:
            self._last_reconcile = now

    def forget(self, uid: str) -> None:
        """``uid`` was deleted."""
        with self._lock:
            self._seen.pop(uid, None)
            self._mismatch_since.pop(uid, None)

    def check(self, listed: dict[str, str], now: float) -> tuple[bool, str]:
        """Compare a fresh LIST (uid -> resourceVersion) with what the watch delivered."""
        with self._lock:
            stale: list[tuple[str, float]] = []
            for uid, rv in listed.items():
                if self._seen.get(uid) == rv:
                    self._mismatch_since.pop(uid, None)
                    continue
                since = self._mismatch_since.setdefault(uid, now)
                if now - since > self.stale_after:
                    stale.append((rv, now - since))
            for uid in list(self._mismatch_since):
                if uid not in listed:
                    del self._mismatch_since[uid]
            reason = ""
            if stale:
                rv, age = stale[0]
                reason = (
                    f"the watch has not delivered resourceVersion {rv} of {len(stale)} "
                    f"Dataflow(s) for {age:.0f}s"
                )
            elif (
                listed and self._last_reconcile is not None and now - self._last_reconcile > self.stale_after
            ):
                reason = f"no reconcile finished for {now - self._last_reconcile:.0f}s"
            self.healthy, self.reason = not reason, reason
            metric("headrace_operator_watch_stale").set(0 if self.healthy else 1)
            return self.healthy, reason


class EndpointServer:
    """Serves /metrics, /healthz and /readyz on ``host:port`` from a daemon thread.

    >>> import urllib.request
    >>> srv = EndpointServer("127.0.0.1", 0, WatchMonitor())
    >>> urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz").status
    200
    >>> srv.close()
    """

    def __init__(
        self, host: str, port: int, monitor: WatchMonitor, ready: Callable[[], bool] = lambda: True
    ) -> None:
        handler = _handler(monitor, ready)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="headrace-operator-http", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(monitor: WatchMonitor, ready: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                if monitor.healthy:
                    self._send(200, b"ok\n", "text/plain")
                else:
                    self._send(500, f"stale: {monitor.reason}\n".encode(), "text/plain")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"starting\n", "text/plain")
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
