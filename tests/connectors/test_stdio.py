"""StdOutSink: one line per item on standard output."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import headrace.operators as op
from headrace.connectors import stdio
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow
from headrace.outputs import DynamicSink, StatelessSinkPartition
from headrace.testing import TestingSource, cluster_main, run_main


def test_prints_str_of_each_item_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    flow = Dataflow("p")
    items = ["text", 3, ("key", 1.5), None, ""]
    op.output("out", op.input("inp", flow, TestingSource(items, batch_size=2)), StdOutSink())
    run_main(flow)
    assert capsys.readouterr().out == "text\n3\n('key', 1.5)\nNone\n\n"


def test_empty_batch_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    StdOutSink().build("p.out", 0, 1).write_batch([])
    assert capsys.readouterr().out == ""


def test_every_worker_prints_its_items(capsys: pytest.CaptureFixture[str]) -> None:
    flow = Dataflow("p")
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(range(20), batch_size=4)))
    op.output("out", s, StdOutSink())
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(int(x) for x in capsys.readouterr().out.split()) == list(range(20))


def test_output_is_flushed_per_batch() -> None:
    """Lines reach a pipe before the process exits (no buffering until exit)."""
    script = textwrap.dedent(
        """
        import os, sys
        from headrace.connectors.stdio import StdOutSink
        StdOutSink().build("p.out", 0, 1).write_batch(["flushed"])
        os._exit(0)  # skips interpreter shutdown, which would flush
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "flushed\n"


def test_reexports_base_classes() -> None:
    assert stdio.DynamicSink is DynamicSink
    assert stdio.StatelessSinkPartition is StatelessSinkPartition
    assert isinstance(StdOutSink(), DynamicSink)
