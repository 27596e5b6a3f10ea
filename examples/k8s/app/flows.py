"""The example app for Kubernetes: demo dataflows shipped in an image built ``FROM`` Headrace.

The README, ``docs/kubernetes.md``, the Dataflows of ``helm/headrace/examples/``
and ``examples/k8s/``, and the end-to-end suite (``tests/e2e/``) all run this
module, from the image that the ``Dockerfile`` next to it builds: it is
``/app/flows.py`` there, so a Dataflow says ``spec.flow.import: flows:<name>``.
Locally, ``python -m headrace.run flows:<name>`` from this directory runs the
same thing. Each flow reads its settings from environment variables (a
Dataflow's ``spec.flow.env``); ``README.md`` here lists them.

``flows:wordcount``
    Bounded: ``WORDCOUNT_PARTS`` partitions of ``WORDCOUNT_LINES`` numbered
    lines each, ``WORDCOUNT_RATE`` lines per second per partition. A
    stateful step keeps each partition's running word total, and every
    line comes out once as ``"<part> <index> words=<n> total=<total>"``, to
    the file ``WORDCOUNT_OUTPUT`` (exactly once across restarts and
    rescales) or to stdout. ``wordcount_output`` recomputes that output,
    so a line lost, repeated or counted with lost state shows. With
    ``WORDCOUNT_GATE`` naming a file, each partition emits only as many
    lines as the number in it (0 while it is missing): whoever writes the
    file decides how far the flow gets, e.g. before killing a pod.

``flows:sensors``
    Endless (unless ``SENSORS_READINGS`` is set): ``SENSORS_PARTS`` sensors
    of ``SENSORS_RATE`` readings per second each, a running average per
    sensor printed every ``SENSORS_REPORT_EVERY`` readings. With
    ``SENSORS_WORK_MS`` each reading costs that much CPU, which gives the
    autoscaler something to scale for; with ``SENSORS_WORK_WHILE`` naming a
    file, only while that file exists, so the load can be switched off.

``flows:kafka_wordcount()``
    Word counts from one Kafka topic to another (``KAFKA_BROKERS``,
    ``KAFKA_IN_TOPIC``, ``KAFKA_OUT_TOPIC``; ``KAFKA_TAIL=1`` keeps reading
    and writes running counts, which ``running_counts`` recomputes;
    ``KAFKA_COUNT_TTL`` forgets idle words; ``KAFKA_EXACTLY_ONCE=1`` writes
    through Kafka transactions). A message that is not text is skipped
    (``on_error="skip"``), and each word goes through an async step
    (``map_async``), so the dashboards' item-error, async and state-TTL
    panels have something to show. It needs the ``kafka`` extra, so it is
    built only when called: the other flows run in an image without it.

Both generated flows read a `PacedSource`: fixed partitions of numbered
items at a fixed rate, whose resume state is the next index and whose lag
(``headrace_source_lag``) is the items already due but not emitted.

>>> wordcount_output(2, 2)[:2]
['p0 00000 words=8 total=8', 'p0 00001 words=3 total=11']
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Generic, TypeVar

import headrace.operators as op
from headrace.connectors.files import FileSink
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition

T = TypeVar("T")


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class _FileSwitch:
    """Whether a file exists, looked at no more than twice a second.

    >>> _FileSwitch("").on(), _FileSwitch("/nonexistent").on()
    (True, False)
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._on = not path
        self._checked = 0.0

    def on(self) -> bool:
        if self._path and time.monotonic() - self._checked > 0.5:
            self._checked = time.monotonic()
            self._on = os.path.exists(self._path)
        return self._on


class _Gate:
    """How many items per partition a gate file lets through (``None``: no gate), re-read twice a second."""

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


class _PacedPartition(StatefulSourcePartition[T, int], Generic[T]):
    """Emits ``make(part, i)`` for i = 0, 1, ... at ``rate`` per second; the resume state is the next i."""

    def __init__(
        self, part: str, make: Callable[[str, int], T], rate: float, count: int | None, gate: str, start: int
    ) -> None:
        self._part = part
        self._make = make
        self._interval = timedelta(seconds=1.0 / rate)
        self._count = count
        self._next = start
        self._due = datetime.now(UTC)
        self._gate = _Gate(gate)

    def next_batch(self) -> list[T]:
        if self._count is not None and self._next >= self._count:
            raise StopIteration()
        now = datetime.now(UTC)
        gate = self._gate.limit()
        if gate is not None and self._next >= gate:
            self._due = now + timedelta(seconds=0.5)
            return []
        batch: list[T] = []
        # Catch up on what fell due since the last call, in bounded batches.
        while self._due <= now and len(batch) < 100:
            if self._count is not None and self._next >= self._count:
                break
            if gate is not None and self._next >= gate:
                break
            batch.append(self._make(self._part, self._next))
            self._next += 1
            self._due += self._interval
        # After a long pause (a busy worker), keep the pace from now on.
        if self._due < now - timedelta(seconds=5):
            self._due = now
        return batch

    def next_awake(self) -> datetime:
        return self._due

    def lag(self) -> int:
        """Items already due (by the pace and the gate) but not emitted yet: the source's backlog."""
        due = int((datetime.now(UTC) - self._due) / self._interval) + 1
        gate = self._gate.limit()
        for limit in (self._count, gate):
            if limit is not None:
                due = min(due, limit - self._next)
        return max(0, due)

    def snapshot(self) -> int:
        return self._next


class PacedSource(FixedPartitionedSource[T, int], Generic[T]):
    """Partitions ``parts`` of items ``make(part, 0)``, ``make(part, 1)``, ... at ``rate`` per second each.

    ``count`` items per partition (``None``: endless); ``gate``, a file
    holding how many items each partition may emit so far ("": no gate).

    >>> from headrace.testing import TestingSink, run_main
    >>> flow, out = Dataflow("doc"), []
    >>> source = PacedSource(["a", "b"], lambda part, i: f"{part}{i}", rate=1000.0, count=2)
    >>> op.output("out", op.input("in", flow, source), TestingSink(out))
    >>> run_main(flow); sorted(out)
    ['a0', 'a1', 'b0', 'b1']
    """

    def __init__(
        self,
        parts: list[str],
        make: Callable[[str, int], T],
        rate: float,
        count: int | None = None,
        gate: str = "",
    ) -> None:
        self._parts, self._make, self._rate, self._count, self._gate = parts, make, rate, count, gate

    def list_parts(self) -> list[str]:
        """The partitions, as given."""
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PacedPartition[T]:
        """A partition that resumes at item ``resume_state``."""
        return _PacedPartition(for_part, self._make, self._rate, self._count, self._gate, resume_state or 0)


# ------------------------------------------------------------------ wordcount


def words_in(part: str, index: int) -> int:
    """The number of words of line ``index`` of partition ``part``: 1 to 9, the same on every run.

    >>> words_in("p0", 0), words_in("p0", 1)
    (8, 3)
    """
    return 1 + zlib.crc32(f"{part}/{index}".encode()) % 9


def line_text(part: str, index: int) -> str:
    """Line ``index`` of partition ``part``: its tag, then its words.

    >>> line_text("p0", 1)
    'p0 00001 w w w'
    """
    return f"{part} {index:05d} " + " ".join(["w"] * words_in(part, index))


def wordcount_output(parts: int, lines: int) -> list[str]:
    """Every output line of a complete ``wordcount`` run, in partition order.

    >>> wordcount_output(1, 3)
    ['p0 00000 words=8 total=8', 'p0 00001 words=3 total=11', 'p0 00002 words=5 total=16']
    """
    out = []
    for p in range(parts):
        total = 0
        for i in range(lines):
            total += words_in(f"p{p}", i)
            out.append(f"p{p} {i:05d} words={words_in(f'p{p}', i)} total={total}")
    return out


def _count(total: int | None, line: str) -> tuple[int, str]:
    part, index, *words = line.split()
    total = (total or 0) + len(words)
    return total, f"{part} {index} words={len(words)} total={total}"


def build_wordcount(
    parts: int = 8, lines: int = 200, rate: float = 2.0, output: str = "", gate: str = ""
) -> Dataflow:
    """The ``wordcount`` dataflow; ``output`` a file ("": stdout), ``gate`` a gate file ("": none).

    >>> from headrace.testing import run_main
    >>> run_main(build_wordcount(parts=1, lines=3, rate=1000.0))
    p0 00000 words=8 total=8
    p0 00001 words=3 total=11
    p0 00002 words=5 total=16
    """
    flow = Dataflow("wordcount")
    source = PacedSource([f"p{i}" for i in range(parts)], line_text, rate, lines, gate)
    keyed = op.key_on("by_part", op.input("read", flow, source), lambda line: line.split()[0])
    counted = op.stateful_map("count", keyed, _count)
    if output:
        op.output("out", counted, FileSink(Path(output)))
    else:
        op.output("out", op.key_rm("unkey", counted), StdOutSink())
    return flow


# ------------------------------------------------------------------ sensors


def reading(sensor: str, n: int) -> float:
    """The ``n``-th reading of ``sensor``: the same on every run, so a resumed
    dataflow prints what an uninterrupted one would have.

    >>> reading("sensor-0", 0), reading("sensor-0", 0) == reading("sensor-0", 0)
    (1.39, True)
    """
    return (zlib.crc32(f"{sensor}/{n}".encode()) % 10_000) / 100.0


def _average(state: tuple[int, float] | None, value: float) -> tuple[tuple[int, float], tuple[int, float]]:
    n, total = state or (0, 0.0)
    new = (n + 1, total + value)
    return new, new


def build_sensors(
    sensors: int = 8,
    rate: float = 5.0,
    readings: int | None = None,
    work_ms: float = 0.0,
    work_while: str = "",
    report_every: int = 50,
) -> Dataflow:
    """The ``sensors`` dataflow: read, (optionally) burn CPU, average per sensor, print.

    ``readings`` per sensor (``None``: endless); ``work_ms`` of CPU per
    reading, only while the file ``work_while`` exists if that is given.

    >>> from headrace.testing import run_main
    >>> run_main(build_sensors(sensors=1, rate=1000.0, readings=4, report_every=2))
    sensor-0 readings=2 mean=20.92
    sensor-0 readings=4 mean=54.64
    """
    flow = Dataflow("sensors")
    source = PacedSource(
        [f"sensor-{i}" for i in range(sensors)], lambda s, n: (s, reading(s, n)), rate, readings
    )
    values = op.input("read", flow, source)
    if work_ms > 0:
        switch = _FileSwitch(work_while)

        def work(item: tuple[str, float]) -> tuple[str, float]:
            if switch.on():
                end = time.perf_counter() + work_ms / 1000.0
                while time.perf_counter() < end:
                    pass
            return item

        values = op.map("work", values, work)
    averages = op.stateful_map("average", values, _average)
    due = op.filter("due", averages, lambda kv: kv[1][0] % report_every == 0)
    text = op.map("format", due, lambda kv: f"{kv[0]} readings={kv[1][0]} mean={kv[1][1] / kv[1][0]:.2f}")
    op.output("out", text, StdOutSink())
    return flow


# ------------------------------------------------------------------ Kafka


_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words_of(text: str) -> list[str]:
    """The words of a line, as ``kafka_wordcount`` counts them: letters (and inner apostrophes).

    >>> words_of("The cat's 2 hats, the_end")
    ['the', "cat's", 'hats', 'the', 'end']
    """
    return _WORD.findall(text.lower())


def running_counts(lines: list[str]) -> collections.Counter[tuple[str, int]]:
    """What ``kafka_wordcount`` with ``KAFKA_TAIL=1`` writes for ``lines``: one
    ``(word, n)`` for the n-th time each word is seen, as a multiset (the
    order across words depends on the workers, each word's own does not).

    >>> sorted(running_counts(["a b", "b"]).items())
    [(('a', 1), 1), (('b', 1), 1), (('b', 2), 1)]
    """
    seen: collections.Counter[str] = collections.Counter(w for line in lines for w in words_of(line))
    return collections.Counter((w, n) for w, total in seen.items() for n in range(1, total + 1))


async def _lookup(word: str) -> str:
    """Stands for an async call per word (a dictionary service, a cache): here, the word itself."""
    await asyncio.sleep(0)
    return word


def kafka_wordcount() -> Dataflow:
    """Word counts over Kafka: lines in from ``KAFKA_IN_TOPIC``, ``word -> count`` out to ``KAFKA_OUT_TOPIC``.

    Reads every partition up to the end it has when the dataflow starts
    and writes one message per word, keyed by the word (a compacted topic
    keeps the latest count, and a repeat after a crash replaces rather
    than adds). With ``KAFKA_TAIL=1`` it keeps reading and writes a word's
    running count each time it changes; ``KAFKA_COUNT_TTL`` (seconds) then
    forgets a word not seen for that long, so it counts from 1 again.
    ``KAFKA_EXACTLY_ONCE=1`` writes through Kafka transactions (needs
    recovery). A message that is not UTF-8 text is skipped and counted
    (``headrace_step_errors_total``, the Dataflow's ``status.errors``)
    instead of stopping the run. Needs ``headrace[kafka]``.

    >>> kafka_wordcount().flow_id
    'kafka_wordcount'
    """
    from headrace.connectors.kafka import KafkaSinkMessage
    from headrace.connectors.kafka import operators as kop

    brokers = _env("KAFKA_BROKERS", "localhost:9092").split(",")
    tail = os.environ.get("KAFKA_TAIL", "0") == "1"
    ttl = (
        timedelta(seconds=float(os.environ["KAFKA_COUNT_TTL"])) if os.environ.get("KAFKA_COUNT_TTL") else None
    )
    exactly_once = os.environ.get("KAFKA_EXACTLY_ONCE", "0") == "1"

    flow = Dataflow("kafka_wordcount")
    lines = kop.input("lines", flow, brokers=brokers, topics=[_env("KAFKA_IN_TOPIC", "lines")], tail=tail)
    # A message that can't be read stops the run, naming its partition and offset.
    op.raises("no_errors", lines.errs)
    # One that is read but is not text is a poison item: skipped, and counted.
    words = op.flat_map("words", lines.oks, lambda m: words_of(m.value.decode()), on_error="skip")
    words = op.map_async("lookup", words, _lookup)
    if tail:
        keyed = op.key_on("key", words, lambda w: w)
        counts = op.stateful_map("count", keyed, lambda n, _w: ((n or 0) + 1, (n or 0) + 1), ttl=ttl)
    else:
        counts = op.count_final("count", words, lambda w: w)
    out = op.map("to_kafka", counts, lambda kv: KafkaSinkMessage(kv[0].encode(), str(kv[1]).encode()))
    topic = _env("KAFKA_OUT_TOPIC", "word-counts")
    kop.output("out", out, brokers=brokers, topic=topic, exactly_once=exactly_once)
    return flow


wordcount = build_wordcount(
    parts=int(_env("WORDCOUNT_PARTS", "8")),
    lines=int(_env("WORDCOUNT_LINES", "200")),
    rate=float(_env("WORDCOUNT_RATE", "2")),
    output=_env("WORDCOUNT_OUTPUT", ""),
    gate=_env("WORDCOUNT_GATE", ""),
)
sensors = build_sensors(
    sensors=int(_env("SENSORS_PARTS", "8")),
    rate=float(_env("SENSORS_RATE", "5")),
    readings=int(os.environ["SENSORS_READINGS"]) if os.environ.get("SENSORS_READINGS") else None,
    work_ms=float(_env("SENSORS_WORK_MS", "0")),
    work_while=_env("SENSORS_WORK_WHILE", ""),
    report_every=int(_env("SENSORS_REPORT_EVERY", "50")),
)
