"""Standard input/output connectors.

`StdOutSink` prints every item on its own line. It is a `DynamicSink`: each
worker prints the items it holds, so with several workers lines from
different workers interleave (each batch is written in one call, so lines
never mix).

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSource, run_main
>>> flow = Dataflow("print")
>>> s = op.input("inp", flow, TestingSource([1, 2]))
>>> op.output("out", s, StdOutSink())
>>> run_main(flow)
1
2
"""

from __future__ import annotations

import sys
from typing import Any

from headrace.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["DynamicSink", "StatelessSinkPartition", "StdOutSink"]


class _PrintSinkPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        if not items:
            return
        # Looked up per batch (not at build time) so a redirected stdout,
        # e.g. pytest's capture, is honoured.
        out = sys.stdout
        out.write("".join(f"{item}\n" for item in items))
        out.flush()


class StdOutSink(DynamicSink[Any]):
    """Print each item with `print` (its `str`), flushing after each batch.

    >>> part = StdOutSink().build("flow.out", 0, 1)
    >>> part.write_batch(["a", ("k", 2)])
    a
    ('k', 2)
    """

    def build(self, _step_id: str, _worker_index: int, _worker_count: int) -> _PrintSinkPartition:
        """Build this worker's printing partition.

        >>> StdOutSink().build("flow.out", 0, 1).write_batch([3.5])
        3.5
        """
        return _PrintSinkPartition()
