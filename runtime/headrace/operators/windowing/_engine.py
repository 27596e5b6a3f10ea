"""The windowing engine: one `StatefulBatchLogic` per key, run by `stateful_batch`.

A batch of one key's values goes through (`_KeyWindows._flush`):

    stamp (clock: timestamp each value, split off late ones, new watermark)
    -> due (ordered mode: hold values newer than the watermark, sort the rest)
    -> insert (windower: assign to windows; fold, or `WindowLogic.on_value`)
    -> merge (session windows) -> close (windows the watermark passed)

That general form only uses the public `ClockLogic`, `WindowerLogic` and
`WindowLogic` interfaces, so user-defined clocks, windowers and logics work.
For `fold_window` (and everything built on it) with the built-in
`EventClock` and windowers, `_KeyWindows._fast_*` fuse all stages into one
loop over the batch: no per-item method dispatch, no intermediate lists, and
the window of an item is found by comparing its timestamp against the
cached bounds of the previous item's window (the id arithmetic runs once per
window). That is exact whenever values never wait in the ordering queue:
with ``wait_for_system_duration == 0`` every on-time value is newer than
all before it, so timestamp order is arrival order; with ``ordered=False``
arrival order is what is asked for.

Events leave the logic as ``(window_id, value)`` (down),
``(window_id, metadata)`` and ``(window_id, value, _LATE)``; `window` splits
them into its three streams (see `_unwrap_down`). The snapshot is a plain
dict, so recovery needs no special case for windows. `notify_at` is the
system time at which the next window can close, so the engine's timers
close windows as time passes.
"""

from __future__ import annotations

import copy
import functools
import math
from bisect import bisect_right
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from headrace.dataflow import f_repr
from headrace.errors import BytewaxRuntimeError
from headrace.operators._core import StatefulBatchLogic
from headrace.operators.windowing._clocks import (
    UTC_MAX,
    UTC_MIN,
    Clock,
    ClockLogic,
    EventClock,
    SystemClock,
    _EventClockLogic,
    _identity,
    _SystemClockLogic,
)
from headrace.operators.windowing._logic import WindowLogic, _FoldBuilder
from headrace.operators.windowing._windowers import (
    LATE_SESSION_ID,
    SessionWindower,
    SlidingWindower,
    TumblingWindower,
    Windower,
    WindowMetadata,
    _SessionWindowerLogic,
    _SlidingWindowerLogic,
)

# Event tags, compared by identity (events never leave this process).
_LATE: Any = object()
_META: Any = object()
_DOWN: Any = object()
_WM = WindowMetadata


def _down(wid: int, w: Any) -> tuple[Any, ...]:
    """A down event; tagged only when its value could pass for metadata."""
    return (wid, w) if w.__class__ is not _WM else (wid, w, _DOWN)


def _meta(wid: int, meta: Any) -> tuple[Any, ...]:
    return (wid, meta) if meta.__class__ is _WM else (wid, meta, _META)


# Clock kinds and windower kinds with a fast path.
_CUSTOM = 0
_SYSTEM = 1
_EVENT = 2
_SLIDING = 1
_SESSION = 2

# Fused batch loops.
_SLOW = 0
_FAST_TUMBLING = 1
_FAST_SLIDING = 2
_FAST_SESSION = 3

# How soon to look again at a key whose clock had not moved when its timer
# fired (its time is not the system's, e.g. a test's `now_getter`).
_POLL = timedelta(milliseconds=10)

_ts_key = itemgetter(0)
_MISSING: Any = object()

# Runs carry their newest timestamp as integer microseconds since the Unix
# epoch: pickling a `datetime` costs several times folding it, and a run
# crosses to another process. The owner compares in microseconds too.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime.

    >>> _to_us(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)), _from_us(_to_us(UTC_MIN)) == UTC_MIN
    (1000000, True)
    """
    return (ts - _EPOCH) // _US


_UTC_MIN_US = _to_us(UTC_MIN)

# Accumulators that can be shared between windows (nothing can change them).
_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None), datetime, timedelta})


def _from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the Unix epoch.

    >>> _from_us(1_500_000)
    datetime.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=datetime.timezone.utc)
    """
    return _EPOCH + timedelta(microseconds=us)


def _system_now() -> datetime:
    return datetime.now(UTC)


def _getter_error(step_id: str, getter: Any, value: Any, exc: Exception) -> BytewaxRuntimeError:
    return BytewaxRuntimeError(
        f"step {step_id!r}: error calling `ts_getter` {f_repr(getter)} on value {value!r}: "
        f"{type(exc).__name__}: {exc}"
    )


def _next_session_limit(sessions: dict[int, WindowMetadata], after: datetime, gap: timedelta) -> datetime:
    """Items before this can extend the session opened at ``after`` without touching another."""
    nxt = UTC_MAX
    for meta in sessions.values():
        o = meta.open_time
        if after < o < nxt:
            nxt = o
    if nxt is UTC_MAX:
        return UTC_MAX
    try:
        return nxt - gap
    except OverflowError:
        return UTC_MIN


def _is_aware(ts: Any) -> bool:
    return isinstance(ts, datetime) and ts.utcoffset() is not None


def _timestamp_error(step_id: str, getter: Any, value: Any, ts: Any) -> BytewaxRuntimeError:
    src = f"`ts_getter` {f_repr(getter)}" if getter is not None else "the clock's `on_item`"
    if isinstance(ts, datetime):
        msg = (
            f"step {step_id!r}: {src} returned a naive datetime {ts!r} for value {value!r}; "
            "window timestamps must be timezone-aware: return e.g. "
            "`ts.replace(tzinfo=timezone.utc)` or `ts.astimezone(timezone.utc)`"
        )
    else:
        msg = (
            f"step {step_id!r}: {src} must return a timezone-aware datetime; got "
            f"{type(ts).__name__} {ts!r} for value {value!r}"
        )
    err = BytewaxRuntimeError(msg)
    err.__cause__ = TypeError(msg)
    return err


class _WindowSpec:
    """One `window` step's configuration; called as its `stateful_batch` builder."""

    __slots__ = (
        "builder",
        "clock",
        "clock_kind",
        "fast",
        "floor",
        "fold",
        "folder",
        "late_stream",
        "merger",
        "new_acc",
        "ordered",
        "precise",
        "slot",
        "step_id",
        "tumbling",
        "win_kind",
        "windower",
    )

    def __init__(
        self,
        step_id: str,
        clock: Clock[Any, Any],
        windower: Windower[Any],
        builder: Callable[[Any], WindowLogic[Any, Any, Any]],
        ordered: bool,
    ) -> None:
        self.step_id = step_id
        self.clock = clock
        self.windower = windower
        self.builder = builder
        self.ordered = bool(ordered)
        # Exact types only: a subclass may override `build`, so it takes
        # the general path through its logic's methods.
        ct = type(clock)
        self.clock_kind = _EVENT if ct is EventClock else _SYSTEM if ct is SystemClock else _CUSTOM
        wt = type(windower)
        if wt is TumblingWindower or wt is SlidingWindower:
            self.win_kind = _SLIDING
        elif wt is SessionWindower:
            self.win_kind = _SESSION
        else:
            self.win_kind = _CUSTOM
        self.tumbling = wt is TumblingWindower or (
            wt is SlidingWindower and windower.offset == windower.length  # type: ignore[attr-defined]
        )
        self.fold = isinstance(builder, _FoldBuilder) and self.win_kind != _CUSTOM
        if isinstance(builder, _FoldBuilder):
            self.new_acc: Callable[[], Any] = builder.builder
            self.folder: Callable[[Any, Any], Any] = builder.folder
            self.merger: Callable[[Any, Any], Any] = builder.merger
        self.fast = _SLOW
        self.floor = UTC_MIN
        # Set by `window`: the id of the `late` stream (see `precombiner`).
        self.late_stream: str | None = None
        # The default `to_system_utc`: wake-ups computed from the watermark.
        self.precise = getattr(clock, "to_system_utc", None) is _identity
        if self.clock_kind == _EVENT:
            wait = clock.wait_for_system_duration  # type: ignore[attr-defined]
            # Below `floor`, `ts - wait` is not representable; such a
            # timestamp does not move the watermark.
            try:
                self.floor = UTC_MIN + wait
            except OverflowError:
                self.floor = UTC_MAX
            if self.fold and (not wait or not self.ordered):
                if self.win_kind == _SESSION:
                    self.fast = _FAST_SESSION
                else:
                    self.fast = _FAST_TUMBLING if self.tumbling else _FAST_SLIDING
        # The combiner's unit of time (see `precombiner`): a window, or for
        # sliding windows the longest span that lies wholly inside or
        # outside every window, gcd(length, offset).
        self.slot: timedelta | None = None
        if self.fast == _FAST_TUMBLING:
            self.slot = windower.length  # type: ignore[attr-defined]
        elif self.fast == _FAST_SLIDING:
            length_us = windower.length // _US  # type: ignore[attr-defined]
            offset_us = windower.offset // _US  # type: ignore[attr-defined]
            self.slot = timedelta(microseconds=math.gcd(length_us, offset_us))

    def precombiner(self, consumed: Callable[[str], bool]) -> Callable[[], _Precombiner] | None:
        """A factory of combiners that pre-fold values bound for another worker, or None.

        The engine calls this when it wires the step on a multi-worker run;
        ``consumed(stream_id)`` tells whether any step reads a stream. Values
        can be folded on the sending worker (a combiner, like
        `reduce_final`'s) when the step takes the fused tumbling or sliding
        path of `fold_window` and nothing reads its ``late`` stream: the
        owner then receives, per key, runs of values that are in timestamp
        order and in one *slot*, as ``(slot_id, newest_ts, accumulator)``
        (`_Runs`; ``newest_ts`` in microseconds since the Unix epoch, see
        `_to_us`), and merges each with ``merger`` into every window that
        holds the slot. A slot is a tumbling window, or for sliding windows
        ``gcd(length, offset)`` long from ``align_to``: the longest span
        that every window holds whole or not at all.

        Lateness stays the owner's call. The sender drops only values that
        are late whatever else happens: older than the newest timestamp it
        has itself sent for the key minus the wait (the owner has seen that
        one before, on the same ordered channel). The owner decides per run
        by its newest value: a run whose newest value is late is late whole,
        otherwise it joins its window, which is then open. A run can only
        straddle the watermark when the watermark moved for a reason the
        sender cannot see (system time passing, or another worker's values
        of the same key); its older values then count in their still-open
        window, as they would had the run arrived a moment earlier.

        >>> from datetime import datetime, timedelta, timezone
        >>> from headrace.operators.windowing import EventClock, SlidingWindower, TumblingWindower
        >>> from headrace.operators.windowing._logic import _FoldBuilder
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> spec = _WindowSpec("w", EventClock(lambda v: v[0], timedelta(0)),
        ...     TumblingWindower(timedelta(seconds=10), t0),
        ...     _FoldBuilder(int, lambda a, v: a + v[1], lambda a, b: a + b), True)
        >>> spec.late_stream = "w.late"
        >>> pre = spec.precombiner(lambda stream_id: False)()
        >>> pre.add("k", [(t0 + timedelta(seconds=s), 1) for s in (1, 2, 11)])
        >>> pre.add("k", [(t0 + timedelta(seconds=5), 1)])  # late after 11 s
        >>> [(wid, n) for wid, _, n in pre.take()["k"]]
        [(0, 2), (1, 1)]
        >>> pre.add("k", [(t0 + timedelta(seconds=12), 1)])
        >>> [(wid, n) for wid, _, n in pre.take()["k"]]
        [(1, 1)]
        >>> spec.precombiner(lambda stream_id: stream_id == "w.late") is None
        True
        >>> sliding = _WindowSpec("s", EventClock(lambda v: v[0], timedelta(0)),
        ...     SlidingWindower(timedelta(seconds=10), timedelta(seconds=4), t0),
        ...     _FoldBuilder(int, lambda a, v: a + v[1], lambda a, b: a + b), True)
        >>> sliding.slot
        datetime.timedelta(seconds=2)
        """
        if (
            self.fast not in (_FAST_TUMBLING, _FAST_SLIDING)
            or self.late_stream is None
            or consumed(self.late_stream)
        ):
            return None
        return functools.partial(_Precombiner, self)

    def __call__(self, resume_state: dict[str, Any] | None) -> _KeyWindows:
        if resume_state is not None and resume_state["queue"]:
            # Values waiting for the watermark need the general path.
            return _KeyWindows(self, resume_state)
        return _LOGIC_CLASSES[self.fast](self, resume_state)


class _Precombiner:
    """One worker's combiner for one `fold_window` step and one destination worker.

    `add` folds each key's values into runs as they are buffered, while
    they are still in the CPU's caches; a key's last run stays open so that
    the next `add` can extend it, which makes the runs exactly those of the
    key's values since the last `take`, folded in one pass. `take` closes
    the open runs and hands them over (see `_WindowSpec.precombiner`).
    """

    __slots__ = ("align", "floor", "fold", "getter", "length", "new", "open", "spec", "tops", "wait")

    def __init__(self, spec: _WindowSpec) -> None:
        clock: EventClock[Any] = spec.clock  # type: ignore[assignment]
        windower: TumblingWindower = spec.windower  # type: ignore[assignment]
        self.spec = spec
        self.getter = clock.ts_getter
        self.wait = clock.wait_for_system_duration
        self.floor = spec.floor
        self.align = windower.align_to
        assert spec.slot is not None
        self.length = spec.slot
        self.fold = spec.folder
        self.new = spec.new_acc
        # Per key, the newest timestamp this worker has sent (a bounded cache:
        # forgetting a key only means fewer values are known late here).
        self.tops: dict[str, datetime] = {}
        # Per key with values since the last `take`: (closed runs, newest
        # sent before the open run, open run's slot id, newest ts, end, acc).
        self.open: dict[str, tuple[_Runs, Any, int | None, Any, Any, Any]] = {}

    def add(self, key: str, values: list[Any]) -> None:
        """Fold ``values`` of ``key`` into runs `(slot_id, newest_ts_us, acc)`."""
        getter = self.getter
        epoch = _EPOCH
        us = _US
        wait = self.wait
        floor = self.floor
        align = self.align
        length = self.length
        fold = self.fold
        state = self.open.get(key)
        wid: int | None
        if state is None:
            runs = _Runs()
            # `top`: the newest timestamp sent for the key before the open
            # run; a run's values never go back, so its newest is `last`.
            top: Any = self.tops.get(key, UTC_MIN)
            wid = None
            last: Any = UTC_MAX
            hi: Any = UTC_MIN
            acc: Any = None
        else:
            runs, top, wid, last, hi, acc = state
        append = runs.append
        v: Any = None
        ts: Any = None
        try:
            for v in values:
                try:
                    ts = getter(v)
                except Exception as exc:
                    raise _getter_error(self.spec.step_id, getter, v, exc) from exc
                if last <= ts < hi:
                    last = ts
                    acc = fold(acc, v)
                    continue
                # A new run, unless the value is late whatever else happens
                # (`ts < top` first: it spares in-order values the subtraction).
                if wid is not None and last > top:
                    top = last
                if ts < top and top >= floor and ts < top - wait:
                    continue
                if wid is not None:
                    append((wid, (last - epoch) // us, acc))
                if wid is not None and hi <= ts < (nxt := hi + length):
                    # The next slot: in-order values need no division.
                    wid += 1
                    hi = nxt
                else:
                    wid = (ts - align) // length
                    hi = align + length * (wid + 1)
                last = ts
                acc = fold(self.new(), v)
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(self.spec.step_id, getter, v, ts) from exc
        finally:
            # Kept even when a value fails: what was folded before it stays.
            self.open[key] = (runs, top, wid, last, hi, acc)

    def take(self) -> dict[str, _Runs]:
        """Every key's runs since the last call (the open ones closed); start over."""
        opened = self.open
        self.open = {}
        tops = self.tops
        epoch = _EPOCH
        us = _US
        out: dict[str, _Runs] = {}
        for key, (runs, top, wid, last, _hi, acc) in opened.items():
            if wid is not None:
                runs.append((wid, (last - epoch) // us, acc))
                if last > top:
                    top = last
                if len(tops) >= 1_000_000 and key not in tops:
                    tops.clear()
                tops[key] = top
            if runs:
                out[key] = runs
        return out


class _Runs(list):
    """One key's values pre-folded by the worker that read them: ``(window_id, newest_us, acc)``.

    ``newest_us``: the run's newest timestamp, microseconds since the Unix epoch.
    """

    __slots__ = ()


class _KeyWindows(StatefulBatchLogic[Any, Any, dict[str, Any]]):
    """All windows of one key: its clock, windower, window states and ordering queue.

    ``wins`` maps window id to the fold accumulator (folds) or to the
    `WindowLogic`; ``next_close`` is the earliest close time of an open
    sliding/tumbling window (`UTC_MAX` if none).
    """

    __slots__ = (
        "clock",
        "cur_hi",
        "cur_id",
        "cur_lo",
        "last_wm",
        "next_close",
        "queue",
        "slot_ids",
        "spec",
        "wake",
        "windower",
        "wins",
    )

    def __init__(self, spec: _WindowSpec, resume: dict[str, Any] | None) -> None:
        self.spec = spec
        self.last_wm = UTC_MIN
        self.wake: datetime | None = None
        self.next_close = UTC_MAX
        # The fast paths' window of the last item, kept across batches.
        self.cur_id: int | None = None
        self.cur_lo = UTC_MAX
        self.cur_hi = UTC_MIN
        self.slot_ids: range = range(0)
        if resume is None:
            self.clock: Any = spec.clock.build(None)
            self.windower: Any = spec.windower.build(None)
            self.wins: dict[int, Any] = {}
            self.queue: list[tuple[datetime, Any]] = []
        else:
            self.clock = spec.clock.build(resume["clock"])
            self.windower = spec.windower.build(resume["windower"])
            states = resume["windows"]
            if spec.fold:
                self.wins = dict(states)
            else:
                self.wins = {wid: spec.builder(s) for wid, s in states.items()}
            self.queue = list(resume["queue"])
            self._refresh_next_close()
            self.wake = self._wake()

    # ------------------------------------------------------------ fast paths

    def _fast_tumbling(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values.__class__ is _Runs:
            return self._fast_runs(values)
        clock: _EventClockLogic[Any] = self.clock
        spec = self.spec
        windower: _SlidingWindowerLogic = self.windower
        opened = windower.opened
        align = windower.align_to
        length = windower.length
        accs = self.wins
        getter = clock.ts_getter
        fold = spec.folder
        now = clock.now_getter()
        sys_now = clock.sys_now
        if now > sys_now:
            clock.sys_now = sys_now = now
        base = clock.base
        sys_at = clock.sys_at
        try:
            wm0 = base + (sys_now - sys_at)
        except OverflowError:
            wm0 = UTC_MAX
        wait = clock.wait
        floor = spec.floor
        events: list[Any] = []
        # The window ``cur`` = [lo, hi) of the previous item, and its accumulator.
        cur = self.cur_id
        if cur is not None and cur in accs:
            lo = self.cur_lo
            hi = self.cur_hi
            acc = accs[cur]
        else:
            cur = None
            lo = UTC_MAX
            hi = UTC_MIN
            acc = None
        maxts = UTC_MIN
        # The watermark after an item is max(wm0, newest ts - wait), so an
        # item newer than all before it is late only if older than wm0. An
        # item in [low, hi) is on time, the newest yet, and in window `cur`.
        low = lo if lo > wm0 else wm0
        v: Any = None
        ts: Any = None
        try:
            for v in values:
                try:
                    ts = getter(v)
                except Exception as exc:
                    raise _getter_error(spec.step_id, getter, v, exc) from exc
                if low <= ts < hi:
                    maxts = low = ts
                    acc = fold(acc, v)
                    continue
                if ts >= maxts:
                    maxts = ts
                    if ts < wm0:
                        events.append(((ts - align) // length, v, _LATE))
                        continue
                elif ts < wm0 or (maxts >= floor and ts < maxts - wait):
                    events.append(((ts - align) // length, v, _LATE))
                    continue
                if not (lo <= ts < hi):
                    if cur is not None:
                        accs[cur] = acc
                        if hi <= ts < hi + length:
                            cur += 1
                            lo = hi
                            hi = hi + length
                        else:
                            cur = (ts - align) // length
                            lo = align + length * cur
                            hi = lo + length
                    else:
                        cur = (ts - align) // length
                        lo = align + length * cur
                        hi = lo + length
                    acc = accs.get(cur, _MISSING)
                    if acc is _MISSING:
                        acc = spec.new_acc()
                        opened[cur] = hi
                        if hi < self.next_close:
                            self.next_close = hi
                acc = fold(acc, v)
                low = maxts if maxts > wm0 else wm0
                if lo > low:
                    low = lo
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(spec.step_id, getter, v, ts) from exc
        if cur is not None:
            accs[cur] = acc
            self.cur_id = cur
            self.cur_lo = lo
            self.cur_hi = hi
        # `_fast_end`, inlined: this runs once per key per batch.
        wm = wm0
        if maxts >= floor:
            cand = maxts - wait
            if cand > wm0:
                clock.base = base = cand
                clock.sys_at = sys_at = sys_now
                wm = cand
        at = self.next_close
        if wm >= at:
            # `_close_sliding`, inlined.
            closed = []
            for item in opened.items():
                if item[1] <= wm:
                    closed.append(item)
            append = events.append
            for wid, close in closed:
                del opened[wid]
                acc = accs.pop(wid)
                append((wid, acc) if acc.__class__ is not _WM else (wid, acc, _DOWN))
                append((wid, WindowMetadata(close - length, close)))
            if not accs:
                self.next_close = UTC_MAX
                self.wake = None
                return events, True
            at = self.next_close = next(iter(opened.values())) if len(opened) == 1 else min(opened.values())
        if spec.precise:
            try:
                wake = sys_at + (at - base)
            except OverflowError:
                wake = None
        else:
            wake = clock.to_system(at)
        old = self.wake
        if wake is None or old is None or wake < old:
            self.wake = wake
        return events, False

    def _fast_runs(self, runs: list[Any]) -> tuple[list[Any], bool]:
        """Merge runs another worker pre-folded (see `_WindowSpec.precombiner`).

        A run is one slot's values: a tumbling window, or for sliding
        windows a span every window holds whole or not at all, so the run
        joins each window over its slot. Timestamps are compared in
        microseconds (runs carry them so, see `_to_us`); only the newest
        goes back to a datetime, for the clock.
        """
        clock: _EventClockLogic[Any] = self.clock
        spec = self.spec
        windower: _SlidingWindowerLogic = self.windower
        opened = windower.opened
        align = windower.align_to
        length = windower.length
        offset = windower.offset
        slot = spec.slot
        tumbling = spec.fast == _FAST_TUMBLING
        accs = self.wins
        merge = spec.merger
        clock.before_batch()
        wm0 = clock.watermark()
        wm0_us = _to_us(wm0)
        wait_us = clock.wait // _US
        floor_us = _to_us(spec.floor)
        min_us = maxts = _UTC_MIN_US
        for sid, last, pacc in runs:
            # The run's newest value decides, by the rule for one value.
            if last >= maxts:
                maxts = last
                if last < wm0_us:
                    continue
            elif last < wm0_us or (maxts >= floor_us and last < maxts - wait_us):
                continue
            if tumbling:
                ids: Any = (sid,)
                shared = True
            else:
                since = slot * sid
                ids = range((since - length) // offset + 1, since // offset + 1)
                # Each window gets its own copy of a mutable partial: folds
                # into one window must not show up in another.
                shared = pacc.__class__ in _ATOMIC
            part = pacc
            for wid in ids:
                if part is None:
                    part = copy.deepcopy(pacc)
                acc = accs.get(wid, _MISSING)
                if acc is _MISSING:
                    accs[wid] = part
                    # (for tumbling windows offset == length)
                    close = align + offset * wid + length
                    opened[wid] = close
                    if close < self.next_close:
                        self.next_close = close
                else:
                    try:
                        accs[wid] = merge(acc, part)
                    except Exception as exc:
                        raise BytewaxRuntimeError(
                            f"error calling `merger` in step {spec.step_id!r} with the partial "
                            f"fold of window {wid} from another worker: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                if not shared:
                    part = None  # the next window copies `pacc`
        return self._fast_end(UTC_MIN if maxts == min_us else _from_us(maxts), wm0, [])

    def _fast_sliding(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values.__class__ is _Runs:
            return self._fast_runs(values)
        clock: _EventClockLogic[Any] = self.clock
        now = clock.now_getter()
        if now > clock.sys_now:
            clock.sys_now = now
        try:
            wm0 = clock.base + (clock.sys_now - clock.sys_at)
        except OverflowError:
            wm0 = UTC_MAX
        spec = self.spec
        getter = clock.ts_getter
        wait = clock.wait
        floor = spec.floor
        fold = spec.folder
        new_acc = spec.new_acc
        windower: _SlidingWindowerLogic = self.windower
        opened = windower.opened
        ids_for = windower.ids_for
        align = windower.align_to
        length = windower.length
        offset = windower.offset
        accs = self.wins
        events: list[Any] = []
        # Between two consecutive window boundaries (opens or closes) the set
        # of windows is the same: the previous item's set `ids` covers
        # [lo, hi), `slot` holds their accumulators. Windows close in id
        # order, so the set is still open if its first window is.
        ids = self.slot_ids
        if ids and ids[0] in accs:
            lo = self.cur_lo
            hi = self.cur_hi
            slot = [accs[wid] for wid in ids]
        else:
            ids = range(0)
            lo = UTC_MAX
            hi = UTC_MIN
            slot = []
        maxts = UTC_MIN
        low = lo if lo > wm0 else wm0
        v: Any = None
        ts: Any = None
        try:
            for v in values:
                try:
                    ts = getter(v)
                except Exception as exc:
                    raise _getter_error(spec.step_id, getter, v, exc) from exc
                if low <= ts < hi:
                    maxts = low = ts
                    slot = [fold(acc, v) for acc in slot]
                    continue
                if ts >= maxts:
                    maxts = ts
                    if ts < wm0:
                        events.extend([(wid, v, _LATE) for wid in ids_for(ts)])
                        continue
                elif ts < wm0 or (maxts >= floor and ts < maxts - wait):
                    events.extend([(wid, v, _LATE) for wid in ids_for(ts)])
                    continue
                if not (lo <= ts < hi):
                    for wid, acc in zip(ids, slot, strict=True):
                        accs[wid] = acc
                    since = ts - align
                    last = since // offset
                    first = (since - length) // offset + 1
                    ids = range(first, last + 1)
                    open_last = align + offset * last
                    close = align + offset * first + length
                    lo = close - offset
                    if open_last > lo:
                        lo = open_last
                    hi = open_last + offset
                    if close < hi:
                        hi = close
                    if close < self.next_close:
                        self.next_close = close
                    slot = []
                    for wid in ids:
                        acc = accs.get(wid, _MISSING)
                        if acc is _MISSING:
                            acc = new_acc()
                            opened[wid] = close
                        slot.append(acc)
                        close += offset
                slot = [fold(acc, v) for acc in slot]
                low = maxts if maxts > wm0 else wm0
                if lo > low:
                    low = lo
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(spec.step_id, getter, v, ts) from exc
        for wid, acc in zip(ids, slot, strict=True):
            accs[wid] = acc
        self.slot_ids = ids
        self.cur_lo = lo
        self.cur_hi = hi
        return self._fast_end(maxts, wm0, events)

    def _fast_session(self, values: list[Any]) -> tuple[list[Any], bool]:
        clock: _EventClockLogic[Any] = self.clock
        now = clock.now_getter()
        if now > clock.sys_now:
            clock.sys_now = now
        try:
            wm0 = clock.base + (clock.sys_now - clock.sys_at)
        except OverflowError:
            wm0 = UTC_MAX
        spec = self.spec
        getter = clock.ts_getter
        wait = clock.wait
        floor = spec.floor
        fold = spec.folder
        new_acc = spec.new_acc
        windower: _SessionWindowerLogic = self.windower
        sessions = windower.sessions
        gap = windower.gap
        open_for = windower.open_for
        accs = self.wins
        events: list[Any] = []
        # Cache the session the last item went to (kept across batches). An
        # item inside it, or at most `gap` after it and before `limit` (more
        # than `gap` before the next session), can only extend it: sessions
        # are kept more than `gap` apart. Such items need no `open_for`.
        cur: Any = self.cur_id
        meta: Any = sessions.get(cur) if cur is not None else None
        cached = meta is not None
        acc: Any = None
        open_t = close_t = limit = reach = UTC_MIN
        if cached:
            open_t, close_t = meta.open_time, meta.close_time
            limit = self.cur_hi
            acc = accs[cur]
        maxts = UTC_MIN
        v: Any = None
        ts: Any = None
        try:
            for v in values:
                try:
                    ts = getter(v)
                except Exception as exc:
                    raise _getter_error(spec.step_id, getter, v, exc) from exc
                if ts >= maxts:
                    maxts = ts
                    if ts < wm0:
                        events.append((LATE_SESSION_ID, v, _LATE))
                        continue
                elif ts < wm0 or (maxts >= floor and ts < maxts - wait):
                    events.append((LATE_SESSION_ID, v, _LATE))
                    continue
                if cached:
                    if open_t <= ts:
                        if ts <= close_t:
                            acc = fold(acc, v)
                            continue
                        if ts < limit:
                            # `reach` (an old close + gap) only errs low:
                            # recompute it only when an item goes past it.
                            if ts > reach:
                                reach = close_t + gap
                            if ts <= reach:
                                close_t = ts
                                acc = fold(acc, v)
                                continue
                    meta.close_time = close_t
                    accs[cur] = acc
                    cached = False
                (wid,) = open_for(ts)
                got = accs.get(wid, _MISSING)
                got = fold(new_acc() if got is _MISSING else got, v)
                # `open_for` may return a session it just merged away; its
                # state waits in `accs` for the merge step.
                if wid in sessions:
                    cached = True
                    cur = wid
                    meta = sessions[wid]
                    open_t, close_t = meta.open_time, meta.close_time
                    limit = _next_session_limit(sessions, open_t, gap)
                    reach = UTC_MIN
                    acc = got
                else:
                    accs[wid] = got
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(spec.step_id, getter, v, ts) from exc
        if cached:
            meta.close_time = close_t
            accs[cur] = acc
            self.cur_id = cur
            self.cur_hi = limit
        return self._end_session(maxts, wm0, events)

    def _end_session(self, maxts: datetime, wm0: datetime, events: list[Any]) -> tuple[list[Any], bool]:
        """`_fast_end` for sessions: one pass closes sessions and finds the next close."""
        clock: _EventClockLogic[Any] = self.clock
        spec = self.spec
        wm = wm0
        if maxts >= spec.floor:
            cand = maxts - clock.wait
            if cand > wm0:
                clock.base = cand
                clock.sys_at = clock.sys_now
                wm = cand
        if wm > self.last_wm:
            self.last_wm = wm
        windower: _SessionWindowerLogic = self.windower
        if windower.merge_queue:
            self._merge(events)
        sessions = windower.sessions
        before = windower.close_before(wm)
        first = UTC_MAX
        closed = []
        for item in sessions.items():
            close = item[1].close_time
            if close < before:
                closed.append(item)
            elif close < first:
                first = close
        if closed:
            accs = self.wins
            append = events.append
            for wid, meta in closed:
                del sessions[wid]
                acc = accs.pop(wid)
                append((wid, acc) if acc.__class__ is not _WM else (wid, acc, _DOWN))
                append(_meta(wid, meta))
        if first is UTC_MAX:
            self.wake = None
            return events, False
        try:
            at = first + windower.gap
        except OverflowError:
            self.wake = None
            return events, False
        wake = clock.wake_at(at)
        old = self.wake
        if wake is None or old is None or wake < old:
            self.wake = wake
        return events, False

    def _fast_end(self, maxts: datetime, wm0: datetime, events: list[Any]) -> tuple[list[Any], bool]:
        """Raise the watermark, close windows, pick the wake-up time."""
        clock: _EventClockLogic[Any] = self.clock
        wm = wm0
        if maxts >= self.spec.floor:
            cand = maxts - clock.wait
            if cand > wm0:
                clock.base = cand
                clock.sys_at = clock.sys_now
                wm = cand
        if wm > self.last_wm:
            self.last_wm = wm
        at: datetime | None
        if self.spec.win_kind == _SLIDING:
            if wm >= self.next_close:
                self._close_sliding(wm, events)
            if not self.wins:
                self.wake = None
                return events, True
            at = self.next_close
        else:
            self._merge(events)
            self._close(wm, events)
            at = self.windower.notify_at()
            if at is None:
                self.wake = None
                return events, False
        wake = clock.wake_at(at)
        old = self.wake
        # An earlier wake-up is harmless (the timer finds nothing to close
        # and asks again); keeping it spares the timer heap a push per batch.
        if wake is None or old is None or wake < old:
            self.wake = wake
        return events, False

    # ------------------------------------------------------ general: stamp

    def _stamp_event(
        self, values: list[Any], events: list[Any]
    ) -> tuple[list[datetime], list[Any], bool, datetime]:
        """Timestamp values with the built-in event clock; late ones become events."""
        clock: _EventClockLogic[Any] = self.clock
        now = clock.now_getter()
        if now > clock.sys_now:
            clock.sys_now = now
        wm0 = clock.watermark()
        spec = self.spec
        getter = clock.ts_getter
        wait = clock.wait
        floor = spec.floor
        tss: list[datetime] = []
        vals: list[Any] = []
        late: list[tuple[datetime, Any]] = []
        tapp = tss.append
        vapp = vals.append
        maxts = UTC_MIN
        in_order = True
        v: Any = None
        ts: Any = None
        try:
            for v in values:
                try:
                    ts = getter(v)
                except Exception as exc:
                    raise _getter_error(spec.step_id, getter, v, exc) from exc
                if ts >= maxts:
                    maxts = ts
                    if ts >= wm0:
                        tapp(ts)
                        vapp(v)
                        continue
                elif ts >= wm0 and (maxts < floor or ts >= maxts - wait):
                    tapp(ts)
                    vapp(v)
                    in_order = False
                    continue
                late.append((ts, v))
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(spec.step_id, getter, v, ts) from exc
        wm = wm0
        if maxts >= floor:
            cand = maxts - wait
            if cand > wm0:
                clock.base = cand
                clock.sys_at = clock.sys_now
                wm = cand
        if late:
            self._emit_late(late, events)
        return tss, vals, in_order, wm

    def _stamp_custom(
        self, values: list[Any], events: list[Any]
    ) -> tuple[list[datetime], list[Any], bool, datetime]:
        """Timestamp values through any `ClockLogic`'s methods."""
        clock: ClockLogic[Any, Any] = self.clock
        clock.before_batch()
        on_item = clock.on_item
        tss: list[datetime] = []
        vals: list[Any] = []
        late: list[tuple[datetime, Any]] = []
        wm = self.last_wm
        prev = UTC_MIN
        in_order = True
        for v in values:
            ts, item_wm = on_item(v)
            try:
                if item_wm > wm:
                    wm = item_wm
                if ts < wm:
                    late.append((ts, v))
                    continue
                if ts < prev:
                    in_order = False
            except TypeError as exc:
                bad = item_wm if _is_aware(ts) else ts
                raise _timestamp_error(self.spec.step_id, None, v, bad) from exc
            prev = ts
            tss.append(ts)
            vals.append(v)
        if late:
            self._emit_late(late, events)
        return tss, vals, in_order, wm

    def _emit_late(self, late: list[tuple[datetime, Any]], events: list[Any]) -> None:
        kind = self.spec.win_kind
        append = events.append
        if kind == _SESSION:
            for _ts, v in late:
                append((LATE_SESSION_ID, v, _LATE))
            return
        ids_for = self.windower.ids_for if kind == _SLIDING else self.windower.late_for
        for ts, v in late:
            for wid in ids_for(ts):
                append((wid, v, _LATE))

    # -------------------------------------------------------- general: due

    def _take_due(
        self, tss: list[datetime], vals: list[Any], in_order: bool, wm: datetime
    ) -> tuple[list[datetime], list[Any]]:
        """Ordered mode: the values with ``ts <= wm``, in timestamp order; queue the rest.

        The queue stays sorted (stably: equal timestamps keep arrival order),
        which gives the same order as sorting the due values at each flush.
        """
        queue = self.queue
        if not queue and in_order:
            if not tss or tss[-1] <= wm:
                return tss, vals
            cut = bisect_right(tss, wm)
            self.queue = list(zip(tss[cut:], vals[cut:], strict=True))
            return tss[:cut], vals[:cut]
        queue.extend(zip(tss, vals, strict=True))
        if not in_order or (tss and len(queue) > len(tss) and queue[-len(tss) - 1][0] > tss[0]):
            # Timsort merges the sorted queue and the new run cheaply.
            queue.sort(key=_ts_key)
        cut = bisect_right(queue, wm, key=_ts_key)
        if not cut:
            return [], []
        due = queue[:cut]
        del queue[:cut]
        return [p[0] for p in due], [p[1] for p in due]

    # ----------------------------------------------------- general: insert

    def _insert_folds(self, tss: list[datetime], vals: list[Any]) -> None:
        """Fold values into the built-in windowers' windows (accumulators in ``wins``)."""
        spec = self.spec
        fold = spec.folder
        new_acc = spec.new_acc
        accs = self.wins
        windower = self.windower
        if spec.win_kind == _SESSION:
            open_for = windower.open_for
            for ts, v in zip(tss, vals, strict=True):
                (wid,) = open_for(ts)
                acc = accs.get(wid, _MISSING)
                accs[wid] = fold(new_acc() if acc is _MISSING else acc, v)
            return
        opened = windower.opened
        ids_for = windower.ids_for
        align = windower.align_to
        offset = windower.offset
        length = windower.length
        lo = UTC_MAX
        hi = UTC_MIN
        if spec.tumbling:
            cur = None
            acc = None
            for ts, v in zip(tss, vals, strict=True):
                if lo <= ts < hi:
                    acc = fold(acc, v)
                    continue
                if cur is not None:
                    accs[cur] = acc
                cur = (ts - align) // length
                lo = align + length * cur
                hi = lo + length
                acc = accs.get(cur, _MISSING)
                if acc is _MISSING:
                    acc = new_acc()
                    opened[cur] = hi
                acc = fold(acc, v)
            if cur is not None:
                accs[cur] = acc
            self._refresh_next_close()
            return
        ids: range = range(0)
        for ts, v in zip(tss, vals, strict=True):
            if not (lo <= ts < hi):
                ids = ids_for(ts)
                open_last = align + offset * ids[-1]
                close_first = align + offset * ids[0] + length
                lo = close_first - offset
                if open_last > lo:
                    lo = open_last
                hi = open_last + offset
                if close_first < hi:
                    hi = close_first
            for wid in ids:
                acc = accs.get(wid, _MISSING)
                if acc is _MISSING:
                    acc = new_acc()
                    opened[wid] = windower.close_time(wid)
                accs[wid] = fold(acc, v)
        self._refresh_next_close()

    def _insert_logics(self, tss: list[datetime], vals: list[Any], events: list[Any]) -> None:
        open_for = self.windower.open_for
        logics = self.wins
        builder = self.spec.builder
        append = events.append
        for ts, v in zip(tss, vals, strict=True):
            for wid in open_for(ts):
                logic = logics.get(wid)
                if logic is None:
                    logic = logics[wid] = builder(None)
                for w in logic.on_value(v):
                    append(_down(wid, w))
        if self.spec.win_kind == _SLIDING:
            self._refresh_next_close()

    # ---------------------------------------------------- merge and close

    def _merge(self, events: list[Any]) -> None:
        merged = self.windower.merged()
        if not merged:
            return
        wins = self.wins
        if self.spec.fold:
            merger = self.spec.merger
            for orig, into in merged:
                if orig != into:
                    wins[into] = merger(wins[into], wins.pop(orig))
            return
        append = events.append
        for orig, into in merged:
            if orig != into:
                original = wins.pop(orig)
                for w in wins[into].on_merge(original):
                    append(_down(into, w))

    def _refresh_next_close(self) -> None:
        if self.spec.win_kind == _SLIDING:
            opened = self.windower.opened
            self.next_close = min(opened.values()) if opened else UTC_MAX

    def _close_sliding(self, wm: datetime, events: list[Any]) -> None:
        windower: _SlidingWindowerLogic = self.windower
        opened = windower.opened
        length = windower.length
        closed = []
        for item in opened.items():
            if item[1] <= wm:
                closed.append(item)
        wins = self.wins
        append = events.append
        if self.spec.fold:
            for wid, close in closed:
                del opened[wid]
                acc = wins.pop(wid)
                append((wid, acc) if acc.__class__ is not _WM else (wid, acc, _DOWN))
                append((wid, WindowMetadata(close - length, close)))
        else:
            for wid, close in closed:
                del opened[wid]
                for w in wins.pop(wid).on_close():
                    append(_down(wid, w))
                append((wid, WindowMetadata(close - length, close)))
        if len(opened) == 1:
            self.next_close = next(iter(opened.values()))
        else:
            self.next_close = min(opened.values()) if opened else UTC_MAX

    def _close(self, wm: datetime, events: list[Any]) -> None:
        if self.spec.win_kind == _SLIDING:
            if wm >= self.next_close:
                self._close_sliding(wm, events)
            return
        wins = self.wins
        append = events.append
        closed = self.windower.close_for(wm)
        if self.spec.fold:
            for wid, meta in closed:
                append(_down(wid, wins.pop(wid)))
                append(_meta(wid, meta))
        else:
            for wid, meta in closed:
                for w in wins.pop(wid).on_close():
                    append(_down(wid, w))
                append(_meta(wid, meta))

    def _wake(self) -> datetime | None:
        """The system time when the next window may close (or a queued value falls due)."""
        spec = self.spec
        at: datetime | None
        if spec.win_kind == _SLIDING:
            at = self.next_close if self.windower.opened else None
        else:
            at = self.windower.notify_at()
        if spec.ordered and self.queue:
            head = self.queue[0][0]
            if at is None or head < at:
                at = head
        if at is None:
            return None
        if spec.clock_kind == _EVENT:
            return self.clock.wake_at(at)
        if spec.clock_kind == _SYSTEM:
            return at
        return self.clock.to_system_utc(at)

    def _is_empty(self) -> bool:
        if self.wins or self.queue:
            return False
        kind = self.spec.win_kind
        if kind == _SLIDING:
            return not self.windower.opened
        if kind == _SESSION:
            # Never dropped: the session id counter must not restart.
            return False
        return bool(self.windower.is_empty())

    def _flush(
        self, tss: list[datetime], vals: list[Any], in_order: bool, wm: datetime, events: list[Any]
    ) -> tuple[list[Any], bool]:
        if wm < self.last_wm:
            wm = self.last_wm
        else:
            self.last_wm = wm
        spec = self.spec
        if spec.ordered and (self.queue or not in_order or (tss and tss[-1] > wm)):
            tss, vals = self._take_due(tss, vals, in_order, wm)
        if tss:
            if spec.fold:
                self._insert_folds(tss, vals)
            else:
                self._insert_logics(tss, vals, events)
        if spec.win_kind != _SLIDING:
            self._merge(events)
        self._close(wm, events)
        self.wake = self._wake()
        return events, self._is_empty()

    # ------------------------------------------------- StatefulBatchLogic

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values.__class__ is _Runs:
            # A resumed key of a pre-combining step (fold, tumbling, event
            # clock) whose snapshot held queued values.
            return self._fast_runs(values)
        spec = self.spec
        events: list[Any] = []
        kind = spec.clock_kind
        if kind == _EVENT:
            tss, vals, in_order, wm = self._stamp_event(values, events)
        elif kind == _SYSTEM:
            clock: _SystemClockLogic = self.clock
            clock.before_batch()
            wm = clock.now
            tss, vals, in_order = [wm] * len(values), values, True
        else:
            tss, vals, in_order, wm = self._stamp_custom(values, events)
        return self._flush(tss, vals, in_order, wm, events)

    def on_notify(self) -> tuple[list[Any], bool]:
        ret = self._flush([], [], True, self.clock.on_notify(), [])
        wake = self.wake
        if wake is not None:
            # Already due again: the clock's time is not the system's (e.g.
            # a test's `now_getter`); poll instead of spinning on this key.
            now = _system_now()
            if wake <= now:
                self.wake = now + _POLL
        return ret

    def on_eof(self) -> tuple[list[Any], bool]:
        return self._flush([], [], True, self.clock.on_eof(), [])

    def notify_at(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> dict[str, Any]:
        if self.spec.fold:
            windows = {wid: copy.deepcopy(acc) for wid, acc in self.wins.items()}
        else:
            windows = {wid: logic.snapshot() for wid, logic in self.wins.items()}
        return {
            "clock": self.clock.snapshot(),
            "windower": self.windower.snapshot(),
            "windows": windows,
            "queue": list(self.queue),
        }


class _TumblingFoldWindows(_KeyWindows):
    """Event clock, tumbling windows, fold: every batch takes the fused loop."""

    __slots__ = ()

    on_batch = _KeyWindows._fast_tumbling


class _SlidingFoldWindows(_KeyWindows):
    """Event clock, sliding windows, fold: every batch takes the fused loop."""

    __slots__ = ()

    on_batch = _KeyWindows._fast_sliding


class _SessionFoldWindows(_KeyWindows):
    """Event clock, session windows, fold: every batch takes the fused loop."""

    __slots__ = ()

    on_batch = _KeyWindows._fast_session


_LOGIC_CLASSES: dict[int, type[_KeyWindows]] = {
    _SLOW: _KeyWindows,
    _FAST_TUMBLING: _TumblingFoldWindows,
    _FAST_SLIDING: _SlidingFoldWindows,
    _FAST_SESSION: _SessionFoldWindows,
}


# Down and metadata events are 2-tuples that the engine's ``(key, event)``
# can be passed on as is (no allocation per window); what tells them apart
# is whether the value is exactly a `WindowMetadata`. Late events, and the
# rare down value or custom metadata that would be ambiguous, carry a tag.


def _unwrap_down(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [
        kv if len(kv[1]) == 2 else (kv[0], kv[1][:2])
        for kv in batch
        if kv[1][-1] is _DOWN or (len(kv[1]) == 2 and kv[1][1].__class__ is not _WM)
    ]


def _unwrap_late(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [(kv[0], kv[1][:2]) for kv in batch if kv[1][-1] is _LATE]


def _unwrap_meta(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [
        kv if len(kv[1]) == 2 else (kv[0], kv[1][:2])
        for kv in batch
        if kv[1][-1] is _META or (len(kv[1]) == 2 and kv[1][1].__class__ is _WM)
    ]


# Pure: the engine skips an unwrap step whose stream nothing reads.
for _unwrap in (_unwrap_down, _unwrap_late, _unwrap_meta):
    _unwrap._headrace_pure = True  # type: ignore[attr-defined]
