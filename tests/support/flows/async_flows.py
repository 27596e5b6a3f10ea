"""A dataflow for the kill -9 test of `map_async` (tests/operators/test_async.py).

Reads every file in HR_IN (one partition per file), passes each word
through `map_async` (an ``asyncio.sleep`` of HR_DELAY seconds, 50 calls in
flight per worker), keeps a running count per word and writes ``word
count`` lines to HR_OUT through a DirSink, so any loss or duplicate shows.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import DirSink, DirSource
from headrace.dataflow import Dataflow
from tests.support.flows._steps import count


async def _lookup(word: str) -> str:
    await asyncio.sleep(float(os.environ.get("HR_DELAY", "0")))
    return word


def async_counts() -> Dataflow:
    flow = Dataflow("async_wc")
    lines = op.input("lines", flow, DirSource(Path(os.environ["HR_IN"]), batch_size=20))
    words = op.flat_map("split", lines, str.split)
    looked_up = op.map_async("lookup", words, _lookup, concurrency=50)
    keyed = op.key_on("key", looked_up, lambda w: w)
    counts = op.stateful_map("count", keyed, count)
    lines_out = op.map("line", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    op.output("out", lines_out, DirSink(Path(os.environ["HR_OUT"]), 3))
    return flow
