"""One stream feeding several steps: the order in which their output lines interleave."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("fanout")
s = op.input("inp", flow, TestingSource([1, 2, 3], batch_size=2))
op.inspect("first", s)
doubled = op.map("double", s, lambda x: x * 2)
op.inspect("second", doubled)
op.inspect("third", s)
op.inspect("fourth", op.filter("odd", doubled, lambda x: x % 4 == 2))
run_main(flow)
