"""(a) Stateless chain: ints -> map ``x + 1`` -> filter even -> map ``x * 2``.

Measures per-item overhead of stateless steps (the engine may fuse them).
`floor` is the same chain as one plain list comprehension per source
batch, calling the same user functions.

>>> from _common import CollectingSink, CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(10, sink)); sink.count
5
>>> engine, plain = CollectingSink(), CollectingSink()
>>> run_main(build(10, engine)); floor(10, plain); engine.items == plain.items, plain.items
(True, [4, 8, 12, 16, 20])
"""

from __future__ import annotations

from typing import Any

from _common import BATCH_SIZE, CountingSink, GeneratedSource
from _compat import Dataflow, op

DESCRIPTION = "ints -> map x+1 -> filter even -> map x*2"
DEFAULT_ITEMS = 5_000_000
TARGET = 1.5
# Headrace's time at most this many times the plain loop's (`floor`).
FLOOR_TARGET = 1.3
NEEDS_WINDOWING = False


def _ints(start: int, size: int) -> list[int]:
    return list(range(start, start + size))


def _add_one(x: int) -> int:
    return x + 1


def _keep_even(x: int) -> bool:
    return x % 2 == 0


def _double(x: int) -> int:
    return x * 2


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` input ints, writing into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    flow = Dataflow("map_filter_map")
    nums = op.input("inp", flow, GeneratedSource(n, _ints))
    plus_one = op.map("add_one", nums, _add_one)
    evens = op.filter("keep_even", plus_one, _keep_even)
    doubled = op.map("double", evens, _double)
    op.output("out", doubled, sink)
    return flow


def floor(n: int, sink: Any) -> None:
    """The same chain without an engine: one list comprehension per source batch.

    >>> from _common import CollectingSink
    >>> sink = CollectingSink(); floor(4, sink); sink.items
    [4, 8]
    """
    write = sink.build("out", 0, 1).write_batch
    add_one, keep_even, double = _add_one, _keep_even, _double
    for start in range(0, n, BATCH_SIZE):
        batch = _ints(start, min(BATCH_SIZE, n - start))
        out = [double(y) for x in batch for y in [add_one(x)] if keep_even(y)]
        if out:
            write(out)
