"""python -m bytewax.run -w 2: a single key, so the output order is fixed."""
# compat: run -m {pkg}.run {mod}:flow -w 2
# compat: bytewax-flag

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("cli_w2")
s = op.input("inp", flow, TestingSource(range(20)))
keyed = op.key_on("one", s, lambda _: "total")
running = op.stateful_map("sum", keyed, lambda st, v: ((st or 0) + v, (st or 0) + v))
last = op.reduce_final("last", running, max)
op.output("out", last, StdOutSink())
