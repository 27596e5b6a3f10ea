"""`fold_window` pre-folds values bound for another worker (a combiner).

With more than one worker, the fused tumbling path of `fold_window` folds
runs of a key's values (in timestamp order, one window) on the worker that
read them, and the owner merges the partial accumulators with ``merger``.
It is on only when nothing reads the step's ``late`` stream. These tests
run two worker threads (every key owned by worker 1 crosses the exchange)
and compare with one worker.

The combiner folds values bound for another worker as they are buffered
(a key's last run stays open for the next batch); a flush, when enough
values are there (`EXCHANGE_FLUSH_ITEMS`) or the oldest is old enough,
sends the runs. Most tests flush after about one source batch, so that
one window's values cross as several partial folds the owner must merge.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headrace._engine._basics as basics
import headrace.operators as op
import headrace.operators.windowing as win
from headrace._engine import group_owner, key_group
from headrace.dataflow import Dataflow
from headrace.operators.windowing._events import _to_us
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Folds:
    """A list-collecting fold that records what ``merger`` was given."""

    def __init__(self) -> None:
        self.merged: list[tuple[list[int], list[int]]] = []
        self.lock = threading.Lock()

    def folder(self, acc: list[int], value: tuple[datetime, int]) -> list[int]:
        return [*acc, value[1]]

    def merger(self, a: list[int], b: list[int]) -> list[int]:
        with self.lock:
            self.merged.append((a, b))
        return a + b


@pytest.fixture
def small_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send what is buffered for another worker after about one source batch (37 items)."""
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_ITEMS", 40)


def _items(seed: int, n: int = 600, keys: int = 7) -> list[tuple[str, tuple[datetime, int]]]:
    """Items of several keys, per key in time order but for some stragglers from the past.

    Each in-order value is at least 0.5 s newer than all before it, so which
    values are late never depends on how much system time passes between
    batches (with no wait, a value only as new as the newest is late then).
    """
    rng = random.Random(seed)
    clock = {f"k{i}": 0.0 for i in range(keys)}
    out = []
    for i in range(n):
        k = f"k{rng.randrange(keys)}"
        if rng.random() < 0.08:
            at = max(0.0, clock[k] - rng.uniform(0, 30))
        else:
            clock[k] += rng.choice([0.5, 1.0, 2.0, 7.0])
            at = clock[k]
        out.append((k, (T0 + timedelta(seconds=at), i)))
    return out


TUMBLING = win.TumblingWindower(timedelta(seconds=10), T0)
WINDOWERS = {
    "tumbling": TUMBLING,
    "sliding-10s-5s": win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), T0),
    # gcd 2 s: each 2 s slot lies whole in 2 or 3 windows
    "sliding-10s-4s": win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=4), T0),
}


def _flow(
    items: list[Any],
    folds: Folds,
    *,
    wait: timedelta,
    ordered: bool,
    late_out: list[Any] | None,
    windower: Any = TUMBLING,
) -> tuple[Dataflow, list[Any]]:
    flow = Dataflow("combiner")
    s = op.input("inp", flow, TestingSource(items, batch_size=37))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=wait)
    w = win.fold_window(
        "fold",
        s,
        clock,
        windower,
        list,
        folds.folder,
        folds.merger,
        ordered=ordered,
    )
    out: list[Any] = []
    op.output("out", w.down, TestingSink(out))
    if late_out is not None:
        op.output("late", w.late, TestingSink(late_out))
    return flow, out


def _by_window(out: list[Any]) -> Counter[tuple[str, int, tuple[int, ...]]]:
    return Counter((k, wid, tuple(sorted(vals))) for k, (wid, vals) in out)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("wait", "ordered"),
    [(timedelta(0), True), (timedelta(seconds=5), False), (timedelta(hours=1), False)],
    ids=["wait0", "wait5s-unordered", "wait1h-unordered"],
)
@pytest.mark.parametrize("windower", list(WINDOWERS), ids=list(WINDOWERS))
@pytest.mark.usefixtures("small_flushes")
def test_two_workers_give_the_windows_of_one(
    seed: int, wait: timedelta, ordered: bool, windower: str
) -> None:
    items = _items(seed)
    wdr = WINDOWERS[windower]
    flow, ref = _flow(items, Folds(), wait=wait, ordered=ordered, late_out=None, windower=wdr)
    run_main(flow)
    folds = Folds()
    flow, out = _flow(items, folds, wait=wait, ordered=ordered, late_out=None, windower=wdr)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _by_window(out) == _by_window(ref)
    # Partial folds crossed the exchange and were merged by the owner.
    assert any(len(b) > 1 for _, b in folds.merged), "no partial fold crossed the exchange"


@pytest.mark.usefixtures("small_flushes")
def test_timestamps_in_another_zone_give_the_windows_of_one_worker() -> None:
    """Runs carry their newest timestamp as UTC microseconds; the zone must not matter."""
    zone = timezone(timedelta(hours=5, minutes=30))
    items = [(k, (ts.astimezone(zone), i)) for k, (ts, i) in _items(7)]
    flow, ref = _flow(items, Folds(), wait=timedelta(seconds=5), ordered=False, late_out=None)
    run_main(flow)
    folds = Folds()
    flow, out = _flow(items, folds, wait=timedelta(seconds=5), ordered=False, late_out=None)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _by_window(out) == _by_window(ref)
    assert any(len(b) > 1 for _, b in folds.merged), "no partial fold crossed the exchange"


@pytest.mark.parametrize("flush_items", [None, 40])
def test_one_flush_folds_values_from_many_source_batches(
    monkeypatch: pytest.MonkeyPatch, flush_items: int | None
) -> None:
    """Buffered batches are combined together: one partial per key and window crosses.

    With flushes after about every source batch instead, a window's values
    cross as several partials (the control case: the data can show it).
    """
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    if flush_items is not None:
        monkeypatch.setattr(basics, "EXCHANGE_FLUSH_ITEMS", flush_items)
    # In time order per key, so each key's values in a window are one run.
    items = [(f"k{i % 7}", (T0 + timedelta(seconds=i * 0.25), i)) for i in range(600)]
    assert len(items) < basics.EXCHANGE_FLUSH_ITEMS or flush_items
    flow, ref = _flow(items, Folds(), wait=timedelta(0), ordered=True, late_out=None)
    run_main(flow)
    folds = Folds()
    flow, out = _flow(items, folds, wait=timedelta(0), ordered=True, late_out=None)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _by_window(out) == _by_window(ref)
    # The one partition is read by worker 0, so each window owned by worker 1
    # arrives as partial folds; buffered together, as one.
    owned = {k for k, _ in ref if group_owner(key_group(k, 256), 256, 2)}
    assert owned, "no key is owned by worker 1; the test proves nothing"
    if flush_items is None:
        assert folds.merged == []
    else:
        assert any(len(b) > 1 for _, b in folds.merged)


@pytest.mark.usefixtures("small_flushes")
@pytest.mark.usefixtures("small_flushes")
def test_sliding_windows_get_their_own_copy_of_a_mutable_partial() -> None:
    """One partial joins several sliding windows; folding into one must not change another.

    The folder appends in place and the merger hands back its second
    argument when the first is empty: shared partials would mix windows.
    """
    items = _items(8)

    def folder(acc: list[int], value: tuple[datetime, int]) -> list[int]:
        acc.append(value[1])
        return acc

    def merger(a: list[int], b: list[int]) -> list[int]:
        if not a:
            return b
        a.extend(b)
        return a

    def build() -> tuple[Dataflow, list[Any]]:
        flow = Dataflow("combiner_mutable")
        s = op.input("inp", flow, TestingSource(items, batch_size=37))
        clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=5))
        w = win.fold_window(
            "fold", s, clock, WINDOWERS["sliding-10s-4s"], list, folder, merger, ordered=False
        )
        out: list[Any] = []
        op.output("out", w.down, TestingSink(out))
        return flow, out

    flow, ref = build()
    run_main(flow)
    flow, out = build()
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _by_window(out) == _by_window(ref)


@pytest.mark.usefixtures("small_flushes")
def test_a_read_late_stream_turns_the_combiner_off() -> None:
    """Late values must reach `late` one by one, so values cross unfolded."""
    items = _items(4)
    late_ref: list[Any] = []
    flow, ref = _flow(items, Folds(), wait=timedelta(0), ordered=True, late_out=late_ref)
    run_main(flow)
    assert late_ref, "the data has no late values; the test proves nothing"
    folds = Folds()
    late: list[Any] = []
    flow, out = _flow(items, folds, wait=timedelta(0), ordered=True, late_out=late)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert _by_window(out) == _by_window(ref)
    assert Counter(late) == Counter(late_ref)
    assert folds.merged == []


def test_a_failing_folder_on_the_sending_worker_names_the_step(
    cause_chain: Callable[[BaseException], list[BaseException]],
) -> None:
    items = [(f"k{i % 5}", (T0 + timedelta(seconds=i), i)) for i in range(100)]

    def folder(acc: int, v: tuple[datetime, int]) -> int:
        return acc + 1 // (v[1] - 50)

    flow = Dataflow("combiner_fails")
    s = op.input("inp", flow, TestingSource(items, batch_size=20))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    w = win.fold_window(
        "bad_fold",
        s,
        clock,
        win.TumblingWindower(timedelta(seconds=10), T0),
        int,
        folder,
        lambda a, b: a + b,
    )
    op.output("out", w.down, TestingSink([]))
    with pytest.raises(Exception) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    text = " ".join(str(e) for e in cause_chain(info.value))
    assert "bad_fold" in text and "ZeroDivisionError" in text, text


def test_naive_timestamps_on_the_sending_worker_are_a_clear_error(
    cause_chain: Callable[[BaseException], list[BaseException]],
) -> None:
    naive = datetime(2024, 1, 1)
    items = [(naive + timedelta(seconds=i), i) for i in range(50)]
    flow = Dataflow("combiner_naive")
    s = op.input("inp", flow, TestingSource(items, batch_size=20))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    w = win.count_window(
        "count", s, clock, win.TumblingWindower(timedelta(seconds=10), T0), lambda v: f"k{v[1] % 5}"
    )
    op.output("out", w.down, TestingSink([]))
    with pytest.raises(Exception) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    text = " ".join(str(e) for e in cause_chain(info.value))
    assert "timezone" in text and "count" in text, text


def test_the_plan_drops_window_streams_nothing_reads_but_never_user_steps() -> None:
    from headrace._engine._plan import build_plan

    def build(read_late: bool) -> Dataflow:
        flow = Dataflow("prune")
        s = op.input("inp", flow, TestingSource(_items(5, n=10)))
        op.flat_map_batch("unread_user_step", s, lambda b: b)
        clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
        w = win.count_window(
            "count", s, clock, win.TumblingWindower(timedelta(seconds=10), T0), lambda kv: kv[0]
        )
        op.output("out", w.down, TestingSink([]))
        if read_late:
            op.output("late", w.late, TestingSink([]))
        return flow

    ids = [s.step_id.split(".")[-1] for s in build_plan(build(False)).steps]
    assert "unwrap_down" in ids and "unread_user_step" in ids
    assert "unwrap_late" not in ids and "unwrap_meta" not in ids
    ids = [s.step_id.split(".")[-1] for s in build_plan(build(True)).steps]
    assert "unwrap_late" in ids and "unwrap_meta" not in ids


@pytest.mark.usefixtures("small_flushes")
@pytest.mark.parametrize("windower", ["tumbling", "sliding-10s-4s"])
def test_a_failing_merger_on_the_owner_names_the_step(
    cause_chain: Callable[[BaseException], list[BaseException]], windower: str
) -> None:
    """Partials of one window arrive in several flushes; the owner's merger raises."""
    items = [(f"k{i % 7}", (T0 + timedelta(seconds=i * 0.25), i)) for i in range(600)]

    def merger(a: int, b: int) -> int:
        raise ValueError("no merging today")

    flow = Dataflow("combiner_bad_merger")
    s = op.input("inp", flow, TestingSource(items, batch_size=37))
    clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    w = win.fold_window("merging", s, clock, WINDOWERS[windower], int, lambda a, v: a + 1, merger)
    op.output("out", w.down, TestingSink([]))
    with pytest.raises(Exception) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    text = " ".join(str(e) for e in cause_chain(info.value))
    assert "merging" in text and "`merger`" in text and "no merging today" in text, text


def _spec(windower: Any, wait: timedelta) -> Any:
    from headrace.operators.windowing._logic import _FoldBuilder
    from headrace.operators.windowing._spec import _WindowSpec

    # (`ordered` folds with a wait need the general path, which has no combiner.)
    spec = _WindowSpec(
        "c",
        win.EventClock(lambda v: v[0], wait),
        windower,
        _FoldBuilder(list, lambda acc, v: [*acc, v[1]], lambda a, b: a + b),
        not wait,
    )
    spec.late_stream = "c.late"
    return spec


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.integers(-2500, 1500), min_size=1, max_size=60),
    cuts=st.lists(st.booleans(), min_size=60, max_size=60),
    sliding=st.booleans(),
    wait_ms=st.sampled_from([0, 500, 2000]),
)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_combining_batch_by_batch_gives_the_runs_of_one_pass(
    steps: list[int], cuts: list[bool], sliding: bool, wait_ms: int
) -> None:
    """The combiner folds each batch as it is buffered; what it sends must be
    exactly what folding all of a flush's values in one pass gives: the same
    runs (slot, newest, values in order), the same values dropped as late."""
    windower = (
        win.SlidingWindower(timedelta(seconds=4), timedelta(seconds=1), T0)
        if sliding
        else win.TumblingWindower(timedelta(seconds=2), T0)
    )
    # A random walk in time: mostly forward, often back by less or more than the wait.
    values = [(T0 + timedelta(milliseconds=ms), i) for i, ms in enumerate(itertools.accumulate(steps))]
    # `cuts[i]`: a batch ends after value i.
    bounds = sorted({0, len(values), *(i + 1 for i, cut in enumerate(cuts[: len(values)]) if cut)})
    spec = _spec(windower, timedelta(milliseconds=wait_ms))
    whole = spec.precombiner(lambda _s: False)()
    pieces = spec.precombiner(lambda _s: False)()
    # Two flushes: the second starts from what the first sent (the key's newest).
    half = len(values) // 2
    expected, got = [], []
    for lo, hi in ((0, half), (half, len(values))):
        if hi > lo:
            whole.add("k", values[lo:hi])
        expected.append(whole.take())
        for a, b in itertools.pairwise(bounds):
            a, b = max(a, lo), min(b, hi)
            if b > a:
                pieces.add("k", values[a:b])
        got.append(pieces.take())
    assert got == expected
    sent = [v for flush in got for runs in flush.values() for _wid, _us, acc in runs for v in acc]
    assert sent == sorted(set(sent), key=sent.index)  # no value twice
    # Every run holds values of its own slot, in order, and carries the newest one's time.
    slot = spec.slot
    for flush in got:
        for wid, newest_us, acc in flush.get("k", []):
            stamps = [values[i][0] for i in acc]
            assert stamps == sorted(stamps)
            assert {(t - T0) // slot for t in stamps} == {wid}
            assert newest_us == _to_us(stamps[-1])


def test_reduce_combiner_batch_by_batch_is_one_reduction() -> None:
    from headrace.operators._core import _ReduceCombiner

    c = _ReduceCombiner(lambda a, b: [*a, b] if isinstance(a, list) else [a, b])
    for batch in ([1, 2], [3], [4, 5, 6]):
        c.add("k", batch)
    c.add("j", [7])
    assert c.take() == {"k": [[1, 2, 3, 4, 5, 6]], "j": [7]}
    assert c.take() == {}
