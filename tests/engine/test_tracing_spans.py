"""OpenTelemetry spans per epoch and per step batch, when a provider is set."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    from collections import Counter
    from datetime import timedelta
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource, run_main

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    flow = Dataflow("traced")
    s = op.input("inp", flow, TestingSource([("a", 1), ("b", 2), ("a", 3)]))
    s = op.map_value("double", s, lambda v: v * 2)
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    out = []
    op.output("out", s, TestingSink(out))
    run_main(flow, epoch_interval=timedelta(0))
    spans = exporter.get_finished_spans()
    names = Counter(sp.name for sp in spans)
    epochs = [sp for sp in spans if sp.name == "epoch"]
    child = [sp for sp in spans if sp.name == "traced.sum.stateful_batch"][0]
    assert child.parent is not None
    assert child.parent.span_id in {e.context.span_id for e in epochs}
    print(sorted(names.items()))
""")


def test_spans_per_epoch_and_step_batch() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is installed by .ci/run")
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "('epoch'," in res.stdout
    assert "'traced.sum.stateful_batch'" in res.stdout
    assert "'traced.double.flat_map_batch'" in res.stdout
