"""Async I/O operators: call an ``async def`` function per item, many calls at once.

`map_async` and its keyed form `map_value_async` each build one core step
(``"map_async"``, nested as ``<step>.map_async``) and, with
``on_error="dead_letter"``, the split of failures into the flow's dead
letters (`_dead_letters`). The engine runs the core step on a worker with
`headrace._engine._async_run.AsyncRun`, on an event loop the worker owns
(that module says how calls, backpressure and barriers fit together).
Bytewax has no such operator; these are Headrace's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from headrace.dataflow import Stream, _core_step, operator
from headrace.errors import ErrorPolicy
from headrace.operators._core import _check_callable
from headrace.operators._dead_letters import Reporter, check_policy, split_failures

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
    on_error: object,
) -> dict[str, Any]:
    _check_callable(step_id, "mapper", fn)
    policy = check_policy(step_id, on_error)
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
        # What a failed call emits instead of its result (None: the run fails).
        "reporter": None if policy == "fail" else Reporter(step_id, policy),
    }


@operator(_core=True)
def _map_async(step_id: str, up: Stream[Any], conf: dict[str, Any]) -> Stream[Any]:
    """The core step of `map_async` and `map_value_async`."""
    return _core_step("map_async", conf)[0]


def _build(up: Stream[Any], conf: dict[str, Any]) -> Stream[Any]:
    out = _map_async("map_async", up, conf)
    reporter = conf["reporter"]
    if reporter is not None and reporter.policy == "dead_letter":
        return split_failures(out, keyed=conf["by_value"])
    return out


@operator
def map_async(
    step_id: str,
    up: Stream[X],
    mapper: Callable[[X], Awaitable[Y]],
    *,
    concurrency: int = 100,
    timeout: timedelta | None = None,
    ordered: bool = True,
    on_error: ErrorPolicy = "fail",
) -> Stream[Y]:
    """Transform each item one-to-one with an ``async def`` function, many calls at once.

    Each worker runs up to ``concurrency`` calls at a time on its own event
    loop; at that many in flight, the step stops taking items until some
    finish (backpressure). Results come out in input order, or as the
    calls complete with ``ordered=False``. Every call of an epoch finishes
    before the epoch's snapshot, so with recovery each item is emitted
    exactly once. A call that raises, or runs longer than ``timeout``,
    fails the dataflow naming the step and the item; with ``on_error`` as
    for `map` (``"skip"``, ``"dead_letter"``) the item is dropped or sent to
    `dead_letters` instead, in its place in the order.

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
    full = up._scope.parent_id
    return _build(up, _conf(full, mapper, concurrency, timeout, ordered, False, on_error))


@operator
def map_value_async(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[V], Awaitable[W]],
    *,
    concurrency: int = 100,
    timeout: timedelta | None = None,
    ordered: bool = True,
    on_error: ErrorPolicy = "fail",
) -> Stream[tuple[str, W]]:
    """`map_async` on the value of each ``(key, value)`` item; the key stays.

    A dead letter (``on_error="dead_letter"``) has the key, and the value as its item.

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
    full = up._scope.parent_id
    return _build(up, _conf(full, mapper, concurrency, timeout, ordered, True, on_error))
