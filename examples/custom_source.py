"""Write your own source and sink.

    python -m headrace.run examples/custom_source.py:flow

`SensorSource` is a `FixedPartitionedSource` with two partitions, one per
sensor. Each partition snapshots how many readings it has emitted, so a
resumed run continues where the last snapshot left off instead of starting
over. `TaggedStdOutSink` is a `DynamicSink`: every worker builds its own
partition and prints the items it holds, tagged with its worker index.
"""

from __future__ import annotations

import sys

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.outputs import DynamicSink, StatelessSinkPartition

READINGS_PER_SENSOR = 10


class _SensorPartition(StatefulSourcePartition[tuple[str, int], int]):
    """Readings of one sensor; the resume state is the next reading's index."""

    def __init__(self, sensor: str, limit: int, resume_state: int | None) -> None:
        self._sensor = sensor
        self._limit = limit
        self._next = resume_state or 0

    def next_batch(self) -> list[tuple[str, int]]:
        if self._next >= self._limit:
            raise StopIteration()
        end = min(self._next + 4, self._limit)
        # A stand-in for reading a device: a deterministic value per index.
        batch = [(self._sensor, (i * 7 + len(self._sensor)) % 50) for i in range(self._next, end)]
        self._next = end
        return batch

    def snapshot(self) -> int:
        return self._next


class SensorSource(FixedPartitionedSource[tuple[str, int], int]):
    """Two sensors, ``"boiler"`` and ``"intake"``, each a resumable partition."""

    def __init__(self, readings_per_sensor: int) -> None:
        self._limit = readings_per_sensor

    def list_parts(self) -> list[str]:
        return ["boiler", "intake"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SensorPartition:
        return _SensorPartition(for_part, self._limit, resume_state)


class _TaggedPrintPartition(StatelessSinkPartition[str]):
    def __init__(self, worker_index: int) -> None:
        self._tag = f"[worker {worker_index}]"

    def write_batch(self, items: list[str]) -> None:
        sys.stdout.write("".join(f"{self._tag} {item}\n" for item in items))
        sys.stdout.flush()


class TaggedStdOutSink(DynamicSink[str]):
    """Print each item prefixed with the index of the worker printing it."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TaggedPrintPartition:
        return _TaggedPrintPartition(worker_index)


flow = Dataflow("custom_source")
readings = op.input("sensors", flow, SensorSource(READINGS_PER_SENSOR))
alerts = op.filter("hot", readings, lambda reading: reading[1] >= 25)
lines = op.map("format", alerts, lambda reading: f"{reading[0]}={reading[1]}")
op.output("print", lines, TaggedStdOutSink())
