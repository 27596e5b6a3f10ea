"""TestingSource with batch_size and PAUSE, and flat_map_batch seeing the batches."""

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

items = [1, 2, 3, TestingSource.PAUSE(timedelta(milliseconds=50)), 4, 5, 6, 7]
flow = Dataflow("pause")
s = op.input("inp", flow, TestingSource(items, batch_size=2))
batches = op.flat_map_batch("batches", s, lambda b: [list(b)])
out = []
op.output("out", batches, TestingSink(out))
run_main(flow)
print(out)
