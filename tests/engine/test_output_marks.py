"""The marks a run commits with its epochs: when output came out, and when the run started.

The Kubernetes operator measures a transition's output gap from them
(``headrace._engine._marks``; the operator's ``output_gap``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._marks import START, mark
from headrace.dataflow import Dataflow
from headrace.recovery import RecoveryConfig
from headrace.testing import TestingSink, TestingSource, cluster_main
from tests.support.stores import store_at

ZERO = timedelta(0)


def _flow(items: list[Any], out: list[Any]) -> Dataflow:
    flow = Dataflow("marks")
    s = op.input("inp", flow, TestingSource(items))
    s = op.key_on("key", s, lambda v: str(v % 3))
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
    s = op.filter("big", s, lambda kv: kv[1] >= 0)
    op.output("out", s, TestingSink(out))
    return flow


@pytest.mark.slow
def test_two_runs_commit_their_start_and_first_and_last_output(location: str) -> None:
    config = RecoveryConfig(location)
    START.clear()  # what earlier runs in this process marked
    mark("process")
    mark("imported")
    out: list[Any] = []
    cluster_main(
        _flow(list(range(12)), out),
        [],
        0,
        epoch_interval=ZERO,
        recovery_config=config,
        worker_count_per_proc=2,
    )
    assert len(out) == 12
    meta = store_at(location, "marks").load_meta()
    assert meta is not None
    first = meta.marks
    assert first.execution == meta.execution_id != ""
    assert sorted(first.start) == ["imported", "previous_output", "process", "restored"]
    assert first.start["previous_output"] == 0.0  # nothing came out before
    assert first.start["process"] <= first.start["imported"] <= first.start["restored"]
    assert first.start["restored"] <= first.first_output <= first.last_output
    # A second run resumes: a new execution, with its own start and first output.
    out2: list[Any] = []
    cluster_main(
        _flow(list(range(15)), out2),
        [],
        0,
        epoch_interval=ZERO,
        recovery_config=config,
        worker_count_per_proc=2,
    )
    assert len(out2) == 3  # resumed after the first 12
    meta2 = store_at(location, "marks").load_meta()
    assert meta2 is not None
    second = meta2.marks
    assert second.execution == meta2.execution_id != first.execution
    assert second.first_output > first.last_output and second.last_output >= second.first_output
    assert second.start["restored"] > first.last_output
    assert second.start["previous_output"] == first.last_output


def test_a_run_without_output_says_so(location: str) -> None:
    config = RecoveryConfig(location)
    START.clear()
    out: list[Any] = []
    flow = Dataflow("marks")
    s = op.input("inp", flow, TestingSource([1, 2, 3]))
    s = op.key_on("key", s, lambda v: "k")
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
    s = op.filter("big", s, lambda kv: kv[1] > 100)
    op.output("out", s, TestingSink(out))
    cluster_main(flow, [], 0, epoch_interval=ZERO, recovery_config=config)
    meta = store_at(location, "marks").load_meta()
    assert meta is not None and out == []
    assert (meta.marks.first_output, meta.marks.last_output) == (0.0, 0.0)
    assert meta.marks.execution == meta.execution_id and sorted(meta.marks.start) == [
        "previous_output",
        "restored",
    ]
