"""flat_map_batch sees the source's batches (batch_size=3)."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main


def summarize(batch):
    return [("len", len(batch)), ("sum", sum(batch))]


flow = Dataflow("fmb")
nums = op.input("inp", flow, TestingSource(range(8), batch_size=3))
sums = op.flat_map_batch("summarize", nums, summarize)
out = []
op.output("out", sums, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
