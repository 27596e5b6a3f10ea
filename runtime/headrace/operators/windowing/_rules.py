"""The rules of event time, written once: how the watermark moves, and what is late.

An `EventClock`'s per-key state is ``base`` (the newest timestamp seen minus
the wait) and ``sys_at`` (the system time when ``base`` was set): the
watermark is ``base`` plus the system time since ``sys_at``
(`event_watermark`). Each item may raise it to its own timestamp minus the
wait (`advance_watermark`), and an item is late if its timestamp is before
the watermark once the item has been seen (`is_late`).

Who uses them: the event clock's logic (`_clocks._EventClockLogic`) and the
general per-key engine (`_engine._KeyWindows`) call these functions. The
fused loops (`_fused`) and the combiner (`_combiner`) inline them, since
they run once per item; each inlined copy carries a comment naming the
function it inlines, and ``tests/windowing/test_fused.py`` checks the fused
loops against the general engine on random streams.

The composition the inlined copies write out: within a batch whose
watermark was ``wm0`` when it began, and whose newest timestamp so far
(this item's included) is ``newest``, an item stamped ``ts`` is late iff
``is_late(ts, advance_watermark(wm0, newest, wait, floor))``, i.e.
``ts < wm0 or (newest >= floor and ts < newest - wait)``. An item that is
itself the newest can only be late against ``wm0`` (``wait`` is never
negative).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = [
    "UTC_MAX",
    "UTC_MIN",
    "advance_watermark",
    "event_watermark",
    "is_late",
    "watermark_floor",
]

UTC_MAX: datetime = datetime.max.replace(tzinfo=UTC)
"""The latest representable UTC time; the watermark at end of input."""

UTC_MIN: datetime = datetime.min.replace(tzinfo=UTC)
"""The earliest representable UTC time; the watermark before any item."""


def watermark_floor(wait: timedelta) -> datetime:
    """The oldest timestamp that can move a watermark (`advance_watermark`'s ``floor``).

    Below it ``ts - wait`` is not a representable time, so such an item
    leaves the watermark where it is.

    >>> from datetime import timedelta
    >>> watermark_floor(timedelta(0)) == UTC_MIN
    True
    >>> watermark_floor(timedelta(days=1)) - UTC_MIN
    datetime.timedelta(days=1)
    >>> watermark_floor(timedelta.max) == UTC_MAX
    True
    """
    try:
        return UTC_MIN + wait
    except OverflowError:
        return UTC_MAX


def event_watermark(base: datetime, sys_at: datetime, sys_now: datetime) -> datetime:
    """An event clock's watermark at system time ``sys_now``: ``base`` + (``sys_now`` - ``sys_at``).

    It moves one-for-one with system time while no newer item arrives;
    `UTC_MAX` once that leaves the representable range.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> event_watermark(t, t, t + timedelta(seconds=3)) - t
    datetime.timedelta(seconds=3)
    >>> event_watermark(UTC_MAX - timedelta(seconds=1), t, t + timedelta(days=1)) == UTC_MAX
    True
    """
    try:
        return base + (sys_now - sys_at)
    except OverflowError:
        return UTC_MAX


def advance_watermark(watermark: datetime, newest: datetime, wait: timedelta, floor: datetime) -> datetime:
    """The watermark once an item stamped ``newest`` was seen: ``newest - wait`` if later, else unchanged.

    ``floor`` is `watermark_floor` ``(wait)``. The watermark never goes back:
    an older item leaves it as it is.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> wait = timedelta(seconds=5)
    >>> advance_watermark(t, t + timedelta(seconds=8), wait, watermark_floor(wait)) - t
    datetime.timedelta(seconds=3)
    >>> advance_watermark(t, t + timedelta(seconds=2), wait, watermark_floor(wait)) == t
    True
    >>> advance_watermark(UTC_MIN, UTC_MIN, wait, watermark_floor(wait)) == UTC_MIN
    True
    """
    if newest >= floor:
        cand = newest - wait
        if cand > watermark:
            return cand
    return watermark


def is_late(ts: datetime, watermark: datetime) -> bool:
    """Whether an item stamped ``ts`` is late: before the watermark in force once it was seen.

    ``watermark`` includes what the item itself did to it (for an event
    clock, `advance_watermark` with the newest timestamp so far), so an
    on-time item never makes itself late; an item exactly at the watermark
    is on time.

    >>> from datetime import datetime, timedelta, timezone
    >>> t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> is_late(t - timedelta(microseconds=1), t), is_late(t, t)
    (True, False)
    """
    return ts < watermark
