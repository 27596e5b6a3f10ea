"""The fused loops: `fold_window` with the built-in `EventClock` and windowers, one loop per batch.

`_spec._WindowSpec` picks one of these per-key logics instead of the general
`_engine._KeyWindows` when the step folds (`fold_window` and everything
built on it) with an exact `EventClock` and a built-in windower, and values
never wait in the ordering queue: with ``wait_for_system_duration == 0``
every on-time value is newer than all before it, so timestamp order is
arrival order; with ``ordered=False`` arrival order is what is asked for.
Each loop then fuses stamp, insert, merge and close into one pass over the
batch: no per-item method dispatch, no intermediate lists, and the window
of an item is found by comparing its timestamp against the cached bounds of
the previous item's window (the id arithmetic runs once per window).

The results are those of the general engine (tests/windowing/test_fused.py
checks it on random streams). For speed the loops inline the reference
rules of `_rules` and the event clock's methods; each inlined copy says
which function it inlines. Values another worker pre-folded (`_Runs`, see
`_combiner`) are merged by `_FoldRunsWindows._fast_runs`.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from headrace.errors import BytewaxRuntimeError
from headrace.operators.windowing._clocks import _EventClockLogic
from headrace.operators.windowing._engine import _FAST_TUMBLING, _MISSING, _KeyWindows
from headrace.operators.windowing._events import (
    _DOWN,
    _LATE,
    _US,
    _UTC_MIN_US,
    _WM,
    _from_us,
    _getter_error,
    _is_aware,
    _meta,
    _Runs,
    _timestamp_error,
    _to_us,
)
from headrace.operators.windowing._rules import UTC_MAX, UTC_MIN, advance_watermark
from headrace.operators.windowing._windowers import (
    LATE_SESSION_ID,
    WindowMetadata,
    _SessionWindowerLogic,
    _SlidingWindowerLogic,
)

# Accumulators that can be shared between windows (nothing can change them).
_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None), datetime, timedelta})


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


class _FoldRunsWindows(_KeyWindows):
    """Event clock, tumbling or sliding windows, fold: merges runs other workers pre-folded.

    Values take the general path; this class alone serves a resumed key whose
    snapshot held queued values, of a step that pre-combines. The fused
    subclasses below take every batch through one loop.
    """

    __slots__ = ()

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values.__class__ is _Runs:
            return self._fast_runs(values)
        return _KeyWindows.on_batch(self, values)

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
            # The run's newest value decides, by the rule for one value:
            # `_rules.is_late(last, _rules.advance_watermark(wm0, maxts, wait,
            # floor))` inlined, in microseconds (see `_rules` for the form).
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

    def _fast_end(self, maxts: datetime, wm0: datetime, events: list[Any]) -> tuple[list[Any], bool]:
        """Raise the watermark to the batch's newest ``maxts``, close windows, pick the wake-up time."""
        clock: _EventClockLogic[Any] = self.clock
        wm = advance_watermark(wm0, maxts, clock.wait, clock.floor)
        if wm > wm0:
            clock.set_watermark(wm)
        if wm > self.last_wm:
            self.last_wm = wm
        if wm >= self.next_close:
            self._close_sliding(wm, events)
        if not self.wins:
            self.wake = None
            return events, True
        wake = clock.wake_at(self.next_close)
        old = self.wake
        # An earlier wake-up is harmless (the timer finds nothing to close
        # and asks again); keeping it spares the timer heap a push per batch.
        if wake is None or old is None or wake < old:
            self.wake = wake
        return events, False


class _TumblingFoldWindows(_FoldRunsWindows):
    """Event clock, tumbling windows, fold: every batch takes the fused loop."""

    __slots__ = ()

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
        # The watermark as the batch begins: `_EventClockLogic.before_batch`
        # and `_EventClockLogic.watermark` (`_rules.event_watermark`), inlined.
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
        # The watermark after an item is max(wm0, newest ts - wait)
        # (`_rules.advance_watermark`), so an item newer than all before it
        # is late only if older than wm0 (`_rules.is_late`). An item in
        # [low, hi) is therefore on time, the newest yet, and in window `cur`.
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
                # `_rules.is_late(ts, _rules.advance_watermark(wm0, maxts, wait,
                # floor))`, inlined (the form is spelled out in `_rules`).
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
        # `_fast_end`, inlined: this runs once per key per batch. First
        # `_rules.advance_watermark` and `_EventClockLogic.set_watermark`.
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
        # `_EventClockLogic.wake_at`, inlined.
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

    on_batch = _fast_tumbling


class _SlidingFoldWindows(_FoldRunsWindows):
    """Event clock, sliding windows, fold: every batch takes the fused loop."""

    __slots__ = ()

    def _fast_sliding(self, values: list[Any]) -> tuple[list[Any], bool]:
        if values.__class__ is _Runs:
            return self._fast_runs(values)
        clock: _EventClockLogic[Any] = self.clock
        # The watermark as the batch begins: `_EventClockLogic.before_batch`
        # and `_EventClockLogic.watermark` (`_rules.event_watermark`), inlined.
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
        # As in `_fast_tumbling`: an item in [low, hi) is on time, the newest
        # yet, and in the windows `ids`.
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
                # `_rules.is_late(ts, _rules.advance_watermark(wm0, maxts, wait,
                # floor))`, inlined (the form is spelled out in `_rules`).
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

    on_batch = _fast_sliding


class _SessionFoldWindows(_KeyWindows):
    """Event clock, session windows, fold: every batch takes the fused loop."""

    __slots__ = ()

    def _fast_session(self, values: list[Any]) -> tuple[list[Any], bool]:
        clock: _EventClockLogic[Any] = self.clock
        # The watermark as the batch begins: `_EventClockLogic.before_batch`
        # and `_EventClockLogic.watermark` (`_rules.event_watermark`), inlined.
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
                # `_rules.is_late(ts, _rules.advance_watermark(wm0, maxts, wait,
                # floor))`, inlined (the form is spelled out in `_rules`).
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
        else:
            # The last item's session was merged away: cache nothing. The
            # session cached before this batch may have a new neighbour
            # closer than its `limit` (an item extending it must then merge).
            self.cur_id = None
        return self._end_session(maxts, wm0, events)

    def _end_session(self, maxts: datetime, wm0: datetime, events: list[Any]) -> tuple[list[Any], bool]:
        """`_fast_end` for sessions: one pass closes sessions and finds the next close."""
        clock: _EventClockLogic[Any] = self.clock
        wm = advance_watermark(wm0, maxts, clock.wait, clock.floor)
        if wm > wm0:
            clock.set_watermark(wm)
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

    on_batch = _fast_session
