"""RandomMetricSource: paced, resumable demo metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest

import headrace.operators as op
from headrace.connectors import demo
from headrace.connectors.demo import RandomMetricSource
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.testing import TestingSink, run_main


def test_emits_count_pairs_through_a_dataflow() -> None:
    values = iter([1.0, 2.0, 3.0, 4.0])
    src = RandomMetricSource("cpu", interval=timedelta(0), count=4, next_random=lambda: next(values))
    flow = Dataflow("m")
    out: list[tuple[str, float]] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert out == [("cpu", 1.0), ("cpu", 2.0), ("cpu", 3.0), ("cpu", 4.0)]


def test_default_values_are_small_ints() -> None:
    src = RandomMetricSource("cpu", interval=timedelta(0), count=50)
    flow = Dataflow("m")
    out: list[tuple[str, float]] = []
    op.output("out", op.input("inp", flow, src), TestingSink(out))
    run_main(flow)
    assert len(out) == 50
    assert {name for name, _ in out} == {"cpu"}
    assert all(v in range(10) for _, v in out)


def test_one_partition_named_after_the_metric() -> None:
    assert RandomMetricSource("mem").list_parts() == ["mem"]


def test_paces_by_next_awake_without_emitting_early() -> None:
    src = RandomMetricSource("cpu", interval=timedelta(hours=1), count=5, next_random=lambda: 1)
    part = src.build_part("m.inp", "cpu", None)
    first_awake = part.next_awake()
    assert first_awake is not None
    assert part.next_batch() == [("cpu", 1)]
    awake = part.next_awake()
    assert awake is not None and awake - first_awake >= timedelta(hours=1)
    # Polled again before it is due: nothing, so the engine sleeps until next_awake.
    assert part.next_batch() == []
    assert part.snapshot().count == 1


def test_resumes_with_the_emitted_count() -> None:
    src = RandomMetricSource("cpu", interval=timedelta(0), count=3, next_random=lambda: 0)
    part = src.build_part("m.inp", "cpu", None)
    assert part.next_batch() == [("cpu", 0)]
    assert part.next_batch() == [("cpu", 0)]
    snap = part.snapshot()
    resumed = src.build_part("m.inp", "cpu", snap)
    assert resumed.next_batch() == [("cpu", 0)]
    with pytest.raises(StopIteration):
        resumed.next_batch()


def test_reexports_base_classes() -> None:
    assert demo.FixedPartitionedSource is FixedPartitionedSource
    assert demo.StatefulSourcePartition is StatefulSourcePartition
