"""A stateful_map mapper returning a non-2-tuple fails the run with a TypeError in the chain."""
# compat: stderr chain

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("not_tuple")
s = op.input("inp", flow, TestingSource([("a", 1)]))
m = op.stateful_map("sm", s, lambda state, value: value + 1)
out = []
op.output("out", m, TestingSink(out))
run_main(flow)
