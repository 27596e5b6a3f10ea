"""Windowers: which windows (int ids) an item's timestamp belongs to, and when they close.

A `Windower` is configuration; `Windower.build` makes a `WindowerLogic` per
key that tracks that key's open windows. Tumbling and sliding windows are
pure arithmetic on the timestamp (id ``n`` opens at ``align_to + n * offset``
and lasts ``length``); session windows grow with their items and merge when
an item bridges two of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from headrace.operators.windowing._clocks import UTC_MIN, ZERO_TD

__all__ = [
    "LATE_SESSION_ID",
    "SessionWindower",
    "SlidingWindower",
    "TumblingWindower",
    "WindowMetadata",
    "Windower",
    "WindowerLogic",
]

S = TypeVar("S")

LATE_SESSION_ID: int = -1
"""The window id given to late items of session windows."""


@dataclass(slots=True)
class WindowMetadata:
    """When a window opened and closed, and which windows were merged into it.

    For sliding and tumbling windows ``close_time`` is exclusive; for
    session windows it is the time of the last item (inclusive).

    >>> from datetime import datetime, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> WindowMetadata(t, t).merged_ids
    set()
    """

    open_time: datetime
    close_time: datetime
    merged_ids: set[int] = field(default_factory=set)


class WindowerLogic(ABC, Generic[S]):
    """Per-key window bookkeeping, built by `Windower.build`.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> logic = TumblingWindower(timedelta(seconds=10), t).build(None)
    >>> logic.open_for(t + timedelta(seconds=25))
    [2]
    >>> [wid for wid, _meta in logic.close_for(t + timedelta(seconds=30))]
    [2]
    """

    @abstractmethod
    def open_for(self, timestamp: datetime) -> Iterable[int]:
        """Open (if needed) and return the ids of the windows an on-time item is in.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), t).build(None).open_for(
        ...     t + timedelta(seconds=12))
        [1, 2]
        """

    @abstractmethod
    def late_for(self, timestamp: datetime) -> Iterable[int]:
        """The ids of the windows a late item would have been in (opens nothing).

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> TumblingWindower(timedelta(seconds=10), t).build(None).late_for(t)
        [0]
        """

    @abstractmethod
    def merged(self) -> Iterable[tuple[int, int]]:
        """Report (and forget) merges since the last call: ``(original_id, target_id)``.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> list(TumblingWindower(timedelta(seconds=10), t).build(None).merged())
        []
        """

    @abstractmethod
    def close_for(self, watermark: datetime) -> Iterable[tuple[int, WindowMetadata]]:
        """Close and return the windows the watermark has passed, with their metadata.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> logic = TumblingWindower(timedelta(seconds=10), t).build(None)
        >>> logic.open_for(t)
        [0]
        >>> logic.close_for(t + timedelta(seconds=10))[0][1].close_time == t + timedelta(seconds=10)
        True
        """

    @abstractmethod
    def notify_at(self) -> datetime | None:
        """The (event) time at which the next window may close, or ``None``.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> TumblingWindower(timedelta(seconds=10), t).build(None).notify_at() is None
        True
        """

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether this key's windower state can be dropped.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> TumblingWindower(timedelta(seconds=10), t).build(None).is_empty()
        True
        """

    @abstractmethod
    def snapshot(self) -> S:
        """This logic's state for recovery (pickleable, not shared).

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> TumblingWindower(timedelta(seconds=10), t).build(None).snapshot()
        []
        """


class Windower(ABC, Generic[S]):
    """A kind of window; `build` makes the `WindowerLogic` for one key.

    >>> from datetime import timedelta
    >>> isinstance(SessionWindower(timedelta(seconds=5)), Windower)
    True
    """

    @abstractmethod
    def build(self, resume_state: S | None) -> WindowerLogic[S]:
        """Make a logic for a key, from its snapshot or ``None`` for a new key.

        >>> from datetime import timedelta
        >>> isinstance(SessionWindower(timedelta(seconds=5)).build(None), WindowerLogic)
        True
        """


def _check_positive(cls: str, name: str, td: object) -> None:
    if not isinstance(td, timedelta):
        msg = f"{cls} `{name}` must be a timedelta; got {type(td).__name__} {td!r}"
        raise TypeError(msg)
    if td <= ZERO_TD:
        msg = f"{cls} `{name}` must be a positive timedelta; got {td!r}"
        raise ValueError(msg)


def _check_aware(cls: str, name: str, dt: object) -> None:
    if not isinstance(dt, datetime):
        msg = f"{cls} `{name}` must be a datetime; got {type(dt).__name__} {dt!r}"
        raise TypeError(msg)
    if dt.tzinfo is None or dt.utcoffset() is None:
        msg = (
            f"{cls} `{name}` must be a timezone-aware datetime; got naive {dt!r}; "
            "use e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)"
        )
        raise ValueError(msg)


class _SlidingWindowerLogic(WindowerLogic[list[int]]):
    """Window ``n`` covers ``[align_to + n * offset, ... + length)``.

    ``opened`` maps each open window id to its close time, in the order the
    windows opened (which is the order they are reported closed in).
    """

    __slots__ = ("align_to", "length", "offset", "opened")

    def __init__(
        self, length: timedelta, offset: timedelta, align_to: datetime, resume: list[int] | None
    ) -> None:
        self.length = length
        self.offset = offset
        self.align_to = align_to
        self.opened: dict[int, datetime] = {wid: self.close_time(wid) for wid in resume} if resume else {}

    def ids_for(self, timestamp: datetime) -> range:
        since = timestamp - self.align_to
        return range((since - self.length) // self.offset + 1, since // self.offset + 1)

    def close_time(self, window_id: int) -> datetime:
        return self.align_to + self.offset * window_id + self.length

    def open_for(self, timestamp: datetime) -> list[int]:
        ids = self.ids_for(timestamp)
        opened = self.opened
        for wid in ids:
            if wid not in opened:
                opened[wid] = self.close_time(wid)
        return list(ids)

    def late_for(self, timestamp: datetime) -> list[int]:
        return list(self.ids_for(timestamp))

    def merged(self) -> Iterable[tuple[int, int]]:
        return ()

    def close_for(self, watermark: datetime) -> list[tuple[int, WindowMetadata]]:
        opened = self.opened
        length = self.length
        closed = [(wid, c) for wid, c in opened.items() if c <= watermark]
        for wid, _c in closed:
            del opened[wid]
        return [(wid, WindowMetadata(c - length, c)) for wid, c in closed]

    def notify_at(self) -> datetime | None:
        return min(self.opened.values()) if self.opened else None

    def is_empty(self) -> bool:
        return not self.opened

    def snapshot(self) -> list[int]:
        return list(self.opened)


@dataclass
class SlidingWindower(Windower[list[int]]):
    """Fixed-length windows that start every ``offset``; an item is in each that covers it.

    Window ``n`` covers ``[align_to + n * offset, align_to + n * offset + length)``.
    ``offset`` may not exceed ``length`` (items between windows would be lost).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", t0 + timedelta(seconds=s)) for s in (1, 7, 12)]
    >>> flow = Dataflow("sliding"); out = []
    >>> clock = win.EventClock(lambda ts: ts, wait_for_system_duration=timedelta(0))
    >>> windower = win.SlidingWindower(timedelta(seconds=10), timedelta(seconds=5), t0)
    >>> w = win.fold_window("n", op.input("i", flow, TestingSource(items)), clock, windower,
    ...                     lambda: 0, lambda n, _: n + 1, lambda a, b: a + b)
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out
    [('k', (-1, 1)), ('k', (0, 2)), ('k', (1, 2)), ('k', (2, 1))]
    """

    length: timedelta
    offset: timedelta
    align_to: datetime

    def __post_init__(self) -> None:
        _check_positive("SlidingWindower", "length", self.length)
        _check_positive("SlidingWindower", "offset", self.offset)
        if self.offset > self.length:
            msg = (
                f"SlidingWindower `offset` ({self.offset!r}) can't be longer than `length` "
                f"({self.length!r}): items between windows would be lost; use an offset "
                "<= length"
            )
            raise ValueError(msg)
        _check_aware("SlidingWindower", "align_to", self.align_to)

    def build(self, resume_state: list[int] | None) -> _SlidingWindowerLogic:
        """Make the logic for one key, resuming its open windows if given.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> SlidingWindower(timedelta(seconds=4), timedelta(seconds=2), t).build([3]).snapshot()
        [3]
        """
        return _SlidingWindowerLogic(self.length, self.offset, self.align_to, resume_state)


@dataclass
class TumblingWindower(Windower[list[int]]):
    """Back-to-back windows of ``length``; window ``n`` starts at ``align_to + n * length``.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", t0 + timedelta(minutes=m)) for m in (0, 5, 10, 25)]
    >>> flow = Dataflow("tumbling"); out = []
    >>> clock = win.EventClock(lambda ts: ts, wait_for_system_duration=timedelta(0))
    >>> windower = win.TumblingWindower(timedelta(minutes=10), t0)
    >>> w = win.collect_window("c", op.input("i", flow, TestingSource(items)), clock, windower)
    >>> op.output("o", w.down, TestingSink(out))
    >>> run_main(flow); [(wid, len(vs)) for _k, (wid, vs) in out]
    [(0, 2), (1, 1), (2, 1)]
    """

    length: timedelta
    align_to: datetime

    def __post_init__(self) -> None:
        _check_positive("TumblingWindower", "length", self.length)
        _check_aware("TumblingWindower", "align_to", self.align_to)

    def build(self, resume_state: list[int] | None) -> _SlidingWindowerLogic:
        """Make the logic for one key, resuming its open windows if given.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> TumblingWindower(timedelta(seconds=4), t).build(None).late_for(t + timedelta(seconds=9))
        [2]
        """
        return _SlidingWindowerLogic(self.length, self.length, self.align_to, resume_state)


_SessionState = tuple[int, dict[int, tuple[datetime, datetime, set[int]]], list[tuple[int, int]]]


class _SessionWindowerLogic(WindowerLogic[_SessionState]):
    """Open sessions as ``WindowMetadata`` (inclusive close), keyed by id.

    Invariant after every `open_for`: sessions are more than ``gap`` apart,
    so an item can only ever extend the session it lands next to, and two
    sessions it bridges merge into the one that opened first.
    """

    __slots__ = ("gap", "max_id", "merge_queue", "sessions")

    def __init__(self, gap: timedelta, resume: _SessionState | None) -> None:
        self.gap = gap
        if resume is None:
            self.max_id = LATE_SESSION_ID
            self.sessions: dict[int, WindowMetadata] = {}
            self.merge_queue: list[tuple[int, int]] = []
        else:
            max_id, sessions, queue = resume
            self.max_id = max_id
            self.sessions = {wid: WindowMetadata(o, c, set(m)) for wid, (o, c, m) in sessions.items()}
            self.merge_queue = list(queue)

    def _merge_touching(self) -> None:
        if len(self.sessions) < 2:
            return
        gap = self.gap
        sessions = self.sessions
        ordered = sorted(sessions.items(), key=lambda im: im[1].open_time)
        into_id, into = ordered[0]
        for wid, meta in ordered[1:]:
            if meta.open_time - into.close_time <= gap:
                if meta.close_time > into.close_time:
                    into.close_time = meta.close_time
                # Only the direct original is reported, as Bytewax 0.21 does.
                into.merged_ids.add(wid)
                self.merge_queue.append((wid, into_id))
                del sessions[wid]
            else:
                into_id, into = wid, meta

    def open_for(self, timestamp: datetime) -> tuple[int]:
        gap = self.gap
        for wid, meta in self.sessions.items():
            if meta.open_time <= timestamp <= meta.close_time:
                return (wid,)
            if timestamp < meta.open_time:
                if meta.open_time - timestamp <= gap:
                    meta.open_time = timestamp
                    self._merge_touching()
                    return (wid,)
            elif timestamp - meta.close_time <= gap:
                meta.close_time = timestamp
                self._merge_touching()
                return (wid,)
        self.max_id += 1
        wid = self.max_id
        self.sessions[wid] = WindowMetadata(timestamp, timestamp)
        return (wid,)

    def late_for(self, timestamp: datetime) -> tuple[int]:
        return (LATE_SESSION_ID,)

    def merged(self) -> list[tuple[int, int]]:
        queue, self.merge_queue = self.merge_queue, []
        return queue

    def close_before(self, watermark: datetime) -> datetime:
        """Sessions whose last item is before this are closed at ``watermark``."""
        try:
            return watermark - self.gap
        except OverflowError:
            return UTC_MIN

    def close_for(self, watermark: datetime) -> list[tuple[int, WindowMetadata]]:
        before = self.close_before(watermark)
        sessions = self.sessions
        closed = [(wid, meta) for wid, meta in sessions.items() if meta.close_time < before]
        for wid, _meta in closed:
            del sessions[wid]
        return closed

    def notify_at(self) -> datetime | None:
        if not self.sessions:
            return None
        try:
            return min(m.close_time for m in self.sessions.values()) + self.gap
        except OverflowError:
            return None

    def is_empty(self) -> bool:
        # Keep the id counter: a reused session id could confuse a
        # downstream join on window ids.
        return False

    def snapshot(self) -> _SessionState:
        return (
            self.max_id,
            {wid: (m.open_time, m.close_time, set(m.merged_ids)) for wid, m in self.sessions.items()},
            list(self.merge_queue),
        )


@dataclass
class SessionWindower(Windower[Any]):
    """Windows that stay open while items keep arriving less than ``gap`` apart.

    A session closes once the watermark is more than ``gap`` past its last
    item. When an item lands within ``gap`` of two sessions they merge into
    the earlier one; the merged ids appear in `WindowMetadata.merged_ids`.
    Late items are reported with window id `LATE_SESSION_ID` (-1).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", t0 + timedelta(seconds=s)) for s in (0, 3, 20, 22)]
    >>> flow = Dataflow("session"); out = []
    >>> clock = win.EventClock(lambda kv: kv[1], wait_for_system_duration=timedelta(0))
    >>> windower = win.SessionWindower(gap=timedelta(seconds=5))
    >>> w = win.count_window("n", op.input("i", flow, TestingSource(items)), clock, windower,
    ...                      key=lambda kv: kv[0])
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out
    [('k', (0, 2)), ('k', (1, 2))]
    """

    gap: timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.gap, timedelta):
            msg = f"SessionWindower `gap` must be a timedelta; got {type(self.gap).__name__}"
            raise TypeError(msg)
        if self.gap < ZERO_TD:
            msg = f"SessionWindower `gap` must not be negative; got {self.gap!r}"
            raise ValueError(msg)

    def build(self, resume_state: _SessionState | None) -> _SessionWindowerLogic:
        """Make the logic for one key, resuming its open sessions if given.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> logic = SessionWindower(timedelta(seconds=5)).build(None)
        >>> logic.open_for(t), logic.open_for(t + timedelta(seconds=4))
        ((0,), (0,))
        """
        return _SessionWindowerLogic(self.gap, resume_state)
