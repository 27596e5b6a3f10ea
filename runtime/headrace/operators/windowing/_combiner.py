"""The window combiner: a sending worker pre-folds values bound for the key's owner.

On a multi-worker run the engine asks each `stateful_batch` builder for a
combiner (`_spec._WindowSpec.precombiner` says when a window step has one:
the fused tumbling or sliding fold, with nothing reading ``late``). A
`_Precombiner` folds each destination's values into `_events._Runs`, one
accumulator per key and slot, as they are buffered; the owner's fused
logic merges them (`_fused._FoldRunsWindows._fast_runs`). The sender drops
only values late whatever the owner has seen, by the reference rules of
`_rules`, inlined.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from headrace.operators.windowing._clocks import EventClock
from headrace.operators.windowing._events import (
    _EPOCH,
    _US,
    _getter_error,
    _is_aware,
    _Runs,
    _timestamp_error,
)
from headrace.operators.windowing._rules import UTC_MAX, UTC_MIN
from headrace.operators.windowing._windowers import TumblingWindower

if TYPE_CHECKING:
    from headrace.operators.windowing._spec import _WindowSpec


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
                # A new run, unless the value is late whatever else happens:
                # `_rules.is_late(ts, _rules.advance_watermark(UTC_MIN, top,
                # wait, floor))`, inlined (the owner's watermark is at least
                # that; `ts < top` first spares in-order values the subtraction).
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
