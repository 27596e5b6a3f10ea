"""The same dataflows on every entry point, with identical results.

Entry points: `run_main`; `cluster_main` with 1 and 2 worker threads; and a
2-process x 2-thread cluster whose two processes are `cluster_main` calls
in two threads of this test process, connected by real TCP on 127.0.0.1
(so TestingSink lists can be shared and compared).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
import headrace.operators.windowing as win
from headrace.dataflow import Dataflow
from headrace.outputs import FixedPartitionedSink, StatefulSinkPartition
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.servers import cluster_in_threads

ZERO = timedelta(0)
T0 = datetime(2024, 1, 1, tzinfo=UTC)

Build = Callable[[list[Any]], Dataflow]


def _run_main(flow: Dataflow) -> None:
    run_main(flow, epoch_interval=ZERO)


def _threads(n: int) -> Callable[[Dataflow], None]:
    def run(flow: Dataflow) -> None:
        cluster_main(flow, [], 0, worker_count_per_proc=n, epoch_interval=ZERO)

    return run


def _two_processes(flow: Dataflow) -> None:
    cluster_in_threads(lambda _i: flow, worker_count_per_proc=2, epoch_interval=ZERO)


ENTRY_POINTS = {
    "run_main": _run_main,
    "cluster_main-1": _threads(1),
    "cluster_main-2": _threads(2),
    "2proc-x-2threads": _two_processes,
}


def _words(n: int) -> list[str]:
    return [f"w{i % 13} w{i % 7} w{i % 3}" for i in range(n)]


def wordcount(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_wc")
    s = op.input("inp", flow, TestingSource(_words(300), batch_size=9))
    s = op.flat_map("split", s, str.split)
    op.output("out", op.count_final("count", s, lambda w: w), TestingSink(out))
    return flow


def running_sum(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_sum")
    items = [(f"k{i % 5}", i) for i in range(200)]
    s = op.input("inp", flow, TestingSource(items, batch_size=7))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    op.output("out", s, TestingSink(out))
    return flow


def join_complete(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_join")
    left = op.input("l", flow, TestingSource([(f"u{i}", f"n{i}") for i in range(50)], 4))
    right = op.input("r", flow, TestingSource([(f"u{i}", i) for i in range(0, 50, 2)], 3))
    op.output("out", op.join("j", left, right), TestingSink(out))
    return flow


def branch_merge_redistribute(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_branch")
    s = op.input("inp", flow, TestingSource(list(range(100)), batch_size=10))
    b = op.branch("even", s, lambda x: x % 2 == 0)
    m = op.merge("m", op.map("neg", b.trues, lambda x: -x), b.falses)
    r = op.redistribute("spread", m)
    op.output("out", op.key_on("k", r, str), TestingSink(out))
    return flow


def collect_and_fold(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_collect")
    s = op.input("inp", flow, TestingSource([(f"k{i % 4}", i) for i in range(40)], 5))
    c = op.collect("c", s, timedelta(seconds=60), max_size=3)
    f = op.fold_final("f", c, list, lambda acc, v: [*acc, len(v)])
    op.output("out", f, TestingSink(out))
    return flow


class _MemPart(StatefulSinkPartition[str, int]):
    def __init__(self, name: str, out: list[Any]) -> None:
        self.name = name
        self.out = out

    def write_batch(self, values: list[str]) -> None:
        self.out.extend((self.name, v) for v in values)

    def snapshot(self) -> int:
        return 0


class _MemSink(FixedPartitionedSink[str, int]):
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def list_parts(self) -> list[str]:
        return ["a", "b", "c"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _MemPart:
        return _MemPart(for_part, self.out)


def partitioned_sink(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_sink")
    s = op.input("inp", flow, TestingSource([(f"k{i % 9}", str(i)) for i in range(60)], 6))
    op.output("out", s, _MemSink(out))
    return flow


def _events(n: int) -> list[tuple[str, datetime]]:
    # Mostly in order, some late, three keys.
    ev = [(f"k{i % 3}", T0 + timedelta(seconds=i // 2)) for i in range(n)]
    ev[10], ev[11] = ev[11], ev[10]
    return ev


def tumbling(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_tumble")
    s = op.input("inp", flow, TestingSource(_events(120), batch_size=8))
    clock = win.EventClock(lambda e: e[1], wait_for_system_duration=timedelta(seconds=2))
    windower = win.TumblingWindower(timedelta(seconds=5), align_to=T0)
    w = win.count_window("count", s, clock, windower, key=lambda e: e[0])
    op.output("out", w.down, TestingSink(out))
    return flow


def tumbling_fold(out: list[Any]) -> Dataflow:
    """No wait, nothing reads `late`: with several workers, partial folds cross the exchange."""
    flow = Dataflow("ep_tumble_fold")
    items = [(f"k{i % 5}", (T0 + timedelta(seconds=i), i)) for i in range(200)]
    for i in (37, 90, 151):  # stragglers: late, whoever owns their key
        items.insert(i, (f"k{i % 5}", (T0 + timedelta(seconds=i - 40), -i)))
    s = op.input("inp", flow, TestingSource(items, batch_size=8))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=ZERO)
    windower = win.TumblingWindower(timedelta(seconds=10), align_to=T0)
    w = win.fold_window("sum", s, clock, windower, int, lambda a, v: a + v[1], lambda a, b: a + b)
    op.output("out", w.down, TestingSink(out))
    return flow


def sliding_fold(out: list[Any]) -> Dataflow:
    """The same over sliding windows (10 s every 4 s): 2 s slots cross, each joins 2-3 windows."""
    flow = Dataflow("ep_slide_fold")
    items = [(f"k{i % 5}", (T0 + timedelta(seconds=i), i)) for i in range(200)]
    for i in (37, 90, 151):
        items.insert(i, (f"k{i % 5}", (T0 + timedelta(seconds=i - 40), -i)))
    s = op.input("inp", flow, TestingSource(items, batch_size=8))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=ZERO)
    windower = win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=4), align_to=T0)
    w = win.fold_window("sum", s, clock, windower, list, lambda a, v: [*a, v[1]], lambda a, b: a + b)
    op.output("out", op.map_value("sorted", w.down, lambda wv: (wv[0], sorted(wv[1]))), TestingSink(out))
    return flow


def session(out: list[Any]) -> Dataflow:
    flow = Dataflow("ep_session")
    gaps = [0, 1, 2, 10, 11, 30, 31, 32, 33]
    items = [(f"k{k}", T0 + timedelta(seconds=g + k)) for k in range(3) for g in gaps]
    s = op.input("inp", flow, TestingSource(items, batch_size=4))
    clock = win.EventClock(lambda e: e, wait_for_system_duration=timedelta(seconds=1))
    w = win.collect_window("sess", s, clock, win.SessionWindower(timedelta(seconds=3)))
    op.output("out", op.map_value("n", w.down, lambda iv: (iv[0], len(iv[1]))), TestingSink(out))
    return flow


FLOWS: dict[str, Build] = {
    "wordcount": wordcount,
    "running_sum": running_sum,
    "join": join_complete,
    "branch_merge_redistribute": branch_merge_redistribute,
    "collect_fold": collect_and_fold,
    "partitioned_sink": partitioned_sink,
    "tumbling_window": tumbling,
    "tumbling_fold_combined": tumbling_fold,
    "sliding_fold_combined": sliding_fold,
    "session_window": session,
}


def _per_key(out: list[Any]) -> dict[str, list[Any]]:
    by_key: dict[str, list[Any]] = {}
    for k, v in out:
        by_key.setdefault(k, []).append(v)
    return by_key


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", list(FLOWS))
def test_same_result_on_every_entry_point(name: str, entry: str) -> None:
    build = FLOWS[name]
    expected: list[Any] = []
    run_main(build(expected), epoch_interval=ZERO)
    assert expected, "the reference run produced nothing"
    got: list[Any] = []
    ENTRY_POINTS[entry](build(got))
    assert sorted(map(repr, got)) == sorted(map(repr, expected))
    # Per key, order is preserved (one owner per key).
    if name in ("running_sum", "partitioned_sink"):
        assert _per_key(got) == _per_key(expected)
