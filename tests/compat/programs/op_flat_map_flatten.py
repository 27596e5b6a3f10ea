"""flat_map splits lines into words; flatten unpacks lists (including empty ones)."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

flow = Dataflow("flat")
lines = op.input("inp", flow, TestingSource(["a b c", "", "d e"]))
words = op.flat_map("split", lines, str.split)
lists = op.map("dup", words, lambda w: [w] * (ord(w) % 3))
flat = op.flatten("flatten", lists)
out = []
op.output("out", flat, TestingSink(out))
run_main(flow)
print(out)
