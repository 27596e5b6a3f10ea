"""Property tests: windowing operators against brute-force models of their semantics.

Each property runs a real dataflow on random keyed, timestamped input and
compares its output with a direct computation: group by window id, split
sessions at gaps, mark items older than the newest seen as late. Clocks use
a fixed ``now_getter``, so only the data moves the watermark.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headrace.operators as op
import headrace.operators.windowing as win
from headrace.dataflow import Dataflow, Stream
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(300)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)

# The `entry_point` fixture is a stateless runner, so sharing it across examples is safe.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# (key, ms offset, value) triples; values are unique so groups are comparable.
Item = tuple[str, int, int]


@st.composite
def items_st(draw: st.DrawFn, max_ms: int = 60_000, sort: bool = False) -> list[Item]:
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    # Multiples of 500 ms hit window boundaries often.
    times = draw(
        st.lists(
            st.one_of(st.integers(0, max_ms), st.integers(0, max_ms // 500).map(lambda x: x * 500)),
            min_size=n,
            max_size=n,
        )
    )
    if sort:
        times.sort()
    return [(k, t, i) for i, (k, t) in enumerate(zip(keys, times, strict=True))]


def clock(wait_ms: int) -> win.EventClock:
    return win.EventClock(lambda v: v[0], wait_ms * MS, now_getter=lambda: NOW)


def run(
    entry_point: Callable[[Dataflow], None],
    items: list[Item],
    build: Callable[[Stream[Any]], win.WindowOut[Any, Any]],
    batch_size: int,
) -> tuple[list[Any], list[Any], list[Any]]:
    flow = Dataflow("prop")
    s = op.input("inp", flow, TestingSource([(k, (T0 + t * MS, v)) for k, t, v in items], batch_size))
    wo = build(s)
    outs: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for name, stream, out in zip(("down", "late", "meta"), (wo.down, wo.late, wo.meta), outs, strict=True):
        op.output(f"out_{name}", stream, TestingSink(out))
    entry_point(flow)
    return outs


def two_threads(flow: Dataflow) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=2)


def grouped(down: list[Any]) -> dict[tuple[str, int], list[int]]:
    """Collected windows -> {(key, window id): [values]}; ids must be unique per key."""
    out: dict[tuple[str, int], list[int]] = {}
    for k, (wid, vs) in down:
        assert (k, wid) not in out, f"window {wid} of key {k!r} emitted twice"
        out[(k, wid)] = [v for _ts, v in vs]
    return out


def by_ts(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: it[1])  # stable: ties keep arrival order


lengths = st.sampled_from([1000, 2500, 7000, 10_000])
aligns = st.integers(-20_000, 20_000)


@pytest.mark.parametrize("ordered", [True, False])
@SETTINGS
@given(items=items_st(), length=lengths, align=aligns, batch=st.integers(1, 12))
def test_tumbling_collect_equals_grouping_by_window_id(
    ordered: bool, items: list[Item], length: int, align: int, batch: int, entry_point: Any
) -> None:
    """With a wait longer than any disorder nothing is late; ``ordered`` sorts windows."""
    windower = win.TumblingWindower(length * MS, T0 + align * MS)
    down, late, meta = run(
        entry_point,
        items,
        lambda s: win.collect_window("w", s, clock(10**8), windower, ordered=ordered),
        batch,
    )
    expected: dict[tuple[str, int], list[int]] = defaultdict(list)
    for k, t, v in by_ts(items) if ordered else items:
        expected[(k, (t - align) // length)].append(v)
    assert grouped(down) == expected
    assert late == []
    assert sorted((k, wid) for k, (wid, _m) in meta) == sorted(expected)
    for _k, (wid, m) in meta:
        assert m.open_time == T0 + (align + wid * length) * MS
        assert m.close_time - m.open_time == length * MS


@SETTINGS
@given(items=items_st(), length=lengths, align=aligns, batch=st.integers(1, 12))
def test_tumbling_fold_equals_grouping_by_window_id(
    items: list[Item], length: int, align: int, batch: int, entry_point: Any
) -> None:
    windower = win.TumblingWindower(length * MS, T0 + align * MS)
    down, _late, _meta = run(
        entry_point,
        items,
        lambda s: win.fold_window(
            "w", s, clock(10**8), windower, lambda: 0, lambda a, v: a + v[1], lambda a, b: a + b
        ),
        batch,
    )
    expected: dict[tuple[str, int], int] = defaultdict(int)
    for k, t, v in items:
        expected[(k, (t - align) // length)] += v
    assert {(k, wid): total for k, (wid, total) in down} == expected
    assert len(down) == len(expected)


@SETTINGS
@given(items=items_st(sort=True), length=lengths, align=aligns, batch=st.integers(1, 12))
def test_in_order_input_without_wait_loses_nothing(
    items: list[Item], length: int, align: int, batch: int, entry_point: Any
) -> None:
    windower = win.TumblingWindower(length * MS, T0 + align * MS)
    down, late, _ = run(entry_point, items, lambda s: win.collect_window("w", s, clock(0), windower), batch)
    expected: dict[tuple[str, int], list[int]] = defaultdict(list)
    for k, t, v in items:
        expected[(k, (t - align) // length)].append(v)
    assert grouped(down) == expected
    assert late == []


@pytest.mark.parametrize("ordered", [True, False])
@SETTINGS
@given(items=items_st(), length=lengths, align=aligns, batch=st.integers(1, 12))
def test_without_wait_items_older_than_the_newest_are_late(
    ordered: bool, items: list[Item], length: int, align: int, batch: int, entry_point: Any
) -> None:
    """wait=0: an item is late iff older than the newest item its key has seen."""
    windower = win.TumblingWindower(length * MS, T0 + align * MS)
    down, late, _ = run(
        entry_point, items, lambda s: win.collect_window("w", s, clock(0), windower, ordered=ordered), batch
    )
    newest: dict[str, int] = {}
    expected: dict[tuple[str, int], list[int]] = defaultdict(list)
    expected_late: list[tuple[str, tuple[int, int]]] = []
    for k, t, v in items:
        wid = (t - align) // length
        if k in newest and t < newest[k]:
            expected_late.append((k, (wid, v)))
        else:
            newest[k] = t
            expected[(k, wid)].append(v)
    assert grouped(down) == expected
    assert sorted((k, (wid, v)) for k, (wid, (_ts, v)) in late) == sorted(expected_late)


@pytest.mark.parametrize("ordered", [True, False])
@SETTINGS
@given(
    items=items_st(),
    shape=st.sampled_from([(10_000, 5000), (10_000, 3000), (9000, 2500), (2000, 2000)]),
    align=aligns,
    batch=st.integers(1, 12),
    wait=st.sampled_from([0, 10**8]),
)
def test_sliding_windows_hold_every_item_that_they_cover(
    ordered: bool,
    items: list[Item],
    shape: tuple[int, int],
    align: int,
    batch: int,
    wait: int,
    entry_point: Any,
) -> None:
    length, offset = shape
    windower = win.SlidingWindower(length * MS, offset * MS, T0 + align * MS)
    down, late, _ = run(
        entry_point,
        items,
        lambda s: win.collect_window("w", s, clock(wait), windower, ordered=ordered),
        batch,
    )
    newest: dict[str, int] = {}
    expected: dict[tuple[str, int], list[int]] = defaultdict(list)
    expected_late: list[tuple[str, int, int]] = []
    arrival = items if wait == 0 or not ordered else by_ts(items)
    for k, t, v in arrival:
        ids = range((t - align - length) // offset + 1, (t - align) // offset + 1)
        if wait == 0 and k in newest and t < newest[k]:
            expected_late.extend((k, wid, v) for wid in ids)
            continue
        newest[k] = t
        for wid in ids:
            expected[(k, wid)].append(v)
    assert grouped(down) == expected
    assert sorted((k, wid, v) for k, (wid, (_ts, v)) in late) == sorted(expected_late)


def sessions_of(items: list[Item], gap: int) -> dict[str, list[list[Item]]]:
    """Per key, the time-sorted items split wherever two are more than ``gap`` apart."""
    per_key: dict[str, list[list[Item]]] = defaultdict(list)
    for it in by_ts(items):
        runs = per_key[it[0]]
        if runs and it[1] - runs[-1][-1][1] <= gap:
            runs[-1].append(it)
        else:
            runs.append([it])
    return per_key


gaps = st.sampled_from([0, 1000, 3000, 5000])


@SETTINGS
@given(items=items_st(), gap=gaps, batch=st.integers(1, 12))
def test_ordered_sessions_split_at_gaps(items: list[Item], gap: int, batch: int, entry_point: Any) -> None:
    windower = win.SessionWindower(gap * MS)
    down, late, meta = run(
        entry_point, items, lambda s: win.collect_window("w", s, clock(10**8), windower), batch
    )
    expected = {
        (k, i): [v for _k, _t, v in run_]
        for k, runs in sessions_of(items, gap).items()
        for i, run_ in enumerate(runs)
    }
    assert grouped(down) == expected
    assert late == []
    spans = {
        (k, i): (T0 + run_[0][1] * MS, T0 + run_[-1][1] * MS)
        for k, runs in sessions_of(items, gap).items()
        for i, run_ in enumerate(runs)
    }
    assert {(k, wid): (m.open_time, m.close_time) for k, (wid, m) in meta} == spans
    assert all(not m.merged_ids for _k, (_wid, m) in meta)


@SETTINGS
@given(items=items_st(), gap=gaps, batch=st.integers(1, 12))
def test_sessions_without_wait_split_the_on_time_items(
    items: list[Item], gap: int, batch: int, entry_point: Any
) -> None:
    windower = win.SessionWindower(gap * MS)
    down, late, _ = run(
        entry_point,
        items,
        lambda s: win.fold_window(
            "w", s, clock(0), windower, list, lambda a, v: [*a, v[1]], lambda a, b: a + b
        ),
        batch,
    )
    newest: dict[str, int] = {}
    on_time: list[Item] = []
    expected_late: list[tuple[str, int]] = []
    for k, t, v in items:
        if k in newest and t < newest[k]:
            expected_late.append((k, v))
        else:
            newest[k] = t
            on_time.append((k, t, v))
    expected = {
        (k, i): [v for _k, _t, v in run_]
        for k, runs in sessions_of(on_time, gap).items()
        for i, run_ in enumerate(runs)
    }
    assert {(k, wid): vs for k, (wid, vs) in down} == expected
    assert sorted((k, v) for k, (wid, (_ts, v)) in late if wid == win.LATE_SESSION_ID) == sorted(
        expected_late
    )
    assert len(late) == len(expected_late)


@SETTINGS
@given(items=items_st(), gap=gaps, batch=st.integers(1, 12))
def test_unordered_sessions_merge_into_the_same_sessions(
    items: list[Item], gap: int, batch: int, entry_point: Any
) -> None:
    """Out of order, sessions merge as items bridge them; the end result is the same split."""
    windower = win.SessionWindower(gap * MS)
    down, late, meta = run(
        entry_point,
        items,
        lambda s: win.fold_window(
            "w",
            s,
            clock(10**8),
            windower,
            list,
            lambda a, v: [*a, v[1]],
            lambda a, b: a + b,
            ordered=False,
        ),
        batch,
    )
    assert late == []
    got = sorted((k, sorted(vs)) for k, (_wid, vs) in down)
    expected = sorted(
        (k, sorted(v for _k, _t, v in run_)) for k, runs in sessions_of(items, gap).items() for run_ in runs
    )
    assert got == expected
    ids = {(k, wid) for k, (wid, _vs) in down}
    assert {(k, wid) for k, (wid, _m) in meta} == ids
    for k, (_wid, m) in meta:
        assert not ({(k, merged) for merged in m.merged_ids} & ids), "a merged id was emitted"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=items_st(), length=lengths, wait=st.sampled_from([0, 3000, 10**8]))
def test_two_workers_give_the_same_windows(items: list[Item], length: int, wait: int) -> None:
    windower = win.TumblingWindower(length * MS, T0)

    def build(s: Stream[Any]) -> win.WindowOut[Any, Any]:
        return win.collect_window("w", s, clock(wait), windower)

    one = run(run_main, items, build, 5)
    two = run(two_threads, items, build, 5)
    for a, b in zip(one, two, strict=True):
        assert sorted(map(repr, a)) == sorted(map(repr, b))
