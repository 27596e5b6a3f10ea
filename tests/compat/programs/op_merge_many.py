"""merge of three streams from three inputs, and of a single stream."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("mm")
a = op.input("a", flow, TestingSource(["a1", "a2"]))
b = op.input("b", flow, TestingSource(["b1"]))
c = op.input("c", flow, TestingSource(["c1", "c2", "c3"]))
m = op.merge("all", a, b, c)
one = op.merge("one", m)
out = []
op.output("out", one, TestingSink(out))
run_main(flow)
print(sorted(out))
print(len(out))
