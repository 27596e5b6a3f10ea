"""A paced dataflow for the metrics tests: a known input rate.

Each of HR_PARTS partitions emits HR_PER_TICK items every HR_TICK seconds
for HR_SECONDS seconds, so the total input rate is
HR_PARTS * HR_PER_TICK / HR_TICK items per second.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.testing import _DiscardSink

USER_EVENTS = Counter("user_events", "A user-defined metric, counted in a map step.")


class _Paced(StatefulSourcePartition[int, int]):
    def __init__(self, per_tick: int, tick: float, seconds: float) -> None:
        self.per_tick = per_tick
        self.tick = timedelta(seconds=tick)
        self.end = datetime.now(UTC) + timedelta(seconds=seconds)
        self.next = datetime.now(UTC)
        self.sent = 0

    def next_batch(self) -> list[int]:
        now = datetime.now(UTC)
        if now >= self.end:
            raise StopIteration()
        self.next += self.tick
        self.sent += self.per_tick
        return list(range(self.per_tick))

    def next_awake(self) -> datetime:
        return self.next

    def snapshot(self) -> int:
        return self.sent

    def lag(self) -> int:
        # Pretend a backlog that shrinks as we go, to exercise the lag gauge.
        left = (self.end - datetime.now(UTC)).total_seconds()
        return max(0, int(left * 10))


class PacedSource(FixedPartitionedSource[int, int]):
    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(int(os.environ.get("HR_PARTS", 2)))]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Paced:
        return _Paced(
            int(os.environ.get("HR_PER_TICK", 50)),
            float(os.environ.get("HR_TICK", 0.05)),
            float(os.environ.get("HR_SECONDS", 20)),
        )


def _count_user(x: int) -> int:
    USER_EVENTS.inc()
    return x


async def _lookup(x: int) -> int:
    await asyncio.sleep(0)
    return x


def paced() -> Dataflow:
    flow = Dataflow("paced")
    s = op.input("inp", flow, PacedSource())
    # A step with an error policy, so the errors series exists (at 0) for the dashboards' test.
    s = op.map("user", s, _count_user, on_error="skip")
    s = op.map_async("lookup", s, _lookup, concurrency=10, timeout=timedelta(seconds=30))
    keyed = op.key_on("key", s, lambda x: str(x % 10))
    summed = op.stateful_map("sum", keyed, lambda st, v: ((st or 0) + v,) * 2, ttl=timedelta(hours=1))
    op.output("out", summed, _DiscardSink())
    return flow
