"""TestingSource.EOF() ends a run early; without recovery the next run starts over."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

items = ["a", "b", TestingSource.EOF(), "c", "d"]
flow = Dataflow("eof")
s = op.input("inp", flow, TestingSource(items))
out = []
op.output("out", s, TestingSink(out))
run_main(flow)
print("first run", out)
run_main(flow)
print("second run", out)
