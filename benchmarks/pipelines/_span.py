"""Time a dataflow from inside its own processes, for runs started by an engine's CLI.

A run started as ``python -m headrace.run ... -p 2`` or ``python -m
bytewax.run ...`` can't be timed by wrapping one call, and its wall time
includes interpreter start, imports and (for a cluster) connecting the
peers. So the source and sink here note, per process, when it first read,
last read and last wrote, and the CPU time the process had used at its
first read and at its exit; at exit each process writes one JSON file into
``$BENCH_SPAN_DIR`` (nothing when it is unset). The dataflow's *span* is the earliest first
read to the latest last write over all its processes' files.

On Headrace the file also holds the engine's own counters (exchange items
and bytes, snapshot bytes, committed epoch...), read from the same
prometheus-client registry ``/metrics`` serves: each worker's series just
before the engine removes them at the end of the run, the rest at exit.

>>> src = StridedSource(10, 2, lambda idx: list(idx))
>>> src.list_parts()
['part-0', 'part-1']
>>> part = src.build_part("inp", "part-1", None)
>>> part.next_batch()
[1, 3, 5, 7, 9]
>>> sink = SpanSink(); sink.build("out", 0, 1).write_batch(["a", "b"]); RECORD["items_written"] >= 2
True
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from _compat import (
    ENGINE,
    DynamicSink,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSinkPartition,
)

BATCH_SIZE = 1000

MakeBatch = Callable[[range], list[Any]]

RECORD: dict[str, Any] = {
    "engine": ENGINE,
    "pid": os.getpid(),
    "t_import": time.time(),
    "first_read": None,
    "last_read": None,
    "items_read": 0,
    "first_write": None,
    "last_write": None,
    "items_written": 0,
    "cpu_first_read": None,
}
_LOCK = threading.Lock()


def note_read(n: int) -> None:
    """Record that this process's source just returned ``n`` items.

    >>> before = RECORD["items_read"]; note_read(3); RECORD["items_read"] - before
    3
    """
    now = time.time()
    with _LOCK:
        if RECORD["first_read"] is None:
            RECORD["first_read"] = now
            RECORD["cpu_first_read"] = time.process_time()
        RECORD["last_read"] = now
        RECORD["items_read"] += n


def note_write(n: int) -> None:
    """Record that this process's sink just wrote ``n`` items.

    >>> note_write(2); RECORD["last_write"] >= RECORD["first_write"]
    True
    """
    # No CPU clock here: in some sandboxes a process CPU clock read is a slow
    # syscall, and sinks can see thousands of small batches.
    now = time.time()
    with _LOCK:
        if RECORD["first_write"] is None:
            RECORD["first_write"] = now
        RECORD["last_write"] = now
        RECORD["items_written"] += n


class _StridedPartition(StatefulSourcePartition):
    def __init__(self, size: int, index: int, stride: int, make: MakeBatch, pos: int) -> None:
        self._size = size
        self._index = index
        self._stride = stride
        self._make = make
        self._pos = pos

    def next_batch(self) -> list[Any]:
        pos = self._pos
        if pos >= self._size:
            raise StopIteration()
        end = min(pos + BATCH_SIZE, self._size)
        self._pos = end
        stride, index = self._stride, self._index
        batch = self._make(range(pos * stride + index, end * stride + index, stride))
        note_read(len(batch))
        return batch

    def snapshot(self) -> int:
        return self._pos


class StridedSource(FixedPartitionedSource):
    """Items ``0 .. n - 1`` dealt round-robin over ``parts`` partitions.

    Partition ``j`` produces the items with index ``i % parts == j`` in
    increasing order, ``make(indices)`` turning a ``range`` of indices into
    a batch. Dealing (not slicing) keeps every partition's items spread over
    the whole index range, so event times of all partitions advance together.

    With ``shard=(k, m)`` the source lists only the partitions ``j`` with
    ``j % m == k``: one of ``m`` independent processes reads exactly the
    partitions (the same items, in the same batches) that one process of
    an ``m``-process cluster reads, without the rest.

    >>> StridedSource(5, 2, list).build_part("inp", "part-0", None).next_batch()
    [0, 2, 4]
    """

    def __init__(self, n: int, parts: int, make: MakeBatch, shard: tuple[int, int] | None = None) -> None:
        self._n = n
        self._parts = parts
        self._make = make
        self._shard = shard

    def list_parts(self) -> list[str]:
        """``part-0 .. part-{parts - 1}``, or this shard's among them.

        >>> StridedSource(1, 3, list).list_parts()
        ['part-0', 'part-1', 'part-2']
        >>> StridedSource(1, 4, list, shard=(1, 2)).list_parts()
        ['part-1', 'part-3']
        """
        k, m = self._shard or (0, 1)
        return [f"part-{j}" for j in range(self._parts) if j % m == k]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _StridedPartition:
        """Build partition ``for_part``, resuming after ``resume_state`` of its items.

        >>> StridedSource(6, 2, list).build_part("inp", "part-0", 2).next_batch()
        [4]
        """
        j = int(for_part.rsplit("-", 1)[1])
        size = len(range(j, self._n, self._parts))
        return _StridedPartition(size, j, self._parts, self._make, resume_state or 0)


class _SpanSinkPartition(StatelessSinkPartition):
    def write_batch(self, items: list[Any]) -> None:
        note_write(len(items))


class SpanSink(DynamicSink):
    """Count and time what this process writes; keep nothing.

    >>> SpanSink().build("out", 0, 1).write_batch([1])
    """

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SpanSinkPartition:
        """This worker's partition.

        >>> type(SpanSink().build("out", 0, 1)).__name__
        '_SpanSinkPartition'
        """
        return _SpanSinkPartition()


# (metric sample name, label that splits it or None) -> how values combine
_WANTED: dict[str, tuple[str | None, str]] = {
    "headrace_exchange_items_total": ("direction", "sum"),
    "headrace_exchange_bytes_total": ("direction", "sum"),
    "headrace_snapshot_bytes_total": (None, "sum"),
    "headrace_epoch_committed": (None, "max"),
    "headrace_epoch_current": (None, "max"),
    "snapshot_duration_seconds_sum": (None, "sum"),
    "snapshot_duration_seconds_count": (None, "sum"),
    "headrace_recovery_store_latency_seconds_sum": (None, "sum"),
    "headrace_recovery_store_latency_seconds_count": (None, "sum"),
    "headrace_worker_idle_seconds_total": (None, "sum"),
    "headrace_worker_backpressure_seconds_total": (None, "sum"),
}


def _collect(worker_index: str | None = None) -> dict[str, float]:
    """The wanted samples in the registry, summed (or maxed); only one worker's if given."""
    from prometheus_client import REGISTRY

    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            wanted = _WANTED.get(sample.name)
            if wanted is None:
                continue
            if worker_index is not None and sample.labels.get("worker_index") != worker_index:
                continue
            label, how = wanted
            name = sample.name if label is None else f"{sample.name}:{sample.labels.get(label)}"
            _add(out, name, sample.value, how)
    return out


def _add(into: dict[str, float], name: str, value: float, how: str) -> None:
    if how == "max":
        into[name] = max(into.get(name, value), value)
    else:
        into[name] = into.get(name, 0.0) + value


def _merge(into: dict[str, float], other: dict[str, float]) -> None:
    for name, value in other.items():
        _add(into, name, value, _WANTED[name.split(":")[0]][1])


_FORGOTTEN: dict[str, float] = {}


def _capture_before_forget() -> None:
    # A finished Headrace run removes its workers' series from the registry
    # (`WorkerMetrics.forget`), so a read at exit would miss them: keep each
    # worker's values as it goes. Counters without a worker label (exchange
    # bytes, committed epoch) stay and are read at exit.
    if ENGINE != "headrace":
        return
    try:
        from headrace._metrics import WorkerMetrics
    except ImportError:
        return
    original = getattr(WorkerMetrics, "forget", None)
    if original is None or getattr(original, "_bench_capture", False):
        return

    def forget(self: Any) -> None:
        with _LOCK:
            _merge(_FORGOTTEN, _collect(self.wi))
        original(self)

    forget._bench_capture = True  # type: ignore[attr-defined]
    WorkerMetrics.forget = forget


_capture_before_forget()


def engine_metrics() -> dict[str, float]:
    """The engine counters this benchmark reports, summed over this process's workers.

    Empty unless the engine is Headrace (Bytewax's metrics don't have these).

    >>> isinstance(engine_metrics(), dict)
    True
    """
    if ENGINE != "headrace":
        return {}
    with _LOCK:
        out = dict(_FORGOTTEN)
    _merge(out, _collect())
    return out


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def dump(directory: str) -> str:
    """Write this process's record (and engine metrics) as ``<directory>/<pid>.json``.

    >>> import tempfile
    >>> path = dump(tempfile.mkdtemp()); json.load(open(path))["engine"] == ENGINE
    True
    """
    record = dict(
        RECORD,
        t_exit=time.time(),
        cpu_exit=time.process_time(),
        peak_rss_mb=_peak_rss_mb(),
        rss_mb=_rss_mb(),
        # The main thread's CPU time: a single-worker run's worker thread (`-p 1 -w 1`).
        cpu_thread_exit=time.thread_time(),
        metrics=engine_metrics(),
    )
    path = os.path.join(directory, f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump(record, f)
    return path


def _dump_at_exit() -> None:
    directory = os.environ.get("BENCH_SPAN_DIR")
    if directory and RECORD["first_read"] is not None:
        dump(directory)


atexit.register(_dump_at_exit)
