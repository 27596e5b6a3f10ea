"""Dataflows used by the multi-process tests (run with python -m headrace.run).

Configured through environment variables so every process of a test cluster
builds the same graph: HR_OUT (output directory), HR_PARTS, HR_ITEMS (per
part), HR_DELAY (seconds between batches), HR_BATCH, HR_BUILD_DELAY (seconds
each source partition takes to build, as restoring a big state does) and
HR_BUILD_MARK (a directory where a process notes ``building-<pid>`` then).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.outputs import DynamicSink, StatelessSinkPartition


class _Part(StatefulSourcePartition[str, int]):
    def __init__(self, name: str, items: int, batch: int, delay: float, resume: int | None):
        self.name = name
        self.items = items
        self.batch = batch
        self.delay = delay
        self.pos = resume or 0
        self.awake: datetime | None = None

    def next_batch(self) -> list[str]:
        if self.pos >= self.items:
            raise StopIteration()
        end = min(self.items, self.pos + self.batch)
        out = [f"{self.name} w{i % 17} w{i % 5}" for i in range(self.pos, end)]
        self.pos = end
        if self.delay:
            self.awake = datetime.now(UTC) + timedelta(seconds=self.delay)
        return out

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.pos


class LinesSource(FixedPartitionedSource[str, int]):
    def __init__(self, parts: int, items: int, batch: int, delay: float) -> None:
        self.parts = parts
        self.items = items
        self.batch = batch
        self.delay = delay

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        mark = os.environ.get("HR_BUILD_MARK")
        if mark:
            Path(mark).mkdir(parents=True, exist_ok=True)
            (Path(mark) / f"building-{os.getpid()}").touch()
        time.sleep(float(os.environ.get("HR_BUILD_DELAY", "0")))
        return _Part(for_part, self.items, self.batch, self.delay, resume_state)


class _FileOut(StatelessSinkPartition[str]):
    def __init__(self, path: Path) -> None:
        self.f = path.open("a")

    def write_batch(self, items: list[str]) -> None:
        for x in items:
            self.f.write(f"{x}\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class PerWorkerFiles(DynamicSink[str]):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FileOut:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return _FileOut(self.out_dir / f"worker-{worker_index}-of-{worker_count}.txt")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def wordcount(flow_id: str = "cluster_wc") -> Dataflow:
    flow = Dataflow(flow_id)
    src = LinesSource(
        _env_int("HR_PARTS", 3),
        _env_int("HR_ITEMS", 500),
        _env_int("HR_BATCH", 50),
        float(os.environ.get("HR_DELAY", "0")),
    )
    lines = op.input("lines", flow, src)
    words = op.flat_map("split", lines, str.split)
    counts = op.count_final("count", words, lambda w: w)
    op.output(
        "out", op.map("fmt", counts, lambda kv: f"{kv[0]} {kv[1]}"), PerWorkerFiles(os.environ["HR_OUT"])
    )
    return flow


def other() -> Dataflow:
    """A different graph, for the mismatch test."""
    flow = Dataflow("cluster_wc")
    lines = op.input("lines", flow, LinesSource(1, 10, 10, 0))
    op.output("out", op.map("upper", lines, str.upper), PerWorkerFiles(os.environ["HR_OUT"]))
    return flow
