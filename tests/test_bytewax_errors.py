"""Errors a Bytewax program (or its tests) can match: Bytewax's exception types and words.

Each message below was observed from Bytewax 0.21.1 itself; Headrace may add a
hint after Bytewax's words, never change them, so ``pytest.raises(...,
match=...)`` written against Bytewax keeps passing.
"""

from __future__ import annotations

from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("value", [1, None, "yes", 0.0])
def test_branch_predicate_must_return_a_bool(workers: int, value: Any, cause_chain: Any) -> None:
    flow = Dataflow("h")
    b = op.branch("br", op.input("inp", flow, TestingSource([1, 2])), lambda x: value)
    out: list[Any] = []
    op.output("t", b.trues, TestingSink(out))
    op.output("f", b.falses, TestingSink(out))
    with pytest.raises(BytewaxRuntimeError,
                       match=r'^return value of `predicate` in step "h\.br" must be a `bool`') as info:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert isinstance(info.value.__cause__, TypeError)
    assert out == []


def test_branch_predicate_returning_bools_splits() -> None:
    flow = Dataflow("h")
    b = op.branch("br", op.input("inp", flow, TestingSource([1, 2, 3])), lambda x: x % 2 == 1)
    odd: list[int] = []
    even: list[int] = []
    op.output("t", b.trues, TestingSink(odd))
    op.output("f", b.falses, TestingSink(even))
    run_main(flow)
    assert (odd, even) == ([1, 3], [2])
