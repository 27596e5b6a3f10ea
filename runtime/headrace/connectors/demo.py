"""Demo connectors: sources that make up data, for examples and tryouts.

>>> from datetime import timedelta
>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSink, run_main
>>> flow = Dataflow("demo")
>>> src = RandomMetricSource("cpu", interval=timedelta(0), count=3, next_random=lambda: 0.5)
>>> out = []
>>> op.output("out", op.input("inp", flow, src), TestingSink(out))
>>> run_main(flow)
>>> out
[('cpu', 0.5), ('cpu', 0.5), ('cpu', 0.5)]
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["FixedPartitionedSource", "RandomMetricSource", "StatefulSourcePartition"]


@dataclass(frozen=True)
class _RandomMetricState:
    """Resume state: when the next value is due and how many were emitted."""

    awake_at: datetime
    count: int


def _default_random() -> float:
    return random.randrange(0, 10)


class _RandomMetricPartition(StatefulSourcePartition[tuple[str, float], _RandomMetricState]):
    def __init__(
        self,
        metric_name: str,
        interval: timedelta,
        count: int,
        next_random: Callable[[], float],
        resume_state: _RandomMetricState | None,
    ) -> None:
        self._metric_name = metric_name
        self._interval = interval
        self._limit = count
        self._next_random = next_random
        if resume_state is None:
            self._state = _RandomMetricState(datetime.now(UTC), 0)
        else:
            self._state = resume_state

    def next_batch(self) -> list[tuple[str, float]]:
        state = self._state
        if state.count >= self._limit:
            raise StopIteration()
        now = datetime.now(UTC)
        if now < state.awake_at:
            # Called early (the engine honours next_awake, direct callers may not).
            return []
        value = self._next_random()
        awake_at = state.awake_at + self._interval
        if awake_at < now:
            # Behind schedule (slow worker, or resumed long after the
            # snapshot): skip the missed ticks instead of bursting.
            awake_at = now + self._interval
        self._state = _RandomMetricState(awake_at, state.count + 1)
        return [(self._metric_name, value)]

    def next_awake(self) -> datetime | None:
        return self._state.awake_at

    def snapshot(self) -> _RandomMetricState:
        return self._state


class RandomMetricSource(FixedPartitionedSource[tuple[str, float], _RandomMetricState]):
    """Emit ``(metric_name, value)`` every ``interval``, ``count`` times.

    Values come from ``next_random()`` (by default a random int 0 to 9). The
    source has one partition, named ``metric_name``; it resumes with the
    number of values already emitted.

    >>> from datetime import timedelta
    >>> src = RandomMetricSource("mem", interval=timedelta(0), count=1, next_random=lambda: 7)
    >>> part = src.build_part("flow.inp", "mem", None)
    >>> part.next_batch()
    [('mem', 7)]
    >>> part.snapshot().count
    1
    """

    def __init__(
        self,
        metric_name: str,
        interval: timedelta = timedelta(milliseconds=700),
        count: int = sys.maxsize,
        next_random: Callable[[], float] = _default_random,
    ) -> None:
        if not isinstance(interval, timedelta):
            # Bytewax fails later, in the run, on `datetime += interval`.
            msg = (
                f"RandomMetricSource interval must be a `timedelta`; got "
                f"{type(interval).__name__} {interval!r}: write e.g. timedelta(seconds=1)"
            )
            raise TypeError(msg)
        if interval < timedelta(0):
            msg = f"RandomMetricSource interval must not be negative; got {interval}"
            raise ValueError(msg)
        self._metric_name = metric_name
        self._interval = interval
        self._count = count
        self._next_random = next_random

    def list_parts(self) -> list[str]:
        """One partition, named after the metric.

        >>> RandomMetricSource("cpu").list_parts()
        ['cpu']
        """
        return [self._metric_name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: _RandomMetricState | None
    ) -> _RandomMetricPartition:
        """Build the partition, continuing from ``resume_state`` if given.

        >>> from datetime import timedelta
        >>> src = RandomMetricSource("cpu", interval=timedelta(0), count=2)
        >>> part = src.build_part("flow.inp", "cpu", None)
        >>> _ = part.next_batch()
        >>> resumed = src.build_part("flow.inp", "cpu", part.snapshot())
        >>> len(resumed.next_batch()), resumed.snapshot().count
        (1, 2)
        """
        return _RandomMetricPartition(
            self._metric_name, self._interval, self._count, self._next_random, resume_state
        )
