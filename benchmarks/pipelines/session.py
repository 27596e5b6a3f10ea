"""(f) Event-time session ``fold_window`` (sum), gap 0.5 s, 100 keys, in bursts.

Bursts of 5000 items (5 event-seconds, a key every 100 ms) separated by 1 s
of silence, so every key gets one 50-item session per burst.

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(12000, sink)); sink.count
300
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _common import CountingSink
from _windows import fold_flow, windowing

DESCRIPTION = "(key, (ts, n)) x100 keys, 5 s bursts -> EventClock -> session 0.5 s fold_window sum"
DEFAULT_ITEMS = 1_000_000
TARGET = 3.0
NEEDS_WINDOWING = True

BURST = 5000


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` timed items, writing session sums into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    windower = windowing().SessionWindower(gap=timedelta(milliseconds=500))
    return fold_flow("session", n, sink, windower, gap_every=BURST)
