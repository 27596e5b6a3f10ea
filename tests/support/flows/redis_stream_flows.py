"""Dataflows for the Redis Streams tests, run with ``python -m headrace.run``.

Settings come from the environment: HR_REDIS (the URL), HR_STREAMS (input
stream keys, comma-separated), HR_OUT (output stream), HR_OUT_DIR (output
directory) and HR_SLOW (seconds to sleep per batch, so a kill lands mid-run).
"""

from __future__ import annotations

import os
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import DirSink
from headrace.connectors.redis import RedisStreamSink, RedisStreamSource
from headrace.dataflow import Dataflow
from tests.support.flows._steps import count, slow


def running_counts() -> Dataflow:
    """Running word counts of the ``text`` field to files and to stream HR_OUT.

    Every output ``word n`` is unique, so a lost or repeated one shows.
    """
    url = os.environ["HR_REDIS"]
    flow = Dataflow("stream_counts")
    src = RedisStreamSource(url, os.environ["HR_STREAMS"].split(","), tail=False, batch_size=20, decode=True)
    entries = op.flat_map_batch("slow", op.input("in", flow, src), slow)
    words = op.flat_map("split", entries, lambda e: e.fields["text"].split())
    counts = op.stateful_map("count", op.key_on("key", words, lambda w: w), count)
    lines = op.map("line", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    op.output("files", lines, DirSink(Path(os.environ["HR_OUT_DIR"]), 3))
    op.output(
        "stream",
        op.map("entry", lines, lambda kv: {"line": kv[1]}),
        RedisStreamSink(url, os.environ["HR_OUT"]),
    )
    return flow
