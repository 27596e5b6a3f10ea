"""filter_map drops None but keeps other falsy values."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def parse(s):
    try:
        return int(s)
    except ValueError:
        return None


flow = Dataflow("filter_map")
raw = op.input("inp", flow, TestingSource(["1", "x", "0", "", "42", "-3", "4.5"]))
ints = op.filter_map("parse", raw, parse)
out = []
op.output("out", ints, TestingSink(out))

run_main(flow)
print(out)
