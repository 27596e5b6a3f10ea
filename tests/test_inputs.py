"""`headrace.inputs`: source kinds, partitions, polling sources and batching helpers."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import (
    AbortExecution,
    DynamicSource,
    FixedPartitionedSource,
    SimplePollingSource,
    Source,
    StatefulSourcePartition,
    StatelessSourcePartition,
    batch,
    batch_async,
    batch_getter,
    batch_getter_ex,
)
from headrace.testing import TestingSink, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- batch helpers --------------------------------------------------------------


def test_batch() -> None:
    assert list(batch(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batch(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(batch([], 3)) == []
    assert list(batch("ab", 1)) == [["a"], ["b"]]


def test_batch_is_lazy() -> None:
    def endless() -> Any:
        n = 0
        while True:
            yield n
            n += 1

    it = batch(endless(), 2)
    assert next(it) == [0, 1]
    assert next(it) == [2, 3]


def test_batch_getter_ex_splits_on_the_exception() -> None:
    q: queue.Queue[int] = queue.Queue()
    for i in range(5):
        q.put(i)
    it = batch_getter_ex(q.get_nowait, 2)
    assert [next(it) for _ in range(4)] == [[0, 1], [2, 3], [4], []]
    q.put(9)
    assert next(it) == [9]


def test_batch_getter_ex_custom_exception() -> None:
    vals = iter([1, 2, 3])

    def get() -> int:
        try:
            return next(vals)
        except StopIteration:
            raise LookupError() from None

    it = batch_getter_ex(get, 10, LookupError)
    assert next(it) == [1, 2, 3]
    assert next(it) == []


def test_batch_getter_yields_on_the_marker() -> None:
    vals = iter([1, 2, None, 3, 4, 5, None, None])
    it = batch_getter(lambda: next(vals), 2)
    assert [next(it) for _ in range(5)] == [[1, 2], [], [3, 4], [5], []]


def test_batch_getter_custom_marker() -> None:
    vals = iter(["a", "", "b", "STOP", "c", "STOP"])
    it = batch_getter(lambda: next(vals), 10, yield_on="STOP")
    assert next(it) == ["a", "", "b"]
    assert next(it) == ["c"]


async def _agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def test_batch_async_by_size() -> None:
    assert list(batch_async(_agen(5), timedelta(seconds=5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batch_async(_agen(0), timedelta(seconds=5), 2)) == []


def test_batch_async_yields_empty_batches_while_waiting() -> None:
    async def slow() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.5)
        yield 2

    batches = list(batch_async(slow(), timedelta(milliseconds=20), 5))
    assert [x for b in batches for x in b] == [1, 2]
    assert batches[0] == [1]
    assert batches[-1] == [2]
    assert [] in batches, "a timeout with nothing ready gives an empty batch"


def test_batch_async_on_a_given_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert list(batch_async(_agen(3), timedelta(seconds=1), 5, loop=loop)) == [[0, 1, 2]]
        assert not loop.is_closed(), "a caller's loop is left open"
    finally:
        loop.close()


# --- class hierarchy ---------------------------------------------------------------


def test_source_kinds() -> None:
    assert issubclass(FixedPartitionedSource, Source)
    assert issubclass(DynamicSource, Source)
    assert issubclass(SimplePollingSource, FixedPartitionedSource)
    assert issubclass(AbortExecution, RuntimeError)


def test_partitions_need_next_batch() -> None:
    class NoBatch(StatelessSourcePartition[int]):
        pass

    with pytest.raises(TypeError):
        NoBatch()  # type: ignore[abstract]

    class NoSnapshot(StatefulSourcePartition[int, int]):
        def next_batch(self) -> list[int]:
            return []

    with pytest.raises(TypeError):
        NoSnapshot()  # type: ignore[abstract]


# --- FixedPartitionedSource ---------------------------------------------------------


class _Part(StatefulSourcePartition[tuple[str, int], int]):
    def __init__(self, name: str, length: int, log: list[Any]) -> None:
        self.name = name
        self.length = length
        self.pos = 0
        self.log = log

    def next_batch(self) -> Any:
        if self.pos >= self.length:
            raise StopIteration()
        self.pos += 1
        # Any iterable is accepted, not only lists.
        return ((self.name, self.pos),)

    def snapshot(self) -> int:
        return self.pos

    def close(self) -> None:
        self.log.append(("close", self.name))


class _Parts(FixedPartitionedSource[tuple[str, int], int]):
    def __init__(self, lengths: dict[str, int]) -> None:
        self.lengths = lengths
        self.log: list[Any] = []
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return list(self.lengths)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        with self._lock:
            self.log.append(("build", step_id, for_part, resume_state))
        return _Part(for_part, self.lengths[for_part], self.log)


def test_fixed_source_builds_each_part_and_closes_it() -> None:
    src = _Parts({"c": 2, "a": 1, "b": 0})
    flow = Dataflow("test")
    out: list[Any] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert sorted(out) == [("a", 1), ("c", 1), ("c", 2)]
    builds = [e for e in src.log if e[0] == "build"]
    assert builds == [("build", "test.inp", p, None) for p in ["a", "b", "c"]], "sorted parts"
    assert sorted(e for e in src.log if e[0] == "close") == [("close", p) for p in "abc"]


def test_fixed_source_keeps_each_partition_in_order() -> None:
    src = _Parts({"x": 30, "y": 20})
    flow = Dataflow("test")
    out: list[Any] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    for name, n in src.lengths.items():
        assert [i for p, i in out if p == name] == list(range(1, n + 1))


@pytest.mark.parametrize("workers", [2, 3])
def test_fixed_source_parts_are_assigned_by_index(workers: int) -> None:
    """The sorted part list is dealt round-robin: part i goes to worker i % workers."""
    src = _Parts({name: 2 for name in "edcba"})
    flow = Dataflow("test")
    where: list[tuple[str, int]] = []
    s = op.inspect_debug("where", op.input("inp", flow, src), lambda _s, x, _e, w: where.append((x[0], w)))
    op.output("out", s, TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(set(where)) == [(p, i % workers) for i, p in enumerate("abcde")]
    assert sorted(e[2] for e in src.log if e[0] == "build") == list("abcde"), "built once each"


def test_fixed_source_with_more_workers_than_parts() -> None:
    src = _Parts({"only": 3})
    flow = Dataflow("test")
    out: list[Any] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert out == [("only", 1), ("only", 2), ("only", 3)]


class _Paced(StatefulSourcePartition[int, int]):
    """Three batches; after each it asks to be woken `gap` later."""

    def __init__(self, gap: timedelta) -> None:
        self.gap = gap
        self.n = 0
        self.calls: list[datetime] = []
        self.awake: datetime | None = None

    def next_batch(self) -> list[int]:
        now = _utcnow()
        assert self.awake is None or now >= self.awake, "called before next_awake"
        self.calls.append(now)
        if self.n >= 3:
            raise StopIteration()
        self.n += 1
        self.awake = now + self.gap
        return [self.n]

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.n


def test_next_awake_is_honoured() -> None:
    part = _Paced(timedelta(milliseconds=30))

    class Src(FixedPartitionedSource[int, int]):
        def list_parts(self) -> list[str]:
            return ["p"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Paced:
            return part

    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, Src()), TestingSink(out))
    run_main(flow)
    assert out == [1, 2, 3]
    assert len(part.calls) == 4, "no busy polling while asleep"


def test_empty_batches_are_fine() -> None:
    class Sparse(StatelessSourcePartition[int]):
        def __init__(self) -> None:
            self.calls = 0

        def next_batch(self) -> list[int]:
            self.calls += 1
            if self.calls > 6:
                raise StopIteration()
            return [self.calls] if self.calls % 3 == 0 else []

    class Src(DynamicSource[int]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Sparse:
            return Sparse()

    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, Src()), TestingSink(out))
    run_main(flow)
    assert out == [3, 6]


def test_abort_execution_from_a_source_stops_the_run_quietly() -> None:
    class Aborting(StatefulSourcePartition[int, int]):
        def __init__(self) -> None:
            self.n = 0

        def next_batch(self) -> list[int]:
            self.n += 1
            if self.n == 3:
                raise AbortExecution()
            return [self.n]

        def snapshot(self) -> int:
            return self.n

    class Src(FixedPartitionedSource[int, int]):
        def list_parts(self) -> list[str]:
            return ["p"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Aborting:
            return Aborting()

    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, Src()), TestingSink(out))
    run_main(flow)
    assert out == [1, 2]


# --- DynamicSource ---------------------------------------------------------------------


class _WorkerPart(StatelessSourcePartition[tuple[int, int, int]]):
    def __init__(self, index: int, count: int, closed: list[int]) -> None:
        self.index = index
        self.count = count
        self.n = 0
        self.closed = closed

    def next_batch(self) -> list[tuple[int, int, int]]:
        if self.n > self.index:
            raise StopIteration()
        self.n += 1
        return [(self.index, self.count, self.n)]

    def close(self) -> None:
        self.closed.append(self.index)


class _PerWorker(DynamicSource[tuple[int, int, int]]):
    def __init__(self) -> None:
        self.builds: list[tuple[str, int, int]] = []
        self.closed: list[int] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WorkerPart:
        self.builds.append((step_id, worker_index, worker_count))
        return _WorkerPart(worker_index, worker_count, self.closed)


@pytest.mark.parametrize("workers", [1, 3])
def test_dynamic_source_is_built_on_every_worker(workers: int) -> None:
    src = _PerWorker()
    flow = Dataflow("test")
    out: list[Any] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(src.builds) == [("test.inp", w, workers) for w in range(workers)]
    assert sorted(out) == sorted((w, workers, n) for w in range(workers) for n in range(1, w + 2))
    assert sorted(src.closed) == list(range(workers))


# --- SimplePollingSource -----------------------------------------------------------------


class _Poller(SimplePollingSource[int, int]):
    def __init__(self, interval: timedelta, script: list[Any], align_to: datetime | None = None):
        super().__init__(interval, align_to)
        self.script = list(script)
        self.calls = 0

    def next_item(self) -> Any:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def test_polling_source_retry_none_and_stop() -> None:
    retry = SimplePollingSource.Retry(timedelta(milliseconds=1))
    src = _Poller(timedelta(milliseconds=5), [1, retry, None, 4, 5, StopIteration()])
    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert out == [1, 4, 5]
    assert src.calls == 6


def test_polling_partition_schedules_by_interval_and_retry() -> None:
    src = _Poller(timedelta(seconds=10), ["x", SimplePollingSource.Retry(timedelta(seconds=2))])
    assert src.list_parts() == ["singleton"]
    part = src.build_part("s", "singleton", None)
    first = part.next_awake()
    assert first is None or first <= _utcnow()
    before = _utcnow()
    assert part.next_batch() == ["x"]
    awake = part.next_awake()
    assert awake is not None
    assert timedelta(seconds=9) < awake - before <= timedelta(seconds=11)
    before = _utcnow()
    assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None
    assert timedelta(seconds=1) < awake - before <= timedelta(seconds=3)


def test_polling_partition_aligns_to_a_time() -> None:
    align = datetime(2020, 1, 1, tzinfo=UTC)
    interval = timedelta(seconds=10)
    part = _Poller(interval, [], align_to=align).build_part("s", "singleton", None)
    awake = part.next_awake()
    assert awake is not None
    assert (awake - align) % interval == timedelta(0)
    assert _utcnow() - interval < awake <= _utcnow() + interval


def test_polling_source_snapshot_and_resume() -> None:
    class Counter(SimplePollingSource[int, int]):
        def __init__(self) -> None:
            super().__init__(timedelta(seconds=1))
            self.n = 0
            self.resumed: list[int] = []

        def next_item(self) -> int:
            self.n += 1
            return self.n

        def snapshot(self) -> int:
            return self.n

        def resume(self, resume_state: int) -> None:
            self.resumed.append(resume_state)
            self.n = resume_state

    src = Counter()
    part = src.build_part("s", "singleton", 10)
    assert src.resumed == [10]
    assert part.next_batch() == [11]
    assert part.snapshot() == 11
    fresh = Counter()
    fresh.build_part("s", "singleton", None)
    assert fresh.resumed == [], "no resume call without a resume state"


def test_polling_source_defaults() -> None:
    src = _Poller(timedelta(seconds=1), [])
    assert src.snapshot() is None
    src.resume(None)  # default: does nothing
    assert SimplePollingSource.Retry(timedelta(seconds=3)).timeout == timedelta(seconds=3)


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(seconds=-1)])
def test_polling_source_interval_must_be_positive(interval: timedelta) -> None:
    with pytest.raises(ValueError, match="interval"):
        _Poller(interval, [])
