"""Prometheus metrics of the workers, and the catalogue that documents them.

Metrics live in prometheus-client's default registry, so metrics a user
registers show on the same endpoint. Every series a worker writes carries
its own ``worker_index`` label, so workers of one process never share (and
clobber) a series. Values are recorded per batch, never per item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# name -> (type, labels, help). The single source of truth: the metric
# objects below, docs/metrics.md and the dashboards' tests all read it.
CATALOGUE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "item_inp_count": ("counter", ("step_id", "worker_index"),
                       "Items that entered a step (stateful steps, sinks, fused chains)."),
    "item_out_count": ("counter", ("step_id", "worker_index"),
                       "Items a step emitted (sources, stateful steps, fused chains)."),
    "inp_part_next_batch_duration_seconds": (
        "histogram", ("step_id", "worker_index"),
        "Time in a source partition's next_batch."),
    "out_part_write_batch_duration_seconds": (
        "histogram", ("step_id", "worker_index"), "Time in a sink partition's write_batch."),
    "flat_map_batch_duration_seconds": (
        "histogram", ("step_id", "worker_index"),
        "Time in a (fused) chain of stateless steps per batch; step_id is the chain's first step."),
    "stateful_batch_on_batch_duration_seconds": (
        "histogram", ("step_id", "worker_index"), "Time in a stateful step's on_batch calls per batch."),
    "stateful_batch_on_notify_duration_seconds": (
        "histogram", ("step_id", "worker_index"), "Time in a stateful step's timer callbacks."),
    "stateful_batch_on_eof_duration_seconds": (
        "histogram", ("step_id", "worker_index"), "Time in a stateful step's on_eof calls."),
    "snapshot_duration_seconds": (
        "histogram", ("worker_index",), "Time to build and write a worker's epoch snapshot."),
    "headrace_step_busy_seconds_total": (
        "counter", ("step_id", "worker_index"), "Time inside a step's user callbacks."),
    "headrace_worker_busy_seconds_total": (
        "counter", ("worker_index",), "Time a worker spent working (not idle, not blocked)."),
    "headrace_worker_idle_seconds_total": (
        "counter", ("worker_index",), "Time a worker waited with nothing to do."),
    "headrace_worker_backpressure_seconds_total": (
        "counter", ("worker_index",),
        "Time a worker held back its sources because a peer had too much unprocessed input."),
    "headrace_exchange_items_total": (
        "counter", ("worker_index", "direction"), "Items sent to / received from other workers."),
    "headrace_exchange_bytes_total": (
        "counter", ("direction",), "Bytes sent to / received from other processes."),
    "headrace_epoch_current": ("gauge", ("worker_index",), "The epoch a worker is in."),
    "headrace_epoch_committed": ("gauge", (), "The last committed epoch (process 0)."),
    "headrace_epoch_duration_seconds": (
        "histogram", ("worker_index",), "Wall time of an epoch, barrier alignment included."),
    "headrace_snapshot_last_bytes": ("gauge", ("worker_index",), "Bytes of a worker's last snapshot."),
    "headrace_snapshot_bytes_total": (
        "counter", ("worker_index",), "Bytes of all snapshots a worker wrote."),
    "headrace_recovery_store_errors_total": (
        "counter", (), "Errors talking to the recovery store (each retry counts)."),
    "headrace_recovery_store_latency_seconds": (
        "histogram", ("worker_index",), "Latency of snapshot writes to the recovery store."),
    "headrace_source_lag": (
        "gauge", ("step_id", "partition", "worker_index"),
        "Items (or messages) a source partition has not read yet, if the source can tell."),
    "headrace_worker_count": ("gauge", (), "Workers in the whole cluster."),
    "headrace_process_info": (
        "gauge", ("flow_id", "process_id", "version"), "Constant 1; identifies the process."),
}

_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class LiveSeries:
    """One series of a `LiveCounter`: flushed increments plus a live, unflushed part.

    >>> c = LiveSeries(); c.inc(2.0); c.pending = lambda: 0.5; c.get()
    2.5
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0.0
        self.created = time.time()
        self.pending: Callable[[], float] | None = None

    def inc(self, amount: float) -> None:
        """Add ``amount`` (flushed by the owner)."""
        with self.lock:
            self.value += amount

    def get(self) -> float:
        """The value a scrape sees now: flushed plus pending."""
        with self.lock:
            extra = self.pending() if self.pending is not None else 0.0
            return self.value + max(0.0, extra)


class LiveCounter(Collector):
    """A counter whose series can add work in progress at scrape time.

    A worker flushes its busy time between batches; while one long batch
    runs, a scrape still sees the time spent in it so far, so a saturated
    worker never looks idle to the autoscaler.

    >>> from prometheus_client import CollectorRegistry
    >>> c = LiveCounter("doc_busy_seconds", "doc", ("worker_index",), CollectorRegistry())
    >>> c.labels("0").inc(1.5); [s.value for s in c.collect()[0].samples if s.name.endswith("_total")]
    [1.5]
    """

    def __init__(self, base: str, doc: str, labelnames: tuple[str, ...], registry: Any = REGISTRY) -> None:
        self.base, self.doc, self.labelnames = base, doc, labelnames
        self._series: dict[tuple[str, ...], LiveSeries] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> LiveSeries:
        """The series with these label values (created on first use)."""
        with self._lock:
            return self._series.setdefault(tuple(values), LiveSeries())

    def remove(self, *values: str) -> None:
        """Drop a series; `KeyError` if it does not exist."""
        with self._lock:
            del self._series[tuple(values)]

    def describe(self) -> list[CounterMetricFamily]:
        """The family without samples (lets the registry check name clashes)."""
        return [CounterMetricFamily(self.base, self.doc, labels=self.labelnames)]

    def collect(self) -> list[CounterMetricFamily]:
        """The family with every series' current value."""
        fam = CounterMetricFamily(self.base, self.doc, labels=self.labelnames)
        with self._lock:
            series = list(self._series.items())
        for values, s in series:
            fam.add_metric(list(values), s.get(), created=s.created)
        return [fam]


# Counters whose series add work in progress at scrape time.
_LIVE = {"headrace_worker_busy_seconds_total"}


def _make(name: str) -> Counter | Gauge | Histogram | LiveCounter:
    kind, labels, doc = CATALOGUE[name]
    # prometheus-client appends _total to counters itself.
    base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
    if name in _LIVE:
        return LiveCounter(base, doc, labels)
    if kind == "counter":
        return Counter(base, doc, labels)
    if kind == "gauge":
        return Gauge(name, doc, labels)
    return Histogram(name, doc, labels, buckets=_BUCKETS)


M: dict[str, Any] = {name: _make(name) for name in CATALOGUE}


def exported_names() -> set[str]:
    """Every series name Prometheus sees (counters get ``_total``, histograms
    ``_bucket``/``_sum``/``_count``).

    >>> "item_inp_count_total" in exported_names()
    True
    """
    out: set[str] = set()
    for name, (kind, _labels, _doc) in CATALOGUE.items():
        if kind == "counter":
            base = name[: -len("_total")] if name.endswith("_total") else name
            out |= {base + "_total", base + "_created"}
        elif kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        else:
            out.add(name)
    return out


@dataclass
class StepMetrics:
    """Pre-bound series of one step on one worker (cheap to update)."""

    inp: Any
    out: Any
    dur: Any
    busy: Any


class WorkerMetrics:
    """The series of one worker; `step()` binds a step's series once."""

    def __init__(self, worker_index: int) -> None:
        self.wi = str(worker_index)
        wi = self.wi
        self._bound: list[tuple[str, tuple[str, ...]]] = []
        self.busy = self.bind("headrace_worker_busy_seconds_total", wi)
        self.idle = self.bind("headrace_worker_idle_seconds_total", wi)
        self.backpressure = self.bind("headrace_worker_backpressure_seconds_total", wi)
        self.x_out = self.bind("headrace_exchange_items_total", wi, "out")
        self.x_in = self.bind("headrace_exchange_items_total", wi, "in")
        self.epoch = self.bind("headrace_epoch_current", wi)
        self.epoch_dur = self.bind("headrace_epoch_duration_seconds", wi)
        self.snap_dur = self.bind("snapshot_duration_seconds", wi)
        self.snap_bytes = self.bind("headrace_snapshot_last_bytes", wi)
        self.snap_bytes_total = self.bind("headrace_snapshot_bytes_total", wi)
        self.store_latency = self.bind("headrace_recovery_store_latency_seconds", wi)

    def bind(self, name: str, *labels: str) -> Any:
        """The series of ``name`` with ``labels``, remembered for `forget`.

        >>> WorkerMetrics(7).bind("headrace_epoch_current", "7").set(3)
        """
        self._bound.append((name, labels))
        return M[name].labels(*labels)

    def forget(self) -> None:
        """Remove this worker's series: a finished run leaves the registry as it found it.

        >>> wm = WorkerMetrics(9); wm.forget()
        >>> "9" in {s.labels.get("worker_index") for m in M.values() for s in m.collect()[0].samples}
        False
        """
        for name, labels in self._bound:
            try:
                M[name].remove(*labels)
            except KeyError:
                pass  # bound twice (e.g. a step id seen by two chains)
        self._bound.clear()

    def step(self, step_id: str, duration_metric: str) -> StepMetrics:
        """Bind the series of ``step_id``, timing into ``duration_metric``.

        >>> sm = WorkerMetrics(0).step("doc.step", "flat_map_batch_duration_seconds")
        >>> sm.inp.inc(3)
        """
        wi = self.wi
        return StepMetrics(
            inp=self.bind("item_inp_count", step_id, wi),
            out=self.bind("item_out_count", step_id, wi),
            dur=self.bind(duration_metric, step_id, wi),
            busy=self.bind("headrace_step_busy_seconds_total", step_id, wi),
        )

    def lag(self, step_id: str, part: str) -> Gauge:
        """The lag gauge of one source partition.

        >>> WorkerMetrics(0).lag("doc.inp", "p0").set(5)
        """
        return self.bind("headrace_source_lag", step_id, part, self.wi)
