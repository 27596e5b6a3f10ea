"""Clocks for windowing: what time an item belongs to, and how far time has got.

A `Clock` is configuration; `Clock.build` makes a `ClockLogic` per key that
stamps each item with a timestamp and reports the key's *watermark* (the
time before which no more items are expected). The general per-key engine
(`_engine`) drives these logics, and for the two built-in clocks reads
their state directly to stamp a whole batch in one loop; the fused loops
(`_fused`) do the same for the event clock. The event clock's watermark
follows the reference rules in `_rules`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

from headrace.operators._stateless import _identity
from headrace.operators.windowing._rules import (
    UTC_MAX,
    UTC_MIN,
    advance_watermark,
    event_watermark,
    watermark_floor,
)

__all__ = [
    "UTC_MAX",
    "UTC_MIN",
    "ZERO_TD",
    "Clock",
    "ClockLogic",
    "EventClock",
    "SystemClock",
]

V = TypeVar("V")
S = TypeVar("S")

ZERO_TD: timedelta = timedelta(seconds=0)
"""A zero length of time."""


def _get_system_utc() -> datetime:
    """The current system time in UTC (`EventClock`'s default ``now_getter``).

    The same clock as `headrace.inputs._utc_now`, under the name Bytewax
    gives this default (a clock's repr shows it).

    >>> _get_system_utc().tzinfo is not None
    True
    """
    return datetime.now(UTC)


# The same as `_get_system_utc` without its Python frame, for the engine's
# hot paths (read once per key per batch).
_system_utc_now: Callable[[], datetime] = partial(datetime.now, UTC)


class ClockLogic(ABC, Generic[V, S]):
    """Per-key sense of time: timestamps items and reports the watermark.

    Built by `Clock.build` for each key. ``before_batch`` is called once
    before the ``on_item`` calls for a batch of that key's values.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> logic = EventClock(lambda v: v, timedelta(seconds=5), now_getter=lambda: t).build(None)
    >>> logic.before_batch()
    >>> ts, wm = logic.on_item(t + timedelta(seconds=10))
    >>> (wm - t).total_seconds()
    5.0
    """

    @abstractmethod
    def before_batch(self) -> None:
        """Prepare for a batch of items (e.g. read the current system time).

        >>> SystemClock().build(None).before_batch()
        """

    @abstractmethod
    def on_item(self, value: V) -> tuple[datetime, datetime]:
        """Return ``(timestamp of value, watermark after it)``.

        >>> logic = SystemClock().build(None)
        >>> logic.before_batch()
        >>> ts, wm = logic.on_item("x"); ts == wm
        True
        """

    @abstractmethod
    def on_notify(self) -> datetime:
        """Return the current watermark when no item arrived.

        >>> SystemClock().build(None).on_notify().tzinfo is not None
        True
        """

    @abstractmethod
    def on_eof(self) -> datetime:
        """Return the watermark at end of input (`UTC_MAX` closes every window).

        >>> SystemClock().build(None).on_eof() == UTC_MAX
        True
        """

    @abstractmethod
    def to_system_utc(self, timestamp: datetime) -> datetime | None:
        """The system time at which to wake up for a window closing at ``timestamp``.

        ``None`` means: don't wake up; wait for items or end of input.

        >>> from datetime import datetime, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> SystemClock().build(None).to_system_utc(t) == t
        True
        """

    @abstractmethod
    def snapshot(self) -> S:
        """Return this logic's state for recovery (pickleable, not shared).

        >>> SystemClock().build(None).snapshot() is None
        True
        """


class Clock(ABC, Generic[V, S]):
    """A kind of clock; `build` makes the `ClockLogic` for one key.

    >>> isinstance(SystemClock(), Clock)
    True
    """

    @abstractmethod
    def build(self, resume_state: S | None) -> ClockLogic[V, S]:
        """Make a logic for a key, from its snapshot or ``None`` for a new key.

        >>> isinstance(SystemClock().build(None), ClockLogic)
        True
        """


class _SystemClockLogic(ClockLogic[Any, None]):
    __slots__ = ("now", "now_getter")

    def __init__(self, now_getter: Callable[[], datetime]) -> None:
        self.now_getter = now_getter
        self.now = now_getter()

    def before_batch(self) -> None:
        now = self.now_getter()
        # The system clock may step back (NTP); the watermark must not.
        if now > self.now:
            self.now = now

    def on_item(self, value: Any) -> tuple[datetime, datetime]:
        return self.now, self.now

    def on_notify(self) -> datetime:
        self.before_batch()
        return self.now

    def on_eof(self) -> datetime:
        return UTC_MAX

    def to_system_utc(self, timestamp: datetime) -> datetime | None:
        return timestamp

    def snapshot(self) -> None:
        return None


@dataclass
class SystemClock(Clock[Any, None]):
    """Stamp each item with the current system time (UTC); the watermark is now.

    Windows therefore close as real time passes, and all close at end of input.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("sysclock"); out = []
    >>> s = op.input("inp", flow, TestingSource([("k", 1), ("k", 2)], batch_size=2))
    >>> windower = win.TumblingWindower(timedelta(hours=1), datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> w = win.collect_window("c", s, win.SystemClock(), windower)
    >>> op.output("o", op.map_value("values", w.down, lambda iw: iw[1]), TestingSink(out))
    >>> run_main(flow); out
    [('k', [1, 2])]
    """

    def build(self, resume_state: None) -> _SystemClockLogic:
        """Make the logic for one key (there is no state to resume).

        >>> SystemClock().build(None).on_eof() == UTC_MAX
        True
        """
        return _SystemClockLogic(_get_system_utc)


class _EventClockLogic(ClockLogic[V, tuple[datetime, datetime]]):
    """The watermark is ``base + (system now - sys_at)`` (`_rules.event_watermark`).

    ``base`` is the largest timestamp seen minus the wait, and ``sys_at`` the
    system time when it was raised, so the watermark keeps moving with
    system time while no newer item arrives.
    """

    __slots__ = ("base", "floor", "now_getter", "sys_at", "sys_now", "to_system", "ts_getter", "wait")

    def __init__(
        self,
        clock: EventClock[V],
        resume_state: tuple[datetime, datetime] | None,
        floor: datetime | None = None,
    ) -> None:
        self.ts_getter = clock.ts_getter
        self.wait = clock.wait_for_system_duration
        # `watermark_floor(wait)`; the engine passes the one its step computed.
        self.floor = watermark_floor(self.wait) if floor is None else floor
        getter = clock.now_getter
        # Read once per key per batch: skip the Python frame of the default.
        self.now_getter = _system_utc_now if getter is _get_system_utc else getter
        self.to_system = clock.to_system_utc
        now = self.now_getter()
        if resume_state is None:
            self.base = UTC_MIN
            self.sys_at = now
        else:
            self.base, self.sys_at = resume_state
        self.sys_now = now if now > self.sys_at else self.sys_at

    def before_batch(self) -> None:
        now = self.now_getter()
        # The system clock may step back (NTP, leap seconds); hold the
        # watermark steady until it catches up instead of regressing.
        if now > self.sys_now:
            self.sys_now = now

    def watermark(self) -> datetime:
        return event_watermark(self.base, self.sys_at, self.sys_now)

    def set_watermark(self, watermark: datetime) -> None:
        """Make ``watermark`` (later than now's) the watermark, moving on with system time."""
        self.base = watermark
        self.sys_at = self.sys_now

    def on_item(self, value: V) -> tuple[datetime, datetime]:
        ts = self.ts_getter(value)
        wm = self.watermark()
        new = advance_watermark(wm, ts, self.wait, self.floor)
        if new > wm:
            self.set_watermark(new)
        return ts, new

    def on_notify(self) -> datetime:
        self.before_batch()
        return self.watermark()

    def on_eof(self) -> datetime:
        return UTC_MAX

    def to_system_utc(self, timestamp: datetime) -> datetime | None:
        return self.to_system(timestamp)

    def wake_at(self, timestamp: datetime) -> datetime | None:
        """System time at which the watermark reaches ``timestamp``."""
        if self.to_system is not _identity:
            return self.to_system(timestamp)
        # The watermark advances one-for-one with system time, so this is
        # exact; waking at ``timestamp`` itself would spin on old data.
        try:
            return self.sys_at + (timestamp - self.base)
        except OverflowError:
            return None

    def snapshot(self) -> tuple[datetime, datetime]:
        return (self.base, self.sys_at)


@dataclass
class EventClock(Clock[V, tuple[datetime, datetime]]):
    """Stamp each item with its own time, from ``ts_getter(value)``.

    A key's watermark is the largest timestamp it has seen minus
    ``wait_for_system_duration``, plus the system time that has passed since
    that item arrived. Items older than the watermark are *late*. Timestamps
    must be timezone-aware (convert them to UTC in ``ts_getter``).

    ``now_getter`` gives the "system" time (handy in tests); ``to_system_utc``
    maps a window close time to the system time to wake up at (``None``: don't
    wake). By default the wake-up time is when the watermark will pass the
    close time.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), s)) for s in (1, 5, 12)]
    >>> flow = Dataflow("evclock"); out = []
    >>> clock = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> windower = win.TumblingWindower(timedelta(seconds=10), t0)
    >>> w = win.fold_window("sum", op.input("i", flow, TestingSource(items)), clock, windower,
    ...                     lambda: 0, lambda acc, v: acc + v[1], lambda a, b: a + b)
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out
    [('k', (0, 6)), ('k', (1, 12))]
    """

    ts_getter: Callable[[V], datetime]
    wait_for_system_duration: timedelta
    now_getter: Callable[[], datetime] = _get_system_utc
    to_system_utc: Callable[[datetime], datetime | None] = _identity

    def __post_init__(self) -> None:
        if not callable(self.ts_getter):
            msg = f"EventClock `ts_getter` must be callable; got {self.ts_getter!r}"
            raise TypeError(msg)
        wait = self.wait_for_system_duration
        if not isinstance(wait, timedelta):
            msg = (
                "EventClock `wait_for_system_duration` must be a timedelta; "
                f"got {type(wait).__name__} {wait!r}"
            )
            raise TypeError(msg)
        if wait < ZERO_TD:
            msg = (
                f"EventClock `wait_for_system_duration` must not be negative; got {wait!r}; "
                "use timedelta(0) to close windows as soon as newer items arrive"
            )
            raise ValueError(msg)
        if not callable(self.now_getter):
            msg = f"EventClock `now_getter` must be callable; got {self.now_getter!r}"
            raise TypeError(msg)
        if not callable(self.to_system_utc):
            msg = f"EventClock `to_system_utc` must be callable; got {self.to_system_utc!r}"
            raise TypeError(msg)

    def build(self, resume_state: tuple[datetime, datetime] | None) -> _EventClockLogic[V]:
        """Make the logic for one key, resuming from its snapshot if given.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> logic = EventClock(lambda v: v, timedelta(0), now_getter=lambda: t).build(None)
        >>> logic.before_batch(); logic.on_item(t)[1] == t
        True
        >>> EventClock(lambda v: v, timedelta(0)).build(logic.snapshot()).snapshot()[0] == t
        True
        """
        return _EventClockLogic(self, resume_state)
