"""Dataflows for benchmarks that start an engine's CLI, chosen by environment variables.

``python -m headrace.run cli_flows:flow -p 2`` (or ``python -m bytewax.run
cli_flows:flow -w 2``, with ``benchmarks/pipelines`` on ``PYTHONPATH`` and
``BENCH_ENGINE`` naming the engine) builds ``flow`` from:

- ``BENCH_PIPELINE``: ``wordcount``, ``tumbling_fold``, ``sliding_fold`` or ``restore``;
- ``BENCH_ITEMS``: input items (lines for wordcount);
- ``BENCH_PARTS``: source partitions (default 4), so every process reads;
- ``BENCH_SPAN_DIR``: where each process writes its timing (see `_span`);
- ``BENCH_SHARD``: ``k/m`` to read only the partitions ``j % m == k`` (one
  of ``m`` independent processes doing one cluster process's share).

``wordcount`` and ``tumbling_fold`` are the single-worker benchmark's
pipelines of those names, fed by a partitioned `_span.StridedSource`;
``sliding_fold`` is ``tumbling_fold`` over 4 s windows every 1 s.
Tumbling items are dealt so that each key comes from one partition (100
keys over 4 partitions), so a key's event times never go backwards and
no item is late whatever the interleaving of the partitions.

``restore`` builds recovery state: ``n`` distinct keys ``k0000000 ...``
through ``stateful_map`` (a running sum). A run that resumes after all
``n`` items were read, or any run with ``n == 0``, emits one probe item
for an existing key instead, so the time to its first output is the time
to restore the state.

>>> import os
>>> from _compat import run_main
>>> from _span import RECORD
>>> before = RECORD["items_written"]
>>> run_main(build("wordcount", 400, 2)); RECORD["items_written"] - before
1000
>>> before = RECORD["items_written"]
>>> run_main(build("tumbling_fold", 4000, 4)); RECORD["items_written"] - before
400
>>> before = RECORD["items_written"]
>>> run_main(build("sliding_fold", 4000, 4)); RECORD["items_written"] - before
700
>>> before = RECORD["items_written"]
>>> run_main(build("restore", 0, 1)); RECORD["items_written"] - before
1
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from _compat import Dataflow, StatefulSourcePartition, op
from _span import SpanSink, StridedSource, note_read
from _windows import BASE, KEYS, _add, _merge, _ts, windowing
from wordcount import _LINES

PIPELINES = ("wordcount", "tumbling_fold", "sliding_fold", "restore")
_MS = timedelta(milliseconds=1)


def _lines(idx: range) -> list[str]:
    lines = _LINES
    count = len(lines)
    return [lines[i % count] for i in idx]


def _timed(idx: range) -> list[Any]:
    keys = KEYS
    step = _MS * idx.step
    t = BASE + _MS * idx.start
    out: list[Any] = []
    append = out.append
    for i in idx:
        append((keys[i % 100], (t, i)))
        t += step
    return out


def _shard() -> tuple[int, int] | None:
    """``BENCH_SHARD`` (``k/m``) as ``(k, m)``, or None.

    >>> os.environ["BENCH_SHARD"] = "1/2"; _shard()
    (1, 2)
    >>> del os.environ["BENCH_SHARD"]; _shard() is None
    True
    """
    value = os.environ.get("BENCH_SHARD")
    if not value:
        return None
    k, m = value.split("/")
    return int(k), int(m)


def _wordcount(n: int, parts: int) -> Any:
    flow = Dataflow("wordcount")
    lines = op.input("inp", flow, StridedSource(n, parts, _lines, _shard()))
    words = op.flat_map("split", lines, str.split)
    keyed = op.key_on("key", words, lambda w: w)
    ones = op.map_value("one", keyed, lambda _w: 1)
    counts = op.reduce_final("sum", ones, lambda a, b: a + b)
    op.output("out", counts, SpanSink())
    return flow


def _windowed(name: str, n: int, parts: int, windower: Any) -> Any:
    win = windowing()
    flow = Dataflow(name)
    items = op.input("inp", flow, StridedSource(n, parts, _timed, _shard()))
    clock = win.EventClock(ts_getter=_ts, wait_for_system_duration=timedelta(seconds=0))
    sums = win.fold_window("fold", items, clock, windower, lambda: 0, _add, _merge)
    op.output("out", sums.down, SpanSink())
    return flow


def _tumbling(n: int, parts: int) -> Any:
    windower = windowing().TumblingWindower(length=timedelta(seconds=1), align_to=BASE)
    return _windowed("tumbling_fold", n, parts, windower)


def _sliding(n: int, parts: int) -> Any:
    windower = windowing().SlidingWindower(
        length=timedelta(seconds=4), offset=timedelta(seconds=1), align_to=BASE
    )
    return _windowed("sliding_fold", n, parts, windower)


class _KeysPartition(StatefulSourcePartition):
    def __init__(self, n: int, pos: int) -> None:
        self._n = n
        self._pos = pos
        # Only a partition that starts with nothing left to read sends the probe.
        self._probe = pos >= n

    def next_batch(self) -> list[Any]:
        pos = self._pos
        if self._probe:
            self._probe = False
            note_read(1)
            return [("k0000000", 1)]
        if pos >= self._n:
            raise StopIteration()
        end = min(pos + 1000, self._n)
        self._pos = end
        note_read(end - pos)
        return [(f"k{i:07d}", 1) for i in range(pos, end)]

    def snapshot(self) -> int:
        return self._pos


class _KeysSource(StridedSource):
    def list_parts(self) -> list[str]:
        return ["keys"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        return _KeysPartition(self._n, resume_state or 0)


def _running_sum(state: int | None, value: int) -> tuple[int, int]:
    total = (state or 0) + value
    return total, total


def _restore(n: int, parts: int) -> Any:
    flow = Dataflow("restore")
    items = op.input("inp", flow, _KeysSource(n, 1, list))
    sums = op.stateful_map("sum", items, _running_sum)
    op.output("out", sums, SpanSink())
    return flow


def build(pipeline: str, n: int, parts: int = 4) -> Any:
    """The dataflow ``pipeline`` over ``n`` items from ``parts`` source partitions.

    >>> build("nope", 1)
    Traceback (most recent call last):
    ...
    ValueError: BENCH_PIPELINE must be one of wordcount, tumbling_fold, sliding_fold, restore; got 'nope'
    """
    builders = {
        "wordcount": _wordcount,
        "tumbling_fold": _tumbling,
        "sliding_fold": _sliding,
        "restore": _restore,
    }
    if pipeline not in builders:
        msg = f"BENCH_PIPELINE must be one of {', '.join(PIPELINES)}; got {pipeline!r}"
        raise ValueError(msg)
    return builders[pipeline](n, parts)


flow = build(
    os.environ.get("BENCH_PIPELINE", "wordcount"),
    int(os.environ.get("BENCH_ITEMS", "1000")),
    int(os.environ.get("BENCH_PARTS", "4")),
)
