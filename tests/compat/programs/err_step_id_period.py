"""A step id containing a period is refused when the flow is built."""
# compat: stderr last

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("dots")
s = op.input("inp", flow, TestingSource([1]))
print("built input")
op.map("bad.id", s, str)
print("not reached")
