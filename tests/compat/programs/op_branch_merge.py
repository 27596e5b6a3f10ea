"""branch splits a stream; merge joins the two halves back (merge order)."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("bm")
nums = op.input("inp", flow, TestingSource(range(7)))
b = op.branch("odd", nums, lambda x: x % 2 == 1)
odds = op.map("neg", b.trues, lambda x: -x)
evens = op.map("times10", b.falses, lambda x: x * 10)
both = op.merge("merge", odds, evens)
out = []
op.output("out", both, TestingSink(out))
t_out = []
op.output("trues", b.trues, TestingSink(t_out))
run_main(flow)
print(out)
print(t_out)
print(type(b).__name__, hasattr(b, "trues"), hasattr(b, "falses"))
