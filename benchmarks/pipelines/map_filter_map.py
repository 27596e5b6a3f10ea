"""(a) Stateless chain: ints -> map ``x + 1`` -> filter even -> map ``x * 2``.

Measures per-item overhead of stateless steps (the engine may fuse them).

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(10, sink)); sink.count
5
"""

from __future__ import annotations

from typing import Any

from _common import CountingSink, GeneratedSource
from _compat import Dataflow, op

DESCRIPTION = "ints -> map x+1 -> filter even -> map x*2"
DEFAULT_ITEMS = 5_000_000
TARGET = 1.5
NEEDS_WINDOWING = False


def _ints(start: int, size: int) -> list[int]:
    return list(range(start, start + size))


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` input ints, writing into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    flow = Dataflow("map_filter_map")
    nums = op.input("inp", flow, GeneratedSource(n, _ints))
    plus_one = op.map("add_one", nums, lambda x: x + 1)
    evens = op.filter("keep_even", plus_one, lambda x: x % 2 == 0)
    doubled = op.map("double", evens, lambda x: x * 2)
    op.output("out", doubled, sink)
    return flow
