"""The general per-key windowing engine: one `StatefulBatchLogic` per key, run by `stateful_batch`.

`window` hands `stateful_batch` a `_spec._WindowSpec`, which builds one
`_KeyWindows` per key (or one of its fused subclasses from `_fused`). A
batch of one key's values goes through (`_KeyWindows.on_batch`):

    stamp (clock: timestamp each value, split off late ones, new watermark)
    -> due (ordered mode: hold values newer than the watermark, sort the rest)
    -> insert (windower: assign to windows; fold, or `WindowLogic.on_value`)
    -> merge (session windows) -> close (windows the watermark passed)

and leaves as events (`_events`). This form only uses the public
`ClockLogic`, `WindowerLogic` and `WindowLogic` interfaces (plus a faster
stamp for the built-in clocks, and plain accumulators for folds), so
user-defined clocks, windowers and logics work; it is also the reference the
fused loops are tested against. Lateness and the event clock's watermark
are the reference functions of `_rules`.

The snapshot is a plain dict, so recovery needs no special case for
windows. `notify_at` is the system time at which the next window can close,
so the engine's timers close windows as time passes.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from datetime import datetime, timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from headrace.operators._core import StatefulBatchLogic
from headrace.operators.windowing._clocks import (
    ClockLogic,
    _EventClockLogic,
    _system_utc_now,
    _SystemClockLogic,
)
from headrace.operators.windowing._events import (
    _DOWN,
    _LATE,
    _WM,
    _down,
    _getter_error,
    _is_aware,
    _meta,
    _timestamp_error,
)
from headrace.operators.windowing._rules import UTC_MAX, UTC_MIN, advance_watermark, is_late
from headrace.operators.windowing._windowers import (
    LATE_SESSION_ID,
    WindowMetadata,
    _SlidingWindowerLogic,
)

if TYPE_CHECKING:
    from headrace.operators.windowing._spec import _WindowSpec

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
        # The fused loops' window of the last item, kept across batches (`_fused`).
        self.cur_id: int | None = None
        self.cur_lo = UTC_MAX
        self.cur_hi = UTC_MIN
        self.slot_ids: range = range(0)
        clock: Any = spec.clock
        clock_state = None if resume is None else resume["clock"]
        if spec.clock_kind == _EVENT:
            # `EventClock.build`, with the floor its step worked out once.
            self.clock: Any = _EventClockLogic(clock, clock_state, spec.floor)
        else:
            self.clock = clock.build(clock_state)
        if resume is None:
            self.windower: Any = spec.windower.build(None)
            self.wins: dict[int, Any] = {}
            self.queue: list[tuple[datetime, Any]] = []
        else:
            self.windower = spec.windower.build(resume["windower"])
            states = resume["windows"]
            if spec.fold:
                self.wins = dict(states)
            else:
                self.wins = {wid: spec.builder(s) for wid, s in states.items()}
            self.queue = list(resume["queue"])
            self._refresh_next_close()
            self.wake = self._wake()

    def _stamp_event(
        self, values: list[Any], events: list[Any]
    ) -> tuple[list[datetime], list[Any], bool, datetime]:
        """Timestamp values with the built-in event clock; late ones become events.

        The clock's state is read once for the batch; each value is judged
        by the reference rules (`_rules.advance_watermark`, `_rules.is_late`).
        """
        clock: _EventClockLogic[Any] = self.clock
        clock.before_batch()
        wm0 = wm = clock.watermark()
        spec = self.spec
        getter = clock.ts_getter
        wait = clock.wait
        floor = clock.floor
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
                newest = ts >= maxts
                if newest:
                    maxts = ts
                    wm = advance_watermark(wm, ts, wait, floor)
                if is_late(ts, wm):
                    late.append((ts, v))
                    continue
                if not newest:
                    in_order = False
                tapp(ts)
                vapp(v)
        except TypeError as exc:
            if _is_aware(ts):
                raise
            raise _timestamp_error(spec.step_id, getter, v, ts) from exc
        if wm > wm0:
            clock.set_watermark(wm)
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
                if is_late(ts, wm):
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
            now = _system_utc_now()
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
