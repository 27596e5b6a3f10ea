"""The source and sink every benchmark pipeline shares, identical on both engines.

`GeneratedSource` yields ``n`` items in batches of ``batch_size`` (default
1000) from a cheap per-batch generator; `CountingSink` counts what reaches
it and keeps nothing, so memory measures the engine, not the output.
`CollectingSink` keeps the items, to compare a pipeline's output with its
plain-loop floor's (untimed).

>>> src = GeneratedSource(5, lambda start, size: list(range(start, start + size)), batch_size=2)
>>> part = src.build_part("inp", "gen", None)
>>> part.next_batch(), part.next_batch(), part.next_batch()
([0, 1], [2, 3], [4])
>>> sink = CountingSink()
>>> sink.build("out", 0, 1).write_batch([1, 2, 3]); sink.count
3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _compat import (
    DynamicSink,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSinkPartition,
)

BATCH_SIZE = 1000

MakeBatch = Callable[[int, int], list[Any]]


class _GeneratedPartition(StatefulSourcePartition):
    def __init__(self, n: int, make_batch: MakeBatch, batch_size: int, start: int) -> None:
        self._n = n
        self._make_batch = make_batch
        self._batch_size = batch_size
        self._pos = start

    def next_batch(self) -> list[Any]:
        pos = self._pos
        if pos >= self._n:
            raise StopIteration()
        size = min(self._batch_size, self._n - pos)
        self._pos = pos + size
        return self._make_batch(pos, size)

    def snapshot(self) -> int:
        return self._pos


class GeneratedSource(FixedPartitionedSource):
    """``n`` items from ``make_batch(start, size)``, one partition named ``gen``.

    >>> src = GeneratedSource(3, lambda start, size: ["x"] * size)
    >>> src.list_parts()
    ['gen']
    >>> src.build_part("inp", "gen", None).next_batch()
    ['x', 'x', 'x']
    """

    def __init__(self, n: int, make_batch: MakeBatch, batch_size: int = BATCH_SIZE) -> None:
        self._n = n
        self._make_batch = make_batch
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        """The single partition ``["gen"]``.

        >>> GeneratedSource(1, lambda start, size: [0]).list_parts()
        ['gen']
        """
        return ["gen"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _GeneratedPartition:
        """Build the partition, resuming after ``resume_state`` items.

        >>> part = GeneratedSource(4, lambda start, size: list(range(start, start + size)))
        >>> part.build_part("inp", "gen", 2).next_batch()
        [2, 3]
        """
        return _GeneratedPartition(self._n, self._make_batch, self._batch_size, resume_state or 0)


class _CountingPartition(StatelessSinkPartition):
    def __init__(self, sink: CountingSink) -> None:
        self._sink = sink

    def write_batch(self, items: list[Any]) -> None:
        self._sink.count += len(items)


class CountingSink(DynamicSink):
    """Count the items written on every worker; keep none of them.

    >>> sink = CountingSink()
    >>> part = sink.build("out", 0, 1); part.write_batch(["a"]); part.write_batch(["b", "c"])
    >>> sink.count
    3
    """

    def __init__(self) -> None:
        self.count = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        """Build this worker's partition, which adds to the shared count.

        >>> sink = CountingSink(); sink.build("out", 0, 1).write_batch([0]); sink.count
        1
        """
        return _CountingPartition(self)


class _CollectingPartition(StatelessSinkPartition):
    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def write_batch(self, items: list[Any]) -> None:
        self._items.extend(items)


class CollectingSink(DynamicSink):
    """Keep every item written, in the order written (for checks, not timing).

    >>> sink = CollectingSink(); sink.build("out", 0, 1).write_batch([1, 2]); sink.items
    [1, 2]
    """

    def __init__(self) -> None:
        self.items: list[Any] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CollectingPartition:
        """Build this worker's partition, which appends to the shared list.

        >>> sink = CollectingSink(); sink.build("out", 0, 1).write_batch(["a"]); sink.items
        ['a']
        """
        return _CollectingPartition(self.items)
