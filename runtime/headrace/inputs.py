"""Sources: where a dataflow's items come from.

Two kinds, as in Bytewax 0.21:

- `FixedPartitionedSource`: a fixed, named set of partitions (files, topic
  partitions...). Each partition is built on exactly one worker, chosen by
  index from the sorted part list, and its `snapshot` is what lets it resume.
- `DynamicSource`: built once on every worker; stateless, never resumed.

>>> from headrace.testing import poll_next_batch
>>> class Count(StatelessSourcePartition):
...     def __init__(self): self.n = 0
...     def next_batch(self):
...         if self.n >= 3:
...             raise StopIteration()
...         self.n += 1
...         return [self.n]
>>> class CountSource(DynamicSource):
...     def build(self, step_id, worker_index, worker_count):
...         return Count()
>>> part = CountSource().build("s", 0, 1)
>>> poll_next_batch(part)
[1]
"""

from __future__ import annotations

import asyncio
import queue
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

__all__ = [
    "AbortExecution",
    "DynamicSource",
    "FixedPartitionedSource",
    "SimplePollingSource",
    "Source",
    "StatefulSourcePartition",
    "StatelessSourcePartition",
    "batch",
    "batch_async",
    "batch_getter",
    "batch_getter_ex",
]

X = TypeVar("X")
S = TypeVar("S")
if TYPE_CHECKING:
    # For type checkers, the resume state of a polling source defaults to
    # None, so ``SimplePollingSource[int]`` is complete (PEP 696).
    from typing_extensions import TypeVar as _TypeVarWithDefault

    Sn = _TypeVarWithDefault("Sn", default=None)
else:
    Sn = TypeVar("Sn")


class AbortExecution(RuntimeError):
    """Raise from a source to stop the run at once, as a crash would.

    Nothing of the current epoch is committed; the run returns. Used by
    tests to simulate failures (see `TestingSource.ABORT`).

    >>> issubclass(AbortExecution, RuntimeError)
    True
    """


class Source(ABC, Generic[X]):
    """Base class of all sources; subclass one of its two kinds.

    >>> issubclass(FixedPartitionedSource, Source)
    True
    """


class StatefulSourcePartition(ABC, Generic[X, S]):
    """One partition of a `FixedPartitionedSource`; it can snapshot and resume.

    >>> class One(StatefulSourcePartition):
    ...     def next_batch(self): raise StopIteration()
    ...     def snapshot(self): return None
    >>> One().next_awake() is None
    True
    """

    @abstractmethod
    def next_batch(self) -> Iterable[X]:
        """Return the next items (maybe none); raise `StopIteration` at the end.

        >>> class P(StatefulSourcePartition):
        ...     def next_batch(self): return [1, 2]
        ...     def snapshot(self): return None
        >>> list(P().next_batch())
        [1, 2]
        """

    def next_awake(self) -> datetime | None:
        """When to call `next_batch` next; ``None`` means as soon as possible.

        >>> class P(StatefulSourcePartition):
        ...     def next_batch(self): return []
        ...     def snapshot(self): return None
        >>> P().next_awake() is None
        True
        """
        return None

    @abstractmethod
    def snapshot(self) -> S:
        """Return the state to resume this partition from (pickleable).

        >>> class P(StatefulSourcePartition):
        ...     def next_batch(self): return []
        ...     def snapshot(self): return 42
        >>> P().snapshot()
        42
        """

    def close(self) -> None:
        """Release resources when the partition ends or the run stops.

        >>> class P(StatefulSourcePartition):
        ...     def next_batch(self): return []
        ...     def snapshot(self): return None
        >>> P().close()
        """
        return None


class FixedPartitionedSource(Source[X], Generic[X, S]):
    """A source with a fixed set of named, resumable partitions.

    >>> from headrace.testing import TestingSource
    >>> TestingSource([1]).list_parts()
    ['iterable']
    """

    @abstractmethod
    def list_parts(self) -> list[str]:
        """Name every partition; called on every worker, must agree on all.

        >>> from headrace.testing import TestingSource
        >>> TestingSource([]).list_parts()
        ['iterable']
        """

    @abstractmethod
    def build_part(
        self, step_id: str, for_part: str, resume_state: S | None
    ) -> StatefulSourcePartition[X, S]:
        """Build partition ``for_part``, resuming from ``resume_state`` if given.

        >>> from headrace.testing import TestingSource
        >>> part = TestingSource([1, 2]).build_part("s", "iterable", 1)
        >>> part.next_batch()
        [2]
        """


class StatelessSourcePartition(ABC, Generic[X]):
    """The per-worker partition of a `DynamicSource`.

    >>> class P(StatelessSourcePartition):
    ...     def next_batch(self): return ["x"]
    >>> P().next_batch(), P().next_awake()
    (['x'], None)
    """

    @abstractmethod
    def next_batch(self) -> Iterable[X]:
        """Return the next items (maybe none); raise `StopIteration` at the end.

        >>> class P(StatelessSourcePartition):
        ...     def next_batch(self): return [1]
        >>> P().next_batch()
        [1]
        """

    def next_awake(self) -> datetime | None:
        """When to call `next_batch` next; ``None`` means as soon as possible.

        >>> class P(StatelessSourcePartition):
        ...     def next_batch(self): return []
        >>> P().next_awake() is None
        True
        """
        return None

    def close(self) -> None:
        """Release resources when the run stops.

        >>> class P(StatelessSourcePartition):
        ...     def next_batch(self): return []
        >>> P().close()
        """
        return None


class DynamicSource(Source[X]):
    """A source built on every worker, e.g. reading a shared queue.

    >>> class P(StatelessSourcePartition):
    ...     def next_batch(self): raise StopIteration()
    >>> class Src(DynamicSource):
    ...     def build(self, step_id, worker_index, worker_count): return P()
    >>> isinstance(Src().build("s", 0, 1), StatelessSourcePartition)
    True
    """

    @abstractmethod
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSourcePartition[X]:
        """Build this worker's partition.

        >>> class P(StatelessSourcePartition):
        ...     def next_batch(self): return [1]
        >>> class Src(DynamicSource):
        ...     def build(self, step_id, worker_index, worker_count): return P()
        >>> Src().build("s", 0, 2).next_batch()
        [1]
        """


def _utc_now() -> datetime:
    """The current time in UTC: the runtime's one clock (sources, timers, operators' defaults).

    >>> _utc_now().tzinfo
    datetime.timezone.utc
    """
    return datetime.now(UTC)


class _SimplePollingPartition(StatefulSourcePartition[X, Any]):
    def __init__(
        self,
        source: SimplePollingSource[X, Any],
        interval: timedelta,
        align_to: datetime | None,
        resume_state: Any,
    ) -> None:
        self._source = source
        self._interval = interval
        now = _utc_now()
        if align_to is not None and interval > timedelta(0):
            # The first poll is at the first time align_to + k * interval
            # that is not in the past (align_to itself when in the future).
            if align_to >= now:
                self._next_awake = align_to
            else:
                self._next_awake = align_to + interval * -((align_to - now) // interval)
        elif align_to is not None:
            self._next_awake = max(align_to, now)
        else:
            self._next_awake = now
        if resume_state is not None:
            source.resume(resume_state)

    def next_batch(self) -> list[X]:
        try:
            item = self._source.next_item()
        except SimplePollingSource.Retry as retry:
            self._next_awake = _utc_now() + retry.timeout
            return []
        self._next_awake += self._interval
        now = _utc_now()
        if self._next_awake < now and self._interval > timedelta(0):
            # Fell behind (slow next_item or a busy worker): skip the missed
            # ticks, staying on the same grid, instead of polling in a burst.
            missed = (now - self._next_awake) // self._interval + 1
            self._next_awake += self._interval * missed
        return [] if item is None else [item]

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> Any:
        return self._source.snapshot()


class SimplePollingSource(FixedPartitionedSource[X, Sn]):
    """Call `next_item` every ``interval``, on one worker.

    ``align_to`` puts the polls on the grid ``align_to + k * interval``
    (the first poll is the first grid time not in the past); without it the
    first poll is at once and the grid starts there. `next_item` returns
    the next item, or ``None`` for no item this time; it raises
    `StopIteration` to end the input, or ``SimplePollingSource.Retry(td)``
    to be called again ``td`` from now instead of at the next tick (the
    grid then restarts from that retry). A poll that returns late (a slow
    `next_item`) skips the ticks it missed rather than polling in a burst.
    Override `snapshot` and `resume` to resume where a previous run stopped:
    `resume` is called with the last committed snapshot before the first
    poll. As in Bytewax, the second type argument (the resume state) may be
    left out: ``SimplePollingSource[int]`` is ``SimplePollingSource[int, None]``.

    >>> from datetime import timedelta
    >>> class Clock(SimplePollingSource[str]):
    ...     def next_item(self):
    ...         return "tick"
    >>> part = Clock(timedelta(seconds=1)).build_part("s", "singleton", None)
    >>> part.next_batch()
    ['tick']
    >>> SimplePollingSource[int] == SimplePollingSource[int, None]
    True
    """

    @dataclass
    class Retry(Exception):
        """Raise from `next_item` to poll again after ``timeout``.

        >>> from datetime import timedelta
        >>> SimplePollingSource.Retry(timedelta(seconds=1)).timeout.total_seconds()
        1.0
        """

        timeout: timedelta

    if not TYPE_CHECKING:

        def __class_getitem__(cls, params):
            # Bytewax's Sn defaults to None: SimplePollingSource[X] means
            # SimplePollingSource[X, None]. Subclasses keep their own parameters.
            if cls is SimplePollingSource and not isinstance(params, tuple):
                params = (params, None)
            return super().__class_getitem__(params)

    def __init__(self, interval: timedelta, align_to: datetime | None = None) -> None:
        if interval < timedelta(0):
            msg = f"SimplePollingSource interval must not be negative; got {interval}"
            raise ValueError(msg)
        self._interval = interval
        self._align_to = align_to

    def list_parts(self) -> list[str]:
        """A polling source has one partition, ``"singleton"``.

        >>> from datetime import timedelta
        >>> class C(SimplePollingSource):
        ...     def next_item(self): return 1
        >>> C(timedelta(seconds=1)).list_parts()
        ['singleton']
        """
        return ["singleton"]

    def build_part(self, _step_id: str, for_part: str, resume_state: Sn | None) -> _SimplePollingPartition[X]:
        """Build the polling partition (calls `resume` with a resume state).

        >>> from datetime import timedelta
        >>> class C(SimplePollingSource):
        ...     def next_item(self): return 1
        >>> C(timedelta(seconds=1)).build_part("s", "singleton", None).next_batch()
        [1]
        """
        return _SimplePollingPartition(self, self._interval, self._align_to, resume_state)

    @abstractmethod
    def next_item(self) -> X:
        """Return the next item, ``None`` for none, or raise `Retry`.

        >>> from datetime import timedelta
        >>> class C(SimplePollingSource):
        ...     def next_item(self): return 7
        >>> C(timedelta(seconds=1)).next_item()
        7
        """

    def snapshot(self) -> Sn:
        """State to resume from; ``None`` by default (no resume).

        >>> from datetime import timedelta
        >>> class C(SimplePollingSource):
        ...     def next_item(self): return 7
        >>> C(timedelta(seconds=1)).snapshot() is None
        True
        """
        return None  # type: ignore[return-value]

    def resume(self, resume_state: Sn) -> None:
        """Restore from a snapshot; does nothing by default.

        >>> from datetime import timedelta
        >>> class C(SimplePollingSource):
        ...     def next_item(self): return 7
        >>> C(timedelta(seconds=1)).resume(None)
        """


def batch(ib: Iterable[X], batch_size: int) -> Iterator[list[X]]:
    """Split an iterable into lists of at most ``batch_size`` items.

    >>> list(batch(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1; got {batch_size}"
        raise ValueError(msg)
    it = iter(ib)
    while True:
        chunk: list[X] = []
        for _ in range(batch_size):
            try:
                chunk.append(next(it))
            except StopIteration:
                if chunk:
                    yield chunk
                return
        yield chunk


def batch_getter(getter: Callable[[], X], batch_size: int, yield_on: X | None = None) -> Iterator[list[X]]:
    """Call ``getter`` repeatedly, yielding a batch when full or ``yield_on`` is got.

    ``getter`` raises `StopIteration` at the end of the input: the batch
    gathered so far (maybe empty) is yielded and the iterator ends, as in
    Bytewax, so ``next(batcher)`` in a partition's ``next_batch`` ends the
    partition.

    >>> vals = iter([1, 2, None, 3])
    >>> list(batch_getter(lambda: next(vals), 5))
    [[1, 2], [3]]
    """
    while True:
        chunk: list[X] = []
        while len(chunk) < batch_size:
            try:
                item = getter()
            except StopIteration:
                yield chunk
                return
            if item == yield_on:
                break
            chunk.append(item)
        yield chunk


def batch_getter_ex(
    getter: Callable[[], X], batch_size: int, yield_ex: type[Exception] = queue.Empty
) -> Iterator[list[X]]:
    """Like `batch_getter`, but a batch ends when ``getter`` raises ``yield_ex``.

    `StopIteration` from ``getter`` yields the batch so far and ends the
    iterator.

    >>> q = queue.Queue()
    >>> for i in range(3): q.put(i)
    >>> next(batch_getter_ex(q.get_nowait, 10))
    [0, 1, 2]
    >>> vals = iter([1, 2, 3])
    >>> list(batch_getter_ex(lambda: next(vals), 2))
    [[1, 2], [3]]
    """
    while True:
        chunk: list[X] = []
        while len(chunk) < batch_size:
            try:
                item = getter()
            except yield_ex:
                break
            except StopIteration:
                yield chunk
                return
            chunk.append(item)
        yield chunk


def batch_async(
    aib: AsyncIterable[X],
    timeout: timedelta,
    batch_size: int,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Iterator[list[X]]:
    """Turn an async iterator into a sync iterator of batches.

    Each batch collects for at most ``timeout`` or ``batch_size`` items.

    >>> async def gen():
    ...     for i in range(3):
    ...         yield i
    >>> from datetime import timedelta
    >>> list(batch_async(gen(), timedelta(seconds=1), 2))
    [[0, 1], [2]]
    """
    own_loop = loop is None
    loop = loop if loop is not None else asyncio.new_event_loop()
    ait = aib.__aiter__()
    pending: asyncio.Future[X] | None = None

    async def collect() -> tuple[list[X], bool]:
        nonlocal pending
        chunk: list[X] = []
        deadline = loop.time() + timeout.total_seconds()
        while len(chunk) < batch_size:
            if pending is None:
                pending = asyncio.ensure_future(ait.__anext__())
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            done, _ = await asyncio.wait({pending}, timeout=remaining)
            if not done:
                break
            fut, pending = pending, None
            try:
                chunk.append(fut.result())
            except StopAsyncIteration:
                return chunk, True
        return chunk, False

    try:
        while True:
            chunk, finished = loop.run_until_complete(collect())
            if chunk or not finished:
                yield chunk
            if finished:
                return
    finally:
        if own_loop:
            loop.close()
