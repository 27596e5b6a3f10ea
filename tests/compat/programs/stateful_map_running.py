"""stateful_map keeps a running sum per key; returning None state discards the key."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def running(state, value):
    total = (state or 0) + value
    if total >= 10:
        return None, f"reset at {total}"
    return total, total


flow = Dataflow("running")
items = [("a", 3), ("b", 1), ("a", 4), ("a", 5), ("b", 2), ("a", 1), ("c", 10), ("c", 1)]
s = op.input("inp", flow, TestingSource(items))
sums = op.stateful_map("sum", s, running)
out = []
op.output("out", sums, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
