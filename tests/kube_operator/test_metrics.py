"""The operator's metrics catalogue, its HTTP endpoint and the stale-watch liveness check."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from headrace_operator.metrics import (
    OPERATOR_CATALOGUE,
    REGISTRY,
    EndpointServer,
    WatchMonitor,
    exported_names,
    metric,
)


def test_catalogue_and_registry_agree() -> None:
    for name, (kind, labels, doc) in OPERATOR_CATALOGUE.items():
        assert name.startswith("headrace_operator_")
        assert doc.endswith(".")
        m = metric(name)
        assert tuple(m._labelnames) == labels
        assert m._type == ("counter" if kind == "counter" else kind)
    families = {f.name for f in REGISTRY.collect()}
    for name, (kind, _l, _d) in OPERATOR_CATALOGUE.items():
        assert (name[: -len("_total")] if kind == "counter" else name) in families


def test_transition_histogram_is_named_as_the_docs_say() -> None:
    kind, labels, _ = OPERATOR_CATALOGUE["headrace_operator_transition_seconds"]
    assert (kind, labels) == ("histogram", ("transition",))
    metric("headrace_operator_transition_seconds").labels("rescale").observe(12.0)
    text = generate_latest(REGISTRY).decode()
    assert 'headrace_operator_transition_seconds_count{transition="rescale"}' in text


def test_exported_names_cover_every_series() -> None:
    metric("headrace_operator_reconcile_total").labels("ok").inc()
    metric("headrace_operator_reconcile_duration_seconds").observe(0.1)
    seen = {
        s.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode()) for s in f.samples
    }
    assert seen <= exported_names(), seen - exported_names()


@pytest.fixture
def server() -> Iterator[tuple[EndpointServer, WatchMonitor]]:
    mon = WatchMonitor(stale_after=60)
    srv = EndpointServer("127.0.0.1", 0, mon, ready=lambda: False)
    yield srv, mon
    srv.close()


def _get(srv: EndpointServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoint_serves_metrics_health_and_readiness(server: tuple[EndpointServer, WatchMonitor]) -> None:
    srv, mon = server
    code, body = _get(srv, "/metrics")
    assert code == 200 and "headrace_operator_reconcile_total" in body
    assert _get(srv, "/healthz") == (200, "ok\n")
    assert _get(srv, "/readyz")[0] == 503
    assert _get(srv, "/nope")[0] == 404
    mon.seen("u", "1", now=0)
    mon.check({"u": "2"}, now=0)
    mon.check({"u": "2"}, now=61)
    code, body = _get(srv, "/healthz")
    assert code == 500 and "resourceVersion 2" in body
    assert "headrace_operator_watch_stale 1.0" in _get(srv, "/metrics")[1]


def test_watch_monitor_tolerates_short_lags_and_deletions() -> None:
    m = WatchMonitor(stale_after=60)
    m.seen("a", "1", now=0)
    assert m.check({"a": "2", "b": "7"}, now=10) == (True, "")
    m.seen("a", "2", now=20)
    m.seen("b", "7", now=20)
    assert m.check({"a": "2"}, now=100) == (True, "")  # b was deleted
    m.forget("a")
    assert m.check({}, now=200) == (True, "")


def test_watch_monitor_flags_hung_reconciles() -> None:
    m = WatchMonitor(stale_after=60)
    m.seen("a", "1", now=0)
    m.reconciled(now=0)
    ok, reason = m.check({"a": "1"}, now=100)
    assert not ok and reason == "no reconcile finished for 100s"
    m.reconciled(now=101)
    assert m.check({"a": "1"}, now=102) == (True, "")


def test_forget_dataflow_drops_only_its_series() -> None:
    from headrace_operator.metrics import forget_dataflow

    metric("headrace_operator_dataflow_phase").labels("ns", "a", "Running").set(1)
    metric("headrace_operator_autoscaler_decisions_total").labels("ns", "a", "scale-up", "true").inc()
    metric("headrace_operator_dataflow_ready").labels("ns", "b").set(1)
    assert forget_dataflow("ns", "a") == 2
    text = generate_latest(REGISTRY).decode()
    assert 'dataflow="a"' not in text and 'dataflow="b"' in text
