"""python -m bytewax.testing MODULE:flow runs the flow in one thread."""
# compat: run -m {pkg}.testing {mod}:flow

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("testing_cli")
s = op.input("inp", flow, TestingSource(["x", "y"]))
op.inspect("show", op.map("dup", s, lambda x: x * 2))
