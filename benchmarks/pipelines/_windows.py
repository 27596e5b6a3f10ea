"""Shared pieces of the windowing pipelines: timestamped keyed items, a sum fold.

Items are ``(key, (ts, n))`` over 100 keys with event time increasing by
1 ms per item (1000 items per event-second); ``gap_every`` inserts a 1 s
silence after that many items, which is what makes session bursts.

>>> batch = timed_items(0, 3)
>>> [(k, n) for k, (_ts, n) in batch]
[('k0', 0), ('k1', 1), ('k2', 2)]
>>> (batch[1][1][0] - batch[0][1][0]).total_seconds()
0.001
>>> [(ts - BASE).total_seconds() for _k, (ts, _n) in timed_items(3, 3, gap_every=4)]
[0.003, 1.004, 1.005]
>>> [(ts - BASE).total_seconds() for _k, (ts, _n) in timed_items(8, 1, gap_every=4)]
[2.008]
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from _common import CountingSink, GeneratedSource
from _compat import Dataflow, op, win

BASE = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = [f"k{i}" for i in range(100)]
_MS = timedelta(milliseconds=1)
_GAP = timedelta(seconds=1)

Item = tuple[str, tuple[datetime, int]]


def timed_items(start: int, size: int, gap_every: int = 0) -> list[Item]:
    """Items ``start .. start + size - 1``; see the module docstring.

    >>> len(timed_items(10, 5))
    5
    """
    keys = KEYS
    out: list[Item] = []
    append = out.append
    ms = _MS
    t = BASE + ms * start
    if gap_every:
        t += _GAP * (start // gap_every)
    for i in range(start, start + size):
        if gap_every and i % gap_every == 0 and i != start:
            t += _GAP
        append((keys[i % 100], (t, i)))
        t += ms
    return out


def _ts(value: tuple[datetime, int]) -> datetime:
    return value[0]


def _add(acc: int, value: tuple[datetime, int]) -> int:
    return acc + value[1]


def _merge(a: int, b: int) -> int:
    return a + b


def windowing() -> Any:
    """The engine's windowing module; a clear error if the engine has none yet.

    >>> hasattr(windowing(), "fold_window")
    True
    """
    if win is None:
        msg = "this engine has no `operators.windowing` module; cannot build a window pipeline"
        raise RuntimeError(msg)
    return win


def fold_flow(name: str, n: int, sink: CountingSink, windower: Any, gap_every: int = 0) -> Any:
    """A flow: ``n`` timed items -> event-time ``fold_window`` sum -> ``sink``.

    >>> from _common import CountingSink
    >>> tumbling = windowing().TumblingWindower(length=timedelta(seconds=1), align_to=BASE)
    >>> type(fold_flow("t", 10, CountingSink(), tumbling)).__name__
    'Dataflow'
    """
    windows = windowing()

    def make_batch(start: int, size: int) -> list[Item]:
        return timed_items(start, size, gap_every)

    flow = Dataflow(name)
    items = op.input("inp", flow, GeneratedSource(n, make_batch))
    clock = windows.EventClock(ts_getter=_ts, wait_for_system_duration=timedelta(seconds=0))
    sums = windows.fold_window("fold", items, clock, windower, lambda: 0, _add, _merge)
    op.output("out", sums.down, sink)
    return flow
