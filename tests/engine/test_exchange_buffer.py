"""Items bound for other workers: buffered, flushed before waiting, held back by credits.

A worker buffers what it routes to each other worker and sends it as one
message when `EXCHANGE_FLUSH_ITEMS` are waiting, when the oldest waited
`EXCHANGE_FLUSH_SECONDS`, before it blocks, and before a barrier. Senders
stop reading their sources while a peer owes more than `INFLIGHT_LIMIT`
acknowledgements; ACKs go out in bulk, and all of them before a worker
blocks. These tests run two worker threads; the source is one partition,
read by worker 0, and its keys are owned by worker 1, so everything crosses.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace._engine._basics as basics
import headrace.operators as op
from headrace._engine import group_owner, key_group
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.testing import TestingSink, TestingSource, cluster_main
from tests.support.servers import cluster_in_threads

pytestmark = pytest.mark.timeout(60)


def _keys_of_worker_1(n: int) -> list[str]:
    keys = []
    i = 0
    while len(keys) < n:
        k = f"key{i}"
        if group_owner(key_group(k, 256), 256, 2) == 1:
            keys.append(k)
        i += 1
    return keys


KEYS = _keys_of_worker_1(5)


class _Part(StatefulSourcePartition[Any, int]):
    def __init__(self, source: _Source, pos: int) -> None:
        self.source = source
        self.pos = pos

    def next_batch(self) -> list[Any]:
        return self.source.next_batch(self)

    def next_awake(self) -> datetime | None:
        return self.source.awake

    def snapshot(self) -> int:
        return self.pos


class _Source(FixedPartitionedSource[Any, int]):
    """One partition; what each batch is comes from `next_batch` below."""

    def __init__(self) -> None:
        self.awake: datetime | None = None

    def list_parts(self) -> list[str]:
        return ["one"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(self, resume_state or 0)

    def next_batch(self, part: _Part) -> list[Any]:
        raise NotImplementedError


class _LockstepSource(_Source):
    """Item ``i + 1`` is read only once the sink wrote item ``i`` (gives up after 5 s).

    Nothing else happens on the reading worker in between: it only idles, so
    (with no time limit on buffering and epochs far longer than the test)
    item ``i`` can reach its owner only by the flush before waiting.
    """

    def __init__(self, n: int, written: list[Any]) -> None:
        super().__init__()
        self.n = n
        self.written = written
        self.deadline = 0.0
        self.gave_up = False

    def next_batch(self, part: _Part) -> list[Any]:
        import time

        if part.pos >= self.n:
            raise StopIteration()
        if part.pos > 0 and len(self.written) < part.pos:
            if not self.deadline:
                self.deadline = time.monotonic() + 5
            if time.monotonic() < self.deadline:
                return []  # not yet: the worker idles a moment and asks again
            self.gave_up = True
        self.deadline = 0.0
        part.pos += 1
        return [(KEYS[0], part.pos - 1)]


def test_buffered_items_go_out_before_the_worker_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    written: list[Any] = []
    src = _LockstepSource(4, written)
    flow = Dataflow("flush_before_wait")
    s = op.input("inp", flow, src)
    op.output("out", op.stateful_map("sum", s, lambda acc, v: ((acc or 0) + v,) * 2), TestingSink(written))
    cluster_main(flow, [], 0, worker_count_per_proc=2, epoch_interval=timedelta(hours=1))
    assert not src.gave_up, "an item waited in the buffer while its reader idled"
    assert written == [(KEYS[0], t) for t in (0, 1, 3, 6)]


class _CountingSource(_Source):
    """``n`` items in batches of ``batch``; notes how far reading ran ahead of processing."""

    def __init__(self, n: int, batch: int, processed: list[int]) -> None:
        super().__init__()
        self.n = n
        self.batch = batch
        self.processed = processed
        self.ahead: list[int] = []

    def next_batch(self, part: _Part) -> list[Any]:
        if part.pos >= self.n:
            raise StopIteration()
        self.ahead.append(part.pos - self.processed[0])
        end = min(part.pos + self.batch, self.n)
        out = [(KEYS[i % len(KEYS)], i) for i in range(part.pos, end)]
        part.pos = end
        return out


def _two_processes_over_tcp(flow: Dataflow) -> None:
    """Two cluster members of one worker each, connected over loopback TCP (threads here)."""
    cluster_in_threads(lambda _i: flow)


def _two_threads(flow: Dataflow) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=2)


@pytest.mark.slow
@pytest.mark.parametrize("run", [_two_threads, _two_processes_over_tcp], ids=["threads", "tcp"])
@pytest.mark.parametrize("limit", [300, 10**9], ids=["limited", "unlimited"])
def test_a_slow_owner_holds_back_the_reader(
    monkeypatch: pytest.MonkeyPatch, limit: int, run: Callable[[Dataflow], None]
) -> None:
    """The reader never gets more than the credit limit (plus what it buffers) ahead.

    The unlimited run is the control: without credits the reader runs far
    ahead of the slow owner, so the bound is something the test can see broken.
    Over TCP the credits come back as ACK messages through the mesh.
    """
    import time

    flush, batch, n = 100, 50, 3000
    monkeypatch.setattr(basics, "INFLIGHT_LIMIT", limit)
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_ITEMS", flush)
    processed = [0]
    lock = threading.Lock()

    def slow(acc: int | None, v: int) -> tuple[int, int]:
        time.sleep(0.0002)
        with lock:
            processed[0] += 1
        return (acc or 0) + 1, v

    src = _CountingSource(n, batch, processed)
    out: list[Any] = []
    flow = Dataflow("backpressure")
    op.output("out", op.stateful_map("slow", op.input("inp", flow, src), slow), TestingSink(out))
    run(flow)
    assert sorted(v for _, v in out) == list(range(n))
    # Unacknowledged (<= limit, checked before each read) + buffered (< flush)
    # + the batch read after the last check.
    bound = 300 + flush + batch
    if limit == 300:
        assert max(src.ahead) <= bound, max(src.ahead)
    else:
        assert max(src.ahead) > bound, "the owner kept up; the test proves nothing"


def test_flushes_fold_many_batches_into_few_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time limit, a keyed edge sends one message per `EXCHANGE_FLUSH_ITEMS` items."""
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_ITEMS", 1000)
    sent: Counter[str] = Counter()
    real_send = basics.Cluster.send

    def counting_send(self: basics.Cluster, dst: int, msg: tuple[Any, ...]) -> None:
        sent[msg[0]] += 1
        real_send(self, dst, msg)

    monkeypatch.setattr(basics.Cluster, "send", counting_send)
    items = [(KEYS[i % 5], i) for i in range(10_000)]
    out: list[Any] = []
    flow = Dataflow("few_messages")
    s = op.input("inp", flow, TestingSource(items, batch_size=10))
    op.output("out", op.stateful_map("sum", s, lambda acc, v: ((acc or 0) + v,) * 2), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(out) == 10_000
    # 1,000 source batches of 10 items, all for worker 1: 10 data messages.
    assert sent[basics.DATA] == 10, sent


def test_a_naive_timestamp_reaching_the_flush_is_an_error_naming_the_step(
    cause_chain: Callable[[BaseException], list[BaseException]],
) -> None:
    """A combiner folds values bound for another worker as they are buffered; its errors
    still name the step that failed."""
    naive = datetime(2024, 1, 1)
    items = [(KEYS[i % 5], naive + timedelta(seconds=i)) for i in range(30)]
    import headrace.operators.windowing as win

    flow = Dataflow("flush_error")
    s = op.input("inp", flow, TestingSource(items, batch_size=7))
    clock = win.EventClock(lambda kv: kv[1], wait_for_system_duration=timedelta(0))
    w = win.count_window(
        "counting",
        s,
        clock,
        win.TumblingWindower(timedelta(seconds=10), datetime(2024, 1, 1, tzinfo=UTC)),
        lambda kv: kv[0],
    )
    op.output("out", w.down, TestingSink([]))
    with pytest.raises(Exception) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    text = " ".join(str(e) for e in cause_chain(info.value))
    assert "counting" in text and "timezone" in text, text


def test_two_keyed_steps_reading_one_stream_keep_their_own_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One batch feeds two keyed steps: each buffers (and extends) lists of its own."""
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    items = [(KEYS[i % 5], i) for i in range(2000)]

    def build() -> tuple[Dataflow, list[Any], list[Any]]:
        flow = Dataflow("fan_out")
        s = op.map("same", op.input("inp", flow, TestingSource(items, batch_size=10)), lambda kv: kv)
        sums: list[Any] = []
        counts: list[Any] = []
        op.output("o1", op.reduce_final("sum", s, lambda a, b: a + b), TestingSink(sums))
        op.output(
            "o2", op.count_final("count", op.map("k", s, lambda kv: kv[0]), lambda k: k), TestingSink(counts)
        )
        return flow, sums, counts

    flow, sums_ref, counts_ref = build()
    cluster_main(flow, [], 0, worker_count_per_proc=1)
    flow, sums, counts = build()
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(sums) == sorted(sums_ref)
    assert sorted(counts) == sorted(counts_ref) == [(k, 400) for k in sorted(KEYS)]
