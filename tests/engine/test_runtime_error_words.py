"""Runtime errors start with Bytewax 0.21.1's exact words and step paths.

Each expected line below was observed from Bytewax 0.21.1 itself (its
outermost exception, the Rust source location dropped). Bytewax quotes step
ids and keys with Rust's ``{:?}`` (double quotes) and names the core step its
operators nest down to (``key_on`` -> ``map`` -> ``flat_map_batch``); Headrace
nests differently but shows Bytewax's path in messages, keeping its own step
ids (which key recovery state and metrics). Headrace may add detail after
Bytewax's words, never change them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
import headrace.operators.windowing as win
from headrace._engine import execute
from headrace._engine._plan import build_plan
from headrace.dataflow import Dataflow, Stream
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def boom(*_args: Any) -> Any:
    raise ValueError("boom")


class _Logic(op.StatefulLogic):
    """Fails in the method named by ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_item(self, value: Any) -> Any:
        if self.kind == "on_item":
            boom()
        return [value], False

    def on_notify(self) -> Any:
        boom()

    def on_eof(self) -> Any:
        if self.kind == "on_eof":
            boom()
        return [], False

    def notify_at(self) -> Any:
        if self.kind == "notify_at":
            boom()
        if self.kind == "notify_at_int":
            return 5
        return T0 if self.kind == "on_notify" else None

    def snapshot(self) -> Any:
        return None


def _logic(kind: str) -> Callable[[Stream[Any]], Stream[Any]]:
    return lambda s: op.stateful("s", s, lambda _resume: _Logic(kind))


def _clock() -> win.EventClock:
    return win.EventClock(lambda v: T0 + timedelta(seconds=v), wait_for_system_duration=timedelta(0))


WINDOWER = win.TumblingWindower(length=timedelta(seconds=10), align_to=T0)
PAIRS = [("a", 1), ("b", 2)]

# name -> (input items, the operator under test, Bytewax's outermost line)
CASES: dict[str, tuple[list[Any], Callable[[Stream[Any]], Any], str]] = {
    "map": ([1], lambda s: op.map("s", s, boom), 'error calling `mapper` in step "f.s.flat_map_batch"'),
    "flat_map": (
        [1],
        lambda s: op.flat_map("s", s, boom),
        'error calling `mapper` in step "f.s.flat_map_batch"',
    ),
    "filter": (
        [1],
        lambda s: op.filter("s", s, boom),
        'error calling `mapper` in step "f.s.flat_map.flat_map_batch"',
    ),
    "filter_map": (
        [1],
        lambda s: op.filter_map("s", s, boom),
        'error calling `mapper` in step "f.s.flat_map.flat_map_batch"',
    ),
    "flatten": (
        [1],
        lambda s: op.flatten("s", s),
        'error calling `mapper` in step "f.s.flat_map.flat_map_batch"',
    ),
    "map_value": (
        PAIRS,
        lambda s: op.map_value("s", s, boom),
        'error calling `mapper` in step "f.s.map.flat_map_batch"',
    ),
    "map_value not a pair": (
        [1],
        lambda s: op.map_value("s", s, str),
        'error calling `mapper` in step "f.s.map.flat_map_batch"',
    ),
    "filter_value": (
        PAIRS,
        lambda s: op.filter_value("s", s, boom),
        'error calling `mapper` in step "f.s.filter.flat_map.flat_map_batch"',
    ),
    "filter_map_value": (
        PAIRS,
        lambda s: op.filter_map_value("s", s, boom),
        'error calling `mapper` in step "f.s.flat_map_value.flat_map.flat_map_batch"',
    ),
    "flat_map_value": (
        PAIRS,
        lambda s: op.flat_map_value("s", s, boom),
        'error calling `mapper` in step "f.s.flat_map.flat_map_batch"',
    ),
    "key_on": (
        [1],
        lambda s: op.key_on("s", s, boom),
        'error calling `mapper` in step "f.s.map.flat_map_batch"',
    ),
    "key_rm not a pair": (
        [1],
        lambda s: op.key_rm("s", s),
        'error calling `mapper` in step "f.s.map.flat_map_batch"',
    ),
    "inspect": (
        [1],
        lambda s: op.inspect("s", s, boom),
        'error calling inspector in step "f.s.inspect_debug"',
    ),
    "inspect_debug": ([1], lambda s: op.inspect_debug("s", s, boom), 'error calling inspector in step "f.s"'),
    "branch": ([1], lambda s: op.branch("s", s, boom).trues, 'error calling predicate in step "f.s"'),
    "flat_map_batch": (
        [1],
        lambda s: op.flat_map_batch("s", s, boom),
        'error calling `mapper` in step "f.s"',
    ),
    "stateful_map": (
        PAIRS,
        lambda s: op.stateful_map("s", s, boom),
        "error calling `StatefulBatchLogic.on_batch` in step "
        '"f.s.stateful_flat_map.stateful.stateful_batch" for key "a"',
    ),
    "stateful_flat_map": (
        PAIRS,
        lambda s: op.stateful_flat_map("s", s, boom),
        'error calling `StatefulBatchLogic.on_batch` in step "f.s.stateful.stateful_batch" for key "a"',
    ),
    "stateful on_item": (
        PAIRS,
        _logic("on_item"),
        'error calling `StatefulBatchLogic.on_batch` in step "f.s.stateful_batch" for key "a"',
    ),
    "stateful on_notify": (
        PAIRS,
        _logic("on_notify"),
        'error calling `StatefulBatchLogic.on_notify` in "f.s.stateful_batch" for key "a"',
    ),
    "stateful on_eof": (
        PAIRS,
        _logic("on_eof"),
        'error calling `StatefulBatchLogic.on_eof` in "f.s.stateful_batch" for key "a"',
    ),
    "stateful notify_at": (
        PAIRS,
        _logic("notify_at"),
        'error calling `StatefulBatchLogic.notify_at` in "f.s.stateful_batch" for key "a"',
    ),
    "stateful notify_at not a datetime": (
        PAIRS,
        _logic("notify_at_int"),
        'error calling `StatefulBatchLogic.notify_at` in "f.s.stateful_batch" for key "a"',
    ),
    "fold_final": (
        PAIRS,
        lambda s: op.fold_final("s", s, list, boom),
        'error calling `StatefulBatchLogic.on_batch` in step "f.s.stateful.stateful_batch" for key "a"',
    ),
    "reduce_final not a pair": (
        [1],
        lambda s: op.reduce_final("s", s, boom),
        'error calling `mapper` in step "f.s.pre_reduce"',
    ),
    "reduce_final short": (
        [("a",)],
        lambda s: op.reduce_final("s", s, boom),
        'error calling `mapper` in step "f.s.pre_reduce"',
    ),
    "count_final key": (
        [1],
        lambda s: op.count_final("s", s, boom),
        'error calling `mapper` in step "f.s.init_count.flat_map_batch"',
    ),
    "join not a pair": (
        [1],
        lambda s: op.join("s", s, s),
        'error calling `mapper` in step "f.s.add_names.label_0.map.flat_map_batch"',
    ),
    "stateful_map not keyed": (
        [1],
        lambda s: op.stateful_map("s", s, lambda st, v: (st, v)),
        'step "f.s.stateful_flat_map.stateful.stateful_batch" requires `(key, value)` 2-tuple from '
        "upstream for routing; got a `int` instead",
    ),
    "count_final int key": (
        [1],
        lambda s: op.count_final("s", s, lambda x: x),
        'step "f.s.sum.fold_final.stateful.stateful_batch" requires `str` keys in `(key, value)` from '
        "upstream; got a `int` instead",
    ),
    "fold_window": (
        PAIRS,
        lambda s: win.fold_window("s", s, _clock(), WINDOWER, list, boom, list.__add__).down,
        'error calling `StatefulBatchLogic.on_batch` in step "f.s.window.stateful_batch" for key "a"',
    ),
    "count_window key": (
        [1],
        lambda s: win.count_window("s", s, _clock(), WINDOWER, boom).down,
        'error calling `mapper` in step "f.s.keyed.map.flat_map_batch"',
    ),
    "max_window": (
        [("a", 1), ("a", 2)],
        lambda s: win.max_window("s", s, _clock(), WINDOWER, boom).down,
        "error calling `StatefulBatchLogic.on_batch` in step "
        '"f.s.reduce_window.fold_window.window.stateful_batch" for key "a"',
    ),
    "join_window not a pair": (
        [1],
        lambda s: win.join_window("s", _clock(), WINDOWER, s, s).down,
        'error calling `mapper` in step "f.s.add_names.label_0.map.flat_map_batch"',
    ),
}


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_runtime_error_starts_with_bytewax_words(name: str, fuse: bool) -> None:
    items, build, words = CASES[name]
    flow = Dataflow("f")
    out = build(op.input("inp", flow, TestingSource(items)))
    op.output("out", out, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        execute(flow, workers_per_process=1, epoch_interval=None, fuse=fuse)
    assert str(info.value).startswith(words), str(info.value)


def test_keys_are_quoted_as_rust_debug_strings() -> None:
    flow = Dataflow("f")
    key = "a\"b\\c\nd\te\x01f'gé\u200b"
    s = op.input("inp", flow, TestingSource([(key, 1)]))
    op.output("out", op.stateful_map("s", s, boom), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    # Bytewax 0.21.1's line for this key, exactly.
    assert str(info.value).startswith(
        'error calling `StatefulBatchLogic.on_batch` in step "f.s.stateful_flat_map.stateful.stateful_batch" '
        'for key "a\\"b\\\\c\\nd\\te\\u{1}f\'gé\\u{200b}"'
    ), str(info.value)


def test_reduce_final_not_a_pair_fails_in_pre_reduce_on_two_workers() -> None:
    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource([("a", 1, 2)]))
    op.output("out", op.reduce_final("s", s, boom), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert str(info.value).startswith(
        'error calling `mapper` in step "f.s.pre_reduce": ValueError: too many values to unpack (expected 2)'
    ), str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_display_ids_leave_step_ids_unchanged() -> None:
    flow = Dataflow("f")
    s = op.key_on("k", op.input("inp", flow, TestingSource([1])), str)
    op.output("out", op.join("j", op.stateful_map("sm", s, lambda st, v: (st, v)), s), TestingSink([]))
    steps = [(st.step_id, st.display_id) for st in build_plan(flow).steps]
    assert steps == [
        ("f.inp", "f.inp"),
        ("f.k.flat_map_batch", "f.k.map.flat_map_batch"),
        ("f.sm.stateful_batch", "f.sm.stateful_flat_map.stateful.stateful_batch"),
        ("f.j.label_0.flat_map_batch", "f.j.add_names.label_0.map.flat_map_batch"),
        ("f.j.label_1.flat_map_batch", "f.j.add_names.label_1.map.flat_map_batch"),
        ("f.j.merge", "f.j.add_names.merge"),
        ("f.j.join", "f.j.join.stateful_batch"),
        ("f.out", "f.out"),
    ]


def test_raises_fails_writing_its_output() -> None:
    flow = Dataflow("f")
    s = op.input("inp", flow, TestingSource([1, 2]))
    op.raises("never", op.filter("big", s, lambda x: x > 1))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert str(info.value) == (
        'error writing output batch in step "f.never.output": '
        "RuntimeError: `raises` step 'f.never' got an item: 2"
    )
    assert isinstance(info.value.__cause__, RuntimeError)
