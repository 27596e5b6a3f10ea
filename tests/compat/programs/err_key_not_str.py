"""A keyed operator fed a non-str key fails the run with a TypeError."""
# compat: stderr chain

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("int_key")
s = op.input("inp", flow, TestingSource([1, 2]))
keyed = op.key_on("key", s, lambda x: x)
counts = op.count_final("count", op.key_rm("rm", keyed), str)
out = []
op.output("out", counts, TestingSink(out))
op.output("keyed_out", keyed, TestingSink(out))
run_main(flow)
