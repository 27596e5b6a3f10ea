"""A window step's configuration, and which per-key logic runs it.

`window` (in the package's ``__init__``) makes one `_WindowSpec` and hands it
to `stateful_batch` as its builder. The spec classifies the step's clock,
windower and builder once; for each key it builds the general engine's
`_engine._KeyWindows` or, for folds with the built-in event clock and
windowers, a fused logic from `_fused`; on multi-worker runs it may offer
the engine a combiner (`_combiner`). Set `FUSE` to ``False`` (tests do) to
build every step from then on with the general engine alone: the reference
the fused loops must agree with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from headrace.operators.windowing._clocks import Clock, EventClock, SystemClock, _identity
from headrace.operators.windowing._combiner import _Precombiner
from headrace.operators.windowing._engine import (
    _CUSTOM,
    _EVENT,
    _FAST_SESSION,
    _FAST_SLIDING,
    _FAST_TUMBLING,
    _SESSION,
    _SLIDING,
    _SLOW,
    _SYSTEM,
    _KeyWindows,
)
from headrace.operators.windowing._events import _US
from headrace.operators.windowing._fused import (
    _FoldRunsWindows,
    _SessionFoldWindows,
    _SlidingFoldWindows,
    _TumblingFoldWindows,
)
from headrace.operators.windowing._logic import WindowLogic, _FoldBuilder
from headrace.operators.windowing._rules import UTC_MIN, watermark_floor
from headrace.operators.windowing._windowers import (
    SessionWindower,
    SlidingWindower,
    TumblingWindower,
    Windower,
)

FUSE = True
"""Whether window steps built from now on may take the fused loops of `_fused`."""


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
            self.floor = watermark_floor(wait)
            if FUSE and self.fold and (not wait or not self.ordered):
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
            return _QUEUED_CLASSES[self.fast](self, resume_state)
        return _LOGIC_CLASSES[self.fast](self, resume_state)


_LOGIC_CLASSES: dict[int, type[_KeyWindows]] = {
    _SLOW: _KeyWindows,
    _FAST_TUMBLING: _TumblingFoldWindows,
    _FAST_SLIDING: _SlidingFoldWindows,
    _FAST_SESSION: _SessionFoldWindows,
}

# A resumed key whose snapshot held queued values takes the general path
# (values wait for the watermark there); runs from a combiner still merge.
_QUEUED_CLASSES: dict[int, type[_KeyWindows]] = {
    _SLOW: _KeyWindows,
    _FAST_TUMBLING: _FoldRunsWindows,
    _FAST_SLIDING: _FoldRunsWindows,
    _FAST_SESSION: _KeyWindows,
}
