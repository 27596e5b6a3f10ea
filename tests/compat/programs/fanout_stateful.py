"""Fan-out into a stateless branch and a stateful one: line order across the branches."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("fan2")
s = op.input("inp", flow, TestingSource([("b", 1), ("a", 2), ("b", 3)]))
op.inspect("raw", s)
running = op.stateful_map("running", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
op.inspect("show_running", running)
op.inspect("mapped", op.map_value("neg", s, lambda v: -v))
run_main(flow)
