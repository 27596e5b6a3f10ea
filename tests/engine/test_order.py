"""The order a worker runs steps, keys and timers in: Bytewax 0.21.1's.

Every expected list below is what the same program printed under Bytewax
0.21.1 (one worker; ``inspect`` and ``print`` lines in the order seen).
The rules (docs/operators.md, "Order"):

- a stateful step handles the keys of one activation (one source batch) in
  sorted key order, and emits its end-of-input results in sorted key order;
- when one stream feeds several steps, each step gets the whole batch, in
  the order the steps were declared, before the steps declared after it;
- an input step's partitions polled together make one batch;
- a timer already due when a key's items are handled fires at the step's
  next activation, after that activation's items, keys in sorted order;
- `collect`'s timeout counts from the key's latest item.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow, Stream
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.outputs import DynamicSink, StatelessSinkPartition
from headrace.testing import TestingSink, TestingSource, run_main

PAST = datetime(2000, 1, 1, tzinfo=UTC)


def _logger(log: list[str]) -> Callable[[str, Any], None]:
    return lambda step_id, x: log.append(f"{step_id}: {x!r}")


def _running_sum(state: int | None, v: int) -> tuple[int, int]:
    total = (state or 0) + v
    return total, total


# --- keys of a stateful step -------------------------------------------------------


@pytest.mark.parametrize("interval", [None, timedelta(0)])
def test_stateful_step_handles_a_batchs_keys_in_sorted_order(interval: timedelta | None) -> None:
    items = [("b", 1), ("a", 2), ("10", 3), ("9", 4), ("B", 5), ("a", 6), ("é", 7), ("Z", 8)]
    flow = Dataflow("f")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource(items, batch_size=3))
    op.output("out", op.stateful_map("sm", s, _running_sum), TestingSink(out))
    run_main(flow, epoch_interval=interval)
    # Batches [b a 10] [9 B a] [é Z]: each sorted by key (code point order).
    assert out == [("10", 3), ("a", 2), ("b", 1), ("9", 4), ("B", 5), ("a", 8), ("Z", 8), ("é", 7)]


class _Part(StatefulSourcePartition[Any, None]):
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches

    def next_batch(self) -> list[Any]:
        if not self.batches:
            raise StopIteration()
        return self.batches.pop(0)

    def snapshot(self) -> None:
        return None


class _PQSource(FixedPartitionedSource[Any, None]):
    """Partitions ``p`` and ``q``; each gives the batches ``batches(its name)``, then stops."""

    def __init__(self, batches: Callable[[str], list[list[Any]]]) -> None:
        self.batches = batches

    def list_parts(self) -> list[str]:
        return ["p", "q"]

    def build_part(self, step_id: str, name: str, resume: None) -> _Part:
        return _Part(self.batches(name))


def test_values_of_partitions_polled_together_are_one_activation() -> None:
    source = _PQSource(
        lambda name: [[("b", name + "1"), ("a", name + "2")], [("c", name + "3"), ("a", name + "4")]]
    )

    def concat(state: str | None, v: str) -> tuple[str, str]:
        state = (state or "") + v
        return state, state

    log: list[str] = []
    flow = Dataflow("f")
    s = op.inspect("before", op.input("inp", flow, source), _logger(log))
    s = op.inspect("after", op.stateful_map("sm", s, concat), _logger(log))
    op.output("out", s, TestingSink([]))
    run_main(flow)
    assert log == [
        "f.before: ('b', 'p1')",
        "f.before: ('a', 'p2')",
        "f.before: ('b', 'q1')",
        "f.before: ('a', 'q2')",
        "f.after: ('a', 'p2')",
        "f.after: ('a', 'p2q2')",
        "f.after: ('b', 'p1')",
        "f.after: ('b', 'p1q1')",
        "f.before: ('c', 'p3')",
        "f.before: ('a', 'p4')",
        "f.before: ('c', 'q3')",
        "f.before: ('a', 'q4')",
        "f.after: ('a', 'p2q2p4')",
        "f.after: ('a', 'p2q2p4q4')",
        "f.after: ('c', 'p3')",
        "f.after: ('c', 'p3q3')",
    ]


WORDS = [*"x y zz Q 10 2 a ab b aa é ~ x a zz ab ~ Q aa b 10 y aa é ab zz".split(), " "]


@pytest.mark.parametrize(
    "build",
    [
        lambda s: op.count_final("cf", s, lambda w: w),
        # a reducer that may print: keys are handled in sorted order
        lambda s: op.reduce_final(
            "r", op.key_on("k", op.map("one", s, lambda w: w), str), lambda a, b: str(a) + b
        ),
        lambda s: op.fold_final("ff", op.key_on("k", s, str), list, lambda acc, w: [*acc, w]),
    ],
    ids=["count_final", "reduce_final", "fold_final"],
)
def test_end_of_input_results_come_in_sorted_key_order(build: Callable[[Stream[Any]], Stream[Any]]) -> None:
    flow = Dataflow("f")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource(WORDS, batch_size=7))
    op.output("out", build(s), TestingSink(out))
    run_main(flow)
    keys = [k for k, _ in out]
    assert keys == [" ", "10", "2", "Q", "a", "aa", "ab", "b", "x", "y", "zz", "~", "é"]


def test_count_final_matches_bytewax() -> None:
    flow = Dataflow("f")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource(WORDS, batch_size=7))
    op.output("out", op.count_final("cf", s, lambda w: w), TestingSink(out))
    run_main(flow)
    assert out == [
        (" ", 1),
        ("10", 2),
        ("2", 1),
        ("Q", 2),
        ("a", 2),
        ("aa", 3),
        ("ab", 3),
        ("b", 2),
        ("x", 2),
        ("y", 2),
        ("zz", 3),
        ("~", 2),
        ("é", 2),
    ]


def test_user_functions_of_a_reduction_see_keys_in_sorted_order() -> None:
    seen: list[str] = []

    def add(a: int, b: int) -> int:
        seen.append("add")  # names a global: its calls may be seen, so keys are sorted
        return a + b

    def folder(acc: list[str], v: str) -> list[str]:
        seen.append(v)
        return [*acc, v]

    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource(["b", "c", "a", "b", "a"], batch_size=5))
    op.output("o1", op.fold_final("ff", op.key_on("k", s, str), list, folder), TestingSink([]))
    run_main(flow)
    assert seen == ["a", "a", "b", "b", "c"]


# --- fan-out -------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [None, timedelta(0)])
def test_each_consumer_gets_the_whole_batch_in_declaration_order(interval: timedelta | None) -> None:
    log: list[str] = []
    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource([1, 2, 3, 4, 5], batch_size=2))
    op.inspect("i1", s, _logger(log))

    def printing(x: int) -> int:
        log.append(f"map {x}")
        return x

    m = op.map("m", s, printing)
    op.inspect("i2", s, _logger(log))
    m2 = op.inspect("i3", m, _logger(log))
    k = op.key_on("k", s, lambda x: str(x % 2))

    def sm(state: Any, v: int) -> tuple[int, int]:
        log.append(f"sm {v}")
        return v, v

    op.inspect("i4", op.stateful_map("sm", k, sm), _logger(log))
    op.inspect("i5", s, _logger(log))
    op.output("out", m2, TestingSink([]))
    run_main(flow, epoch_interval=interval)
    assert log == [
        "f.i1: 1",
        "f.i1: 2",
        "map 1",
        "map 2",
        "f.i2: 1",
        "f.i2: 2",
        "f.i3: 1",
        "f.i3: 2",
        "sm 2",
        "sm 1",
        "f.i4: ('0', 2)",
        "f.i4: ('1', 1)",
        "f.i5: 1",
        "f.i5: 2",
        "f.i1: 3",
        "f.i1: 4",
        "map 3",
        "map 4",
        "f.i2: 3",
        "f.i2: 4",
        "f.i3: 3",
        "f.i3: 4",
        "sm 4",
        "sm 3",
        "f.i4: ('0', 4)",
        "f.i4: ('1', 3)",
        "f.i5: 3",
        "f.i5: 4",
        "f.i1: 5",
        "map 5",
        "f.i2: 5",
        "f.i3: 5",
        "sm 5",
        "f.i4: ('1', 5)",
        "f.i5: 5",
    ]


def test_inspects_in_one_chain_each_see_the_whole_batch() -> None:
    log: list[str] = []
    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource(["x", "y", "z"], batch_size=2))
    s = op.inspect("a", s, _logger(log))
    s = op.map("m", s, str.upper)
    s = op.inspect("b", s, _logger(log))
    op.output("out", s, TestingSink([]))
    run_main(flow)
    assert log == ["f.a: 'x'", "f.a: 'y'", "f.b: 'X'", "f.b: 'Y'", "f.a: 'z'", "f.b: 'Z'"]


def test_partitions_batch_fan_out_merge_and_sink_writes() -> None:
    log: list[str] = []
    writes: list[str] = []

    class Writer(StatelessSinkPartition[str]):
        def write_batch(self, items: list[str]) -> None:
            writes.extend(items)

    class Sink(DynamicSink[str]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Writer:
            return Writer()

    def fmb(batch: list[str]) -> list[str]:
        log.append(f"fmb {batch}")
        return batch

    flow = Dataflow("f")
    source = _PQSource(lambda name: [[name + "1", name + "2"], [name + "3"]])
    s = op.flat_map_batch("fmb", op.input("inp", flow, source), fmb)
    a = op.map("a", s, lambda x: x + "a")
    op.inspect("ia", a, _logger(log))
    b = op.map("b", s, lambda x: x + "b")
    m = op.inspect("im", op.merge("m", a, b), _logger(log))
    op.output("out", m, Sink())
    run_main(flow)
    # How the sink's input is cut into `write_batch` calls varies in Bytewax (one
    # call per path under `bytewax.run`, one for both under `run_main`); the
    # items and their order don't.
    assert writes == ["p1a", "p2a", "q1a", "q2a", "p1b", "p2b", "q1b", "q2b", "p3a", "q3a", "p3b", "q3b"]
    assert log == [
        "fmb ['p1', 'p2', 'q1', 'q2']",
        "f.ia: 'p1a'",
        "f.ia: 'p2a'",
        "f.ia: 'q1a'",
        "f.ia: 'q2a'",
        "f.im: 'p1a'",
        "f.im: 'p2a'",
        "f.im: 'q1a'",
        "f.im: 'q2a'",
        "f.im: 'p1b'",
        "f.im: 'p2b'",
        "f.im: 'q1b'",
        "f.im: 'q2b'",
        "fmb ['p3', 'q3']",
        "f.ia: 'p3a'",
        "f.ia: 'q3a'",
        "f.im: 'p3a'",
        "f.im: 'q3a'",
        "f.im: 'p3b'",
        "f.im: 'q3b'",
    ]


# --- timers --------------------------------------------------------------------------


class _DueAtOnce(op.StatefulBatchLogic[int, tuple[str, int], int]):
    """Asks to be notified at once after each batch; logs every call."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.n = name, log, 0
        self.due: datetime | None = None

    def on_batch(self, values: list[int]) -> tuple[list[tuple[str, int]], bool]:
        self.log.append(f"on_batch {self.name} {values}")
        self.n += len(values)
        self.due = PAST
        return [("b", self.n)], False

    def on_notify(self) -> tuple[list[tuple[str, int]], bool]:
        self.log.append(f"on_notify {self.name}")
        self.due = None
        return [("n", self.n)], False

    def on_eof(self) -> tuple[list[tuple[str, int]], bool]:
        self.log.append(f"on_eof {self.name}")
        return [("e", self.n)], False

    def notify_at(self) -> datetime | None:
        return self.due

    def snapshot(self) -> int:
        return self.n


@pytest.mark.parametrize("interval", [None, timedelta(0)])
def test_a_due_timer_fires_at_the_next_activation_after_its_items(interval: timedelta | None) -> None:
    log: list[str] = []
    names = (f"L{i}" for i in itertools.count())
    flow = Dataflow("f")
    items = [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5)]
    s = op.inspect("in", op.input("inp", flow, TestingSource(items, batch_size=1)), _logger(log))
    s = op.stateful_batch("sb", s, lambda resume: _DueAtOnce(next(names), log))
    op.output("o", op.inspect("out", s, _logger(log)), TestingSink([]))
    run_main(flow, epoch_interval=interval)
    if interval is not None:
        # Each epoch's end activates the step: the timer fires before the next item.
        assert log == [
            "f.in: ('a', 1)",
            "on_batch L0 [1]",
            "f.out: ('a', ('b', 1))",
            "on_notify L0",
            "f.out: ('a', ('n', 1))",
            "f.in: ('a', 2)",
            "on_batch L0 [2]",
            "f.out: ('a', ('b', 2))",
            "on_notify L0",
            "f.out: ('a', ('n', 2))",
            "f.in: ('a', 3)",
            "on_batch L0 [3]",
            "f.out: ('a', ('b', 3))",
            "on_notify L0",
            "f.out: ('a', ('n', 3))",
            "f.in: ('b', 4)",
            "on_batch L1 [4]",
            "f.out: ('b', ('b', 1))",
            "on_notify L1",
            "f.out: ('b', ('n', 1))",
            "f.in: ('a', 5)",
            "on_batch L0 [5]",
            "f.out: ('a', ('b', 4))",
            "on_notify L0",
            "f.out: ('a', ('n', 4))",
            "on_eof L0",
            "on_eof L1",
            "f.out: ('a', ('e', 4))",
            "f.out: ('b', ('e', 1))",
        ]
        return
    # One long epoch: the timer set by a batch fires at the next batch, after its items.
    assert log == [
        "f.in: ('a', 1)",
        "on_batch L0 [1]",
        "f.out: ('a', ('b', 1))",
        "f.in: ('a', 2)",
        "on_batch L0 [2]",
        "on_notify L0",
        "f.out: ('a', ('b', 2))",
        "f.out: ('a', ('n', 2))",
        "f.in: ('a', 3)",
        "on_batch L0 [3]",
        "f.out: ('a', ('b', 3))",
        "f.in: ('b', 4)",
        "on_batch L1 [4]",
        "on_notify L0",
        "f.out: ('b', ('b', 1))",
        "f.out: ('a', ('n', 3))",
        "f.in: ('a', 5)",
        "on_batch L0 [5]",
        "on_notify L1",
        "f.out: ('a', ('b', 4))",
        "f.out: ('b', ('n', 1))",
        "on_notify L0",
        "f.out: ('a', ('n', 4))",
        "on_eof L0",
        "on_eof L1",
        "f.out: ('a', ('e', 4))",
        "f.out: ('b', ('e', 1))",
    ]


def test_timer_due_as_each_item_arrives_still_fires() -> None:
    """A key whose items keep coming, each setting `notify_at` to the present, is notified
    at each following activation (it used to be put off until the items stopped)."""
    log: list[str] = []

    class Now(_DueAtOnce):
        def on_batch(self, values: list[int]) -> tuple[list[tuple[str, int]], bool]:
            ret = super().on_batch(values)
            self.due = datetime.now(UTC)
            return ret

    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource([("a", i) for i in range(4)], batch_size=1))
    op.output("o", op.stateful_batch("sb", s, lambda resume: Now("L", log)), TestingSink([]))
    run_main(flow)
    assert log == [
        "on_batch L [0]",
        "on_batch L [1]",
        "on_notify L",
        "on_batch L [2]",
        "on_batch L [3]",
        "on_notify L",
        "on_eof L",
    ]


def test_due_keys_are_notified_in_key_order_after_the_batchs_outputs() -> None:
    log: list[str] = []

    class L(op.StatefulBatchLogic[int, tuple[str, Any], None]):
        def __init__(self) -> None:
            self.v = -1
            self.due: datetime | None = None

        def on_batch(self, values: list[int]) -> tuple[list[tuple[str, Any]], bool]:
            self.v = values[0]
            if values[0] != 9:
                # c is due first, a last: the order is still a, b, c
                self.due = PAST + timedelta(seconds=values[0])
            return [("b", values)], False

        def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
            log.append(f"on_notify {self.v}")
            self.due = None
            return [("n", self.v)], False

        def notify_at(self) -> datetime | None:
            return self.due

        def snapshot(self) -> None:
            return None

    items = [("c", 0), ("b", 1), ("a", 2), ("z", 9), ("y", 9)]
    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource(items, batch_size=3))
    s = op.stateful_batch("sb", s, lambda resume: L())
    op.output("o", op.inspect("out", s, _logger(log)), TestingSink([]))
    run_main(flow)
    assert log == [
        "f.out: ('a', ('b', [2]))",
        "f.out: ('b', ('b', [1]))",
        "f.out: ('c', ('b', [0]))",
        "on_notify 2",
        "on_notify 1",
        "on_notify 0",
        "f.out: ('y', ('b', [9]))",
        "f.out: ('z', ('b', [9]))",
        "f.out: ('a', ('n', 2))",
        "f.out: ('b', ('n', 1))",
        "f.out: ('c', ('n', 0))",
    ]


# --- collect -------------------------------------------------------------------------


def test_collect_timeout_counts_from_the_latest_item() -> None:
    """Bytewax 0.21.1 restarts the wait at each item: items 0.3 s apart with a 0.5 s timeout
    make one list. Here the clock reads the far future, then the past, then the future: only
    the second item's deadline has passed, and the list closes at the next activation."""
    future = PAST + timedelta(days=365 * 100)
    reads = itertools.chain([future, PAST], itertools.repeat(future))
    flow = Dataflow("f")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource([("k", i) for i in range(1, 5)], batch_size=1))
    s = op.collect("c", s, timedelta(seconds=1), 10, _now_getter=lambda: next(reads))
    op.output("o", s, TestingSink(out))
    run_main(flow)
    # counted from the first item, the deadline stays in the future: [1, 2, 3, 4] at EOF
    assert out == [("k", [1, 2, 3]), ("k", [4])]
