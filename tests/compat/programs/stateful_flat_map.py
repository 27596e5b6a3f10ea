"""stateful_flat_map emits zero or more items per input, per key."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def dedupe(seen, value):
    seen = seen or set()
    if value in seen:
        return seen, []
    seen.add(value)
    return seen, [value, value.upper()]


flow = Dataflow("sfm")
items = [("x", "a"), ("y", "a"), ("x", "a"), ("x", "b"), ("y", "c"), ("y", "a")]
s = op.input("inp", flow, TestingSource(items))
d = op.stateful_flat_map("dedupe", s, dedupe)
out = []
op.output("out", d, TestingSink(out))
run_main(flow)
print(out)
