"""(d) Event-time 1 s tumbling ``fold_window`` (sum) over 100 keys.

1000 items per event-second, so each window folds 10 items per key.

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(3000, sink)); sink.count
300
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _common import CountingSink
from _windows import BASE, fold_flow, windowing

DESCRIPTION = "(key, (ts, n)) x100 keys -> EventClock -> 1 s tumbling fold_window sum"
DEFAULT_ITEMS = 1_000_000
TARGET = 5.0
NEEDS_WINDOWING = True


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` timed items, writing window sums into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    windower = windowing().TumblingWindower(length=timedelta(seconds=1), align_to=BASE)
    return fold_flow("tumbling_fold", n, sink, windower)
