"""Sinks: where a dataflow's items go.

- `FixedPartitionedSink`: named partitions; every item is ``(key, value)`` and
  goes to partition ``part_fn(key)`` (an index into the sorted part list),
  which lives on exactly one worker and snapshots its position. File sinks
  truncate to that position on resume, so their output is exactly-once.
- `DynamicSink`: built on every worker; items are written where they are.
  Such sinks are at-least-once across crashes.

>>> class Print(StatelessSinkPartition):
...     def write_batch(self, items):
...         for x in items:
...             print(x)
>>> class PrintSink(DynamicSink):
...     def build(self, step_id, worker_index, worker_count):
...         return Print()
>>> PrintSink().build("s", 0, 1).write_batch(["hello"])
hello
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

__all__ = [
    "DynamicSink",
    "FixedPartitionedSink",
    "Sink",
    "StatefulSinkPartition",
    "StatelessSinkPartition",
]

X = TypeVar("X")
S = TypeVar("S")


class Sink(ABC, Generic[X]):
    """Base class of all sinks; subclass one of its two kinds.

    >>> issubclass(DynamicSink, Sink)
    True
    """


class StatefulSinkPartition(ABC, Generic[X, S]):
    """One partition of a `FixedPartitionedSink`.

    >>> class Mem(StatefulSinkPartition):
    ...     def __init__(self): self.items = []
    ...     def write_batch(self, values): self.items.extend(values)
    ...     def snapshot(self): return len(self.items)
    >>> m = Mem(); m.write_batch([1, 2]); m.snapshot()
    2
    """

    @abstractmethod
    def write_batch(self, values: list[X]) -> None:
        """Write a batch of values (keys already removed).

        >>> class Mem(StatefulSinkPartition):
        ...     def __init__(self): self.items = []
        ...     def write_batch(self, values): self.items.extend(values)
        ...     def snapshot(self): return None
        >>> m = Mem(); m.write_batch(["a"]); m.items
        ['a']
        """

    @abstractmethod
    def snapshot(self) -> S:
        """Return the state to resume this partition from.

        >>> class Mem(StatefulSinkPartition):
        ...     def write_batch(self, values): pass
        ...     def snapshot(self): return 0
        >>> Mem().snapshot()
        0
        """

    def close(self) -> None:
        """Flush and release resources.

        >>> class Mem(StatefulSinkPartition):
        ...     def write_batch(self, values): pass
        ...     def snapshot(self): return 0
        >>> Mem().close()
        """
        return None


class FixedPartitionedSink(Sink[tuple[str, X]], Generic[X, S]):
    """A sink with a fixed set of named, resumable partitions.

    >>> class Mem(StatefulSinkPartition):
    ...     def write_batch(self, values): print(values)
    ...     def snapshot(self): return None
    >>> class TwoParts(FixedPartitionedSink):
    ...     def list_parts(self): return ["a", "b"]
    ...     def build_part(self, step_id, for_part, resume_state): return Mem()
    >>> sink = TwoParts()
    >>> sink.part_fn("some-key") % len(sink.list_parts()) in (0, 1)
    True
    """

    @abstractmethod
    def list_parts(self) -> list[str]:
        """Name every partition.

        >>> from headrace.connectors.files import FileSink
        >>> FileSink("/tmp/out.txt").list_parts()
        ['/tmp/out.txt']
        """

    def part_fn(self, item_key: str) -> int:
        """Map an item's key to an index into the sorted part list.

        The default is `zlib.adler32` of the UTF-8 key, as in Bytewax: stable
        across processes and runs (never Python's salted `hash`).

        >>> class S(FixedPartitionedSink):
        ...     def list_parts(self): return ["a", "b", "c"]
        ...     def build_part(self, step_id, for_part, resume_state): ...
        >>> S().part_fn("k") == S().part_fn("k")
        True
        """
        return zlib.adler32(item_key.encode("utf-8"))

    @abstractmethod
    def build_part(self, step_id: str, for_part: str, resume_state: S | None) -> StatefulSinkPartition[X, S]:
        """Build partition ``for_part``, resuming from ``resume_state``.

        >>> from headrace.connectors.files import FileSink
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "o.txt")
        >>> part = FileSink(path).build_part("s", path, None)
        >>> part.write_batch(["x"]); part.close(); open(path).read()
        'x\\n'
        """


class StatelessSinkPartition(ABC, Generic[X]):
    """The per-worker partition of a `DynamicSink`.

    >>> class Devnull(StatelessSinkPartition):
    ...     def write_batch(self, items): pass
    >>> Devnull().write_batch([1]); Devnull().close()
    """

    @abstractmethod
    def write_batch(self, items: list[X]) -> None:
        """Write a batch of items.

        >>> class P(StatelessSinkPartition):
        ...     def write_batch(self, items): print(len(items))
        >>> P().write_batch([1, 2])
        2
        """

    def close(self) -> None:
        """Flush and release resources.

        >>> class P(StatelessSinkPartition):
        ...     def write_batch(self, items): pass
        >>> P().close()
        """
        return None


class DynamicSink(Sink[X]):
    """A sink built on every worker.

    >>> class P(StatelessSinkPartition):
    ...     def write_batch(self, items): print(items)
    >>> class Snk(DynamicSink):
    ...     def build(self, step_id, worker_index, worker_count): return P()
    >>> Snk().build("s", 0, 1).write_batch([3])
    [3]
    """

    @abstractmethod
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[X]:
        """Build this worker's partition.

        >>> class P(StatelessSinkPartition):
        ...     def write_batch(self, items): pass
        >>> class Snk(DynamicSink):
        ...     def build(self, step_id, worker_index, worker_count): return P()
        >>> isinstance(Snk().build("s", 1, 2), StatelessSinkPartition)
        True
        """
