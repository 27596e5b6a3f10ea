"""A flow whose only terminal steps are inspect: it runs and prints (no output step)."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

flow = Dataflow("insp_only")
s = op.input("inp", flow, TestingSource(["a", "b"]))
s = op.map("upper", s, str.upper)
op.inspect("show", s)
op.inspect("custom", s, lambda step_id, x: print("custom", step_id, repr(x)))
run_main(flow)
print("finished")
