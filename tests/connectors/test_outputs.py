"""`headrace.outputs`: dynamic and partitioned sinks, part routing, lifecycle."""

from __future__ import annotations

import threading
import zlib
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    Sink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from headrace.testing import TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


def test_sink_kinds() -> None:
    assert issubclass(DynamicSink, Sink)
    assert issubclass(FixedPartitionedSink, Sink)
    assert op.DynamicSink is DynamicSink
    assert op.StatelessSinkPartition is StatelessSinkPartition


def test_partitions_need_write_batch() -> None:
    class NoWrite(StatelessSinkPartition[int]):
        pass

    with pytest.raises(TypeError):
        NoWrite()  # type: ignore[abstract]

    class NoSnapshot(StatefulSinkPartition[int, int]):
        def write_batch(self, values: list[int]) -> None:
            return None

    with pytest.raises(TypeError):
        NoSnapshot()  # type: ignore[abstract]


# --- DynamicSink -------------------------------------------------------------------


class _Recording(StatelessSinkPartition[Any]):
    def __init__(self, index: int, log: list[Any]) -> None:
        self.index = index
        self.log = log

    def write_batch(self, items: list[Any]) -> None:
        self.log.append((self.index, list(items)))

    def close(self) -> None:
        self.log.append(("close", self.index))


class _RecordingSink(DynamicSink[Any]):
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.builds: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Recording:
        with self._lock:
            self.builds.append((step_id, worker_index, worker_count))
        return _Recording(worker_index, self.log)


def test_dynamic_sink_gets_batches_then_close() -> None:
    sink = _RecordingSink()
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([1, 2, 3], batch_size=2)), sink)
    run_main(flow)
    assert sink.builds == [("test.out", 0, 1)]
    assert sink.log == [(0, [1, 2]), (0, [3]), ("close", 0)]


def test_dynamic_sink_without_items_is_still_built_and_closed() -> None:
    sink = _RecordingSink()
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([])), sink)
    run_main(flow)
    assert sink.builds == [("test.out", 0, 1)]
    assert sink.log == [("close", 0)]


@pytest.mark.parametrize("workers", [2, 3])
def test_dynamic_sink_is_built_on_every_worker_and_writes_locally(workers: int) -> None:
    sink = _RecordingSink()
    flow = Dataflow("test")
    seen: list[tuple[int, int]] = []
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(range(30), batch_size=5)))
    s = op.inspect_debug("where", s, lambda _s, x, _e, w: seen.append((x, w)))
    op.output("out", s, sink)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(sink.builds) == [("test.out", w, workers) for w in range(workers)]
    written = sorted((x, w) for w, items in sink.log if w != "close" for x in items)
    assert written == sorted(seen), "each item is written by the worker that holds it"
    assert sorted(i for tag, i in sink.log if tag == "close") == list(range(workers))


# --- FixedPartitionedSink ----------------------------------------------------------


class _Part(StatefulSinkPartition[Any, int]):
    def __init__(self, name: str, resume: int | None, log: list[Any]) -> None:
        self.name = name
        self.log = log
        self.count = resume or 0

    def write_batch(self, values: list[Any]) -> None:
        self.count += len(values)
        self.log.append((self.name, list(values)))

    def snapshot(self) -> int:
        return self.count

    def close(self) -> None:
        self.log.append(("close", self.name))


class _ThreeParts(FixedPartitionedSink[Any, int]):
    def __init__(self, part_fn: Any = None) -> None:
        self.log: list[Any] = []
        self.builds: list[tuple[str, str, Any]] = []
        self._part_fn = part_fn
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return ["p2", "p0", "p1"]

    def part_fn(self, item_key: str) -> int:
        if self._part_fn is None:
            return super().part_fn(item_key)
        return int(self._part_fn(item_key))

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        with self._lock:
            self.builds.append((step_id, for_part, resume_state))
        return _Part(for_part, resume_state, self.log)


ITEMS = [("0", "a"), ("1", "b"), ("2", "c"), ("4", "d"), ("5", "e")]


def _written(log: list[Any]) -> dict[str, list[Any]]:
    parts: dict[str, list[Any]] = {}
    for name, values in log:
        if name != "close":
            parts.setdefault(name, []).extend(values)
    return parts


def test_part_fn_indexes_the_sorted_part_list() -> None:
    """``part_fn(key) % len(parts)`` picks from the *sorted* parts; values lose their keys."""
    sink = _ThreeParts(part_fn=int)
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource(ITEMS, batch_size=5)), sink)
    run_main(flow)
    assert _written(sink.log) == {"p0": ["a"], "p1": ["b", "d"], "p2": ["c", "e"]}
    assert sorted(sink.builds) == [("test.out", p, None) for p in ["p0", "p1", "p2"]]
    closes = [name for tag, name in sink.log if tag == "close"]
    assert sorted(closes) == ["p0", "p1", "p2"]
    assert sink.log[-3:] == [("close", p) for p in closes], "closed after the last write"


def test_default_part_fn_is_adler32_as_in_bytewax() -> None:
    sink = _ThreeParts()
    assert sink.part_fn("some-key") == sink.part_fn("some-key")
    assert sink.part_fn("some-key") == zlib.adler32(b"some-key") == 241697579
    keys = [f"user-{i}" for i in range(40)]
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource([(k, k) for k in keys])), sink)
    run_main(flow)
    parts = sorted(sink.list_parts())
    for name, values in _written(sink.log).items():
        for k in values:
            assert parts[zlib.adler32(k.encode()) % 3] == name
    assert len(_written(sink.log)) == 3, "40 keys spread over all 3 parts"


def test_part_fn_may_return_a_large_or_negative_int() -> None:
    sink = _ThreeParts(part_fn=lambda k: int(k) * 1_000_003 - 7)
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource(ITEMS)), sink)
    run_main(flow)
    parts = sorted(sink.list_parts())
    expected: dict[str, list[Any]] = {}
    for k, v in ITEMS:
        expected.setdefault(parts[(int(k) * 1_000_003 - 7) % 3], []).append(v)
    assert _written(sink.log) == expected


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_part_lives_on_one_worker(workers: int) -> None:
    sink = _ThreeParts(part_fn=int)
    items = [(str(i), i) for i in range(60)]
    flow = Dataflow("test")
    op.output("out", op.input("inp", flow, TestingSource(items, batch_size=7)), sink)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(b[1] for b in sink.builds) == ["p0", "p1", "p2"], "one build per part"
    written = _written(sink.log)
    for i, name in enumerate(["p0", "p1", "p2"]):
        assert written[name] == [v for k, v in items if int(k) % 3 == i], "in order per part"


def test_partitioned_sink_with_one_part_gets_everything_in_order() -> None:
    class One(FixedPartitionedSink[Any, int]):
        def __init__(self) -> None:
            self.log: list[Any] = []

        def list_parts(self) -> list[str]:
            return ["only"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
            return _Part(for_part, resume_state, self.log)

    sink = One()
    flow = Dataflow("test")
    items = [(str(i % 5), i) for i in range(20)]
    op.output("out", op.input("inp", flow, TestingSource(items, batch_size=3)), sink)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _written(sink.log) == {"only": list(range(20))}
