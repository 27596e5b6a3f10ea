"""Prometheus metrics of the workers, and the catalogue that documents them.

Metrics live in prometheus-client's default registry, so metrics a user
registers show on the same endpoint. Every series a worker writes carries
its own ``worker_index`` label, so workers of one process never share (and
clobber) a series. Values are recorded per batch, never per item.

Where this sits: a leaf below both the engine (`headrace._engine`: workers,
stores and the mesh record here) and the operators (the error policies of
`headrace.operators._dead_letters` count failed items here). It imports
nothing of Headrace, so both layers use it without an import cycle (the
import-linter contracts in pyproject.toml check that).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# name -> (type, labels, help). The single source of truth: the metric
# objects below, docs/metrics.md and the dashboards' tests all read it.
CATALOGUE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "item_inp_count": (
        "counter",
        ("step_id", "worker_index"),
        "Items that entered a step (stateful steps, sinks, fused chains).",
    ),
    "item_out_count": (
        "counter",
        ("step_id", "worker_index"),
        "Items a step emitted (sources, stateful steps, fused chains).",
    ),
    "inp_part_next_batch_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a source partition's next_batch.",
    ),
    "out_part_write_batch_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a sink partition's write_batch.",
    ),
    "flat_map_batch_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a (fused) chain of stateless steps per batch; step_id is the chain's first step.",
    ),
    "stateful_batch_on_batch_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a stateful step's on_batch calls per batch.",
    ),
    "stateful_batch_on_notify_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a stateful step's timer callbacks.",
    ),
    "stateful_batch_on_eof_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time in a stateful step's on_eof calls.",
    ),
    "headrace_state_expired_keys_total": (
        "counter",
        ("step_id", "worker_index"),
        "Keys of a stateful step with a ttl dropped because they were not updated for that long.",
    ),
    "headrace_async_inflight_calls": (
        "gauge",
        ("step_id", "worker_index"),
        "Calls of a map_async step in flight (submitted, not yet emitted).",
    ),
    "headrace_async_call_duration_seconds": (
        "histogram",
        ("step_id", "worker_index"),
        "Time from the start of a map_async call to its result.",
    ),
    "headrace_async_timeouts_total": (
        "counter",
        ("step_id", "worker_index"),
        "Calls of a map_async step that ran longer than its timeout.",
    ),
    "snapshot_duration_seconds": (
        "histogram",
        ("worker_index",),
        "Time to build and write a worker's epoch snapshot.",
    ),
    "headrace_step_busy_seconds_total": (
        "counter",
        ("step_id", "worker_index"),
        "Time inside a step's user callbacks.",
    ),
    "headrace_step_errors_total": (
        "counter",
        ("step_id", "policy"),
        "Items a step's user function raised on, handled by its error policy (skip, dead_letter).",
    ),
    "headrace_worker_busy_seconds_total": (
        "counter",
        ("worker_index",),
        "Time a worker spent working (not idle, not blocked).",
    ),
    "headrace_worker_idle_seconds_total": (
        "counter",
        ("worker_index",),
        "Time a worker waited with nothing to do.",
    ),
    "headrace_worker_backpressure_seconds_total": (
        "counter",
        ("worker_index",),
        "Time a worker held back its sources because a peer had too much unprocessed input.",
    ),
    "headrace_exchange_items_total": (
        "counter",
        ("worker_index", "direction"),
        "Items sent to / received from other workers.",
    ),
    "headrace_exchange_bytes_total": (
        "counter",
        ("direction",),
        "Bytes sent to / received from other processes.",
    ),
    "headrace_epoch_current": ("gauge", ("worker_index",), "The epoch a worker is in."),
    "headrace_epoch_committed": ("gauge", (), "The last committed epoch (process 0)."),
    "headrace_epoch_duration_seconds": (
        "histogram",
        ("worker_index",),
        "Wall time of an epoch, barrier alignment included.",
    ),
    "headrace_snapshot_last_bytes": ("gauge", ("worker_index",), "Bytes of a worker's last snapshot."),
    "headrace_snapshot_bytes_total": ("counter", ("worker_index",), "Bytes of all snapshots a worker wrote."),
    "headrace_recovery_store_errors_total": (
        "counter",
        (),
        "Errors talking to the recovery store (each retry counts).",
    ),
    "headrace_recovery_store_latency_seconds": (
        "histogram",
        ("worker_index",),
        "Latency of snapshot writes to the recovery store.",
    ),
    "headrace_source_lag": (
        "gauge",
        ("step_id", "partition", "worker_index"),
        "Items (or messages) a source partition has not read yet, if the source can tell.",
    ),
    "headrace_worker_count": ("gauge", (), "Workers in the whole cluster."),
    "headrace_process_info": (
        "gauge",
        ("flow_id", "process_id", "version"),
        "Constant 1; identifies the process.",
    ),
}

_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
_LE = (*(floatToGoString(b) for b in _BUCKETS), "+Inf")


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


class WorkerCounter:
    """One series of a `WorkerFamily` counter: written by one thread, without a lock.

    ``value += amount`` by its only writer; a scrape reads ``value`` whole
    (a float attribute read is atomic), so it sees the total before or
    after an increment, never a torn value. Amounts are never negative.

    >>> c = WorkerCounter(); c.inc(3); c.inc(0.5); c.value
    3.5
    """

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0); only the series' own worker calls this."""
        self.value += amount


class WorkerHistogram:
    """One series of a `WorkerFamily` histogram: written by one thread, without a lock.

    ``counts[i]`` counts observations in bucket ``i`` alone (``<= _BUCKETS[i]``
    and above the previous bound; the last slot is ``+Inf``). A scrape copies
    ``counts`` in one step and derives the cumulative buckets and the count
    from that copy, so ``+Inf`` always equals ``_count``; ``_sum`` may miss
    an observation made during the scrape.

    >>> h = WorkerHistogram(); h.observe(0.0003); h.observe(2.0); h.observe(100.0)
    >>> h.counts[1], h.counts[9], h.counts[-1], h.sum
    (1, 1, 1, 102.0003)
    """

    __slots__ = ("counts", "created", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Record one observation (seconds, >= 0); only the series' own worker calls this."""
        self.sum += amount
        self.counts[bisect_left(_BUCKETS, amount)] += 1


class _Family(Collector):
    """A labelled metric whose series this module keeps: create on first use, remove, collect."""

    kind = "counter"

    def __init__(self, base: str, doc: str, labelnames: tuple[str, ...], registry: Any = REGISTRY) -> None:
        self.base, self.doc, self.labelnames = base, doc, labelnames
        self._series: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def _new(self) -> Any:
        raise NotImplementedError

    def _add(self, fam: Any, values: list[str], series: Any) -> None:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The series with these label values (created on first use)."""
        key = tuple(values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new()
            return series

    def remove(self, *values: str) -> None:
        """Drop a series; `KeyError` if it does not exist."""
        with self._lock:
            del self._series[tuple(values)]

    def _family(self) -> Any:
        if self.kind == "histogram":
            return HistogramMetricFamily(self.base, self.doc, labels=self.labelnames)
        return CounterMetricFamily(self.base, self.doc, labels=self.labelnames)

    def describe(self) -> list[Any]:
        """The family without samples (lets the registry check name clashes)."""
        return [self._family()]

    def collect(self) -> list[Any]:
        """The family with every series' current value."""
        fam = self._family()
        with self._lock:
            series = list(self._series.items())
        for values, s in series:
            self._add(fam, list(values), s)
        return [fam]


class LiveCounter(_Family):
    """A counter whose series can add work in progress at scrape time.

    A worker flushes its busy time between batches; while one long batch
    runs, a scrape still sees the time spent in it so far, so a saturated
    worker never looks idle to the autoscaler.

    >>> from prometheus_client import CollectorRegistry
    >>> c = LiveCounter("doc_busy_seconds", "doc", ("worker_index",), CollectorRegistry())
    >>> c.labels("0").inc(1.5); [s.value for s in c.collect()[0].samples if s.name.endswith("_total")]
    [1.5]
    """

    def _new(self) -> LiveSeries:
        return LiveSeries()

    def _add(self, fam: Any, values: list[str], series: LiveSeries) -> None:
        fam.add_metric(values, series.get(), created=series.created)


class WorkerFamily(_Family):
    """A counter or histogram whose every series has a single writer: its worker's thread.

    The per-batch series (items in and out, batch durations, busy time per
    step) are updated several times per batch; prometheus-client takes a
    lock per update (~0.8 us per ``inc``, ~1.6 us per ``observe`` here),
    these take none (~0.15 and ~0.3 us). Exposed exactly as
    prometheus-client's own (``_total``/``_bucket``/``_count``/``_sum``/``_created``).

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> reg = CollectorRegistry()
    >>> h = WorkerFamily("histogram", "doc_seconds", "doc", ("worker_index",), reg)
    >>> h.labels("0").observe(0.002)
    >>> [ln for ln in generate_latest(reg).decode().splitlines() if "0.005" in ln or "_count" in ln]
    ['doc_seconds_bucket{le="0.005",worker_index="0"} 1.0', 'doc_seconds_count{worker_index="0"} 1.0']
    """

    def __init__(
        self, kind: str, base: str, doc: str, labelnames: tuple[str, ...], registry: Any = REGISTRY
    ) -> None:
        self.kind = kind
        super().__init__(base, doc, labelnames, registry)

    def _new(self) -> WorkerCounter | WorkerHistogram:
        return WorkerHistogram() if self.kind == "histogram" else WorkerCounter()

    def _add(self, fam: Any, values: list[str], series: Any) -> None:
        if self.kind != "histogram":
            fam.add_metric(values, series.value, created=series.created)
            return
        counts = series.counts[:]
        total = series.sum
        acc = 0.0
        buckets = []
        for le, n in zip(_LE, counts, strict=True):
            acc += n
            buckets.append((le, acc))
        fam.add_metric(values, buckets, total)
        fam.add_sample(
            self.base + "_created", dict(zip(self.labelnames, values, strict=True)), series.created
        )


# Counters whose series add work in progress at scrape time.
_LIVE = {"headrace_worker_busy_seconds_total"}


def _make(name: str) -> Counter | Gauge | Histogram | LiveCounter | WorkerFamily:
    kind, labels, doc = CATALOGUE[name]
    # prometheus-client appends _total to counters itself.
    base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
    if name in _LIVE:
        return LiveCounter(base, doc, labels)
    if kind != "gauge" and "worker_index" in labels:
        # Only the labelled worker's thread writes these (see `WorkerFamily`).
        return WorkerFamily(kind, base, doc, labels)
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
