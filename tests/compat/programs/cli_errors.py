"""The CLI with a missing attribute: exit status and the error a user sees."""
# compat: run -m {pkg}.run {mod}:no_such_flow
# compat: stderr last

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

flow = Dataflow("cli_err")
op.inspect("show", op.input("inp", flow, TestingSource([1])))
