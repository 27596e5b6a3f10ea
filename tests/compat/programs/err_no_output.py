"""A flow with an input but no output or inspect step: what run_main does."""
# compat: stderr last

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("no_out")
s = op.input("inp", flow, TestingSource([1, 2]))
op.map("double", s, lambda x: x * 2)
run_main(flow)
print("finished")
