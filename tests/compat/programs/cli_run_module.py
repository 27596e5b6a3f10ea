"""python -m bytewax.run MODULE:flow prints through StdOutSink and exits 0."""
# compat: run -m {pkg}.run {mod}:flow
# compat: run -m {pkg}.run {mod}
# compat: bytewax-flag

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("cli")
words = op.input("inp", flow, TestingSource(["to be", "or not", "to be"]))
split = op.flat_map("split", words, str.split)
counts = op.count_final("count", split, lambda w: w)
op.output("out", op.map("fmt", counts, lambda kv: f"{kv[0]} {kv[1]}"), StdOutSink())
