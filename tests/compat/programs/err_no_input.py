"""Running a flow without an input step fails."""
# compat: stderr last

from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

flow = Dataflow("empty")
run_main(flow)
print("not reached")
