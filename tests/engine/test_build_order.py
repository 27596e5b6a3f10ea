"""Sources and sinks are built, written and closed in Bytewax 0.21.1's order.

Each expected log below was observed from Bytewax 0.21.1 itself (the same
program with ``bytewax`` imports, ``run_main``, one worker): building the
dataflow lists the partitions of fixed sources and sinks and builds dynamic
sources and sinks, in step order; then fixed source partitions are built; a
fixed sink partition is built at its first write (never, if nothing is
written to it); sinks close in the reverse of the order they were built,
each fixed sink's partitions in partition order.
"""

from __future__ import annotations

from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from headrace.testing import run_main

pytestmark = pytest.mark.timeout(60)


class _SrcPart(StatelessSourcePartition[Any]):
    def __init__(self, log: list[str], items: list[Any]) -> None:
        self.log, self.items = log, list(items)

    def next_batch(self) -> list[Any]:
        if not self.items:
            raise StopIteration()
        return [self.items.pop(0)]


class _Src(DynamicSource[Any]):
    def __init__(self, log: list[str], items: list[Any]) -> None:
        self.log, self.items = log, items

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SrcPart:
        self.log.append(f"build source {step_id}")
        return _SrcPart(self.log, self.items)


class _FixedPart(StatefulSourcePartition[Any, None]):
    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def next_batch(self) -> list[Any]:
        if not self.items:
            raise StopIteration()
        return [self.items.pop(0)]

    def snapshot(self) -> None:
        return None


class _FixedSrc(FixedPartitionedSource[Any, None]):
    def __init__(self, log: list[str], parts: dict[str, list[Any]]) -> None:
        self.log, self.parts = log, parts

    def list_parts(self) -> list[str]:
        self.log.append("list source parts")
        return list(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FixedPart:
        self.log.append(f"build fsource {step_id} {for_part}")
        return _FixedPart(self.parts[for_part])


class _SinkPart(StatelessSinkPartition[Any]):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def write_batch(self, items: list[Any]) -> None:
        self.log.append(f"write {self.name} {items}")

    def close(self) -> None:
        self.log.append(f"close sink {self.name}")


class _Sink(DynamicSink[Any]):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPart:
        self.log.append(f"build sink {step_id}")
        return _SinkPart(self.log, step_id)


class _FixedSinkPart(StatefulSinkPartition[Any, None]):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def write_batch(self, values: list[Any]) -> None:
        self.log.append(f"fwrite {self.name} {values}")

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.log.append(f"close fsink {self.name}")


class _FixedSink(FixedPartitionedSink[Any, None]):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def list_parts(self) -> list[str]:
        self.log.append("list sink parts")
        return ["a", "b", "c"]

    def part_fn(self, item_key: str) -> int:
        return {"x": 0, "y": 1}[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FixedSinkPart:
        self.log.append(f"build fsink {step_id} {for_part}")
        return _FixedSinkPart(self.log, for_part)


def test_dynamic_sources_and_sinks_are_built_in_step_order() -> None:
    log: list[str] = []
    flow = Dataflow("o")
    op.output("oa", op.input("a", flow, _Src(log, [1, 2])), _Sink(log))
    op.output("ob", op.input("b", flow, _Src(log, [3])), _Sink(log))
    run_main(flow)
    assert log[:4] == ["build source o.a", "build sink o.oa", "build source o.b", "build sink o.ob"]
    assert log[-2:] == ["close sink o.ob", "close sink o.oa"]


def test_a_sink_after_its_sources_is_built_after_them() -> None:
    log: list[str] = []
    flow = Dataflow("o")
    a = op.input("a", flow, _Src(log, [1]))
    b = op.input("b", flow, _Src(log, [3]))
    op.output("oa", op.merge("m", a, b), _Sink(log))
    run_main(flow)
    assert log[:3] == ["build source o.a", "build source o.b", "build sink o.oa"]


def test_fixed_sink_parts_are_built_at_their_first_write() -> None:
    log: list[str] = []
    flow = Dataflow("o")
    a = op.input("a", flow, _FixedSrc(log, {"p1": [("x", 1), ("y", 2)]}))
    op.output("oa", a, _FixedSink(log))
    op.output("ob", a, _Sink(log))
    run_main(flow)
    assert log == [
        "list source parts",
        "list sink parts",
        "build sink o.ob",
        "build fsource o.a p1",
        "build fsink o.oa a",
        "fwrite a [1]",
        "write o.ob [('x', 1)]",
        "build fsink o.oa b",
        "fwrite b [2]",
        "write o.ob [('y', 2)]",
        "close sink o.ob",
        "close fsink a",
        "close fsink b",
    ]


def test_fixed_sink_part_never_written_is_never_built() -> None:
    log: list[str] = []
    flow = Dataflow("o")
    op.output("oa", op.input("a", flow, _FixedSrc(log, {"p1": []})), _FixedSink(log))
    run_main(flow)
    assert log == ["list source parts", "list sink parts", "build fsource o.a p1"]
