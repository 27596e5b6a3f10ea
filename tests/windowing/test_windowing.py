"""Windowing operators: results, late data, session merges, EOF, time-driven closing, errors.

Expected outputs were checked against Bytewax 0.21.1 on the same inputs. The
clocks use a fixed ``now_getter`` unless a test is about time passing, so the
watermark moves only with the data and results are exact.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
import headrace.operators.windowing as win
from headrace.dataflow import Dataflow, Operator, Stream
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.testing import TestingSink, TestingSource, TimeTestingGetter, cluster_main, run_main
from tests.support.errors import causes

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
TEN_S = win.TumblingWindower(timedelta(seconds=10), T0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def clock(wait: float = 0, get: Callable[[Any], datetime] = lambda v: v[0]) -> win.EventClock:
    """An event clock whose system time stands still: only data moves the watermark."""
    return win.EventClock(get, timedelta(seconds=wait), now_getter=lambda: NOW)


def ts_items(key: str, pairs: list[tuple[float, Any]]) -> list[tuple[str, tuple[datetime, Any]]]:
    return [(key, (at(s), v)) for s, v in pairs]


Meta = tuple[str, tuple[int, float, float, list[int]]]


def plain_meta(metas: list[Any]) -> list[Meta]:
    """``(key, (wid, WindowMetadata))`` -> ``(key, (wid, open_s, close_s, merged_ids))``."""
    return [
        (
            k,
            (
                wid,
                (m.open_time - T0).total_seconds(),
                (m.close_time - T0).total_seconds(),
                sorted(m.merged_ids),
            ),
        )
        for k, (wid, m) in metas
    ]


def values_of(down: list[Any]) -> list[Any]:
    """Collected ``(ts, v)`` lists -> lists of ``v``."""
    return [(k, (wid, [v for _ts, v in vs])) for k, (wid, vs) in down]


def run_window(
    entry_point: Callable[[Dataflow], None],
    items: list[Any],
    build: Callable[[Stream[Any]], win.WindowOut[Any, Any]],
    batch_size: int = 1,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Run ``build(input)`` with ``entry_point(flow)``; return its (down, late, meta) outputs."""
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource(items, batch_size=batch_size))
    wo = build(s)
    down: list[Any] = []
    late: list[Any] = []
    meta: list[Any] = []
    op.output("out_down", wo.down, TestingSink(down))
    op.output("out_late", wo.late, TestingSink(late))
    op.output("out_meta", wo.meta, TestingSink(meta))
    entry_point(flow)
    return down, late, meta


def two_threads(flow: Dataflow) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=2)


# --- tumbling, late data, ordering ---------------------------------------------

LATE_ITEMS = ts_items("a", [(1, "a1"), (3, "a3"), (12, "a12"), (2, "a2"), (25, "a25"), (4, "a4")])


@pytest.mark.parametrize("batch_size", [1, 2, 6])
def test_collect_window_tumbling_with_late_items_and_meta(batch_size: int, entry_point: Any) -> None:
    down, late, meta = run_window(
        entry_point, LATE_ITEMS, lambda s: win.collect_window("win", s, clock(5), TEN_S), batch_size
    )
    if batch_size == 1:
        assert values_of(down) == [
            ("a", (0, ["a1", "a3"])),
            ("a", (1, ["a12"])),
            ("a", (2, ["a25"])),
        ]
        assert [(k, (wid, v)) for k, (wid, (_ts, v)) in late] == [
            ("a", (0, "a2")),
            ("a", (0, "a4")),
        ]
        assert plain_meta(meta) == [
            ("a", (0, 0.0, 10.0, [])),
            ("a", (1, 10.0, 20.0, [])),
            ("a", (2, 20.0, 30.0, [])),
        ]
    else:
        # Within one batch the watermark is raised by every item in turn,
        # so the same values are late whatever the batching.
        ref = run_window(entry_point, LATE_ITEMS, lambda s: win.collect_window("win", s, clock(5), TEN_S))
        assert (values_of(down), late, plain_meta(meta)) == (
            values_of(ref[0]),
            ref[1],
            plain_meta(ref[2]),
        )


UNSORTED = ts_items("x", [(5, "x5"), (2, "x2"), (4, "x4")])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ordered_windows_see_values_in_timestamp_order(batch_size: int, entry_point: Any) -> None:
    down, late, _ = run_window(
        entry_point, UNSORTED, lambda s: win.collect_window("win", s, clock(10), TEN_S), batch_size
    )
    assert values_of(down) == [("x", (0, ["x2", "x4", "x5"]))]
    assert late == []


def test_unordered_windows_see_values_in_arrival_order(entry_point: Any) -> None:
    down, _, _ = run_window(
        entry_point, UNSORTED, lambda s: win.collect_window("win", s, clock(10), TEN_S, ordered=False)
    )
    assert values_of(down) == [("x", (0, ["x5", "x2", "x4"]))]


def test_sliding_windows_and_late_items_report_every_window(entry_point: Any) -> None:
    items = ts_items("k", [(12, "c12"), (1, "c1"), (13, "c13")])
    sliding = win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), T0)
    down, late, meta = run_window(
        entry_point, items, lambda s: win.collect_window("win", s, clock(), sliding)
    )
    assert values_of(down) == [("k", (1, ["c12", "c13"])), ("k", (2, ["c12", "c13"]))]
    assert [(k, wid) for k, (wid, _v) in late] == [("k", -1), ("k", 0)]
    assert plain_meta(meta) == [("k", (1, 5.0, 15.0, [])), ("k", (2, 10.0, 20.0, []))]


def test_eof_flushes_every_open_window_in_open_order(entry_point: Any) -> None:
    items = ts_items("h", [(1, "h1"), (35, "h35"), (12, "h12"), (24, "h24")])
    items += ts_items("i", [(5, "i5")])
    # A day's wait: no window can close before the end of input.
    down, late, meta = run_window(
        entry_point, items, lambda s: win.collect_window("win", s, clock(86400), TEN_S)
    )
    assert [x for x in values_of(down) if x[0] == "h"] == [
        ("h", (0, ["h1"])),
        ("h", (1, ["h12"])),
        ("h", (2, ["h24"])),
        ("h", (3, ["h35"])),
    ]
    assert [x for x in values_of(down) if x[0] == "i"] == [("i", (0, ["i5"]))]
    assert late == []
    assert len(meta) == 5


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_items_on_window_boundaries_skip_empty_windows(batch_size: int, entry_point: Any) -> None:
    items = ts_items("b", [(0, 0), (20, 20), (40, 40), (49.999, 49), (50, 50), (70, 70), (75, 75)])
    down, late, meta = run_window(
        entry_point, items, lambda s: win.collect_window("win", s, clock(), TEN_S), batch_size
    )
    assert values_of(down) == [
        ("b", (0, [0])),
        ("b", (2, [20])),
        ("b", (4, [40, 49])),
        ("b", (5, [50])),
        ("b", (7, [70, 75])),
    ]
    assert late == []
    assert [wid for _k, (wid, _m) in meta] == [0, 2, 4, 5, 7]


# --- session windows -------------------------------------------------------------

# Sessions at 0, 20 and 40 s; 30 bridges 20 and 40, then 10 bridges 0 and 20.
BRIDGED = ts_items("s", [(0, 1), (20, 2), (40, 3), (30, 4), (10, 5)])
GAP_10 = win.SessionWindower(timedelta(seconds=10))


def test_session_merges_report_merged_ids_and_merge_state(entry_point: Any) -> None:
    down, late, meta = run_window(
        entry_point,
        BRIDGED,
        lambda s: win.fold_window(
            "win",
            s,
            clock(100),
            GAP_10,
            list,
            lambda acc, v: [*acc, v[1]],
            lambda a, b: a + b,
            ordered=False,
        ),
    )
    assert down == [("s", (0, [1, 5, 2, 4, 3]))]
    assert late == []
    # Session 2 merged into 1, then 1 into 0: only the direct original is listed.
    assert plain_meta(meta) == [("s", (0, 0.0, 40.0, [1]))]


def test_session_merges_in_one_batch_and_ordered_mode(entry_point: Any) -> None:
    down, _, meta = run_window(
        entry_point, BRIDGED, lambda s: win.collect_window("win", s, clock(100), GAP_10, ordered=False), 5
    )
    assert values_of(down) == [("s", (0, [1, 5, 2, 4, 3]))]
    assert plain_meta(meta) == [("s", (0, 0.0, 40.0, [1]))]
    # Ordered, values wait for the watermark and arrive sorted: nothing to merge.
    down, _, meta = run_window(
        entry_point, BRIDGED, lambda s: win.collect_window("win", s, clock(100), GAP_10)
    )
    assert values_of(down) == [("s", (0, [1, 5, 2, 4, 3]))]
    assert plain_meta(meta) == [("s", (0, 0.0, 40.0, []))]


def test_session_late_items_get_the_late_session_id(entry_point: Any) -> None:
    items = ts_items("s", [(0, 1), (3, 2), (30, 3), (1, 4), (31, 5), (50, 6)])
    gap = win.SessionWindower(timedelta(seconds=5))
    down, late, meta = run_window(entry_point, items, lambda s: win.collect_window("win", s, clock(), gap))
    assert values_of(down) == [("s", (0, [1, 2])), ("s", (1, [3, 5])), ("s", (2, [6]))]
    assert [(k, (wid, v)) for k, (wid, (_ts, v)) in late] == [("s", (win.LATE_SESSION_ID, 4))]
    assert plain_meta(meta) == [
        ("s", (0, 0.0, 3.0, [])),
        ("s", (1, 30.0, 31.0, [])),
        ("s", (2, 50.0, 50.0, [])),
    ]


# --- the other operators -----------------------------------------------------------

NUMS = ts_items("t", [(1, 5), (2, 9), (3, 9), (4, 1), (11, 7), (12, 7)])
INDEXED = [(k, (ts, v, i)) for i, (k, (ts, v)) in enumerate(NUMS)]


def test_count_window_counts_per_key(entry_point: Any) -> None:
    items = [("apple", at(1)), ("pear", at(2)), ("apple", at(3)), ("apple", at(14)), ("pear", at(9))]
    down, _, meta = run_window(
        entry_point,
        items,
        lambda s: win.count_window("win", s, clock(0, lambda x: x[1]), TEN_S, lambda x: x[0]),
    )
    assert sorted(down) == [("apple", (0, 2)), ("apple", (1, 1)), ("pear", (0, 2))]
    assert len(meta) == 3


def test_max_and_min_window_keep_the_first_of_ties(entry_point: Any) -> None:
    by = lambda v: v[1]  # noqa: E731
    down, _, _ = run_window(entry_point, INDEXED, lambda s: win.max_window("win", s, clock(), TEN_S, by=by))
    assert [(wid, v[1:]) for _k, (wid, v) in down] == [(0, (9, 1)), (1, (7, 4))]
    down, _, _ = run_window(entry_point, INDEXED, lambda s: win.min_window("win", s, clock(), TEN_S, by=by))
    assert [(wid, v[1:]) for _k, (wid, v) in down] == [(0, (1, 3)), (1, (7, 4))]


def test_reduce_and_fold_window(entry_point: Any) -> None:
    down, _, _ = run_window(
        entry_point,
        NUMS,
        lambda s: win.reduce_window("win", s, clock(), TEN_S, lambda a, b: (b[0], a[1] * 10 + b[1])),
    )
    assert [(wid, v[1]) for _k, (wid, v) in down] == [(0, 5991), (1, 77)]
    down, _, _ = run_window(
        entry_point,
        NUMS,
        lambda s: win.fold_window(
            "win", s, clock(), TEN_S, lambda: 100, lambda acc, v: acc + v[1], lambda a, b: a + b
        ),
    )
    assert down == [("t", (0, 124)), ("t", (1, 114))]


def test_collect_window_into_set_and_dict(entry_point: Any) -> None:
    down, _, _ = run_window(
        entry_point, NUMS, lambda s: win.collect_window("win", s, clock(), TEN_S, into=set)
    )
    assert [(wid, sorted(v for _ts, v in vs)) for _k, (wid, vs) in down] == [
        (0, [1, 5, 9, 9]),
        (1, [7, 7]),
    ]
    pairs = [(k, (v, i)) for i, (k, (_ts, v)) in enumerate(NUMS)]
    times = {i: ts for i, (_k, (ts, _v)) in enumerate(NUMS)}
    dict_clock = clock(0, lambda kv: times[kv[1]])
    down, _, _ = run_window(
        entry_point, pairs, lambda s: win.collect_window("win", s, dict_clock, TEN_S, into=dict)
    )
    assert down == [("t", (0, {5: 0, 9: 2, 1: 3})), ("t", (1, {7: 5}))]


class Firsts(win.WindowLogic):
    """Emits a window's first value at once, merges, and all values at close."""

    def __init__(self, resume: list[Any] | None) -> None:
        self.vals: list[Any] = resume or []

    def on_value(self, value: Any) -> list[Any]:
        self.vals.append(value[1])
        return [("first", value[1])] if len(self.vals) == 1 else []

    def on_merge(self, original: Firsts) -> list[Any]:
        self.vals.extend(original.vals)
        return [("merged", list(self.vals))]

    def on_close(self) -> list[Any]:
        return [("close", list(self.vals))]

    def snapshot(self) -> list[Any]:
        return list(self.vals)


def test_window_with_a_custom_logic(entry_point: Any) -> None:
    down, late, _ = run_window(
        entry_point, LATE_ITEMS, lambda s: win.window("win", s, clock(5), TEN_S, Firsts)
    )
    assert down == [
        ("a", (0, ("first", "a1"))),
        ("a", (1, ("first", "a12"))),
        ("a", (0, ("close", ["a1", "a3"]))),
        ("a", (1, ("close", ["a12"]))),
        ("a", (2, ("first", "a25"))),
        ("a", (2, ("close", ["a25"]))),
    ]
    assert len(late) == 2


def test_window_logic_on_merge_for_sessions(entry_point: Any) -> None:
    down, _, meta = run_window(
        entry_point, BRIDGED, lambda s: win.window("win", s, clock(100), GAP_10, Firsts, ordered=False)
    )
    assert down == [
        ("s", (0, ("first", 1))),
        ("s", (1, ("first", 2))),
        ("s", (2, ("first", 3))),
        ("s", (1, ("merged", [2, 4, 3]))),
        ("s", (0, ("merged", [1, 5, 2, 4, 3]))),
        ("s", (0, ("close", [1, 5, 2, 4, 3]))),
    ]
    assert plain_meta(meta) == [("s", (0, 0.0, 40.0, [1]))]


class _Meta2(win.WindowMetadata):
    """Metadata of a custom windower: a subclass is still metadata."""


class _OneWindowLogic(win.WindowerLogic[bool]):
    def __init__(self, resume: bool | None) -> None:
        self.open = bool(resume)

    def open_for(self, timestamp: datetime) -> list[int]:
        self.open = True
        return [0]

    def late_for(self, timestamp: datetime) -> list[int]:
        return [0]

    def merged(self) -> list[tuple[int, int]]:
        return []

    def close_for(self, watermark: datetime) -> list[tuple[int, win.WindowMetadata]]:
        if self.open and watermark == win.UTC_MAX:
            self.open = False
            return [(0, _Meta2(T0, T0))]
        return []

    def notify_at(self) -> datetime | None:
        return None

    def is_empty(self) -> bool:
        return not self.open

    def snapshot(self) -> bool:
        return self.open


class OneWindow(win.Windower[bool]):
    """Every item in window 0, closed at end of input."""

    def build(self, resume_state: bool | None) -> _OneWindowLogic:
        return _OneWindowLogic(resume_state)


def test_values_that_look_like_metadata_stay_on_down(entry_point: Any) -> None:
    as_meta = win.WindowMetadata(T0, at(99))
    down, _, meta = run_window(
        entry_point,
        NUMS,
        lambda s: win.fold_window("win", s, clock(), TEN_S, lambda: as_meta, lambda a, v: a, max),
    )
    assert down == [("t", (0, as_meta)), ("t", (1, as_meta))]
    assert [m.close_time for _k, (_w, m) in meta] == [at(10), at(20)]


def test_a_custom_windower_with_its_own_metadata_class(entry_point: Any) -> None:
    down, late, meta = run_window(
        entry_point,
        NUMS,
        lambda s: win.fold_window("win", s, clock(), OneWindow(), int, lambda a, v: a + v[1], max),
    )
    assert down == [("t", (0, 38))]
    assert late == []
    assert [type(m) for _k, (_w, m) in meta] == [_Meta2]


# --- join_window -------------------------------------------------------------------

JOIN_ITEMS = [
    ("L", "a", at(1), 1),
    ("R", "a", at(2), "x"),
    ("L", "a", at(3), 2),
    ("R", "b", at(4), "y"),
    ("L", "a", at(12), 3),
    ("R", "a", at(13), "z"),
    ("R", "a", at(14), "w"),
]

JOIN_EXPECTED = {
    ("first", "complete"): [("a", (0, (1, "x"))), ("a", (1, (3, "z")))],
    ("first", "final"): [("a", (0, (1, "x"))), ("a", (1, (3, "z"))), ("b", (0, (None, "y")))],
    ("first", "running"): [
        ("a", (0, (1, None))),
        ("a", (0, (1, "x"))),
        ("a", (0, (1, "x"))),
        ("b", (0, (None, "y"))),
        ("a", (1, (3, None))),
        ("a", (1, (3, "z"))),
        ("a", (1, (3, "z"))),
    ],
    ("last", "complete"): [("a", (0, (1, "x"))), ("a", (1, (3, "z")))],
    ("last", "final"): [("a", (0, (2, "x"))), ("a", (1, (3, "w"))), ("b", (0, (None, "y")))],
    ("last", "running"): [
        ("a", (0, (1, None))),
        ("a", (0, (1, "x"))),
        ("a", (0, (2, "x"))),
        ("b", (0, (None, "y"))),
        ("a", (1, (3, None))),
        ("a", (1, (3, "z"))),
        ("a", (1, (3, "w"))),
    ],
    ("product", "complete"): [("a", (0, (1, "x"))), ("a", (1, (3, "z")))],
    ("product", "final"): [
        ("a", (0, (1, "x"))),
        ("a", (0, (2, "x"))),
        ("a", (1, (3, "z"))),
        ("a", (1, (3, "w"))),
        ("b", (0, (None, "y"))),
    ],
    ("product", "running"): [
        ("a", (0, (1, None))),
        ("a", (0, (1, "x"))),
        ("a", (0, (1, "x"))),
        ("a", (0, (2, "x"))),
        ("b", (0, (None, "y"))),
        ("a", (1, (3, None))),
        ("a", (1, (3, "z"))),
        ("a", (1, (3, "z"))),
        ("a", (1, (3, "w"))),
    ],
}


def _join_build(
    insert_mode: str, emit_mode: str, windower: win.Windower[Any], wait: float = 0, ordered: bool = True
) -> Callable[[Stream[Any]], win.WindowOut[Any, Any]]:
    def build(s: Stream[Any]) -> win.WindowOut[Any, Any]:
        sides = op.branch("side", s, lambda t: t[0] == "L")
        left = op.map("left", sides.trues, lambda t: (t[1], (t[2], t[3])))
        right = op.map("right", sides.falses, lambda t: (t[1], (t[2], t[3])))
        return win.join_window(
            "win",
            clock(wait),
            windower,
            left,
            right,
            insert_mode=insert_mode,
            emit_mode=emit_mode,
            ordered=ordered,
        )

    return build


def _join_values(down: list[Any]) -> list[Any]:
    return [(k, (wid, tuple(None if x is None else x[1] for x in row))) for k, (wid, row) in down]


@pytest.mark.parametrize(("insert_mode", "emit_mode"), sorted(JOIN_EXPECTED))
def test_join_window_modes(insert_mode: str, emit_mode: str) -> None:
    # run_main only: the exact order across keys needs one worker (per key: test_join_window_modes_per_key).
    down, _, meta = run_window(run_main, JOIN_ITEMS, _join_build(insert_mode, emit_mode, TEN_S))
    assert _join_values(down) == JOIN_EXPECTED[(insert_mode, emit_mode)]
    assert sorted(plain_meta(meta)) == [
        ("a", (0, 0.0, 10.0, [])),
        ("a", (1, 10.0, 20.0, [])),
        ("b", (0, 0.0, 10.0, [])),
    ]


@pytest.mark.parametrize(("insert_mode", "emit_mode"), sorted(JOIN_EXPECTED))
def test_join_window_modes_per_key(insert_mode: str, emit_mode: str, entry_point: Any) -> None:
    """Keys "a" and "b" live on different workers with two threads: only the order per key is fixed."""
    down, _, meta = run_window(entry_point, JOIN_ITEMS, _join_build(insert_mode, emit_mode, TEN_S))
    got = _join_values(down)
    expected = JOIN_EXPECTED[(insert_mode, emit_mode)]
    assert len(got) == len(expected)
    for key in "ab":
        assert [x for x in got if x[0] == key] == [x for x in expected if x[0] == key], key
    assert sorted(plain_meta(meta)) == [
        ("a", (0, 0.0, 10.0, [])),
        ("a", (1, 10.0, 20.0, [])),
        ("b", (0, 0.0, 10.0, [])),
    ]


@pytest.mark.parametrize(
    ("insert_mode", "expected"),
    [
        ("first", [("a", (0, (1, "x")))]),
        ("last", [("a", (0, (2, "y")))]),
        ("product", [("a", (0, (1, "x"))), ("a", (0, (1, "y"))), ("a", (0, (2, "x"))), ("a", (0, (2, "y")))]),
    ],
)
def test_join_window_merges_sessions(insert_mode: str, expected: list[Any], entry_point: Any) -> None:
    items = [("L", "a", at(0), 1), ("R", "a", at(10), "x"), ("L", "a", at(5), 2), ("R", "a", at(6), "y")]
    gap = win.SessionWindower(timedelta(seconds=6))
    down, _, meta = run_window(
        entry_point, items, _join_build(insert_mode, "final", gap, wait=100, ordered=False)
    )
    assert _join_values(down) == expected
    assert plain_meta(meta) == [("a", (0, 0.0, 10.0, [1]))]


def test_join_window_rejects_unknown_modes() -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", (T0, 1))]))
    with pytest.raises(ValueError, match=r"test\.win.*insert_mode 'middle'"):
        win.join_window("win", clock(), TEN_S, s, insert_mode="middle")


# --- closed windows free their state; snapshots resume -------------------------------


def _stateful_builder(flow: Dataflow) -> Any:
    """The `stateful_batch` builder of the (only) window step in ``flow``."""

    def walk(ops: list[Operator]) -> Any:
        for o in ops:
            if o.core == "stateful_batch":
                return o.conf["builder"]
            found = walk(o.substeps)
            if found is not None:
                return found
        return None

    return walk(flow.substeps)


def _fold_flow(windower: win.Windower[Any], wait: float = 0) -> Dataflow:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([]))
    win.fold_window("win", s, clock(wait), windower, list, lambda a, v: [*a, v[1]], lambda a, b: a + b)
    return flow


@pytest.mark.parametrize(
    "windower",
    [TEN_S, win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), T0)],
    ids=["tumbling", "sliding"],
)
def test_closed_windows_are_dropped_and_empty_keys_discarded(windower: win.Windower[Any]) -> None:
    logic = _stateful_builder(_fold_flow(windower))(None)
    _outs, discard = logic.on_batch([(at(1), "a"), (at(2), "b"), (at(31), "c")])
    assert not discard
    assert set(logic.snapshot()["windows"]) == set(windower.build(None).late_for(at(31)))
    _outs, discard = logic.on_eof()
    assert discard, "a key with no open window must be dropped"
    assert logic.snapshot()["windows"] == {}


@pytest.mark.parametrize(
    "windower",
    [TEN_S, win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), T0), GAP_10],
    ids=["tumbling", "sliding", "session"],
)
@pytest.mark.parametrize("wait", [0, 30])
def test_snapshot_resume_gives_the_same_results(windower: win.Windower[Any], wait: float) -> None:
    builder = _stateful_builder(_fold_flow(windower, wait))
    batches = [
        [(at(1), "a"), (at(4), "b")],
        [(at(12), "c"), (at(3), "d")],
        [(at(40), "e"), (at(41), "f")],
        [(at(2), "g"), (at(45), "h")],
    ]
    straight = builder(None)
    expected = [straight.on_batch(b)[0] for b in batches] + [straight.on_eof()[0]]
    resumed: list[Any] = []
    logic = builder(None)
    for b in batches:
        resumed.append(logic.on_batch(b)[0])
        logic = builder(pickle.loads(pickle.dumps(logic.snapshot())))
    resumed.append(logic.on_eof()[0])
    assert resumed == expected


def test_windows_survive_a_crash_with_recovery(tmp_path: Path, entry_point: Any) -> None:
    items: list[Any] = [
        *ts_items("a", [(1, 1), (2, 2)]),
        *ts_items("b", [(3, 30)]),
        *ts_items("a", [(11, 3)]),
        TestingSource.ABORT(),
        *ts_items("a", [(12, 4), (25, 5)]),
        *ts_items("b", [(14, 40)]),
    ]

    def flow_into(out: list[Any]) -> Dataflow:
        flow = Dataflow("rec")
        s = op.input("inp", flow, TestingSource(items))
        sums = win.fold_window("sum", s, clock(), TEN_S, lambda: 0, lambda a, v: a + v[1], lambda a, b: a + b)
        op.output("out", sums.down, TestingSink(out))
        return flow

    init_db_dir(tmp_path / "state", 1)
    config = RecoveryConfig(str(tmp_path / "state"))
    first: list[Any] = []
    entry_point(flow_into(first), epoch_interval=timedelta(0), recovery_config=config)
    second: list[Any] = []
    entry_point(flow_into(second), epoch_interval=timedelta(0), recovery_config=config)
    assert sorted(first + second) == [
        ("a", (0, 3)),
        ("a", (1, 7)),
        ("a", (2, 5)),
        ("b", (0, 30)),
        ("b", (1, 40)),
    ]


# --- time-driven closing -----------------------------------------------------------


class _GatedPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, gate: Gated) -> None:
        self.gate = gate
        self.phase = 0
        self.deadline = 0.0

    def next_batch(self) -> list[Any]:
        gate = self.gate
        if self.phase == 0:
            self.phase = 1
            self.deadline = time.monotonic() + gate.patience
            return list(gate.first)
        if self.phase == 1:
            if gate.on_wait is not None:
                gate.on_wait()
                gate.on_wait = None
            if gate.ready():
                gate.passed = True
            elif time.monotonic() < self.deadline:
                return []
            self.phase = 2
            return gate.rest()
        raise StopIteration()

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self.phase


class Gated(FixedPartitionedSource[Any, int]):
    """Emit ``first``; then hold the input open until ``ready()`` (or ``patience`` s pass).

    ``passed`` records whether ``ready()`` came true while the input was
    still open, i.e. before end of input could close any window.
    """

    def __init__(
        self,
        first: list[Any],
        ready: Callable[[], bool],
        rest: Callable[[], list[Any]],
        on_wait: Callable[[], None] | None = None,
        patience: float = 20.0,
    ) -> None:
        self.first = first
        self.ready = ready
        self.rest = rest
        self.on_wait = on_wait
        self.patience = patience
        self.passed = False

    def list_parts(self) -> list[str]:
        return ["gate"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _GatedPartition:
        return _GatedPartition(self)


def _run_gated(
    gate: Gated,
    clk: win.Clock[Any, Any],
    windower: win.Windower[Any],
    entry_point: Callable[[Dataflow], None],
) -> tuple[list[Any], list[Any]]:
    flow = Dataflow("test")
    s = op.input("inp", flow, gate)
    wo = win.collect_window("win", s, clk, windower)
    down: list[Any] = []
    meta: list[Any] = []
    op.output("out_down", wo.down, TestingSink(down))
    op.output("out_meta", wo.meta, TestingSink(meta))
    gate.ready = lambda: bool(down)
    entry_point(flow)
    return down, meta


def test_event_clock_closes_windows_as_its_now_getter_advances(entry_point: Any) -> None:
    fake = TimeTestingGetter(NOW)
    clk: win.EventClock[Any] = win.EventClock(lambda v: v[0], timedelta(seconds=5), now_getter=fake.get)
    gate = Gated(
        ts_items("a", [(1, "first")]),
        ready=lambda: False,
        rest=lambda: ts_items("a", [(15, "later")]),
        on_wait=lambda: fake.advance(timedelta(hours=1)),
    )
    down, meta = _run_gated(gate, clk, TEN_S, entry_point)
    assert gate.passed, "the window should close once the clock moved, before end of input"
    assert values_of(down) == [("a", (0, ["first"])), ("a", (1, ["later"]))]
    assert len(meta) == 2


def test_event_clock_watermark_advances_with_system_time(entry_point: Any) -> None:
    now = datetime.now(UTC)
    clk: win.EventClock[Any] = win.EventClock(lambda v: v[0], timedelta(milliseconds=50))
    windower = win.TumblingWindower(timedelta(milliseconds=100), now)
    gate = Gated(
        [("a", (now, "first"))],
        ready=lambda: False,
        rest=lambda: [("a", (datetime.now(UTC), "later"))],
    )
    down, _ = _run_gated(gate, clk, windower, entry_point)
    assert gate.passed
    assert [vs for _k, (_wid, vs) in values_of(down)] == [["first"], ["later"]]


def test_system_clock_closes_windows_as_time_passes(entry_point: Any) -> None:
    windower = win.TumblingWindower(timedelta(milliseconds=50), T0)
    gate = Gated([("a", "first")], ready=lambda: False, rest=lambda: [("a", "later")])
    down, meta = _run_gated(gate, win.SystemClock(), windower, entry_point)
    assert gate.passed
    assert [vs for _k, (_wid, vs) in down] == [["first"], ["later"]]
    assert down[0][1][0] < down[1][1][0]
    assert [m.close_time - m.open_time for _k, (_wid, m) in meta] == [timedelta(milliseconds=50)] * 2


# --- bad input -----------------------------------------------------------------------


def _error_of(
    entry_point: Callable[[Dataflow], None],
    items: list[Any],
    build: Callable[[Stream[Any]], win.WindowOut[Any, Any]],
) -> BaseException:
    with pytest.raises(BytewaxRuntimeError) as info:
        run_window(entry_point, items, build)
    return info.value


@pytest.mark.parametrize("wait", [0, 5])
@pytest.mark.parametrize("ordered", [True, False])
def test_naive_timestamps_fail_with_a_clear_error(wait: float, ordered: bool, entry_point: Any) -> None:
    items = [("a", (datetime(2024, 1, 1), 1))]
    exc = _error_of(
        entry_point, items, lambda s: win.collect_window("win", s, clock(wait), TEN_S, ordered=ordered)
    )
    text = " ".join(str(e) for e in causes(exc))
    assert "'test.win" in text
    assert "naive datetime" in text and "timezone-aware" in text


def test_non_datetime_timestamps_fail_with_a_clear_error(entry_point: Any) -> None:
    exc = _error_of(entry_point, [("a", (5, 1))], lambda s: win.collect_window("win", s, clock(), TEN_S))
    text = " ".join(str(e) for e in causes(exc))
    assert "'test.win" in text and "must return a timezone-aware datetime; got int 5" in text


def test_raising_ts_getter_names_the_step_and_chains_the_cause(entry_point: Any) -> None:
    def bad_getter(v: Any) -> datetime:
        raise KeyError("ts")

    exc = _error_of(
        entry_point, [("a", 1)], lambda s: win.collect_window("win", s, clock(0, bad_getter), TEN_S)
    )
    chain = causes(exc)
    assert any(isinstance(e, KeyError) for e in chain)
    text = " ".join(str(e) for e in chain)
    assert "'test.win" in text and "ts_getter" in text and "bad_getter" in text


def test_custom_clock_with_naive_timestamps_fails_clearly(entry_point: Any) -> None:
    class NaiveLogic(win.ClockLogic[Any, None]):
        def before_batch(self) -> None:
            pass

        def on_item(self, value: Any) -> tuple[datetime, datetime]:
            return datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)

        def on_notify(self) -> datetime:
            return win.UTC_MIN

        def on_eof(self) -> datetime:
            return win.UTC_MAX

        def to_system_utc(self, timestamp: datetime) -> datetime | None:
            return timestamp

        def snapshot(self) -> None:
            return None

    class NaiveClock(win.Clock[Any, None]):
        def build(self, resume_state: None) -> NaiveLogic:
            return NaiveLogic()

    exc = _error_of(entry_point, [("a", 1)], lambda s: win.collect_window("win", s, NaiveClock(), TEN_S))
    assert "naive datetime" in " ".join(str(e) for e in causes(exc))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: win.TumblingWindower(timedelta(0), T0), "TumblingWindower `length` must be a positive"),
        (lambda: win.TumblingWindower(timedelta(seconds=-1), T0), "`length` must be a positive"),
        (
            lambda: win.TumblingWindower(timedelta(seconds=1), datetime(2024, 1, 1)),
            "`align_to` must be a timezone-aware",
        ),
        (lambda: win.SlidingWindower(timedelta(0), timedelta(seconds=1), T0), "SlidingWindower `length`"),
        (
            lambda: win.SlidingWindower(timedelta(seconds=5), timedelta(seconds=10), T0),
            "`offset` .* can't be longer than `length`",
        ),
        (lambda: win.SlidingWindower(timedelta(seconds=5), timedelta(0), T0), "`offset` must be a positive"),
        (
            lambda: win.SlidingWindower(timedelta(seconds=5), timedelta(seconds=-1), T0),
            "`offset` must be a positive",
        ),
        (
            lambda: win.SlidingWindower(timedelta(seconds=5), timedelta(seconds=1), datetime(2024, 1, 1)),
            "`align_to`",
        ),
        (lambda: win.SessionWindower(timedelta(seconds=-1)), "SessionWindower `gap` must not be negative"),
        (
            lambda: win.EventClock(lambda v: v, timedelta(seconds=-1)),
            "`wait_for_system_duration` must not be negative",
        ),
    ],
)
def test_bad_windower_and_clock_parameters_fail_at_build_time(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_argument_types_name_the_step() -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([]))
    with pytest.raises(TypeError, match=r"'test\.a'.*`clock` must be a Clock"):
        win.collect_window("a", s, TEN_S, TEN_S)
    with pytest.raises(TypeError, match=r"'test\.b'.*`windower` must be a Windower"):
        win.collect_window("b", s, clock(), clock())
    with pytest.raises(TypeError, match=r"'test\.c'.*`list`, `set` or `dict`"):
        win.collect_window("c", s, clock(), TEN_S, into=tuple)
    with pytest.raises(TypeError, match=r"'test\.d'.*`folder` must be callable"):
        win.fold_window("d", s, clock(), TEN_S, list, None, list.__add__)
    not_a_timedelta: Any = 10
    with pytest.raises(TypeError, match="must be a timedelta"):
        win.TumblingWindower(not_a_timedelta, T0)


def test_collect_into_dict_needs_pairs(entry_point: Any) -> None:
    exc = _error_of(
        entry_point, [("a", (at(1), 1, 2))], lambda s: win.collect_window("win", s, clock(), TEN_S, into=dict)
    )
    assert "collecting into a `dict` needs `(key, value)` 2-tuples" in " ".join(str(e) for e in causes(exc))


# --- module surface ------------------------------------------------------------------


def test_module_reexports_the_bytewax_names() -> None:
    assert win.UTC_MAX == datetime.max.replace(tzinfo=UTC)
    assert win.UTC_MIN == datetime.min.replace(tzinfo=UTC)
    assert timedelta(0) == win.ZERO_TD
    assert win.join is op.join
    assert win.partition([1, 2, 3], lambda x: x > 1) == ([2, 3], [1])
    meta = win.WindowMetadata(T0, at(1))
    assert pickle.loads(pickle.dumps(meta)) == meta


# --- two worker threads give the same results ----------------------------------------

MANY = [(f"k{i % 7}", (at((i * 37) % 90 + (i // 7)), i)) for i in range(140)]


@pytest.mark.parametrize(
    "build",
    [
        lambda s: win.collect_window("win", s, clock(30), TEN_S),
        lambda s: win.fold_window(
            "win",
            s,
            clock(),
            win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), T0),
            lambda: 0,
            lambda a, v: a + v[1],
            lambda a, b: a + b,
        ),
        lambda s: win.collect_window("win", s, clock(20), GAP_10, ordered=False),
        lambda s: win.count_window("win", s, clock(0, lambda kv: kv[1][0]), TEN_S, lambda kv: kv[0]),
        lambda s: win.window("win", s, clock(10), TEN_S, Firsts),
    ],
    ids=["collect", "sliding_fold", "session", "count", "window"],
)
def test_two_worker_threads_match_one_worker(build: Callable[[Stream[Any]], win.WindowOut[Any, Any]]) -> None:
    one = run_window(run_main, MANY, build, batch_size=10)
    two = run_window(two_threads, MANY, build, batch_size=10)
    for a, b in zip(one, two, strict=True):
        assert sorted(map(repr, a)) == sorted(map(repr, b))
    assert one[0]  # the comparison is not vacuous
