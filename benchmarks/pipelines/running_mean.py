"""(c) Keyed running mean: ``stateful_map`` over 100 keys, one output per input.

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(250, sink)); sink.count
250
"""

from __future__ import annotations

from typing import Any

from _common import BATCH_SIZE, CountingSink, GeneratedSource
from _compat import Dataflow, op

DESCRIPTION = "(key, float) over 100 keys -> stateful_map running mean"
DEFAULT_ITEMS = 3_000_000
TARGET = 2.0
NEEDS_WINDOWING = False

_KEYS = [f"k{i}" for i in range(100)]
# A few prebuilt batches, copied on use, keep the source's cost near zero.
_TEMPLATES = [
    [(_KEYS[i % 100], float((b * BATCH_SIZE + i) % 997)) for i in range(BATCH_SIZE)] for b in range(7)
]


def _batch(start: int, size: int) -> list[tuple[str, float]]:
    return _TEMPLATES[(start // BATCH_SIZE) % len(_TEMPLATES)][:size]


def _mean(state: tuple[int, float] | None, value: float) -> tuple[tuple[int, float], float]:
    count, total = state if state is not None else (0, 0.0)
    count += 1
    total += value
    return (count, total), total / count


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` keyed floats, writing ``(key, mean)`` into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    flow = Dataflow("running_mean")
    values = op.input("inp", flow, GeneratedSource(n, _batch))
    means = op.stateful_map("mean", values, _mean)
    op.output("out", means, sink)
    return flow
