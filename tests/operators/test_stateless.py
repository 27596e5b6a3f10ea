"""Stateless operators: map, filter, flat_map..., branch, merge, inspect, enrich_cached.

Expected values were checked against Bytewax 0.21.1.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource, TimeTestingGetter, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


# --- one-to-one, filters ----------------------------------------------------


def test_map(run_op: Any) -> None:
    assert run_op([1, 2, 3], lambda s: op.map("m", s, lambda x: x * 10)) == [10, 20, 30]


def test_map_may_return_none(run_op: Any) -> None:
    assert run_op([1, 2], lambda s: op.map("m", s, lambda x: None)) == [None, None]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_map_keeps_order_over_batches(run_op: Any, batch_size: int) -> None:
    out = run_op(range(11), lambda s: op.map("m", s, str), batch_size=batch_size)
    assert out == [str(i) for i in range(11)]


def test_filter_uses_truthiness(run_op: Any) -> None:
    items = [0, 1, "", "x", None, [], [0]]
    assert run_op(items, lambda s: op.filter("f", s, lambda x: x)) == [1, "x", [0]]


def test_filter_map_drops_only_none(run_op: Any) -> None:
    items = ["1", "x", "0", ""]
    out = run_op(items, lambda s: op.filter_map("fm", s, lambda v: int(v) if v.isdigit() else None))
    assert out == [1, 0]
    falsy = run_op([0, "", False, None], lambda s: op.filter_map("fm", s, lambda v: v))
    assert falsy == [0, "", False]


# --- one-to-many -------------------------------------------------------------


def test_flat_map_with_lists_generators_and_strings(run_op: Any) -> None:
    assert run_op(["a b", "", "c"], lambda s: op.flat_map("f", s, str.split)) == ["a", "b", "c"]

    def gen(n: int) -> Any:
        yield from range(n)

    assert run_op([3, 0, 2], lambda s: op.flat_map("f", s, gen)) == [0, 1, 2, 0, 1]
    assert run_op(["ab"], lambda s: op.flat_map("f", s, lambda x: x)) == ["a", "b"]


def test_flat_map_batch_sees_whole_batches(run_op: Any) -> None:
    out = run_op(range(7), lambda s: op.flat_map_batch("b", s, lambda xs: [list(xs)]), batch_size=3)
    assert out == [[0, 1, 2], [3, 4, 5], [6]]


def test_flat_map_batch_may_change_the_count(run_op: Any) -> None:
    def dup_sum(xs: list[int]) -> list[int]:
        return [*xs, sum(xs)]

    out = run_op([1, 2, 3, 4], lambda s: op.flat_map_batch("b", s, dup_sum), batch_size=2)
    assert out == [1, 2, 3, 3, 4, 7]
    assert run_op([1, 2], lambda s: op.flat_map_batch("b", s, lambda xs: ())) == []
    gen = run_op([1, 2], lambda s: op.flat_map_batch("b", s, lambda xs: (x for x in xs)))
    assert gen == [1, 2]


def test_flatten(run_op: Any) -> None:
    out = run_op([[1, 2], (3,), "ab", [], range(2)], lambda s: op.flatten("f", s))
    assert out == [1, 2, 3, "a", "b", 0, 1]


def test_flatten_of_a_non_iterable_names_the_step(flow: Dataflow, entry_point: Any) -> None:
    s = op.flatten("flat", op.input("inp", flow, TestingSource([1])))
    op.output("out", s, TestingSink([]))
    # Bytewax's words and step path, then its cause's words.
    words = r'"test\.flat\.flat_map\.flat_map_batch": TypeError: step .test\.flat. requires upstream'
    with pytest.raises(BytewaxRuntimeError, match=words):
        entry_point(flow)


# --- keyed helpers ------------------------------------------------------------

KV = [("a", 1), ("b", 0), ("c", None), ("d", "")]


def test_key_on(run_op: Any) -> None:
    out = run_op([{"u": "x", "n": 1}], lambda s: op.key_on("k", s, lambda d: d["u"]))
    assert out == [("x", {"u": "x", "n": 1})]


def test_key_rm(run_op: Any) -> None:
    assert run_op(KV, lambda s: op.key_rm("k", s)) == [1, 0, None, ""]


def test_map_value(run_op: Any) -> None:
    assert run_op([("a", 1), ("b", 2)], lambda s: op.map_value("m", s, lambda v: v * 3)) == [
        ("a", 3),
        ("b", 6),
    ]


def test_filter_value(run_op: Any) -> None:
    out = run_op(KV, lambda s: op.filter_value("f", s, lambda v: v is not None))
    assert out == [("a", 1), ("b", 0), ("d", "")]


def test_filter_map_value_drops_only_none(run_op: Any) -> None:
    assert run_op(KV, lambda s: op.filter_map_value("f", s, lambda v: v)) == [
        ("a", 1),
        ("b", 0),
        ("d", ""),
    ]


def test_flat_map_value(run_op: Any) -> None:
    out = run_op([("a", "x y"), ("b", "")], lambda s: op.flat_map_value("f", s, str.split))
    assert out == [("a", "x"), ("a", "y")]


def test_keyed_operators_accept_any_key_but_stateful_checks(run_op: Any) -> None:
    """Stateless keyed operators only unpack pairs; key types are checked by stateful ones."""
    assert run_op([(1, 2)], lambda s: op.map_value("m", s, str)) == [(1, "2")]


# --- branch, merge, redistribute ------------------------------------------------


def test_branch_splits_and_keeps_order(flow: Dataflow, entry_point: Any) -> None:
    b = op.branch("even", op.input("inp", flow, TestingSource(range(10), batch_size=3)), lambda x: x % 2 == 0)
    evens: list[int] = []
    odds: list[int] = []
    op.output("e", b.trues, TestingSink(evens))
    op.output("o", b.falses, TestingSink(odds))
    entry_point(flow)
    assert evens == [0, 2, 4, 6, 8]
    assert odds == [1, 3, 5, 7, 9]


def test_branch_output_type(flow: Dataflow) -> None:
    b = op.branch("b", op.input("inp", flow, TestingSource([1])), bool)
    assert isinstance(b, op.BranchOut)
    trues, falses = b.trues, b.falses
    assert trues.stream_id != falses.stream_id


def test_branch_with_one_side_unused(flow: Dataflow, entry_point: Any) -> None:
    b = op.branch("b", op.input("inp", flow, TestingSource(range(5))), lambda x: x > 2)
    out: list[int] = []
    op.output("out", b.trues, TestingSink(out))
    entry_point(flow)
    assert out == [3, 4]


def test_merge_many_and_the_same_stream_twice(flow: Dataflow, entry_point: Any) -> None:
    a = op.input("a", flow, TestingSource([1, 2]))
    b = op.input("b", flow, TestingSource([3]))
    out: list[int] = []
    op.output("out", op.merge("m", a, b, a), TestingSink(out))
    single: list[int] = []
    op.output("single", op.merge("m1", b), TestingSink(single))
    entry_point(flow)
    assert sorted(out) == [1, 1, 2, 2, 3]
    assert single == [3]


def test_merge_keeps_each_input_in_order(flow: Dataflow, entry_point: Any) -> None:
    a = op.input("a", flow, TestingSource(range(0, 20), batch_size=3))
    b = op.input("b", flow, TestingSource(range(100, 120), batch_size=4))
    out: list[int] = []
    op.output("out", op.merge("m", a, b), TestingSink(out))
    entry_point(flow)
    assert [x for x in out if x < 100] == list(range(20))
    assert [x for x in out if x >= 100] == list(range(100, 120))


def test_merge_needs_a_stream() -> None:
    with pytest.raises(TypeError):
        op.merge("m")


def test_redistribute_single_worker_is_identity(flow: Dataflow) -> None:
    # run_main only: order through a redistribute is only kept when there is one worker.
    out: list[int] = []
    s = op.redistribute("r", op.input("inp", flow, TestingSource(range(10), batch_size=4)))
    op.output("out", s, TestingSink(out))
    run_main(flow)
    assert out == list(range(10))


def test_redistribute_keeps_every_item(run_op: Any) -> None:
    assert sorted(run_op(range(10), lambda s: op.redistribute("r", s), batch_size=4)) == list(range(10))


def test_redistribute_keeps_every_item_on_many_workers(flow: Dataflow) -> None:
    out: list[int] = []
    s = op.redistribute("r", op.input("inp", flow, TestingSource(range(50), batch_size=7)))
    op.output("out", s, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert sorted(out) == list(range(50))


# --- inspect --------------------------------------------------------------------


def test_inspect_prints_step_id_and_repr(run_op: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_op([1, "a", (1, 2)], lambda s: op.inspect("look", s))
    assert out == [1, "a", (1, 2)]
    assert capsys.readouterr().out == "test.look: 1\ntest.look: 'a'\ntest.look: (1, 2)\n"


def test_inspect_custom_inspector_gets_the_outer_step_id(run_op: Any) -> None:
    seen: list[tuple[str, Any]] = []
    run_op([1, 2], lambda s: op.inspect("look", s, lambda sid, x: seen.append((sid, x))))
    assert seen == [("test.look", 1), ("test.look", 2)]


def test_inspect_debug_prints_worker_and_epoch(flow: Dataflow, capsys: pytest.CaptureFixture[str]) -> None:
    # run_main only: asserts worker index 0, which only one worker guarantees.
    op.output("out", op.inspect_debug("dbg", op.input("inp", flow, TestingSource(["x", 2]))), TestingSink([]))
    run_main(flow)
    assert capsys.readouterr().out == "test.dbg W0 @1: 'x'\ntest.dbg W0 @1: 2\n"


def test_inspect_debug_custom_inspector(flow: Dataflow) -> None:
    # run_main only: asserts worker index 0, which only one worker guarantees.
    seen: list[tuple[Any, ...]] = []
    s = op.inspect_debug("dbg", op.input("inp", flow, TestingSource([7])), lambda *a: seen.append(a))
    op.output("out", s, TestingSink([]))
    run_main(flow)
    assert seen == [("test.dbg", 7, 1, 0)]


def test_inspect_debug_epochs_advance_with_epoch_interval(run_op: Any) -> None:
    seen: list[tuple[Any, int]] = []
    run_op(
        range(4),
        lambda s: op.inspect_debug("dbg", s, lambda _s, x, e, _w: seen.append((x, e))),
        epoch_interval=timedelta(0),
    )
    assert [x for x, _ in seen] == [0, 1, 2, 3]
    epochs = [e for _, e in seen]
    assert epochs[0] == 1
    assert epochs == sorted(epochs)
    assert epochs[-1] > 1, "a zero epoch interval closes an epoch after each poll"
    seen.clear()
    run_op(range(4), lambda s: op.inspect_debug("dbg", s, lambda _s, x, e, _w: seen.append((x, e))))
    assert seen == [(0, 1), (1, 1), (2, 1), (3, 1)], "the default interval is one long epoch"


def test_inspect_passes_items_through_unchanged(run_op: Any) -> None:
    obj = {"mutable": [1]}
    out = run_op([obj], lambda s: op.inspect("look", s, lambda _sid, _x: None))
    assert out[0] is obj


# --- raises ------------------------------------------------------------------------


def test_raises_is_silent_without_items(flow: Dataflow, entry_point: Any) -> None:
    s = op.input("inp", flow, TestingSource([1, 2]))
    out: list[int] = []
    op.output("out", s, TestingSink(out))
    op.raises("never", op.filter("none", s, lambda x: x > 5))
    entry_point(flow)
    assert out == [1, 2]


def test_raises_fails_on_the_first_item(flow: Dataflow, entry_point: Any) -> None:
    s = op.input("inp", flow, TestingSource([1, 2]))
    op.raises("never", s)
    with pytest.raises(BytewaxRuntimeError, match=r"'test\.never'") as info:
        entry_point(flow)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "got an item: 1" in str(info.value.__cause__)


def test_raises_counts_as_an_output(flow: Dataflow, entry_point: Any) -> None:
    op.raises("never", op.filter("none", op.input("inp", flow, TestingSource([1])), bool))
    with pytest.raises(BytewaxRuntimeError):
        entry_point(flow)


# --- enrich_cached / TTLCache --------------------------------------------------------


def test_enrich_cached_calls_the_getter_once_per_key(run_op: Any) -> None:
    calls: list[str] = []

    def getter(k: str) -> str:
        calls.append(k)
        return f"{k.upper()}{len(calls)}"

    out = run_op(
        ["a", "b", "a", "a", "b"],
        lambda s: op.enrich_cached("e", s, getter, lambda cache, x: (x, cache.get(x))),
    )
    assert out == [("a", "A1"), ("b", "B2"), ("a", "A1"), ("a", "A1"), ("b", "B2")]
    assert calls == ["a", "b"]


def test_enrich_cached_refreshes_after_ttl(run_op: Any) -> None:
    """An entry is fresh while its age is at most ``ttl`` (as in Bytewax)."""
    calls: list[str] = []
    clock = TimeTestingGetter(datetime(2024, 1, 1, tzinfo=UTC))

    def tick() -> datetime:
        clock.advance(timedelta(seconds=1))
        return clock.get()

    def getter(k: str) -> str:
        calls.append(k)
        return f"{k}{len(calls)}"

    out = run_op(
        ["a"] * 5,
        lambda s: op.enrich_cached(
            "e", s, getter, lambda c, x: c.get(x), ttl=timedelta(seconds=2), _now_getter=tick
        ),
    )
    # Fetched at t=1; ages 1 and 2 hit; age 3 refetches at t=4.
    assert out == ["a1", "a1", "a1", "a2", "a2"]


def test_enrich_cached_mapper_can_ignore_or_use_many_keys(run_op: Any) -> None:
    table = {"x": 1, "y": 2}
    out = run_op(
        [("x", "y"), ("y", "y")],
        lambda s: op.enrich_cached("e", s, table.__getitem__, lambda c, t: c.get(t[0]) + c.get(t[1])),
    )
    assert out == [3, 4]


def test_ttl_cache_get_remove_and_expiry() -> None:
    now = [datetime(2024, 1, 1, tzinfo=UTC)]
    calls: list[str] = []

    def get(k: str) -> str:
        calls.append(k)
        return k * 2

    cache = op.TTLCache(get, lambda: now[0], timedelta(seconds=10))
    assert cache.get("x") == "xx"
    now[0] += timedelta(seconds=10)
    assert cache.get("x") == "xx"
    assert calls == ["x"]
    now[0] += timedelta(microseconds=1)
    assert cache.get("x") == "xx"
    assert calls == ["x", "x"]
    cache.remove("x")
    assert cache.get("x") == "xx"
    assert calls == ["x", "x", "x"]


def test_enrich_cached_default_ttl_never_expires(run_op: Any) -> None:
    calls: list[str] = []
    out = run_op(
        ["k", "k"],
        lambda s: op.enrich_cached("e", s, lambda k: calls.append(k) or k, lambda c, x: c.get(x)),
    )
    assert out == ["k", "k"]
    assert calls == ["k"]


# --- stateless chains are order-preserving end to end ------------------------------


def test_long_chain(run_op: Any) -> None:
    def build(s: Any) -> Any:
        s = op.map("a", s, lambda x: x + 1)
        s = op.filter("b", s, lambda x: x % 3)
        s = op.key_on("c", s, lambda x: str(x % 2))
        s = op.map_value("d", s, lambda v: v * 10)
        s = op.filter_value("e", s, lambda v: v != 50)
        s = op.flat_map_value("f", s, lambda v: [v, -v])
        return op.key_rm("g", s)

    expected = []
    for x in range(12):
        y = x + 1
        if y % 3 and y * 10 != 50:
            expected += [y * 10, -y * 10]
    assert run_op(range(12), build, batch_size=5) == expected
