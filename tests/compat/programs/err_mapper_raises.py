"""An exception in a user's map fails the run; the user's exception is in the chain."""
# compat: stderr chain

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def parse(s):
    return int(s)


flow = Dataflow("boom")
s = op.input("inp", flow, TestingSource(["1", "2", "x3"]))
n = op.map("parse", s, parse)
out = []
op.output("out", n, TestingSink(out))
try:
    run_main(flow)
finally:
    print(out)
