"""ABORT() under the CLI with recovery: the run stops (exit 0); a fresh process aborts again at once."""
# compat: run -c "import os; os.mkdir('rdir')"
# compat: run -m {pkg}.recovery rdir 1
# compat: run -m {pkg}.run {mod}:flow -r rdir -s 0 -b 0
# compat: run -m {pkg}.run {mod}:flow -r rdir -s 0 -b 0

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

items = [("a", 1), ("b", 2), ("a", 3), TestingSource.ABORT(), ("b", 4), ("a", 5)]
flow = Dataflow("crash")
s = op.input("inp", flow, TestingSource(items))
sums = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v, (st or 0) + v))
op.output("out", op.map("fmt", sums, lambda kv: f"{kv[0]}={kv[1]}"), StdOutSink())
