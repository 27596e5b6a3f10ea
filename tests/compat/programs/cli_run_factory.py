"""Import strings: a factory with arguments, and a file path."""
# compat: run -m {pkg}.run "{mod}:make_flow('hello', 3)"
# compat: run -m {pkg}.run {file}:flow
# compat: bytewax-flag

import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource


def make_flow(word, n):
    flow = Dataflow("factory")
    s = op.input("inp", flow, TestingSource([word] * n))
    op.output("out", op.map("num", s, lambda w: w.upper()), StdOutSink())
    return flow


flow = make_flow("file", 2)
