"""(e) Event-time sliding ``fold_window`` (sum): length 10 s, offset 1 s, 100 keys.

Every item falls in 10 windows; 1000 items per event-second.

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(3000, sink)); sink.count
1200
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _common import CountingSink
from _windows import BASE, fold_flow, windowing

DESCRIPTION = "(key, (ts, n)) x100 keys -> EventClock -> sliding 10 s / 1 s fold_window sum"
DEFAULT_ITEMS = 500_000
TARGET = 3.0
NEEDS_WINDOWING = True


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` timed items, writing window sums into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    windower = windowing().SlidingWindower(
        length=timedelta(seconds=10), offset=timedelta(seconds=1), align_to=BASE
    )
    return fold_flow("sliding", n, sink, windower)
