"""Count and sum events per user in 10-second event-time windows.

    python -m headrace.run examples/windowed.py:flow

The events carry their own timestamps (event time), so the result does not
depend on when the dataflow runs. Tumbling windows are aligned to
``ALIGN_TO``: window 0 covers [00:00:00, 00:00:10), window 1 the next ten
seconds, and so on. Every window closes at the end of the input, and the
dataflow prints two lines per user and window, in no particular order::

    ann window 0 [12:00:00-12:00:10): 3 events
    ann window 0 [12:00:00-12:00:10): 60 cents
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import headrace.operators as op
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow
from headrace.operators.windowing import (
    EventClock,
    TumblingWindower,
    count_window,
    fold_window,
)
from headrace.testing import TestingSource

ALIGN_TO = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
LENGTH = timedelta(seconds=10)

# (user, seconds after ALIGN_TO, amount in cents)
EVENTS = [
    {"user": user, "at": ALIGN_TO + timedelta(seconds=sec), "cents": cents}
    for user, sec, cents in [
        ("ann", 1, 10),
        ("bob", 2, 5),
        ("ann", 4, 20),
        ("ann", 9, 30),
        ("bob", 12, 15),
        ("ann", 13, 40),
        ("bob", 19, 25),
        ("bob", 21, 35),
        ("ann", 25, 50),
        ("bob", 28, 45),
    ]
]


def window_label(window_id: int) -> str:
    """``window N [start-end)`` for a tumbling window id."""
    start = ALIGN_TO + LENGTH * window_id
    return f"window {window_id} [{start:%H:%M:%S}-{start + LENGTH:%H:%M:%S})"


def format_count(item: tuple[str, tuple[int, int]]) -> str:
    user, (window_id, count) = item
    return f"{user} {window_label(window_id)}: {count} events"


def format_cents(item: tuple[str, tuple[int, int]]) -> str:
    user, (window_id, cents) = item
    return f"{user} {window_label(window_id)}: {cents} cents"


clock = EventClock(lambda event: event["at"], wait_for_system_duration=timedelta(seconds=0))
windower = TumblingWindower(length=LENGTH, align_to=ALIGN_TO)

flow = Dataflow("windowed")
events = op.input("events", flow, TestingSource(EVENTS))
counts = count_window("count", events, clock, windower, key=lambda event: event["user"])
keyed = op.key_on("by_user", events, lambda event: event["user"])
sums = fold_window(
    "spend",
    keyed,
    clock,
    windower,
    builder=lambda: 0,
    folder=lambda total, event: total + event["cents"],
    merger=lambda a, b: a + b,
)
count_lines = op.map("format_count", counts.down, format_count)
cents_lines = op.map("format_cents", sums.down, format_cents)
op.output("print", op.merge("lines", count_lines, cents_lines), StdOutSink())
