"""Async I/O operators: call an ``async def`` function per item, many calls at once.

`map_async` and its keyed form `map_value_async` are core steps
(``"map_async"``); the engine runs each on a worker with
`headrace._engine._async_run.AsyncRun`, on an event loop the worker owns
(that module says how calls, backpressure and barriers fit together).
Bytewax has no such operator; these are Headrace's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from headrace.dataflow import Stream, _core_step, operator
from headrace.operators._core import _check_callable

X = TypeVar("X")
Y = TypeVar("Y")
V = TypeVar("V")
W = TypeVar("W")


def _conf(
    step_id: str,
    fn: Callable[[Any], Awaitable[Any]],
    concurrency: int,
    timeout: timedelta | None,
    ordered: bool,
    by_value: bool,
) -> dict[str, Any]:
    _check_callable(step_id, "mapper", fn)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        msg = f"step {step_id!r}: `concurrency` must be an int >= 1; got {concurrency!r}"
        raise ValueError(msg)
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        msg = f"step {step_id!r}: `timeout` must be a positive timedelta or None; got {timeout!r}"
        raise ValueError(msg)
    return {
        "fn": fn,
        "concurrency": concurrency,
        "timeout": timeout,
        "ordered": bool(ordered),
        "by_value": by_value,
    }


@operator(_core=True)
def map_async(
    step_id: str,
    up: Stream[X],
    mapper: Callable[[X], Awaitable[Y]],
    *,
    concurrency: int = 100,
    timeout: timedelta | None = None,
    ordered: bool = True,
) -> Stream[Y]:
    """Transform each item one-to-one with an ``async def`` function, many calls at once.

    Each worker runs up to ``concurrency`` calls at a time on its own event
    loop; at that many in flight, the step stops taking items until some
    finish (backpressure). Results come out in input order, or as the
    calls complete with ``ordered=False``. Every call of an epoch finishes
    before the epoch's snapshot, so with recovery each item is emitted
    exactly once. A call that raises, or runs longer than ``timeout``,
    fails the dataflow naming the step and the item.

    >>> import asyncio
    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> async def slow_double(x):
    ...     await asyncio.sleep(0.01 * (3 - x))  # the first item finishes last
    ...     return 2 * x
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([1, 2, 3], batch_size=3))
    >>> op.output("o", op.map_async("double", s, slow_double, concurrency=10), TestingSink(out))
    >>> run_main(flow); out
    [2, 4, 6]
    """
    return _core_step("map_async", _conf(step_id, mapper, concurrency, timeout, ordered, False))[0]


@operator(_core=True)
def map_value_async(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[V], Awaitable[W]],
    *,
    concurrency: int = 100,
    timeout: timedelta | None = None,
    ordered: bool = True,
) -> Stream[tuple[str, W]]:
    """`map_async` on the value of each ``(key, value)`` item; the key stays.

    >>> import asyncio
    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> async def lookup(user_id):
    ...     await asyncio.sleep(0)
    ...     return {"u1": "Ann", "u2": "Bo"}[user_id]
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", "u1"), ("b", "u2")]))
    >>> op.output("o", op.map_value_async("name", s, lookup, timeout=timedelta(seconds=5)), TestingSink(out))
    >>> run_main(flow); out
    [('a', 'Ann'), ('b', 'Bo')]
    """
    return _core_step("map_async", _conf(step_id, mapper, concurrency, timeout, ordered, True))[0]
