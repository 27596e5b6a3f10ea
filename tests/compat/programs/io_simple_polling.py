"""SimplePollingSource subscripted with a type (as in type-annotated user code), Retry and StopIteration."""

from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import SimplePollingSource
from bytewax.testing import TestingSink, run_main


class Ticks(SimplePollingSource[int, int]):
    def __init__(self):
        super().__init__(interval=timedelta(milliseconds=1))
        self.n = 0
        self.retried = False

    def next_item(self):
        self.n += 1
        if self.n == 2 and not self.retried:
            self.retried = True
            self.n -= 1
            raise SimplePollingSource.Retry(timedelta(milliseconds=1))
        if self.n > 4:
            raise StopIteration()
        return self.n * 10


flow = Dataflow("poll")
s = op.input("inp", flow, Ticks())
out = []
op.output("out", s, TestingSink(out))
run_main(flow)
print(out)
