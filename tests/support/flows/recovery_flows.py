"""Dataflows for the crash/rescale tests.

Reads every file in HR_IN (one partition per file), keeps a running count
per word (stateful_map) and writes ``word count`` lines to HR_OUT through a
DirSink, so each output line is unique and any loss or duplicate shows.
HR_SLOW (seconds per batch) slows it so a kill lands mid-run.
"""

from __future__ import annotations

import os
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import DirSink, DirSource
from headrace.dataflow import Dataflow
from tests.support.flows._steps import count, slow


def running_counts() -> Dataflow:
    flow = Dataflow("recovery_wc")
    lines = op.input("lines", flow, DirSource(Path(os.environ["HR_IN"]), batch_size=20))
    lines = op.flat_map_batch("slow", lines, slow)
    words = op.flat_map("split", lines, str.split)
    keyed = op.key_on("key", words, lambda w: w)
    counts = op.stateful_map(os.environ.get("HR_COUNT_STEP", "count"), keyed, count)
    fmt = op.map_value("fmt", counts, lambda n: str(n))
    lines_out = op.map("line", fmt, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    op.output("out", lines_out, DirSink(Path(os.environ["HR_OUT"]), 3))
    return flow
