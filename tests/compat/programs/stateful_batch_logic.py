"""stateful_batch sees values batched per key; on_eof flushes."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main


class Batches(StatefulBatchLogic):
    def __init__(self, resume_state):
        self.total = resume_state or 0

    def on_batch(self, values):
        self.total += sum(values)
        return [("batch", list(values))], False

    def on_eof(self):
        return [("total", self.total)], True

    def snapshot(self):
        return self.total


flow = Dataflow("sb")
items = [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("b", 5), ("b", 6), ("a", 7)]
s = op.input("inp", flow, TestingSource(items, batch_size=3))
r = op.stateful_batch("batches", s, Batches)
out = []
op.output("out", r, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
