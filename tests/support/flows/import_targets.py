"""Targets for the import-string tests."""

from __future__ import annotations

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.testing import TestingSink, TestingSource

OUT: list[object] = []


def make(n: int = 3, prefix: str = "x") -> Dataflow:
    """A factory: `tests.support.flows.import_targets:make(2, prefix="y")`."""
    flow = Dataflow(f"made_{n}")
    s = op.input("inp", flow, TestingSource([f"{prefix}{i}" for i in range(n)]))
    op.output("out", s, TestingSink(OUT))
    return flow


flow = make()
other_flow = make(1)
not_a_flow = 42
