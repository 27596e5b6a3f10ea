"""Run a worker's steps in the order they were declared, as Bytewax does.

Bytewax (Timely) runs each operator of a worker in turn, in the order the
dataflow declared them; an operator handles everything that reached it
since its last turn before the next operator runs. So when one stream
feeds several steps, each step gets the whole batch, in declaration order,
before the steps after it do: an `inspect` declared first prints the whole
batch before a `map` declared after it sees any item, and a stateful step
fed by two paths of the same batch sees both in one activation.

`Ready` reproduces that order. A batch for a step is appended to the
step's pending list (`Ready.push`); `Ready.run` then runs the step with the
lowest position that has pending batches, handing it every pending batch
at once, until none is left. Steps only push to steps declared after
them, so one call to `run` takes a batch through the whole flow. A chain of
stateless steps declared one after the other runs as one step (fused).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Batches = list[Any]
RunMany = Callable[[Batches], None]


class Ready:
    """Pending batches per step position, run lowest position first.

    >>> seen = []
    >>> r = Ready()
    >>> late = r.push_to(5, lambda bs: seen.append(("late", bs)))
    >>> early = r.push_to(2, lambda bs: (seen.append(("early", bs)), late([9])))
    >>> late([1]); early([2]); early([3])
    >>> r.run(); seen
    [('early', [[2], [3]]), ('late', [[1], [9]])]
    """

    __slots__ = ("_heap", "_pending", "_runners", "_running")

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._pending: dict[int, Batches] = {}
        self._runners: dict[int, RunMany] = {}
        self._running = False

    def push_to(self, pos: int, run_many: RunMany) -> Callable[[Any], None]:
        """The push function of the step at ``pos``: queue a batch for it.

        Several streams may feed one step (e.g. through `merge`); they share
        the step's pending list, so the step sees them in one activation.
        """
        known = self._runners.get(pos)
        if known is not None and known is not run_many:
            msg = f"two runners for step position {pos}"
            raise AssertionError(msg)
        self._runners[pos] = run_many
        pending = self._pending
        heap = self._heap

        def push(batch: Any) -> None:
            waiting = pending.get(pos)
            if waiting is None:
                pending[pos] = [batch]
                heapq.heappush(heap, pos)
            else:
                waiting.append(batch)

        return push

    def run(self) -> None:
        """Run every step with pending batches, lowest position first, until none is left.

        A call made while steps are running (a step's side effect reached
        the worker loop) returns at once: the running call finishes the work.
        """
        if self._running or not self._heap:
            return
        self._running = True
        heap = self._heap
        pending = self._pending
        runners = self._runners
        pop = heapq.heappop
        try:
            while heap:
                pos = pop(heap)
                runners[pos](pending.pop(pos))
        finally:
            self._running = False

    def clear(self) -> None:
        """Drop every pending batch (the run is stopping).

        >>> r = Ready(); r.push_to(1, print)("x"); r.clear(); r.run()
        """
        self._heap.clear()
        self._pending.clear()
