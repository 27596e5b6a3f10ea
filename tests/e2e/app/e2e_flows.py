"""Dataflows of the end-to-end suite, shipped in a small image built ``FROM`` the Headrace image.

``e2e_flows:wordcount``
    A bounded-but-slow partitioned source: ``E2E_PARTS`` partitions, each
    emitting ``E2E_LINES`` numbered lines at ``E2E_RATE`` lines per second.
    Each line has a known number of words; a stateful step keeps a running
    word total per partition and every line goes, once, to the file
    ``E2E_OUTPUT`` as ``"<part> <index> words=<n> total=<running total>"``.
    A checker recomputes every line (``expected_lines``), so a line lost,
    duplicated or counted with lost state shows up. With ``E2E_GATE`` set to
    a file, each partition emits only the first N lines, N read from that
    file (0 while it is missing): the test decides how far the flow gets
    before it kills, rescales or suspends it.

``e2e_flows:load``
    An endless source of ``E2E_PARTS`` partitions at ``E2E_RATE`` items per
    second each, spending ``E2E_WORK_MS`` of CPU per item until the Unix time
    ``E2E_LOAD_UNTIL`` (then none), with a running count per partition:
    synthetic load that drops at a known time, for the autoscaler.

>>> expected_lines(2, 2)[:2]
['p0 00000 words=8 total=8', 'p0 00001 words=3 total=11']
"""

from __future__ import annotations

import os
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import FileSink
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition


def words_in(part: str, index: int) -> int:
    """The number of words of line ``index`` of partition ``part`` (1 to 9, fixed)."""
    return 1 + zlib.crc32(f"{part}/{index}".encode()) % 9


def line_text(part: str, index: int) -> str:
    """Line ``index`` of partition ``part``: its tag, then its words."""
    return f"{part} {index:05d} " + " ".join(["w"] * words_in(part, index))


def expected_lines(parts: int, lines: int) -> list[str]:
    """Every output line of a complete ``wordcount`` run, in partition order."""
    out = []
    for p in range(parts):
        total = 0
        for i in range(lines):
            total += words_in(f"p{p}", i)
            out.append(f"p{p} {i:05d} words={words_in(f'p{p}', i)} total={total}")
    return out


class _Gate:
    """The number of lines the test lets through, re-read from ``E2E_GATE`` twice a second."""

    def __init__(self, path: str) -> None:
        self._path = Path(path) if path else None
        self._limit: int | None = None if self._path is None else 0
        self._read_at = 0.0

    def limit(self) -> int | None:
        if self._path is not None and time.monotonic() - self._read_at > 0.5:
            self._read_at = time.monotonic()
            try:
                self._limit = int(self._path.read_text().strip() or "0")
            except (OSError, ValueError):
                self._limit = 0
        return self._limit


class _Paced(StatefulSourcePartition[str, int]):
    """Emits numbered lines at ``rate`` per second; the resume state is the next index."""

    def __init__(self, part: str, rate: float, count: int | None, start: int) -> None:
        self._part = part
        self._interval = timedelta(seconds=1.0 / rate)
        self._count = count
        self._next = start
        self._due = datetime.now(UTC)
        self._gate = _Gate(os.environ.get("E2E_GATE", ""))

    def next_batch(self) -> list[str]:
        if self._count is not None and self._next >= self._count:
            raise StopIteration()
        now = datetime.now(UTC)
        gate = self._gate.limit()
        if gate is not None and self._next >= gate:
            self._due = now + timedelta(seconds=0.5)
            return []
        batch: list[str] = []
        while self._due <= now and len(batch) < 100:
            if self._count is not None and self._next >= self._count:
                break
            if gate is not None and self._next >= gate:
                break
            batch.append(line_text(self._part, self._next))
            self._next += 1
            self._due += self._interval
        if self._due < now - timedelta(seconds=5):
            self._due = now
        return batch

    def next_awake(self) -> datetime:
        return self._due

    def lag(self) -> int:
        """Lines already due (by the pace and the gate) but not emitted yet: the source's backlog."""
        due = int((datetime.now(UTC) - self._due) / self._interval) + 1
        gate = self._gate.limit()
        for limit in (self._count, gate):
            if limit is not None:
                due = min(due, limit - self._next)
        return max(0, due)

    def snapshot(self) -> int:
        return self._next


class PacedLines(FixedPartitionedSource[str, int]):
    """``parts`` partitions ``p0``... of numbered lines, ``rate`` per second each."""

    def __init__(self, parts: int, rate: float, count: int | None) -> None:
        self._parts, self._rate, self._count = parts, rate, count

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self._parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Paced:
        return _Paced(for_part, self._rate, self._count, resume_state or 0)


def _count(total: int | None, line: str) -> tuple[int, str]:
    part, index, *words = line.split()
    total = (total or 0) + len(words)
    return total, f"{part} {index} words={len(words)} total={total}"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _wordcount() -> Dataflow:
    parts = int(_env("E2E_PARTS", "8"))
    flow = Dataflow("wordcount")
    lines = op.input(
        "read", flow, PacedLines(parts, float(_env("E2E_RATE", "2")), int(_env("E2E_LINES", "200")))
    )
    keyed = op.key_on("by_part", lines, lambda line: line.split()[0])
    counted = op.stateful_map("count", keyed, _count)
    op.output("out", counted, FileSink(Path(_env("E2E_OUTPUT", "/out/wordcount.txt"))))
    return flow


_LOAD = {"on": False, "checked": 0.0}


def _loaded() -> bool:
    if time.monotonic() - _LOAD["checked"] > 0.5:
        _LOAD["checked"] = time.monotonic()
        _LOAD["on"] = os.path.exists(_env("E2E_LOAD_FILE", "/nonexistent"))
    return bool(_LOAD["on"])


def _burn(line: str) -> str:
    if _loaded():
        end = time.perf_counter() + float(_env("E2E_WORK_MS", "20")) / 1000.0
        while time.perf_counter() < end:
            pass
    return line


def _count_items(total: int | None, line: str) -> tuple[int, str | None]:
    total = (total or 0) + 1
    return total, (f"{line.split()[0]} items={total}" if total % 500 == 0 else None)


def _load() -> Dataflow:
    flow = Dataflow("load")
    lines = op.input(
        "read", flow, PacedLines(int(_env("E2E_PARTS", "8")), float(_env("E2E_RATE", "20")), None)
    )
    busy = op.map("burn", lines, _burn)
    counted = op.stateful_map("count", op.key_on("by_part", busy, lambda line: line.split()[0]), _count_items)
    op.output("out", op.filter("reports", op.key_rm("unkey", counted), lambda v: v is not None), StdOutSink())
    return flow


wordcount = _wordcount()
load = _load()
