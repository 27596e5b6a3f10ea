"""A stateful operator fed items that are not 2-tuples fails the run with a TypeError."""
# compat: stderr chain

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("not_pair")
s = op.input("inp", flow, TestingSource([("a", 1, 2)]))
r = op.reduce_final("sum", s, lambda a, b: a + b)
out = []
op.output("out", r, TestingSink(out))
run_main(flow)
