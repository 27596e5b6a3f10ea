"""python -m bytewax.run -w 2 with redistribute before a single-key aggregation."""
# compat: run -m {pkg}.run {mod}:flow -w 2
# compat: bytewax-flag

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("redist_w2")
s = op.input("inp", flow, TestingSource(range(1, 101)))
spread = op.redistribute("spread", s)
squares = op.map("square", spread, lambda x: ("all", x * x))
op.output("out", op.reduce_final("sum", squares, lambda a, b: a + b), StdOutSink())
