"""Stateful operators: per-key state, discard, timers, EOF, final aggregations, collect.

Expected values were checked against Bytewax 0.21.1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.testing import TestingSink, TestingSource, run_main

pytestmark = pytest.mark.timeout(30)

PAST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


def _sum_mapper(state: int | None, v: int) -> tuple[int, int]:
    total = (state or 0) + v
    return total, total


# --- stateful_map / stateful_flat_map ------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_stateful_map_running_sum_per_key(run_op: Any, batch_size: int) -> None:
    items = [("a", 1), ("b", 5), ("a", 2), ("b", 1), ("a", 3)]
    out = run_op(items, lambda s: op.stateful_map("sum", s, _sum_mapper), batch_size=batch_size)
    assert [x for x in out if x[0] == "a"] == [("a", 1), ("a", 3), ("a", 6)]
    assert [x for x in out if x[0] == "b"] == [("b", 5), ("b", 6)]


def test_stateful_map_output_order_within_a_batch(flow: Dataflow) -> None:
    """Within one batch, outputs come grouped by key in first-seen order (as in Bytewax)."""
    # run_main only: the order across keys is only defined when one worker holds every key.
    items = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    inp = op.input("inp", flow, TestingSource(items, batch_size=5))
    s = op.stateful_map("id", inp, lambda st, v: (st, v))
    out: list[Any] = []
    op.output("out", s, TestingSink(out))
    run_main(flow)
    assert out == [("a", 1), ("a", 3), ("b", 2), ("b", 5), ("c", 4)]


def test_stateful_map_none_state_forgets_the_key(run_op: Any) -> None:
    calls: list[tuple[Any, int]] = []

    def mapper(state: int | None, v: int) -> tuple[int | None, int]:
        calls.append((state, v))
        total = (state or 0) + v
        return (None if total >= 3 else total), total

    out = run_op(
        [("a", 1), ("a", 2), ("a", 3), ("a", 4)],
        lambda s: op.stateful_map("m", s, mapper),
        batch_size=4,
    )
    assert out == [("a", 1), ("a", 3), ("a", 3), ("a", 4)]
    assert calls == [(None, 1), (1, 2), (None, 3), (None, 4)]


def test_stateful_map_state_is_per_key_and_starts_at_none(run_op: Any) -> None:
    seen: list[tuple[str, Any]] = []

    def mapper(state: Any, v: str) -> tuple[Any, Any]:
        seen.append((v, state))
        return v, state

    run_op([("x", "1"), ("y", "2"), ("x", "3")], lambda s: op.stateful_map("m", s, mapper))
    # Keys x and y may be on different workers: the calls interleave in any order.
    assert sorted(seen) == [("1", None), ("2", None), ("3", "1")]


def test_stateful_flat_map(run_op: Any) -> None:
    items = [("a", 1), ("a", 2), ("b", 3)]
    out = run_op(items, lambda s: op.stateful_flat_map("f", s, lambda st, v: ((st or 0) + v, [v] * v)))
    assert [x for x in out if x[0] == "a"] == [("a", 1), ("a", 2), ("a", 2)]
    assert [x for x in out if x[0] == "b"] == [("b", 3), ("b", 3), ("b", 3)]
    assert len(out) == 6


def test_stateful_flat_map_dedupe(run_op: Any) -> None:
    def dedupe(seen: set[int] | None, v: int) -> tuple[set[int], list[int]]:
        seen = seen or set()
        if v in seen:
            return seen, []
        return seen | {v}, [v]

    items = [("a", 1), ("a", 1), ("b", 1), ("a", 2), ("b", 1)]
    out = run_op(items, lambda s: op.stateful_flat_map("d", s, dedupe))
    assert [x for x in out if x[0] == "a"] == [("a", 1), ("a", 2)]
    assert [x for x in out if x[0] == "b"] == [("b", 1)]
    assert len(out) == 3


# --- stateful (StatefulLogic) ---------------------------------------------------


class Recorder(op.StatefulLogic[str, Any, int]):
    """Counts items; discards on value ``"d"``; logs every call to ``log``."""

    def __init__(self, log: list[Any], resume: int | None) -> None:
        self.log = log
        self.n = resume or 0
        log.append(("build", resume))

    def on_item(self, value: str) -> tuple[list[Any], bool]:
        self.n += 1
        self.log.append(("on_item", value, self.n))
        return [(value, self.n)], value == "d"

    def on_eof(self) -> tuple[list[Any], bool]:
        self.log.append(("on_eof", self.n))
        return [("eof", self.n)], False

    def snapshot(self) -> int:
        return self.n


@pytest.mark.parametrize("batch_size", [1, 4, 10])
def test_stateful_discard_rebuilds_for_the_next_item(run_op: Any, batch_size: int) -> None:
    """Discarding inside a batch gives the key's next item a fresh logic (Bytewax semantics)."""
    log: list[Any] = []
    items = [("a", "x"), ("a", "d"), ("a", "y"), ("a", "d"), ("b", "d"), ("c", "z")]
    out = run_op(items, lambda s: op.stateful("st", s, lambda r: Recorder(log, r)), batch_size=batch_size)
    assert [x for x in out if x[0] == "a"] == [
        ("a", ("x", 1)),
        ("a", ("d", 2)),
        ("a", ("y", 1)),
        ("a", ("d", 2)),
    ]
    assert [x for x in out if x[0] == "b"] == [("b", ("d", 1))]
    # Only the key still holding logic at the end gets on_eof.
    assert [x for x in out if x[1][0] == "eof"] == [("c", ("eof", 1))]
    assert log.count(("build", None)) == 4
    assert ("on_eof", 1) in log


def test_stateful_on_eof_per_key_and_discard_at_eof(run_op: Any) -> None:
    class Count(op.StatefulLogic[int, int, int]):
        def __init__(self, _r: Any) -> None:
            self.n = 0

        def on_item(self, value: int) -> tuple[list[int], bool]:
            self.n += 1
            return [], False

        def on_eof(self) -> tuple[list[int], bool]:
            return [self.n], True

        def snapshot(self) -> int:
            return self.n

    out = run_op([("a", 1), ("b", 1), ("a", 1)], lambda s: op.stateful("c", s, Count))
    assert sorted(out) == [("a", 2), ("b", 1)]


def test_stateful_builder_gets_none_for_new_keys(run_op: Any) -> None:
    resumes: list[Any] = []

    def build(resume: Any) -> Recorder:
        resumes.append(resume)
        return Recorder([], resume)

    run_op([("a", "x"), ("b", "x"), ("a", "x")], lambda s: op.stateful("st", s, build))
    assert resumes == [None, None]


class Timer(op.StatefulLogic[Any, Any, None]):
    """Asks to be notified at ``at``; logs calls; discards on notify if ``discard``."""

    def __init__(self, at: datetime | None, discard: bool, log: list[Any]) -> None:
        self.at = at
        self.discard = discard
        self.fired = 0
        self.log = log
        log.append("build")

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        return [("item", value)], False

    def on_notify(self) -> tuple[list[Any], bool]:
        self.fired += 1
        self.log.append("notify")
        if not self.discard:
            self.at = None
        return [("notify", self.fired)], self.discard

    def on_eof(self) -> tuple[list[Any], bool]:
        self.log.append("eof")
        return [("eof", self.fired)], False

    def notify_at(self) -> datetime | None:
        return self.at

    def snapshot(self) -> None:
        return None


def test_notify_at_in_the_past_fires_once(run_op: Any) -> None:
    log: list[Any] = []
    out = run_op([("a", 1), ("a", 2)], lambda s: op.stateful("t", s, lambda _r: Timer(PAST, False, log)))
    assert sorted(out, key=repr) == sorted(
        [("a", ("item", 1)), ("a", ("item", 2)), ("a", ("notify", 1)), ("a", ("eof", 1))], key=repr
    )
    assert out[0] == ("a", ("item", 1))
    assert out[-1] == ("a", ("eof", 1)), "on_eof comes last"


def test_notify_at_in_the_future_never_fires_before_eof(run_op: Any) -> None:
    log: list[Any] = []
    out = run_op([("a", 1)], lambda s: op.stateful("t", s, lambda _r: Timer(FUTURE, False, log)))
    assert out == [("a", ("item", 1)), ("a", ("eof", 0))]
    assert "notify" not in log


def test_on_notify_discard_rebuilds_on_the_next_item(flow: Dataflow, entry_point: Any) -> None:
    log: list[Any] = []
    s = op.input(
        "inp",
        flow,
        TestingSource([("a", 1), TestingSource.PAUSE(timedelta(milliseconds=20)), ("a", 2)]),
    )
    out: list[Any] = []
    op.output("out", op.stateful("t", s, lambda _r: Timer(PAST, True, log)), TestingSink(out))
    entry_point(flow)
    assert out == [
        ("a", ("item", 1)),
        ("a", ("notify", 1)),
        ("a", ("item", 2)),
        ("a", ("notify", 1)),
    ]
    assert log == ["build", "notify", "build", "notify"]


def test_notify_at_is_asked_again_after_each_call(run_op: Any) -> None:
    """A logic that keeps returning past times is notified repeatedly until it stops."""

    class Countdown(op.StatefulLogic[int, int, int]):
        def __init__(self, _r: Any) -> None:
            self.left = 0

        def on_item(self, value: int) -> tuple[list[int], bool]:
            self.left = value
            return [], False

        def on_notify(self) -> tuple[list[int], bool]:
            self.left -= 1
            return [self.left], False

        def notify_at(self) -> datetime | None:
            return PAST if self.left > 0 else None

        def snapshot(self) -> int:
            return self.left

    assert run_op([("a", 3)], lambda s: op.stateful("c", s, Countdown)) == [
        ("a", 2),
        ("a", 1),
        ("a", 0),
    ]


# --- stateful_batch ----------------------------------------------------------------


def test_stateful_batch_groups_values_per_key_in_order(run_op: Any) -> None:
    batches: list[tuple[Any, list[int]]] = []

    class Sum(op.StatefulBatchLogic[int, int, None]):
        def __init__(self, resume: Any) -> None:
            self.key_seen: Any = resume

        def on_batch(self, values: list[int]) -> tuple[list[int], bool]:
            batches.append((id(self), list(values)))
            return [sum(values)], False

        def snapshot(self) -> None:
            return None

    items = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    out = run_op(items, lambda s: op.stateful_batch("sb", s, Sum), batch_size=5)
    # Keys may be on different workers: compare across keys order-insensitively.
    assert sorted(out) == [("a", 4), ("b", 7), ("c", 4)]
    assert sorted(vs for _, vs in batches) == [[1, 3], [2, 5], [4]]


def test_stateful_batch_discard_drops_the_logic(run_op: Any) -> None:
    builds: list[Any] = []

    class Once(op.StatefulBatchLogic[int, int, None]):
        def __init__(self, resume: Any) -> None:
            builds.append(resume)

        def on_batch(self, values: list[int]) -> tuple[list[int], bool]:
            return list(values), True

        def snapshot(self) -> None:
            return None

    out = run_op([("a", 1), ("a", 2), ("a", 3)], lambda s: op.stateful_batch("sb", s, Once), batch_size=2)
    assert out == [("a", 1), ("a", 2), ("a", 3)]
    assert builds == [None, None]


def test_stateful_batch_logic_defaults() -> None:
    logic: op.StatefulBatchLogic[Any, Any, Any] = op.StatefulBatchLogic()
    assert logic.on_notify() == ([], False)
    assert logic.on_eof() == ([], False)
    assert logic.notify_at() is None
    assert (op.StatefulBatchLogic.RETAIN, op.StatefulBatchLogic.DISCARD) == (False, True)
    assert (op.StatefulLogic.RETAIN, op.StatefulLogic.DISCARD) == (False, True)
    with pytest.raises(NotImplementedError):
        logic.on_batch([1])
    with pytest.raises(NotImplementedError):
        logic.snapshot()


# --- final aggregations -----------------------------------------------------------

AGG = [("a", 1), ("a", 5), ("b", 3), ("a", 2)]


def test_reduce_final_keeps_value_order(run_op: Any) -> None:
    out = run_op(AGG, lambda s: op.reduce_final("r", s, lambda a, b: a * 10 + b))
    assert sorted(out) == [("a", 152), ("b", 3)]


def test_fold_final_builds_a_fresh_accumulator_per_key(run_op: Any) -> None:
    out = run_op(AGG, lambda s: op.fold_final("f", s, list, lambda acc, v: [*acc, v]))
    assert sorted(out) == [("a", [1, 5, 2]), ("b", [3])]
    mutated = run_op(AGG, lambda s: op.fold_final("f", s, list, lambda acc, v: acc.append(v) or acc))
    assert sorted(mutated) == [("a", [1, 5, 2]), ("b", [3])]


def test_fold_final_builder_value_is_the_start(run_op: Any) -> None:
    assert run_op([("a", 1)], lambda s: op.fold_final("f", s, lambda: 100, lambda a, v: a + v)) == [
        ("a", 101)
    ]


def test_final_aggregations_emit_only_at_eof(flow: Dataflow, entry_point: Any) -> None:
    """Before EOF nothing comes out; an EOF sentinel ends the input early."""
    s = op.input("inp", flow, TestingSource([("a", 1), TestingSource.EOF(), ("a", 2)]))
    out: list[Any] = []
    op.output("out", op.reduce_final("r", s, lambda a, b: a + b), TestingSink(out))
    entry_point(flow)
    assert out == [("a", 1)]


def test_count_final(run_op: Any) -> None:
    out = run_op(["a", "b", "a", "c", "a"], lambda s: op.count_final("c", s, lambda x: x))
    assert sorted(out) == [("a", 3), ("b", 1), ("c", 1)]
    keyed = run_op(AGG, lambda s: op.count_final("c", s, lambda kv: kv[0]))
    assert sorted(keyed) == [("a", 3), ("b", 1)]


def test_count_final_key_must_be_a_str(flow: Dataflow, entry_point: Any) -> None:
    s = op.count_final("c", op.input("inp", flow, TestingSource([1, 2])), lambda x: x)
    op.output("out", s, TestingSink([]))
    # Bytewax's words and step path.
    words = r'^step "test\.c\.sum\.fold_final\.stateful\.stateful_batch" requires `str` keys'
    with pytest.raises(RuntimeError, match=words):
        entry_point(flow)


def test_max_and_min_final(run_op: Any) -> None:
    assert sorted(run_op(AGG, lambda s: op.max_final("m", s))) == [("a", 5), ("b", 3)]
    assert sorted(run_op(AGG, lambda s: op.min_final("m", s))) == [("a", 1), ("b", 3)]


def test_max_and_min_final_by_keep_the_first_of_ties(run_op: Any) -> None:
    items = [("a", {"v": v, "n": n}) for v, n in [(1, "x"), (5, "y"), (5, "z"), (0, "w"), (0, "q")]]
    assert run_op(items, lambda s: op.max_final("m", s, by=lambda d: d["v"])) == [("a", {"v": 5, "n": "y"})]
    assert run_op(items, lambda s: op.min_final("m", s, by=lambda d: d["v"])) == [("a", {"v": 0, "n": "w"})]


def test_empty_input_emits_nothing(run_op: Any) -> None:
    assert run_op([], lambda s: op.reduce_final("r", s, lambda a, b: a)) == []
    assert run_op([], lambda s: op.count_final("c", s, str)) == []


# --- collect ------------------------------------------------------------------------


def test_collect_by_max_size_then_eof(run_op: Any) -> None:
    items = [("k", i) for i in range(7)] + [("j", 0)]
    out = run_op(items, lambda s: op.collect("c", s, timedelta(hours=1), 3))
    assert [x for x in out if x[0] == "k"] == [("k", [0, 1, 2]), ("k", [3, 4, 5]), ("k", [6])]
    assert [x for x in out if x[0] == "j"] == [("j", [0])]


def test_collect_max_size_one(run_op: Any) -> None:
    out = run_op([("k", 1), ("k", 2)], lambda s: op.collect("c", s, timedelta(hours=1), 1))
    assert out == [("k", [1]), ("k", [2])]


def test_collect_deadline_already_passed_fires_at_the_next_activation(run_op: Any) -> None:
    """With a clock far in the past, a key's deadline has passed as soon as it is set; as in
    Bytewax 0.21.1, the timer fires at the step's next activation, after that activation's
    items: k's first list takes item 3 from the second batch."""
    items = [("k", 1), ("k", 2), ("k", 3), ("j", 9), ("k", 4)]
    out = run_op(
        items,
        lambda s: op.collect("c", s, timedelta(seconds=1), 10, _now_getter=lambda: PAST),
        batch_size=2,
    )
    assert [x for x in out if x[0] == "k"] == [("k", [1, 2, 3]), ("k", [4])]
    assert [x for x in out if x[0] == "j"] == [("j", [9])]
    assert len(out) == 3


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_collect_timeout_with_the_system_clock(flow: Dataflow, entry_point: Any) -> None:
    items = [("k", 1), ("k", 2), TestingSource.PAUSE(timedelta(milliseconds=500)), ("k", 3)]
    s = op.input("inp", flow, TestingSource(items))
    out: list[Any] = []
    op.output("out", op.collect("c", s, timedelta(milliseconds=10), 10), TestingSink(out))
    entry_point(flow)
    assert out == [("k", [1, 2]), ("k", [3])]


def test_collect_max_size_must_be_positive(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([("k", 1)]))
    with pytest.raises(ValueError, match="max_size"):
        op.collect("c", s, timedelta(seconds=1), 0)


@pytest.mark.timeout(30)
def test_notify_at_always_due_does_not_hang_the_run(entry_point: Any) -> None:
    from datetime import datetime

    notified: list[int] = []

    class AlwaysDue(op.StatefulLogic):
        def on_item(self, value: Any) -> Any:
            return [value], False

        def on_notify(self) -> Any:
            notified.append(1)
            return [], False

        def notify_at(self) -> datetime:
            return datetime(2000, 1, 1, tzinfo=UTC)

        def snapshot(self) -> None:
            return None

    flow = Dataflow("due")
    s = op.input("inp", flow, TestingSource([("a", 1), ("a", 2)]))
    out: list[Any] = []
    op.output("out", op.stateful("s", s, lambda _: AlwaysDue()), TestingSink(out))
    entry_point(flow)
    assert out == [("a", 1), ("a", 2)]
    assert notified, "the due timer fired"
