"""Property tests: the fused window loops agree with the general engine and the rules.

`fold_window` (and every operator built on it) with an `EventClock` and a
built-in windower runs through fused loops (`windowing._fused`) that inline
the watermark and lateness rules (`windowing._rules`). Setting
`windowing._spec.FUSE` to ``False`` builds the same step on the general
engine alone (`windowing._engine`), which calls the rules: the reference.

Each property draws many random inputs from ``random.Random(seed)``: event
times that jump ahead, fall back (some late, some only out of order) and
sit on window boundaries; system time that passes (and sometimes steps
back) between batches; timer wake-ups; restarts from snapshots. Three
levels:

- the rules: `is_late` of `advance_watermark` is the form the fused loops
  spell out;
- one key's logic, fused and general side by side: the same events, the
  same drop decisions, the same snapshots after every call, and a fused
  wake-up never later than the general one;
- whole dataflows of each operator with a fused path, fused and not: the
  same ``down``, ``late`` and ``meta`` streams; and with two workers (the
  combiner pre-folding values for the other worker), the same ``down`` and
  ``meta`` as one unfused worker (window by window: the windows one
  watermark closes may come out in another order).

A stream too particular for random draws to find, on which the fused
session loop once differed, has its own test with exact results.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

import headrace.operators as op
import headrace.operators.windowing as win
from headrace.dataflow import Dataflow
from headrace.operators.windowing import _spec
from headrace.operators.windowing._engine import _KeyWindows
from headrace.operators.windowing._events import _DOWN, _LATE, _META, _Runs, _to_us
from headrace.operators.windowing._fused import (
    _FoldRunsWindows,
    _SessionFoldWindows,
    _SlidingFoldWindows,
    _TumblingFoldWindows,
)
from headrace.operators.windowing._logic import _FoldBuilder
from headrace.operators.windowing._rules import (
    UTC_MAX,
    UTC_MIN,
    advance_watermark,
    is_late,
    watermark_floor,
)
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

MS = timedelta(milliseconds=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
# Event times a day after the earliest representable time: with a wait of
# about a day, `ts - wait` is not representable (below `watermark_floor`).
T_NEAR_MIN = UTC_MIN + timedelta(days=1)
DAY_MS = 86_400_000
NOW = datetime(2024, 6, 1, tzinfo=UTC)

# The first seeds run in the one-minute loop, the rest with the slow tests.
LOGIC_SEEDS = [
    pytest.param(range(50), id="seeds0-49"),
    pytest.param(range(50, 400), id="seeds50-399", marks=pytest.mark.slow),
]
FLOW_SEEDS = range(12)
CLUSTER_SEEDS = range(6)


@contextmanager
def fusing(on: bool) -> Iterator[None]:
    """Build window steps with (``True``) or without the fused loops."""
    saved = _spec.FUSE
    _spec.FUSE = on
    try:
        yield
    finally:
        _spec.FUSE = saved


class FakeNow:
    """A `now_getter` the test moves: system time for both sides at once."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


# ------------------------------------------------------------------ rules


def test_is_late_of_advance_watermark_is_the_form_the_fused_loops_inline() -> None:
    for seed in range(2000):
        rng = random.Random(seed)
        base = rng.choice([T0, UTC_MIN + timedelta(seconds=8), T_NEAR_MIN])
        wait = rng.choice(
            [timedelta(0), MS * rng.randrange(1, 5000), MS * (DAY_MS + rng.randrange(-5000, 5000))]
        )
        floor = watermark_floor(wait)
        wm0 = rng.choice([UTC_MIN, base + MS * rng.randrange(0, 4000)])
        newest = base + MS * rng.randrange(0, 8000)
        ts = newest - MS * rng.choice([0, rng.randrange(0, 8000)])
        spelled_out = ts < wm0 or (newest >= floor and ts < newest - wait)
        assert is_late(ts, advance_watermark(wm0, newest, wait, floor)) is spelled_out, seed
        # The newest item can only be late against the watermark it found.
        assert is_late(newest, advance_watermark(wm0, newest, wait, floor)) is (newest < wm0), seed
        # Folding items one at a time gives the watermark of the newest alone.
        older = newest - MS * rng.randrange(0, 8000)
        step = advance_watermark(advance_watermark(wm0, older, wait, floor), newest, wait, floor)
        assert step == advance_watermark(wm0, newest, wait, floor), seed


def test_the_watermark_never_goes_back() -> None:
    for seed in range(500):
        rng = random.Random(seed)
        wait = MS * rng.randrange(0, 3000)
        floor = watermark_floor(wait)
        wm = UTC_MIN
        for _ in range(50):
            nxt = advance_watermark(wm, T0 + MS * rng.randrange(-5000, 5000), wait, floor)
            assert nxt >= wm
            wm = nxt
    assert advance_watermark(T0, UTC_MAX, timedelta(0), UTC_MIN) == UTC_MAX


# ------------------------------------------------------ one key's logic


def _collect(acc: list[Any], v: Any) -> list[Any]:
    acc.append(v)
    return acc


def _concat(a: list[Any], b: list[Any]) -> list[Any]:
    return a + b


def _add_value(acc: int, v: Any) -> int:
    return acc + v[1]


def _add(a: int, b: int) -> int:
    return a + b


def _max_value(acc: Any, v: Any) -> Any:
    return v if acc is None or v[1] > acc[1] else acc


def _max_merge(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b[1] > a[1]) else a


FOLDS: dict[str, _FoldBuilder[Any, Any]] = {
    "collect": _FoldBuilder(list, _collect, _concat),
    "sum": _FoldBuilder(int, _add_value, _add),
    "max": _FoldBuilder(lambda: None, _max_value, _max_merge),
}

FUSED_CLASS = {
    "tumbling": _TumblingFoldWindows,
    "sliding": _SlidingFoldWindows,
    "session": _SessionFoldWindows,
}


def _windower(rng: random.Random, kind: str, align: datetime) -> tuple[Any, int]:
    """A random windower of ``kind`` and its typical length in ms."""
    if kind == "tumbling":
        length = rng.choice([1, 10, 1000, 2500, 7000])
        return win.TumblingWindower(MS * length, align), length
    if kind == "sliding":
        length = rng.choice([10, 1000, 2500, 7000])
        offset = rng.choice([length, length // 2, length // 3, length // 7])
        return win.SlidingWindower(MS * length, MS * offset, align), length
    gap = rng.choice([0, 1, 500, 2000])
    return win.SessionWindower(MS * gap), max(gap, 100)


def _event_times(rng: random.Random, n: int, length: int, align_ms: int, back: int = 4) -> list[int]:
    """``n`` event times in ms: mostly ahead, some jumps, some back (up to ``back`` lengths).

    Many fall on window boundaries.
    """
    t = 0
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            t += rng.choice([0, 1, rng.randrange(0, 300), rng.randrange(0, 3 * length + 1)])
        elif r < 0.65:
            t += rng.randrange(5 * length, 30 * length + 1)
        ts = t
        if rng.random() < 0.3:
            ts -= rng.randrange(0, back * length + 1)
        if rng.random() < 0.15:
            ts -= (ts - align_ms) % length
        out.append(ts)
    return out


def _events(evs: list[Any]) -> list[tuple[str, int, Any]]:
    """Events as ``(stream, window_id, value)``, tags resolved."""
    out = []
    for ev in evs:
        if len(ev) == 3:
            tag = {id(_LATE): "late", id(_DOWN): "down", id(_META): "meta"}[id(ev[2])]
        else:
            tag = "meta" if isinstance(ev[1], win.WindowMetadata) else "down"
        out.append((tag, ev[0], ev[1]))
    return out


class Case:
    """A random window step (fused and general specs) and a script of calls for one key."""

    def __init__(self, seed: int, kind: str) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.kind = kind
        self.near_min = rng.random() < 0.1
        start = T_NEAR_MIN if self.near_min else T0
        align_ms = rng.randrange(-20_000, 20_000)
        self.windower, length = _windower(rng, kind, start + MS * align_ms)
        # Long waits leave out-of-order items on time: they bridge sessions.
        wait_ms = rng.choice([0, 0, 1, rng.randrange(0, 3 * length + 1), rng.randrange(0, 10 * length + 1)])
        back = 4
        scatter = False
        if kind == "session":
            r = rng.random()
            if r < 0.5:
                # Items far back within a long wait bridge sessions: they merge.
                back = 12
                wait_ms = rng.randrange(3 * length, 20 * length)
            elif r < 0.8:
                # Times in any order over a few gaps, none late: sessions open
                # between others and merge, across batches.
                scatter = True
                wait_ms = rng.randrange(12 * length, 20 * length)
        if self.near_min:
            wait_ms = DAY_MS + rng.randrange(-5000, 5000)
        # The fused loops take a step when values never wait in the queue:
        # no wait, or no ordering asked for.
        ordered = rng.random() < 0.5 if wait_ms == 0 else False
        self.fold_name = rng.choice(sorted(FOLDS))
        self.now = FakeNow(NOW)
        clock = win.EventClock(lambda v: v[0], MS * wait_ms, now_getter=self.now)
        fold = FOLDS[self.fold_name]
        with fusing(True):
            self.fused = _spec._WindowSpec("w", clock, self.windower, fold, ordered)
        with fusing(False):
            self.general = _spec._WindowSpec("w", clock, self.windower, fold, ordered)
        self.what = (
            f"seed {seed}: {self.windower} wait {wait_ms} ms ordered={ordered} {self.fold_name} from {start}"
        )
        if scatter:
            times = [rng.randrange(0, 10 * length) for _ in range(rng.randrange(1, 40))]
        else:
            times = _event_times(rng, rng.randrange(1, 120), length, align_ms, back)
        values = [(start + MS * ms, i) for i, ms in enumerate(times)]
        self.script: list[tuple[str, Any]] = []
        i = 0
        while i < len(values):
            n = rng.choice([1, 1, 2, 3, rng.randrange(1, 25)])
            self.script.append(("batch", values[i : i + n]))
            i += n
            r = rng.random()
            if r < 0.3:
                ms = rng.choice([1, rng.randrange(0, 3 * length + 1), rng.randrange(0, 20 * length + 1)])
                # Sometimes the system clock steps back (NTP): the watermark must hold.
                self.script.append(("time", -ms if rng.random() < 0.1 else ms))
            if rng.random() < 0.2:
                self.script.append(("notify", None))
            if rng.random() < 0.04:
                self.script.append(("restart", None))


def _check_wake(case: Case, fused: _KeyWindows, general: _KeyWindows) -> None:
    f, g = fused.notify_at(), general.notify_at()
    assert (f is None) == (g is None), case.what
    # The fused loops may keep an earlier wake-up (the timer then finds
    # nothing to close): never a later one, or windows would close late.
    assert f is None or g is None or f <= g, case.what


def _run_case(case: Case) -> None:
    fused = case.fused(None)
    general = case.general(None)
    kind = case.kind
    if kind == "sliding" and case.windower.offset == case.windower.length:
        kind = "tumbling"  # sliding windows that don't overlap take the tumbling loop
    assert type(fused) is FUSED_CLASS[kind], case.what
    assert type(general) is _KeyWindows, case.what
    for step, arg in case.script:
        if step == "time":
            case.now.t += MS * arg
            continue
        if step == "restart":
            snap = fused.snapshot()
            assert snap == general.snapshot(), case.what
            fused = case.fused(copy.deepcopy(snap))
            general = case.general(copy.deepcopy(snap))
            continue
        if step == "batch":
            f_out, f_drop = fused.on_batch(list(arg))
            g_out, g_drop = general.on_batch(list(arg))
        else:
            f_out, f_drop = fused.on_notify()
            g_out, g_drop = general.on_notify()
        assert _events(list(f_out)) == _events(list(g_out)), f"{case.what}, {step} {arg}"
        assert f_drop == g_drop, case.what
        assert fused.snapshot() == general.snapshot(), case.what
        if step == "batch":
            _check_wake(case, fused, general)
        if f_drop:
            # The engine drops an empty key; its next value builds anew.
            fused = case.fused(None)
            general = case.general(None)
    f_out, f_drop = fused.on_eof()
    g_out, g_drop = general.on_eof()
    assert _events(list(f_out)) == _events(list(g_out)), f"{case.what}, eof"
    assert f_drop == g_drop, case.what


@pytest.mark.parametrize("seeds", LOGIC_SEEDS)
@pytest.mark.parametrize("kind", ["tumbling", "sliding", "session"])
def test_fused_logic_matches_the_general_engine(kind: str, seeds: range) -> None:
    for seed in seeds:
        _run_case(Case(seed, kind))


def test_the_random_streams_reach_every_branch() -> None:
    """The logic property sees late items, closes, merges and wake-ups (else it proves little)."""
    seen: dict[str, int] = {"late": 0, "down": 0, "meta": 0, "merged": 0, "near_min": 0}
    for kind in ("tumbling", "sliding", "session"):
        for seed in range(60):
            case = Case(seed, kind)
            general = case.general(None)
            outs = []
            for step, arg in case.script:
                if step == "batch":
                    out, drop = general.on_batch(list(arg))
                    outs.extend(out)
                    if drop:
                        general = case.general(None)
            outs.extend(general.on_eof()[0])
            for tag, _wid, value in _events(outs):
                seen[tag] += 1
                if tag == "meta" and value.merged_ids:
                    seen["merged"] += 1
            seen["near_min"] += case.near_min
    assert min(seen.values()) >= 10, seen


@pytest.mark.parametrize("fuse", [True, False])
def test_an_item_bridging_sessions_of_earlier_batches_merges_them(fuse: bool) -> None:
    """Batches 0 | 1500 650 1077 | 500 (ms), gap 500 ms: one session, as in Bytewax 0.21.1.

    650 opens a session between those of 0 and 1500; 1077 merges 1500's
    into 650's, so the batch's last item lands in a session merged away;
    500 then bridges 0's and 650's. The fused loop once kept 0's session
    cached through the second batch with the bound it had before 650's
    opened, and extended it with 500 without merging.
    tests/compat/programs/win_session_merge_batches.py runs the same
    stream against Bytewax.
    """
    clock = win.EventClock(lambda v: v[0], timedelta(seconds=2), now_getter=FakeNow(NOW))
    with fusing(fuse):
        spec = _spec._WindowSpec("w", clock, win.SessionWindower(MS * 500), FOLDS["sum"], False)
    logic = spec(None)
    assert type(logic) is (_SessionFoldWindows if fuse else _KeyWindows)
    for batch in ([0], [1500, 650, 1077], [500]):
        out, drop = logic.on_batch([(T0 + MS * ms, ms) for ms in batch])
        assert (_events(list(out)), drop) == ([], False)
    out, _drop = logic.on_eof()
    meta = win.WindowMetadata(T0, T0 + MS * 1500, {2})
    assert _events(list(out)) == [("down", 0, 3727), ("meta", 0, meta)]


def test_a_resumed_key_with_queued_values_still_merges_runs() -> None:
    """A snapshot with values waiting (the general path's) resumes on a pre-combining step."""
    windower = win.TumblingWindower(timedelta(seconds=10), T0)
    clock = win.EventClock(lambda v: v[0], timedelta(0), now_getter=FakeNow(NOW))
    spec = _spec._WindowSpec("w", clock, windower, FOLDS["sum"], True)
    queued = {
        "clock": (T0 + timedelta(seconds=1), NOW),
        "windower": [0],
        "windows": {0: 5},
        "queue": [(T0 + timedelta(seconds=3), (T0 + timedelta(seconds=3), 7))],
    }
    logic = spec(queued)
    assert type(logic) is _FoldRunsWindows
    out, drop = logic.on_batch(_Runs([(0, _to_us(T0 + timedelta(seconds=4)), 100)]))
    assert (_events(list(out)), drop) == ([], False)
    out, drop = logic.on_eof()
    meta = win.WindowMetadata(T0, T0 + timedelta(seconds=10))
    assert _events(list(out)) == [("down", 0, 112), ("meta", 0, meta)]


# ------------------------------------------------------ whole dataflows

Items = list[tuple[str, tuple[datetime, int]]]


def _flow_items(rng: random.Random, length: int) -> Items:
    times = _event_times(rng, rng.randrange(1, 150), length, 0)
    return [(rng.choice("abc"), (T0 + MS * ms, i)) for i, ms in enumerate(times)]


def _ts(v: tuple[datetime, int]) -> datetime:
    return v[0]


def _item_ts(kv: tuple[str, tuple[datetime, int]]) -> datetime:
    return kv[1][0]


def _key(kv: tuple[str, tuple[datetime, int]]) -> str:
    return kv[0]


def _by(v: tuple[datetime, int]) -> int:
    return v[1] % 7


def _build_op(name: str, up: Any, wait: timedelta, windower: Any, ordered: bool) -> win.WindowOut[Any, Any]:
    clock = win.EventClock(_ts, wait, now_getter=lambda: NOW)
    if name == "fold_window":
        return win.fold_window("w", up, clock, windower, list, _collect, _concat, ordered)
    if name == "collect_window":
        return win.collect_window("w", up, clock, windower, ordered=ordered)
    if name == "count_window":
        item_clock = win.EventClock(_item_ts, wait, now_getter=lambda: NOW)
        return win.count_window("w", up, item_clock, windower, _key)
    if name == "reduce_window":
        return win.reduce_window("w", up, clock, windower, lambda a, b: (b[0], a[1] + b[1]))
    if name == "max_window":
        return win.max_window("w", up, clock, windower, by=_by)
    return win.min_window("w", up, clock, windower, by=_by)


OPS = ["fold_window", "collect_window", "count_window", "reduce_window", "max_window", "min_window"]


def _run_flow(
    items: Items,
    batch_size: int,
    build: Callable[[Any], win.WindowOut[Any, Any]],
    streams: tuple[str, ...],
    entry: Callable[[Dataflow], None],
) -> dict[str, list[Any]]:
    flow = Dataflow("fused")
    wo = build(op.input("inp", flow, TestingSource(items, batch_size)))
    outs: dict[str, list[Any]] = {name: [] for name in streams}
    for name in streams:
        op.output(f"out_{name}", getattr(wo, name), TestingSink(outs[name]))
    entry(flow)
    return outs


def _by_window(out: list[Any]) -> dict[str, list[Any]]:
    """Each key's ``(window_id, value)`` pairs in window order."""
    keyed: dict[str, list[Any]] = {}
    for k, v in out:
        keyed.setdefault(k, []).append(v)
    return {k: sorted(vs, key=lambda wv: wv[0]) for k, vs in keyed.items()}


@pytest.mark.parametrize("kind", ["tumbling", "sliding", "session"])
@pytest.mark.parametrize("name", OPS)
def test_operators_give_the_same_streams_fused_or_not(name: str, kind: str) -> None:
    for seed in FLOW_SEEDS:
        rng = random.Random(seed)
        windower, length = _windower(rng, kind, T0 + MS * rng.randrange(-20_000, 20_000))
        wait = MS * rng.choice([0, 0, rng.randrange(0, 3 * length + 1)])
        # count, reduce, max and min are unordered; fold and collect fuse unordered or with no wait.
        ordered = rng.random() < 0.5 if not wait else False
        items = _flow_items(rng, length)
        batch_size = rng.choice([1, 3, 10, 1000])
        build = partial(_build_op, name, wait=wait, windower=windower, ordered=ordered)
        streams = ("down", "late", "meta")
        with fusing(True):
            fused = _run_flow(items, batch_size, build, streams, run_main)
        with fusing(False):
            general = _run_flow(items, batch_size, build, streams, run_main)
        assert fused == general, f"seed {seed}: {windower} wait {wait} ordered={ordered}"


def _two_workers(flow: Dataflow) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=2)


@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
def test_two_workers_with_the_combiner_give_one_unfused_workers_windows(kind: str) -> None:
    # Nothing reads ``late``, so the fused steps pre-fold on the sending worker.
    # A key's values reach its worker in other batches than on one worker,
    # so the windows one watermark closes may come out in another order
    # (fused or not): each window's result is compared.
    for seed in CLUSTER_SEEDS:
        rng = random.Random(seed)
        windower, length = _windower(rng, kind, T0 + MS * rng.randrange(-20_000, 20_000))
        wait = MS * rng.choice([0, rng.randrange(0, 3 * length + 1)])
        items = _flow_items(rng, length)
        batch_size = rng.choice([1, 10, 1000])
        build = partial(_build_op, "fold_window", wait=wait, windower=windower, ordered=False)
        with fusing(True):
            fused = _run_flow(items, batch_size, build, ("down", "meta"), _two_workers)
        with fusing(False):
            general = _run_flow(items, batch_size, build, ("down", "meta"), run_main)
        for name in ("down", "meta"):
            assert _by_window(fused[name]) == _by_window(general[name]), (
                f"seed {seed}: {windower} wait {wait}"
            )
