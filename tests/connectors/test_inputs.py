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


def _getter(values: list[Any]) -> Any:
    """A getter over ``values`` that raises the exceptions in it and StopIteration at the end."""
    it = iter(values)

    def get() -> Any:
        v = next(it)
        if isinstance(v, BaseException):
            raise v
        return v

    return get


# Results observed with Bytewax 0.21.1: the batch gathered when the getter
# raises StopIteration is yielded (even when empty), then the iterator ends.
@pytest.mark.parametrize(
    ("values", "size", "expected"),
    [
        ([1, 2, 3], 2, [[1, 2], [3]]),
        ([1, 2], 2, [[1, 2], []]),
        ([], 2, [[]]),
        ([1, None, 2, None, None, 3], 5, [[1], [2], [], [3]]),
        ([1, 2, None], 2, [[1, 2], [], []]),
    ],
)
def test_batch_getter_ends_on_stop_iteration(values: list[Any], size: int, expected: list[Any]) -> None:
    assert list(batch_getter(_getter(values), size)) == expected


@pytest.mark.parametrize(
    ("values", "size", "expected"),
    [
        ([1, 2, 3], 2, [[1, 2], [3]]),
        ([1, 2], 2, [[1, 2], []]),
        ([], 2, [[]]),
        ([1, queue.Empty(), 2, queue.Empty(), queue.Empty(), 3], 5, [[1], [2], [], [3]]),
    ],
)
def test_batch_getter_ex_ends_on_stop_iteration(values: list[Any], size: int, expected: list[Any]) -> None:
    assert list(batch_getter_ex(_getter(values), size)) == expected


def test_batch_getter_ex_with_a_broad_yield_ex_still_ends() -> None:
    """``yield_ex=Exception`` also catches StopIteration: it ends batches, not the iterator."""
    it = batch_getter_ex(_getter([1, 2, 3]), 2, Exception)
    assert [next(it) for _ in range(4)] == [[1, 2], [3], [], []]


def test_batch_getter_passes_other_errors_through() -> None:
    with pytest.raises(ValueError, match="boom"):
        list(batch_getter(_getter([1, ValueError("boom")]), 5))


@pytest.mark.parametrize("helper", ["batch_getter", "batch_getter_ex"])
def test_a_partition_built_on_a_batch_getter_ends_the_input(helper: str) -> None:
    """``next_batch = next(batcher)``: the getter's StopIteration ends the partition cleanly."""

    class Part(StatelessSourcePartition[int]):
        def __init__(self) -> None:
            get = _getter([1, 2, 3, 4, 5])
            self._batcher = batch_getter(get, 2) if helper == "batch_getter" else batch_getter_ex(get, 2)

        def next_batch(self) -> list[int]:
            return next(self._batcher)

    class Src(DynamicSource[int]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, Src()), TestingSink(out))
    run_main(flow)
    assert out == [1, 2, 3, 4, 5]


async def _agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def test_batch_async_by_size() -> None:
    assert list(batch_async(_agen(5), timedelta(seconds=5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batch_async(_agen(0), timedelta(seconds=5), 2)) == []


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
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


def test_polling_source_interval_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="interval must not be negative"):
        _Poller(timedelta(seconds=-1), [])


def test_polling_source_with_a_zero_interval_polls_continuously() -> None:
    """Bytewax accepts ``interval=timedelta(0)``: poll whenever the worker can."""
    src = _Poller(timedelta(0), [1, None, 2, 3, StopIteration()])
    flow = Dataflow("test")
    out: list[int] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert out == [1, 2, 3]


def test_polling_source_takes_one_type_argument() -> None:
    """As in Bytewax 0.21, the resume state type defaults to None."""
    assert SimplePollingSource[int] == SimplePollingSource[int, None]
    assert SimplePollingSource[int, str].__args__ == (int, str)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="Too many arguments"):
        SimplePollingSource[int, str, float]  # type: ignore[misc]

    class Ticks(SimplePollingSource[str]):
        def __init__(self) -> None:
            super().__init__(timedelta(0))
            self.left = ["a", "b"]

        def next_item(self) -> str:
            if not self.left:
                raise StopIteration()
            return self.left.pop(0)

    flow = Dataflow("test")
    out: list[str] = []
    op.output("out", op.input("inp", flow, Ticks()), TestingSink(out))
    run_main(flow)
    assert out == ["a", "b"]


def test_a_generic_polling_subclass_keeps_its_own_type_parameters() -> None:
    from typing import Generic, TypeVar

    T = TypeVar("T")

    class Poll(SimplePollingSource[T], Generic[T]):
        def next_item(self) -> T:
            raise StopIteration()

    assert Poll.__parameters__ == (T,)  # type: ignore[attr-defined]
    assert Poll[int].__args__ == (int,)  # type: ignore[attr-defined]


T0 = datetime(2024, 1, 1, tzinfo=UTC)


class _Clock:
    """A fake ``headrace.inputs._utc_now``; ``slow`` is added by each `next_item` call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr("headrace.inputs._utc_now", lambda: self.now)

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


def _secs(awake: datetime | None) -> float | None:
    return None if awake is None else (awake - T0).total_seconds()


def test_polling_schedule_interval_none_and_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule Bytewax 0.21.1 gives when each poll is made on time."""
    clock = _Clock(monkeypatch)
    retry = SimplePollingSource.Retry(timedelta(seconds=2))
    part = _Poller(timedelta(seconds=10), ["a", None, retry, "b"]).build_part("s", "singleton", None)
    log: list[Any] = [_secs(part.next_awake())]
    for at in (0, 10, 20, 22):
        clock.at(at)
        log.append((part.next_batch(), _secs(part.next_awake())))
    assert log == [0.0, (["a"], 10.0), ([], 20.0), ([], 22.0), (["b"], 32.0)]


@pytest.mark.parametrize(
    ("align_s", "first"),
    [(-3, 7.0), (-103, 7.0), (-10, 0.0), (3, 3.0)],
)
def test_polling_schedule_aligns_to_a_time(
    monkeypatch: pytest.MonkeyPatch, align_s: int, first: float
) -> None:
    """The first poll is the first time ``align_to + k * interval`` not in the past."""
    clock = _Clock(monkeypatch)
    align = T0 + timedelta(seconds=align_s)
    part = _Poller(timedelta(seconds=10), ["a", "b"], align_to=align).build_part("s", "singleton", None)
    log: list[Any] = [_secs(part.next_awake())]
    for at in (first, first + 10):
        clock.at(at)
        log.append((part.next_batch(), _secs(part.next_awake())))
    assert log == [first, (["a"], first + 10), (["b"], first + 20)]


def test_polling_schedule_skips_missed_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Headrace: a late poll stays on the grid without a burst of catch-up polls.

    (Bytewax 0.21.1 would next poll at 17, 27, ... at once, one after another.)
    """
    clock = _Clock(monkeypatch)
    part = _Poller(timedelta(seconds=10), ["a", "b"], align_to=T0 - timedelta(seconds=3)).build_part(
        "s", "singleton", None
    )
    log: list[Any] = []
    for at in (7, 40):
        clock.at(at)
        log.append((part.next_batch(), _secs(part.next_awake())))
    assert log == [(["a"], 17.0), (["b"], 47.0)]


def test_polling_source_resumes_through_recovery(tmp_path: Any) -> None:
    """Two runs with recovery: the second is resumed with the first one's last snapshot.

    The outputs are those of the same program under Bytewax 0.21.1.
    """
    from headrace.recovery import RecoveryConfig, init_db_dir

    class Counter(SimplePollingSource[int, int]):
        def __init__(self, stop_at: int) -> None:
            super().__init__(timedelta(0))
            self.n = 0
            self.stop_at = stop_at
            self.resumed: int | None = None

        def next_item(self) -> int | None:  # type: ignore[override]
            if self.n >= self.stop_at:
                raise StopIteration()
            self.n += 1
            return None if self.n % 2 == 0 else self.n

        def snapshot(self) -> int:
            return self.n

        def resume(self, resume_state: int) -> None:
            self.resumed = resume_state
            self.n = resume_state

    init_db_dir(tmp_path, 1)
    runs = []
    for stop in (5, 9):
        flow = Dataflow("poll_rec")
        out: list[int] = []
        src = Counter(stop)
        op.output("o", op.input("i", flow, src), TestingSink(out))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(tmp_path))
        runs.append((src.resumed, out))
    assert runs == [(None, [1, 3, 5]), (5, [7, 9])]
