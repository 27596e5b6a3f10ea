"""Two steps with the same id in one scope are refused when the flow is built."""
# compat: stderr last

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("dup")
s = op.input("inp", flow, TestingSource([1]))
op.map("twice", s, str)
print("first map built")
op.map("twice", s, repr)
print("not reached")
