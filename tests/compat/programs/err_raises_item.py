"""raises fails the run when an item reaches it."""
# compat: stderr last

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("raising")
nums = op.input("inp", flow, TestingSource([1, 2, 3]))
bad = op.filter("big", nums, lambda x: x >= 2)
op.raises("no_big", bad)
out = []
op.output("out", nums, TestingSink(out))
run_main(flow)
print("not reached")
