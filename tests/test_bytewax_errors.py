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


# --- a flow's terminal steps ------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("terminal", ["inspect", "inspect_debug"])
def test_a_flow_whose_only_terminal_step_is_inspect_runs(
    workers: int, terminal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = Dataflow("insp")
    s = op.map("m", op.input("inp", flow, TestingSource([1, 2])), lambda x: x * 10)
    seen: list[Any] = []
    if terminal == "inspect":
        op.inspect("look", s, lambda step_id, x: seen.append((step_id, x)))
    else:
        op.inspect_debug("look", s, lambda step_id, x, _epoch, _w: seen.append((step_id, x)))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(seen) == [("insp.look", 10), ("insp.look", 20)]


def test_default_inspect_prints_like_bytewax(capsys: pytest.CaptureFixture[str]) -> None:
    flow = Dataflow("insponly")
    op.inspect("insp", op.map("m", op.input("inp", flow, TestingSource([1, 2])), lambda x: x * 10))
    run_main(flow)
    assert capsys.readouterr().out == "insponly.insp: 10\ninsponly.insp: 20\n"


@pytest.mark.parametrize(
    ("build", "words"),
    [
        pytest.param(lambda flow: None, "at least one input step", id="empty"),
        pytest.param(
            lambda flow: op.map("m", op.input("inp", flow, TestingSource([1])), str),
            "at least one output or inspect step",
            id="no-output",
        ),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_flow_that_cannot_run_fails_at_build_in_bytewax_words(
    build: Any, words: str, workers: int
) -> None:
    flow = Dataflow("f")
    build(flow)
    with pytest.raises(BytewaxRuntimeError) as info:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    # Bytewax: BytewaxRuntimeError("error building production dataflow") from
    # ValueError("Dataflow needs to contain at least one ... step; add with ...").
    assert str(info.value).startswith("error building production dataflow")
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    assert str(cause).startswith(f"Dataflow needs to contain {words}; add with `")
    assert "'f'" in str(cause)  # Headrace's hint: which dataflow
    assert isinstance(info.value, ValueError)  # what Headrace raised before
