"""stateful with a StatefulLogic: on_item, on_eof, discard, snapshot, resume_state=None."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, run_main

built = []


class Counter(StatefulLogic):
    def __init__(self, resume_state):
        built.append(resume_state)
        self.n = 0

    def on_item(self, value):
        self.n += 1
        if value == "stop":
            return [f"stopped after {self.n}"], StatefulLogic.DISCARD
        return [f"#{self.n} {value}"], StatefulLogic.RETAIN

    def on_eof(self):
        return [f"eof with {self.n}"], StatefulLogic.RETAIN

    def snapshot(self):
        return self.n


flow = Dataflow("logic")
items = [("k1", "a"), ("k2", "b"), ("k1", "stop"), ("k1", "c"), ("k2", "d")]
s = op.input("inp", flow, TestingSource(items))
r = op.stateful("count", s, Counter)
out = []
op.output("out", r, TestingSink(out))
run_main(flow)
for x in out:
    print(x)
print(built)
