"""A branch predicate returning a non-bool fails the run with a TypeError."""
# compat: stderr chain

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("branchy")
s = op.input("inp", flow, TestingSource([1, 2, 3]))
b = op.branch("odd", s, lambda x: x % 2)
t, f = [], []
op.output("t", b.trues, TestingSink(t))
op.output("f", b.falses, TestingSink(f))
run_main(flow)
