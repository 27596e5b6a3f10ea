"""ABORT() without recovery makes run_main raise; the items before it were processed."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("abort")
s = op.input("inp", flow, TestingSource([1, 2, TestingSource.ABORT(), 3]))
out = []
op.output("out", s, TestingSink(out))
try:
    run_main(flow)
except Exception as e:
    print("raised", isinstance(e, RuntimeError))
print(out)
