"""StdOutSink prints items with print(): str, tuples, None, nested containers."""

from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

items = ["plain", ("k", 1.5), None, {"a": [1, 2]}, b"bytes", datetime(2024, 1, 2, tzinfo=UTC), "multi\nline"]
flow = Dataflow("types")
s = op.input("inp", flow, TestingSource(items))
op.output("out", s, StdOutSink())
run_main(flow)
