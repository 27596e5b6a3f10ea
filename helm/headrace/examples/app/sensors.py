"""A streaming demo dataflow for Kubernetes: running averages of sensor readings.

Runs forever (unless ``DEMO_COUNT`` is set), keeps per-sensor state, and
resumes from its snapshots, so it shows rescaling, suspension and recovery.
Configured through environment variables (a Dataflow's ``spec.flow.env``):

- ``DEMO_SENSORS`` (8): sensors, i.e. source partitions.
- ``DEMO_RATE`` (5): readings per second per sensor.
- ``DEMO_WORK_MS`` (0): CPU milliseconds spent per reading, to load the
  workers (the autoscaler reacts to their busy time).
- ``DEMO_REPORT_EVERY`` (50): print a sensor's average every this many readings.
- ``DEMO_COUNT`` (unset: endless): readings per sensor, then the input ends.

>>> from headrace.testing import run_main
>>> run_main(build(sensors=1, rate=1000.0, count=4, report_every=2))
sensor-0 readings=2 mean=20.92
sensor-0 readings=4 mean=54.64
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta

import headrace.operators as op
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition


def reading(sensor: str, n: int) -> float:
    """The ``n``-th reading of ``sensor``: the same on every run, so a resumed
    dataflow prints what an uninterrupted one would have.

    >>> reading("s0", 3) == reading("s0", 3), 0.0 <= reading("s1", 7) < 100.0
    (True, True)
    """
    return (zlib.crc32(f"{sensor}/{n}".encode()) % 10_000) / 100.0


class _SensorPartition(StatefulSourcePartition[tuple[str, float], int]):
    """One sensor; its resume state is the number of readings emitted."""

    def __init__(self, sensor: str, rate: float, count: int, sent: int) -> None:
        self._sensor = sensor
        self._interval = timedelta(seconds=1.0 / rate)
        self._count = count
        self._sent = sent
        self._due = datetime.now(UTC)

    def next_batch(self) -> list[tuple[str, float]]:
        if self._sent >= self._count:
            raise StopIteration()
        now = datetime.now(UTC)
        batch: list[tuple[str, float]] = []
        # Catch up on every reading that fell due since the last call (bounded,
        # so a long pause does not become one huge batch).
        while self._due <= now and len(batch) < 1000 and self._sent < self._count:
            batch.append((self._sensor, reading(self._sensor, self._sent)))
            self._sent += 1
            self._due += self._interval
        if self._due < now - timedelta(seconds=10):
            self._due = now
        return batch

    def next_awake(self) -> datetime:
        return self._due

    def snapshot(self) -> int:
        return self._sent


class SensorSource(FixedPartitionedSource[tuple[str, float], int]):
    """``sensors`` partitions, each emitting ``rate`` readings per second.

    >>> SensorSource(3, 1.0).list_parts()
    ['sensor-0', 'sensor-1', 'sensor-2']
    """

    def __init__(self, sensors: int, rate: float, count: int = sys.maxsize) -> None:
        self._sensors = sensors
        self._rate = rate
        self._count = count

    def list_parts(self) -> list[str]:
        """One partition per sensor."""
        return [f"sensor-{i}" for i in range(self._sensors)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _SensorPartition:
        """Build a sensor's partition, resuming after ``resume_state`` readings."""
        return _SensorPartition(for_part, self._rate, self._count, resume_state or 0)


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass


def _average(state: tuple[int, float] | None, value: float
             ) -> tuple[tuple[int, float], tuple[int, float]]:
    n, total = state or (0, 0.0)
    new = (n + 1, total + value)
    return new, new


def build(sensors: int = 8, rate: float = 5.0, work_ms: float = 0.0,
          count: int = sys.maxsize, report_every: int = 50) -> Dataflow:
    """The dataflow: read sensors, (optionally) burn CPU, average per sensor, print.

    >>> build(sensors=2).flow_id
    'sensors'
    """
    flow = Dataflow("sensors")
    readings = op.input("inp", flow, SensorSource(sensors, rate, count))
    if work_ms > 0:
        readings = op.inspect("work", readings, lambda _step, _x: _busy(work_ms))
    averages = op.stateful_map("average", readings, _average)
    due = op.filter("due", averages, lambda kv: kv[1][0] % report_every == 0)
    lines = op.map("format", due,
                   lambda kv: f"{kv[0]} readings={kv[1][0]} mean={kv[1][1] / kv[1][0]:.2f}")
    op.output("out", lines, StdOutSink())
    return flow


flow = build(
    sensors=int(os.environ.get("DEMO_SENSORS", 8)),
    rate=float(os.environ.get("DEMO_RATE", 5)),
    work_ms=float(os.environ.get("DEMO_WORK_MS", 0)),
    count=int(os.environ.get("DEMO_COUNT") or sys.maxsize),
    report_every=int(os.environ.get("DEMO_REPORT_EVERY", 50)),
)
